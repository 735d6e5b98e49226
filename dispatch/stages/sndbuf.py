"""The TCP send buffer: an mbuf chain per socket that keeps data until it is acknowledged.

Why it exists: a TCP sender must be able to send a byte again until the peer
has acknowledged it (retransmission), so what sosend copied in cannot be
freed when a segment leaves, as a datagram's can. FreeBSD keeps it in
so_snd (sbappendstream / sbdrop); here the chain hangs off the socket record
in the shared socket table: P_SNDBUF_HEAD / P_SNDBUF_TAIL are its first and
last mbufs, Q_SNDBUF_CC its byte count, and the first byte of the chain is
the byte at snd_una. Segments are cut from it with m_copym (`sb_snd_copy`),
which shares the clusters (refcounts) rather than copying: copyin stays the
one software copy on send, and a cluster is freed only when both the last
segment holding it has been transmitted and the ACK has dropped it here
(`sb_snd_drop`).

The chain is a byte buffer, not a packet: no mbuf in it carries M_PKTHDR.
Only the connection's sender (tcp_output, ACK processing, timers) may touch
it, so the runtime must run those in one process at a time per connection.
"""

from __future__ import annotations

from dispatch.mbuf import layout as L
from dispatch.stages.base import Ctx
from dispatch.stages.socktab import (
    P_SNDBUF_HEAD,
    P_SNDBUF_TAIL,
    Q_SND_ACKED,
    Q_SND_REMOVED,
    Q_SNDBUF_CC,
    SocketTable,
)

_HINT_KEY = "sndbuf_hint"  # ctx.extra: socket -> (mbuf, stream offset of its first byte)


def sb_snd_cc(tab: SocketTable, i: int) -> int:
    """Bytes in socket i's send buffer: queued, sent or not, and not yet acknowledged."""
    return tab.q[(i << 6) + Q_SNDBUF_CC]


def sb_snd_append(ctx: Ctx, tab: SocketTable, i: int, m: int) -> int:
    """sbappendstream: link the chain m (data copied in by sosend) at the buffer's
    tail. Returns the number of bytes appended; the chain now belongs to the buffer."""
    pool = ctx.pool
    w = pool.w
    n = 0
    last = m
    x = m
    while x:
        b = x << 6
        w[b + L.W_FLAGS] &= ~L.M_PKTHDR
        w[b + L.W_NEXTPKT] = 0
        n += w[b + L.W_LEN]
        last = x
        x = w[b]
    if not n:  # nothing to keep (a zero-length send)
        pool.freem(m)
        return 0
    tw = tab.w
    rb = i << 7
    tail = tw[rb + P_SNDBUF_TAIL]
    if tail and tw[rb + P_SNDBUF_HEAD]:
        w[tail << 6] = m
    else:
        tw[rb + P_SNDBUF_HEAD] = m
    tw[rb + P_SNDBUF_TAIL] = last
    tab.q[(i << 6) + Q_SNDBUF_CC] += n
    return n


def sb_snd_drop(ctx: Ctx, tab: SocketTable, i: int, n: int) -> int:
    """sbdrop: free the first n bytes (acknowledged data). Returns the bytes dropped
    (n, or what the buffer held if less). Counts them as removed from the send buffer
    (Q_SND_REMOVED: room for sosend again) and as acknowledged (Q_SND_ACKED)."""
    pool = ctx.pool
    w = pool.w
    tw = tab.w
    rb = i << 7
    m = tw[rb + P_SNDBUF_HEAD]
    left = n
    while left > 0 and m:
        b = m << 6
        ln = w[b + L.W_LEN]
        if ln <= left:
            left -= ln
            m = pool.free(m)
        else:
            w[b + L.W_DATA] += left
            w[b + L.W_LEN] = ln - left
            left = 0
    while m and not w[(m << 6) + L.W_LEN]:  # mbufs emptied at the front
        m = pool.free(m)
    tw[rb + P_SNDBUF_HEAD] = m
    if not m:
        tw[rb + P_SNDBUF_TAIL] = 0
    done = n - left
    qb = i << 6
    tab.q[qb + Q_SNDBUF_CC] -= done
    tab.q[qb + Q_SND_REMOVED] += done
    tab.q[qb + Q_SND_ACKED] += done
    return done


def sb_snd_copy(ctx: Ctx, tab: SocketTable, i: int, off: int, n: int) -> int:
    """m_copym of bytes [off, off + n) of the buffer: a new chain sharing the
    clusters. Returns 0 when the pool denies. The caller keeps off + n within cc.

    Like FreeBSD's sndptr hint, the walk to `off` starts from where the last copy
    of this socket ended (a per-process hint, by absolute stream offset: valid
    while that mbuf has not been dropped), so cutting a buffer into segments does
    not walk the chain from its head every time."""
    tw = tab.w
    head = tw[(i << 7) + P_SNDBUF_HEAD]
    if not head or n <= 0:
        return 0
    w = ctx.pool.w
    acked = tab.q[(i << 6) + Q_SND_ACKED]
    hints = ctx.extra.setdefault(_HINT_KEY, {})
    h = hints.get(i)
    m, pos = head, 0  # pos: buffer offset of m's first byte
    if h is not None and h[1] >= acked and h[1] - acked <= off:  # m not dropped yet
        m, pos = h[0], h[1] - acked
    while m:
        ln = w[(m << 6) + L.W_LEN]
        if off < pos + ln:
            break
        pos += ln
        m = w[m << 6]
    if not m:
        return 0
    hints[i] = (m, acked + pos)
    return ctx.pool.copym(m, off - pos, n)


def sb_snd_flush(ctx: Ctx, tab: SocketTable, i: int) -> int:
    """Free the whole buffer (the connection was reset or dropped). Returns the bytes
    freed; they are counted as removed, not as acknowledged, and in the stats as
    ``socket.snd_flushed_bytes`` (sent by the application, never delivered)."""
    tw = tab.w
    rb = i << 7
    m = tw[rb + P_SNDBUF_HEAD]
    qb = i << 6
    n = tab.q[qb + Q_SNDBUF_CC]
    if m:
        ctx.pool.freem(m)
    tw[rb + P_SNDBUF_HEAD] = tw[rb + P_SNDBUF_TAIL] = 0
    tab.q[qb + Q_SNDBUF_CC] = 0
    tab.q[qb + Q_SND_REMOVED] += n
    if n:
        ctx.stats.counters["socket.snd_flushed_bytes"] += n
    return n
