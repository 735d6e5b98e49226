"""The socket layer: sbappend, soreceive (the copyout) and sosend (the copyin).

Why it exists: the socket buffer is where the stack's work meets the
application's, and where the design's two software copies happen (copyout
on receive, copyin on send). Here a socket buffer is not a chain hung off
the socket: a packet appended to a socket keeps travelling as a handle, with
W_SOCKID saying which socket it belongs to, to the "soreceive" stage that
runs in the socket's user thread. The buffer's size is kept exactly by two
monotonic counters in the shared socket table (producer: bytes appended;
consumer: bytes removed), so the high-water check needs no atomics.

Stats: ``copies.copyout_bytes`` / ``copies.copyin_bytes`` (the copy sites),
``socket.rcv_packets`` / ``socket.rcv_bytes`` (what the user received: the
"delivered" of the conservation check), ``socket.snd_packets`` /
``socket.snd_bytes``.
"""

from __future__ import annotations

import errno
import hashlib
from typing import Any

import numpy as np

from dispatch.mbuf import layout as L
from dispatch.stages.base import (
    SORECEIVE,
    SOSEND,
    TCP_OUTPUT,
    UDP_OUTPUT,
    Ctx,
    Routed,
    declare_reasons,
    stage,
)
from dispatch.stages.socktab import (
    IPPROTO_TCP,
    P_PF,
    P_SB_HIWAT,
    P_SND_HIWAT,
    P_STATE,
    Q_DELIVERED,
    Q_DELIVERED_PKTS,
    Q_RCVBYTE,
    Q_RCVPACK,
    Q_SB_APPENDED,
    Q_SB_REMOVED,
    Q_SND_APPENDED,
    Q_SND_REMOVED,
    SocketTable,
)
from dispatch.stages.tcp_var import TCPS_CLOSE_WAIT, TCPS_ESTABLISHED

RCV_DROPS = declare_reasons(
    SORECEIVE,
    ("nosock", "sos_nosock", "packets reaching soreceive without a socket"),
)
SND_DROPS = declare_reasons(
    SOSEND,
    ("nosock", "sos_snd_nosock", "send requests without a socket"),
    ("sbfull", "sos_snd_sbfull", "send requests refused: send buffer full"),
    ("notconn", "sos_snd_notconn", "send requests on an unconnected socket"),
)

UIO_SIZE = 65536  # the user's receive buffer, per reading process
UDP_HDR_ROOM = 48  # leading space kept for IPv6 + UDP headers


def _uio(ctx: Ctx) -> memoryview:
    u = ctx.extra.get("uio")
    if u is None:
        u = ctx.extra["uio"] = memoryview(bytearray(UIO_SIZE))
    return u


def socket_digests(ctx: Ctx) -> dict[int, str]:
    """Hex sha256 of each socket's delivered bytes, as read in this process (config.digest)."""
    return {i: h.hexdigest() for i, h in ctx.extra.get("digests", {}).items()}


def sbappend(ctx: Ctx, tab: SocketTable, i: int, m: int, nbytes: int) -> None:
    """Account a payload-only packet to socket i and mark it for soreceive.

    The caller has trimmed the headers (m holds exactly `nbytes` of payload)
    and checked the high-water mark. Writes only producer fields.
    """
    pool = ctx.pool
    pool.w[(m << 6) + L.W_SOCKID] = i + 1
    pool.q[(m << 5) + L.Q_TS + L.TS_SOCKET] = ctx.now
    q = tab.q
    qb = i << 6
    q[qb + Q_SB_APPENDED] += nbytes
    q[qb + Q_RCVPACK] += 1
    q[qb + Q_RCVBYTE] += nbytes


_FAST_MIN = 4  # below this, the per-packet path is cheaper than the numpy calls
_Q_TS_USER = L.Q_TS + L.TS_USER


@stage(SORECEIVE)
def soreceive(ctx: Ctx, batch: list[int]) -> Routed:
    """The user thread's receive: copy each packet out, account it, free the batch.

    A whole-batch numpy path for the common case (every packet one mbuf with a
    socket); anything else runs the per-packet `_soreceive_slow` (same results)."""
    if len(batch) >= _FAST_MIN:
        r = _soreceive_fast(ctx, batch)
        if r is not None:
            return r
    return _soreceive_slow(ctx, batch)


