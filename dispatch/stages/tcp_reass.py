"""tcp_reass: the per-connection queue of out-of-order segments.

Why it exists: TCP delivers a byte stream in order, but segments arrive
reordered, duplicated and overlapping. Segments beyond rcv_nxt wait here
until the hole before them fills (FreeBSD's tcp_reass.c).

The queue lives in the shared pool and the shared pcb, so any process that
runs tcp_input for the flow can continue it: queued packets are payload-only
mbuf chains linked through m_nextpkt in sequence order, each with its
starting sequence number in W_AUX and its length in the pkthdr; the pcb
keeps head, tail, segment count and byte count (P_REASS_*). Invariant: the
queued ranges never overlap and all start at or after rcv_nxt.

Overlaps keep what arrived first: a new segment is trimmed against the
queued data it overlaps (its head against the predecessor, its tail against
the successor). A new segment that spans a queued one entirely replaces it
when the bytes are the same (the usual retransmission: no new packet is
made), and is split around it when they differ; each split is counted as
``tcp.reass_splits`` (one more packet leaves than came in).

The queue holds at most ``ctx.config.tcp_reass_maxseg`` segments; a segment
that would exceed it is dropped (tcps_rcvmemdrop), unless it is the one that
fills the hole at rcv_nxt.
"""

from __future__ import annotations

from dispatch.mbuf import layout as L
from dispatch.stages.base import Ctx
from dispatch.stages.socktab import (
    P_RCV_NXT,
    P_REASS_BYTES,
    P_REASS_HEAD,
    P_REASS_NSEG,
    P_REASS_TAIL,
    Q_DUPBYTES,
    SocketTable,
)
from dispatch.stages.tcp_var import SEQ_MASK, TCP_DROPS, seq_diff

# what tcp_reass_insert did with the segment
REASS_QUEUED = 0  # (some of) it is in the queue
REASS_DUP = 1  # all of it was already queued: freed, count as a duplicate
REASS_FULL = 2  # the queue is full: not queued, the caller drops it


def _seg_len(w: object, m: int) -> int:
    return w[(m << 6) + L.W_PKTLEN]  # type: ignore[index]


def tcp_reass_insert(ctx: Ctx, tab: SocketTable, i: int, m: int, seq: int, plen: int) -> int:
    """Queue payload-only packet m (`plen` bytes at `seq`) on pcb i; see REASS_*.

    On REASS_FULL the caller still owns m; otherwise the queue owns or freed it.
    """
    pool = ctx.pool
    w = pool.w
    tw = tab.w
    b = i << 7
    rcv_nxt = tw[b + P_RCV_NXT]
    if tw[b + P_REASS_NSEG] >= ctx.config.tcp_reass_maxseg and seq != rcv_nxt:
        return REASS_FULL
    st = ctx.stats.counters
    # predecessor: the last queued segment starting at or before seq
    prev = 0
    q = tw[b + P_REASS_HEAD]
    while q and seq_diff(w[(q << 6) + L.W_AUX], seq) <= 0:
        prev = q
        q = w[(q << 6) + L.W_NEXTPKT]
    dup = 0
    if prev:
        pend = (w[(prev << 6) + L.W_AUX] + _seg_len(w, prev)) & SEQ_MASK
        over = seq_diff(pend, seq)
        if over >= plen:
            dup += plen
            pool.freem(m)
            m = 0
        elif over > 0:
            pool.adj(m, over)
            seq = pend
            plen -= over
            dup += over
    queued = 0
    while m:
        if not q or seq_diff((seq + plen) & SEQ_MASK, w[(q << 6) + L.W_AUX]) <= 0:
            _link(tab, i, pool, prev, m, q, seq)
            queued += plen
            break
        qseq = w[(q << 6) + L.W_AUX]
        qlen = _seg_len(w, q)
        qend = (qseq + qlen) & SEQ_MASK
        head = seq_diff(qseq, seq)  # bytes of ours before q
        tail = seq_diff((seq + plen) & SEQ_MASK, qend)  # bytes of ours after q
        if head > 0 and tail > 0 and pool.copydata(m, head, qlen) == pool.chain_bytes(q):
            # we span q with the same bytes: replace q by us (q is the duplicate)
            nq = w[(q << 6) + L.W_NEXTPKT]
            _unlink_next(tab, i, pool, prev, q, nq)
            dup += qlen
            pool.freem(q)
            ctx.stats.drop(TCP_DROPS.reassdup)
            q = nq
            continue
        if head > 0:
            if tail > 0:
                rest = pool.split(m, head)
                if not rest:  # no mbufs: keep the part before q, lose the rest
                    pool.adj(m, -(plen - head))
                    _link(tab, i, pool, prev, m, q, seq)
                    queued += head
                    st["tcp.tcps_rcvmemdrop"] += 1
                    break
                st["tcp.reass_splits"] += 1
                _link(tab, i, pool, prev, m, q, seq)
                queued += head
                dup += qlen
                pool.adj(rest, qlen)
                m, seq, plen = rest, qend, tail
                prev = q
                q = w[(q << 6) + L.W_NEXTPKT]
                continue
            pool.adj(m, -(plen - head))  # our tail overlaps q: q's bytes win
            dup += plen - head
            plen = head
            _link(tab, i, pool, prev, m, q, seq)
            queued += plen
            break
        # we start inside q
        if tail <= 0:
            dup += plen
            pool.freem(m)
            m = 0
            break
        over = plen - tail
        pool.adj(m, over)
        dup += over
        seq, plen = qend, tail
        prev = q
        q = w[(q << 6) + L.W_NEXTPKT]
    qb = i << 6
    if dup:
        tab.q[qb + Q_DUPBYTES] += dup
    if not queued:
        st["tcp.tcps_rcvduppack"] += 1
        st["tcp.tcps_rcvdupbyte"] += dup
        return REASS_DUP
    if dup:
        st["tcp.tcps_rcvpartduppack"] += 1
        st["tcp.tcps_rcvpartdupbyte"] += dup
    return REASS_QUEUED


