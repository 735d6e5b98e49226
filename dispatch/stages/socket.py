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
from dispatch.stages import kernels as _k
from dispatch.stages.base import (
    SORECEIVE,
    SOSEND,
    TCP_OUTPUT,
    UDP_OUTPUT,
    Batch,
    Ctx,
    Routed,
    as_list,
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


_FAST_MIN = 1  # the compiled pass pays from one packet on (a call costs about 0.5 us)


@stage(SORECEIVE, arrays=True)
def soreceive(ctx: Ctx, batch: Batch) -> Routed:
    """The user thread's receive: copy each packet out, account it, free the batch.

    One compiled pass for the common case (every packet one mbuf on a cluster,
    with a socket, no longer than the user's buffer); anything else runs the
    per-packet `_soreceive_slow` (same results)."""
    if len(batch) >= _FAST_MIN:
        r = _soreceive_fast(ctx, batch)
        if r is not None:
            return r
    return _soreceive_slow(ctx, as_list(batch))


def _soreceive_fast(ctx: Ctx, batch: Batch) -> Routed | None:
    """The compiled path (kernels.soreceive: copyout into the user's buffer, the
    user stamp, the consumer's socket counters); returns None, having changed
    nothing, when the batch needs the per-packet path."""
    pool = ctx.pool
    arr = np.asarray(batch, dtype=np.intp)
    sc = ctx.extra.get("_soreceive_scratch")
    if sc is None:
        uio = _uio(ctx)
        sc = ctx.extra["_soreceive_scratch"] = (np.frombuffer(uio, np.uint8),
                                                np.zeros(1, np.int64))
    total = _k.soreceive(pool.headers, pool.stamps64, pool.segment, pool.cluster_base, arr,
                         sc[0], ctx.sockets.np_q, ctx.now, sc[1])
    if total < 0:
        return None
    if ctx.config.digest:  # what the user read, hashed per socket (from the same bytes)
        digests = ctx.extra.setdefault("digests", {})
        w, buf, cl_base = pool.w, pool.buf, pool.cl_base
        for m in as_list(batch):
            b = m << 6
            sid = w[b + L.W_SOCKID] - 1
            h = digests.get(sid)
            if h is None:
                h = digests[sid] = hashlib.sha256()
            off = cl_base[w[b + L.W_EXT]] + w[b + L.W_DATA]
            h.update(buf[off : off + w[b + L.W_PKTLEN]])
    n = len(batch)
    st = ctx.stats.counters
    st["copies.copyout_bytes"] += total
    st["socket.rcv_packets"] += n
    st["socket.rcv_bytes"] += total
    pool.freem_batch(arr)
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
    m_copym instead of copying; a UDP datagram keeps leading space for its
    headers, in the packet-header mbuf or, larger, in a cluster (as FreeBSD's
    sosend_dgram asks m_uiotombuf for max_hdr in front), so that udp_output and
    ether_output prepend in place; one larger than a cluster becomes a chain.
    Returns the handle, or 0 when the pool denies (counted by the pool).
    """
    pool = ctx.pool
    tab: SocketTable = ctx.sockets
    n = len(data)
    tcp = (tab.w[(i << 7) + P_PF] & 0xFF) == IPPROTO_TCP
    if tcp and n:
        m = pool.getcl(min(n, L.MJUMPAGESIZE) if n > L.MCLBYTES and pool.counts[2]
                       else L.MCLBYTES)
    elif n + UDP_HDR_ROOM <= L.MHLEN:
        m = pool.gethdr()
        if m:
            pool.w[(m << 6) + L.W_DATA] += UDP_HDR_ROOM
    elif n + UDP_HDR_ROOM <= L.MCLBYTES:  # a cluster, headers' room kept (m_uiotombuf)
        m = pool.getcl(L.MCLBYTES)
        if m:
            pool.w[(m << 6) + L.W_DATA] = UDP_HDR_ROOM
    else:  # a chain: udp_output prepends a header mbuf
        m = pool.gethdr()
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
