"""IP fragment reassembly for IPv4 (FreeBSD ip_reass) and IPv6 (frag6_input).

Fragments addressed to this host are held in per-datagram queues until the
whole datagram is there, then joined into one mbuf chain (the first
fragment keeps its IP header; the others lose theirs with m_adj and are
appended with m_catpkt, so no payload byte is copied) and handed back to
ip_input / ip6_input, which carry on with transport demultiplexing.

* IPv4 queues are keyed by (src, dst, id, proto), IPv6 ones by (src, dst, id).
* Overlaps, IPv4: as FreeBSD, data that arrived first wins against a new
  fragment's front (it is trimmed, or dropped if wholly covered), and a new
  fragment trims or drops the fragments that follow it. IPv6: any overlap
  drops the whole datagram (RFC 5722).
* Limits: at most ``maxfrags`` fragments per datagram (net.inet.ip.
  maxfragsperpacket: beyond it the datagram is dropped) and ``maxqueues``
  datagrams in reassembly (the oldest is dropped to make room); a datagram not
  complete ``timeout_ns`` after its first fragment arrived is dropped
  (ips_fragtimeout), checked against ``ctx.now`` whenever ip_input runs, or
  by calling `frag_timeout`.
* The tables live in ``ctx.extra["ipq"]`` and ``ctx.extra["ip6q"]`` (per
  process: RSS hashes fragments on addresses only, so all of a datagram's
  fragments reach the same worker). `frag_flush` drops everything held, for
  the end of a run, so that the pool is whole again.

Accounting, so that "offered = routed + dropped" can be checked: every
fragment ends held (`frag_held`), dropped under a declared reason, or part
of a reassembled datagram. A datagram made of k fragments counts k in
``ips_fragments`` and 1 in ``ips_reassembled``; the k - 1 it absorbed are
counted in ``absorbed.ip_input`` (``absorbed.ip6_input``), which is the
emulator's own counter, not FreeBSD's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dispatch.mbuf import layout as L
from dispatch.stages.base import IP6_INPUT, IP_INPUT, Ctx, Reason, Reasons, declare_reasons

__all__ = ["FragTable", "IP_FRAG_DROPS", "IP6_FRAG_DROPS", "ip_reass", "frag6_input",
           "frag_timeout", "frag_flush", "frag_held"]

IP_FRAG_DROPS = declare_reasons(
    IP_INPUT,
    ("badfrag", "ips_fragdropped", "fragments dropped (empty, or not a multiple of 8 with MF)"),
    ("fragdropped", "ips_fragdropped", "fragments dropped (dup, overlap or out of space)"),
    ("fragtoolong", "ips_toolong", "fragments that would make a datagram too long"),
    ("fragtimeout", "ips_fragtimeout", "fragments dropped after timeout"),
    ("fragflush", "ips_fragdropped", "fragments dropped when reassembly was flushed"),
)
IP6_FRAG_DROPS = declare_reasons(
    IP6_INPUT,
    ("badfrag", "ip6s_fragdropped", "fragments dropped (empty, or not a multiple of 8 with M)"),
    ("fragdropped", "ip6s_fragdropped", "fragments dropped (overlap, or out of space)"),
    ("fragtoolong", "ip6s_fragdropped", "fragments that would make a datagram too long"),
    ("fragtimeout", "ip6s_fragtimeout", "fragments dropped after timeout"),
    ("fragflush", "ip6s_fragdropped", "fragments dropped when reassembly was flushed"),
)

IP_MAXPACKET = 65535
_IP_MF = 0x2000
_IP_OFFMASK = 0x1FFF
_L4_FLAGS = L.CSUM_L4_CALC | L.CSUM_L4_VALID


@dataclass(slots=True)
class _Queue:
    created: int
    frags: list[list[int]] = field(default_factory=list)  # [start, end, m, skip], by start
    total: int = -1  # datagram payload length once the last fragment is seen
    # IPv6: the first fragment's layout (offset of the fragment header, of the byte
    # naming it, and the next header after it); IPv4: unused
    fhoff: int = 0
    prevoff: int = 0
    nxt: int = 0


class FragTable:
    """The datagrams being reassembled for one family in one process."""

    def __init__(self, *, maxqueues: int = 1024, maxfrags: int = 16,
                 timeout_ns: int = 30_000_000_000) -> None:
        self.maxqueues = maxqueues
        self.maxfrags = maxfrags
        self.timeout_ns = timeout_ns
        self.queues: dict[tuple[object, ...], _Queue] = {}

    def held(self) -> int:
        return sum(len(q.frags) for q in self.queues.values())


def _table(ctx: Ctx, name: str) -> FragTable:
    t = ctx.extra.get(name)
    if t is None:
        t = ctx.extra[name] = FragTable()
    return t


def _drop_queue(ctx: Ctx, q: _Queue, reason: Reason) -> int:
    for f in q.frags:
        ctx.drop(f[2], reason)
    n = len(q.frags)
    q.frags.clear()
    return n


def _expire(ctx: Ctx, t: FragTable, reason: Reason, stat: str) -> int:
    limit = ctx.now - t.timeout_ns
    n = 0
    qs = t.queues
    while qs:
        k = next(iter(qs))
        if qs[k].created > limit:
            break
        n += _drop_queue(ctx, qs.pop(k), reason)
    if n:
        ctx.stats.add(stat, n)
    return n


def frag_timeout(ctx: Ctx) -> int:
    """Drop the datagrams whose reassembly timed out (ip_slowtimo); returns fragments dropped."""
    n = 0
    t = ctx.extra.get("ipq")
    if t is not None:
        n += _expire(ctx, t, IP_FRAG_DROPS.fragtimeout, "ip.ips_fragtimeout")
    t = ctx.extra.get("ip6q")
    if t is not None:
        n += _expire(ctx, t, IP6_FRAG_DROPS.fragtimeout, "ip6.ip6s_fragtimeout")
    return n


def frag_flush(ctx: Ctx) -> int:
    """Drop every fragment held (end of a run); returns how many."""
    n = 0
    for name, reason in (("ipq", IP_FRAG_DROPS.fragflush), ("ip6q", IP6_FRAG_DROPS.fragflush)):
        t = ctx.extra.get(name)
        if t is None:
            continue
        for q in t.queues.values():
            n += _drop_queue(ctx, q, reason)
        t.queues.clear()
    return n


def frag_held(ctx: Ctx) -> int:
    """Fragments waiting in reassembly queues."""
    return sum(t.held() for n in ("ipq", "ip6q") if (t := ctx.extra.get(n)) is not None)


def _queue_for(ctx: Ctx, t: FragTable, key: tuple[object, ...], drops: Reasons) -> _Queue:
    q = t.queues.get(key)
    if q is None:
        while len(t.queues) >= t.maxqueues:  # make room: the oldest datagram goes
            old = t.queues.pop(next(iter(t.queues)))
            _drop_queue(ctx, old, drops.fragdropped)
        q = t.queues[key] = _Queue(ctx.now)
    return q


def _insert(ctx: Ctx, t: FragTable, key: tuple[object, ...], q: _Queue, m: int, start: int,
            end: int, more: bool, skip: int, *, v6: bool) -> list[list[int]] | None:
    """Put one fragment in its queue; returns the fragments when the datagram is whole."""
    drops = IP6_FRAG_DROPS if v6 else IP_FRAG_DROPS
    frags = q.frags
    # the last fragment fixes the length; anything disagreeing with it is dropped
    if not more:
        if (q.total >= 0 and q.total != end) or any(f[1] > end for f in frags):
            ctx.drop(m, drops.fragdropped)
            return None
    elif q.total >= 0 and end > q.total:
        ctx.drop(m, drops.fragdropped)
        return None
    i = 0
    while i < len(frags) and frags[i][0] <= start:
        i += 1
    if v6:
        if (i > 0 and frags[i - 1][1] > start) or (i < len(frags) and frags[i][0] < end):
            _drop_queue(ctx, q, drops.fragdropped)
            del t.queues[key]
            ctx.drop(m, drops.fragdropped)
            return None
    else:
        if i > 0:  # what arrived first wins: trim the new fragment's front
            over = frags[i - 1][1] - start
            if over > 0:
                if over >= end - start:
                    ctx.drop(m, drops.fragdropped)
                    return None
                start += over
                skip += over
        while i < len(frags) and frags[i][0] < end:  # the new one trims its successors
            f = frags[i]
            over = end - f[0]
            if over < f[1] - f[0]:
                f[0] += over
                f[3] += over
                break
            ctx.drop(f[2], drops.fragdropped)
            del frags[i]
    frags.insert(i, [start, end, m, skip])
    if not more:
        q.total = end
    if len(frags) > t.maxfrags:
        _drop_queue(ctx, q, drops.fragdropped)
        del t.queues[key]
        return None
    if q.total < 0 or frags[0][0] != 0:
        return None
    nxt = 0
    for f in frags:
        if f[0] != nxt:
            return None
        nxt = f[1]
    if nxt != q.total:
        return None
    del t.queues[key]
    return frags


def _join(ctx: Ctx, frags: list[list[int]]) -> int:
    """m_cat the fragments' data (headers trimmed) onto the first one; returns its head."""
    pool = ctx.pool
    m0 = frags[0][2]
    for f in frags[1:]:
        m = f[2]
        pool.adj(m, f[3])
        extra = pool.pkt_len(m) - (f[1] - f[0])
        if extra > 0:
            pool.adj(m, -extra)
        pool.catpkt(m0, m)
    w = pool.w
    b = m0 << 6
    w[b + L.W_CSUM_FLAGS] &= ~_L4_FLAGS  # the transport checksum must be checked in software
    w[b + L.W_CSUM_DATA] = 0
    return m0