def _link(tab: SocketTable, i: int, pool: object, prev: int, m: int, nxt: int, seq: int) -> None:
    w = pool.w  # type: ignore[attr-defined]
    tw = tab.w
    b = i << 7
    mb = m << 6
    w[mb + L.W_AUX] = seq & SEQ_MASK
    w[mb + L.W_NEXTPKT] = nxt
    if prev:
        w[(prev << 6) + L.W_NEXTPKT] = m
    else:
        tw[b + P_REASS_HEAD] = m
    if not nxt:
        tw[b + P_REASS_TAIL] = m
    tw[b + P_REASS_NSEG] += 1
    tw[b + P_REASS_BYTES] += w[mb + L.W_PKTLEN]


def _unlink_next(tab: SocketTable, i: int, pool: object, prev: int, q: int, nq: int) -> None:
    w = pool.w  # type: ignore[attr-defined]
    tw = tab.w
    b = i << 7
    if prev:
        w[(prev << 6) + L.W_NEXTPKT] = nq
    else:
        tw[b + P_REASS_HEAD] = nq
    if not nq:
        tw[b + P_REASS_TAIL] = prev
    w[(q << 6) + L.W_NEXTPKT] = 0
    tw[b + P_REASS_NSEG] -= 1
    tw[b + P_REASS_BYTES] -= w[(q << 6) + L.W_PKTLEN]


def tcp_reass_deliver(ctx: Ctx, tab: SocketTable, i: int) -> list[int]:
    """Dequeue the in-order run at rcv_nxt, advancing rcv_nxt; returns the packets
    (payload-only, in order) for sbappend."""
    w = ctx.pool.w
    tw = tab.w
    b = i << 7
    out: list[int] = []
    rcv_nxt = tw[b + P_RCV_NXT]
    q = tw[b + P_REASS_HEAD]
    while q and w[(q << 6) + L.W_AUX] == rcv_nxt:
        nq = w[(q << 6) + L.W_NEXTPKT]
        n = w[(q << 6) + L.W_PKTLEN]
        w[(q << 6) + L.W_NEXTPKT] = 0
        tw[b + P_REASS_NSEG] -= 1
        tw[b + P_REASS_BYTES] -= n
        rcv_nxt = (rcv_nxt + n) & SEQ_MASK
        out.append(q)
        q = nq
    tw[b + P_REASS_HEAD] = q
    if not q:
        tw[b + P_REASS_TAIL] = 0
    tw[b + P_RCV_NXT] = rcv_nxt
    return out


def tcp_reass_flush(ctx: Ctx, tab: SocketTable, i: int) -> int:
    """Free everything queued on pcb i (reset or closed), counted as drops; returns how many."""
    pool = ctx.pool
    w = pool.w
    tw = tab.w
    b = i << 7
    q = tw[b + P_REASS_HEAD]
    n = 0
    while q:
        nq = w[(q << 6) + L.W_NEXTPKT]
        w[(q << 6) + L.W_NEXTPKT] = 0
        pool.freem(q)
        n += 1
        q = nq
    tw[b + P_REASS_HEAD] = tw[b + P_REASS_TAIL] = 0
    tw[b + P_REASS_NSEG] = tw[b + P_REASS_BYTES] = 0
    if n:
        ctx.stats.drop(TCP_DROPS.flushed, n)
    return n


def tcp_reass_queued(ctx: Ctx, tab: SocketTable, i: int) -> list[tuple[int, int]]:
    """(seq, length) of each queued segment, in order (for tests and reports)."""
    w = ctx.pool.w
    out = []
    q = tab.w[(i << 7) + P_REASS_HEAD]
    while q:
        out.append((w[(q << 6) + L.W_AUX], w[(q << 6) + L.W_PKTLEN]))
        q = w[(q << 6) + L.W_NEXTPKT]
    return out


def reass_held(tab: SocketTable) -> int:
    """Packets held in all reassembly queues (in flight, for the conservation check)."""
    return sum(tab.w[(i << 7) + P_REASS_NSEG] for i in tab.indices())