def _soreceive_fast(ctx: Ctx, batch: list[int]) -> Routed | None:
    """The vectorised path; returns None, having changed nothing, when the batch
    needs the per-packet path (a packet without a socket, a chain, a plain mbuf,
    one longer than the user's buffer)."""
    pool = ctx.pool
    n = len(batch)
    n4 = 4 * n
    arr = np.fromiter(batch, np.intp, n)
    H = pool.headers.take(arr, 0)
    ext = H[:, L.W_EXT]
    sid_b = H[:, L.W_SOCKID].tobytes()
    one_sock = sid_b == sid_b[:4] * n  # the usual batch: one socket
    if (H[:, L.W_NEXT].tobytes() != bytes(n4) or np.count_nonzero(ext) != n
            or not (H[0, L.W_SOCKID] if one_sock
                    else np.count_nonzero(H[:, L.W_SOCKID]) == n)):
        return None
    uio = _uio(ctx)
    usize = len(uio)
    len_b = H[:, L.W_PKTLEN].tobytes()
    base = pool.cluster_base.take(ext) + H[:, L.W_DATA]
    seg = pool.segment
    lens: np.ndarray | None = None
    if len_b == len_b[:4] * n:  # every payload the same length: one gather
        k = int(H[0, L.W_PKTLEN])
        if k > usize:
            return None
        total = n * k
        if k:
            # the copyout: every payload into one array, in packet order
            flat = np.ndarray((len(seg) - k + 1, k), np.uint8, seg, 0, (1, 1))[base]
            uio[:k] = flat[-1]  # the user's buffer ends as the per-packet copies leave it
        else:
            flat = np.empty(0, np.uint8)
    else:
        lens = H[:, L.W_PKTLEN].astype(np.int64)
        if np.count_nonzero(lens > usize):
            return None
        ends = np.cumsum(lens)
        total = int(ends[-1])
        starts = ends - lens
        flat = seg[np.arange(total) + np.repeat(base - starts, lens)]
        # the user's buffer ends as the per-packet copies leave it: a packet's bytes
        # survive where no later packet is as long
        later = np.append(np.maximum.accumulate(lens[::-1])[::-1][1:], 0)
        starts_l = starts.tolist()
        for j in np.flatnonzero(lens > later).tolist():
            k = int(lens[j])
            uio[:k] = flat[starts_l[j] : starts_l[j] + k]
    if one_sock:
        acc = [(int(H[0, L.W_SOCKID]) - 1, total, n)]
        sids = None
    else:
        sids = H[:, L.W_SOCKID].astype(np.intp) - 1
        if lens is None:
            lens = H[:, L.W_PKTLEN].astype(np.int64)
        nb = np.bincount(sids, weights=lens).tolist()
        npk = np.bincount(sids).tolist()
        acc = [(s, int(nb[s]), npk[s]) for s in dict.fromkeys(sids.tolist())]
    if ctx.config.digest:
        digests = ctx.extra.setdefault("digests", {})
        for s, _, _ in acc:
            h = digests.get(s)
            if h is None:
                h = digests[s] = hashlib.sha256()
            if sids is None:
                h.update(flat)
            else:
                h.update(flat.reshape(-1)[np.repeat(sids == s, lens)])
    pool.stamps64[arr, _Q_TS_USER] = ctx.now
    tq = ctx.sockets.q
    for s, nbytes, npkts in acc:
        qb = s << 6
        tq[qb + Q_SB_REMOVED] += nbytes
        tq[qb + Q_DELIVERED] += nbytes
        tq[qb + Q_DELIVERED_PKTS] += npkts
    st = ctx.stats.counters
    st["copies.copyout_bytes"] += total
    st["socket.rcv_packets"] += n
    st["socket.rcv_bytes"] += total
    pool.freem_batch(arr, heads=H)  # H: read above, m_hdr words unchanged since
    return {}


def _soreceive_slow(ctx: Ctx, batch: list[int]) -> Routed:
    """The per-packet soreceive (the reference the fast path is held to)."""
    pool = ctx.pool
    w, pq, buf = pool.w, pool.q, pool.buf
    cl_base, mbuf_off = pool.cl_base, pool.mbuf_off
    tab: SocketTable = ctx.sockets
    tq = tab.q
    uio = _uio(ctx)
    usize = len(uio)
    digests: dict[int, Any] | None = None
    if ctx.config.digest:
        digests = ctx.extra.setdefault("digests", {})
    now = ctx.now
    acc: dict[int, list[int]] = {}
    total = 0
    keep: list[int] = []
    for m in batch:
        b = m << 6
        sid = w[b + L.W_SOCKID] - 1
        if sid < 0:
            ctx.drop(m, RCV_DROPS.nosock)
            continue
        n = w[b + L.W_PKTLEN]
        if not w[b] and n <= usize:  # one mbuf: the common case, inline
            e = w[b + L.W_EXT]
            off = (cl_base[e] if e else mbuf_off + (m << 8)) + w[b + L.W_DATA]
            uio[:n] = buf[off : off + n]
            if digests is not None:
                h = digests.get(sid)
                if h is None:
                    h = digests[sid] = hashlib.sha256()
                h.update(uio[:n])
        else:
            pos = 0
            while pos < n:
                k = min(usize, n - pos)
                pool.copydata_into(m, pos, k, uio)
                if digests is not None:
                    h = digests.get(sid)
                    if h is None:
                        h = digests[sid] = hashlib.sha256()
                    h.update(uio[:k])
                pos += k
        pq[(m << 5) + L.Q_TS + L.TS_USER] = now
        a = acc.get(sid)
        if a is None:
            acc[sid] = [n, 1]
        else:
            a[0] += n
            a[1] += 1
        total += n
        keep.append(m)
    for sid, (nb, npk) in acc.items():
        qb = sid << 6
        tq[qb + Q_SB_REMOVED] += nb
        tq[qb + Q_DELIVERED] += nb
        tq[qb + Q_DELIVERED_PKTS] += npk
    if keep:
        st = ctx.stats.counters
        st["copies.copyout_bytes"] += total
        st["socket.rcv_packets"] += len(keep)
        st["socket.rcv_bytes"] += total
        pool.freem_batch(keep)
    return {}