def ip_reass(ctx: Ctx, m: int, *, hl: int, ip_len: int, ip_off: int) -> int:
    """Take one IPv4 fragment (m_data at its IP header, contiguous, trimmed to ip_len).

    Returns the reassembled datagram (header fixed: ip_len, ip_off, checksum)
    or 0 when the fragment was held or dropped.
    """
    pool = ctx.pool
    buf = pool.buf
    stats = ctx.stats
    stats.add("ip.ips_fragments")
    t = _table(ctx, "ipq")
    if t.queues:
        _expire(ctx, t, IP_FRAG_DROPS.fragtimeout, "ip.ips_fragtimeout")
    o = pool.data_offset(m)
    dlen = ip_len - hl
    more = bool(ip_off & _IP_MF)
    if dlen <= 0 or (more and dlen & 7):
        stats.add("ip.ips_toosmall")
        ctx.drop(m, IP_FRAG_DROPS.badfrag)
        return 0
    start = (ip_off & _IP_OFFMASK) << 3
    end = start + dlen
    if end + hl > IP_MAXPACKET:
        ctx.drop(m, IP_FRAG_DROPS.fragtoolong)
        return 0
    key = (bytes(buf[o + 12 : o + 20]), (buf[o + 4] << 8) | buf[o + 5], buf[o + 9])
    q = _queue_for(ctx, t, key, IP_FRAG_DROPS)
    frags = _insert(ctx, t, key, q, m, start, end, more, hl, v6=False)
    if frags is None:
        return 0
    m0 = _join(ctx, frags)
    o = pool.data_offset(m0)
    hl0 = (buf[o] & 0xF) << 2
    total = hl0 + frags[-1][1]
    buf[o + 2] = total >> 8
    buf[o + 3] = total & 0xFF
    buf[o + 6] &= 0x40  # keep DF; clear MF and the offset
    buf[o + 7] = 0
    buf[o + 10] = buf[o + 11] = 0
    s = (-(int.from_bytes(buf[o : o + hl0], "big") % 0xFFFF)) % 0xFFFF
    buf[o + 10] = s >> 8
    buf[o + 11] = s & 0xFF
    stats.add("ip.ips_reassembled")
    stats.add("absorbed.ip_input", len(frags) - 1)
    return m0