# ----------------------------------------------------------------- send side
def sosend_copyin(ctx: Ctx, i: int, data: bytes | memoryview) -> int:
    """Copy user data into a new packet for socket i (the one software copy on send).

    TCP data goes into clusters only, so tcp_output can share them with
    m_copym instead of copying; UDP data keeps leading space for its headers.
    Returns the handle, or 0 when the pool denies (counted by the pool).
    """
    pool = ctx.pool
    tab: SocketTable = ctx.sockets
    n = len(data)
    tcp = (tab.w[(i << 7) + P_PF] & 0xFF) == IPPROTO_TCP
    if tcp and n:
        m = pool.getcl(min(n, L.MJUMPAGESIZE) if n > L.MCLBYTES and pool.counts[2]
                       else L.MCLBYTES)
    else:
        m = pool.gethdr()
        if m and n + UDP_HDR_ROOM <= L.MHLEN:  # else udp_output prepends a header mbuf
            pool.w[(m << 6) + L.W_DATA] += UDP_HDR_ROOM
    if not m:
        return 0
    if n and not pool.append(m, data):
        pool.freem(m)
        return 0
    pool.w[(m << 6) + L.W_SOCKID] = i + 1
    ctx.stats.counters["copies.copyin_bytes"] += n
    return m


def sosend(ctx: Ctx, i: int, data: bytes | memoryview) -> Routed:
    """A non-blocking send(2): check the send buffer, copy in, hand to the transport.

    Raises BlockingIOError (EWOULDBLOCK) when the send buffer lacks space,
    (ENOBUFS) when the pool is exhausted, and ENOTCONN for a TCP socket
    that is not connected. Returns where the packet goes next.
    """
    tab: SocketTable = ctx.sockets
    if (tab.w[(i << 7) + P_PF] & 0xFF) == IPPROTO_TCP and \
            tab.w[(i << 7) + P_STATE] not in (TCPS_ESTABLISHED, TCPS_CLOSE_WAIT):
        raise OSError(errno.ENOTCONN, "socket is not connected")
    qb = i << 6
    used = tab.q[qb + Q_SND_APPENDED] - tab.q[qb + Q_SND_REMOVED]
    if used + len(data) > (tab.w[(i << 7) + P_SND_HIWAT] or ctx.config.so_snd_hiwat):
        ctx.stats.counters["socket.snd_wouldblock"] += 1
        raise BlockingIOError(errno.EWOULDBLOCK, "send buffer full")
    m = sosend_copyin(ctx, i, data)
    if not m:
        ctx.stats.counters["socket.snd_nobufs"] += 1
        raise BlockingIOError(errno.ENOBUFS, "no mbufs")
    return sosend_stage(ctx, [m])


@stage(SOSEND)
def sosend_stage(ctx: Ctx, batch: list[int]) -> Routed:
    """Packets already copied in (sosend_copyin): account the send buffer and route
    them to their transport's output."""
    pool = ctx.pool
    w = pool.w
    tab: SocketTable = ctx.sockets
    tw, tq = tab.w, tab.q
    tcp_out: list[int] = []
    udp_out: list[int] = []
    nbytes = 0
    for m in batch:
        sid = w[(m << 6) + L.W_SOCKID] - 1
        if sid < 0:
            ctx.drop(m, SND_DROPS.nosock)
            continue
        n = w[(m << 6) + L.W_PKTLEN]
        qb = sid << 6
        if tq[qb + Q_SND_APPENDED] - tq[qb + Q_SND_REMOVED] + n > \
                (tw[(sid << 7) + P_SND_HIWAT] or ctx.config.so_snd_hiwat):
            ctx.drop(m, SND_DROPS.sbfull)
            continue
        if (tw[(sid << 7) + P_PF] & 0xFF) == IPPROTO_TCP:
            if tw[(sid << 7) + P_STATE] not in (TCPS_ESTABLISHED, TCPS_CLOSE_WAIT):
                ctx.drop(m, SND_DROPS.notconn)
                continue
            tcp_out.append(m)
        else:
            udp_out.append(m)
        tq[qb + Q_SND_APPENDED] += n
        nbytes += n
    st = ctx.stats.counters
    st["socket.snd_packets"] += len(tcp_out) + len(udp_out)
    st["socket.snd_bytes"] += nbytes
    out: Routed = {}
    if tcp_out:
        out[TCP_OUTPUT] = tcp_out
    if udp_out:
        out[UDP_OUTPUT] = udp_out
    return out


def sb_hiwat(ctx: Ctx, i: int) -> int:
    """Socket i's receive high-water mark (its own, else the stack's)."""
    return ctx.sockets.w[(i << 7) + P_SB_HIWAT] or ctx.config.sb_hiwat