def frag6_input(ctx: Ctx, m: int, *, fhoff: int, prevoff: int, end: int) -> tuple[int, int]:
    """Take one IPv6 fragment: m_data at the IPv6 header, contiguous through the fragment
    header at ``fhoff``; ``prevoff`` is the offset of the byte that names it (6, or an
    extension header's first byte); ``end`` = 40 + payload length.

    Returns (m, next header) with the fragment header removed when the datagram is
    complete (or was an atomic fragment), else (0, 0). The payload length is fixed.
    """
    pool = ctx.pool
    buf = pool.buf
    stats = ctx.stats
    stats.add("ip6.ip6s_fragments")
    o = pool.data_offset(m)
    nxt = buf[o + fhoff]
    offlg = (buf[o + fhoff + 2] << 8) | buf[o + fhoff + 3]
    start = offlg & 0xFFF8
    more = bool(offlg & 1)
    dlen = end - fhoff - 8
    if start == 0 and not more:  # an atomic fragment (RFC 6946): just lose the header
        stats.add("ip6.ip6s_atomicfrags")
        _remove_fraghdr(ctx, m, fhoff, prevoff, nxt)
        return m, nxt
    t = _table(ctx, "ip6q")
    if t.queues:
        _expire(ctx, t, IP6_FRAG_DROPS.fragtimeout, "ip6.ip6s_fragtimeout")
    if dlen <= 0 or (more and dlen & 7):
        ctx.drop(m, IP6_FRAG_DROPS.badfrag)
        return 0, 0
    if start + dlen + fhoff + 8 - 40 > IP_MAXPACKET:
        ctx.drop(m, IP6_FRAG_DROPS.fragtoolong)
        return 0, 0
    key = (bytes(buf[o + 8 : o + 40]), bytes(buf[o + fhoff + 4 : o + fhoff + 8]))
    q = _queue_for(ctx, t, key, IP6_FRAG_DROPS)
    if start == 0:
        q.fhoff, q.prevoff, q.nxt = fhoff, prevoff, nxt
    frags = _insert(ctx, t, key, q, m, start, start + dlen, more, fhoff + 8, v6=True)
    if frags is None:
        return 0, 0
    m0 = _join(ctx, frags)  # the first fragment keeps its headers; its fragment header goes
    _remove_fraghdr(ctx, m0, q.fhoff, q.prevoff, q.nxt)
    stats.add("ip6.ip6s_reassembled")
    stats.add("absorbed.ip6_input", len(frags) - 1)
    return m0, q.nxt


def _remove_fraghdr(ctx: Ctx, m: int, fhoff: int, prevoff: int, nxt: int) -> None:
    """Cut the 8-byte fragment header out: move the headers before it up by 8 bytes."""
    pool = ctx.pool
    buf = pool.buf
    o = pool.data_offset(m)
    buf[o + prevoff] = nxt
    buf[o + 8 : o + 8 + fhoff] = bytes(buf[o : o + fhoff])
    pool.adj(m, 8)
    o += 8
    plen = pool.pkt_len(m) - 40
    buf[o + 4] = plen >> 8
    buf[o + 5] = plen & 0xFF
