"""ip_forward: routing a packet that is not for this host (FreeBSD ip_forward, ip6_forward).

One stage for both families (the version nibble decides), in FreeBSD's
order: packets that may not be forwarded (link broadcast or multicast,
multicast, loopback, "this network" or class E destinations; for IPv6
link-local or unspecified sources and multicast or link-local
destinations) are ips_cantforward / ip6s_cantforward; a TTL or hop limit of
1 or less is "time exceeded in transit" (with an ICMP time-exceeded error
sent back when ``ctx.config.icmp_time_exceeded`` is on); the longest-prefix
match on the destination finds the route or the packet is ips_noroute /
ip6s_noroute. Then the TTL is decremented in place in shared memory with
the RFC 1624 incremental checksum update (the hop limit for IPv6, which
has no header checksum), the route goes in W_AUX (route id + 1), and the
packet continues to ether_output: FreeBSD's ip_output(IP_FORWARDING) step
is this stage's tail, since the header is already complete. Packets larger
than the outgoing MTU are not fragmented (ips_cantfrag / ip6s_cantfrag).
"""

from __future__ import annotations

from dispatch.mbuf import layout as L
from dispatch.packet.icmp import ICMP6_TIME_EXCEEDED, ICMP_TIMXCEED
from dispatch.packet.ipv4 import dec_ttl_inplace
from dispatch.stages.base import (
    ETHER_OUTPUT,
    IP6_OUTPUT,
    IP_FORWARD,
    IP_OUTPUT,
    Ctx,
    Routed,
    declare_reasons,
    stage,
)
from dispatch.stages.icmp import icmp_error
from dispatch.stages.route import interfaces

__all__ = ["FWD_DROPS", "ip_forward"]

FWD_DROPS = declare_reasons(
    IP_FORWARD,
    ("cantforward", "ips_cantforward", "packets not forwardable"),
    ("timxceed", "icps_outhist.timxceed", "packets whose TTL expired in transit"),
    ("noroute", "ips_noroute", "packets discarded due to no route"),
    ("cantfrag", "ips_cantfrag", "datagrams too big for the outgoing MTU"),
    ("cantforward6", "ip6s_cantforward", "IPv6 packets not forwardable"),
    ("timxceed6", "icp6s_outhist.time_exceed", "IPv6 packets whose hop limit expired"),
    ("noroute6", "ip6s_noroute", "IPv6 packets discarded due to no route"),
    ("cantfrag6", "ip6s_cantfrag", "IPv6 packets too big for the outgoing MTU"),
    ("badpacket", "ips_badvers", "packets that are neither IPv4 nor IPv6"),
)

_ICMP_TIMXCEED_INTRANS = 0
_ICMP6_TIME_EXCEED_TRANSIT = 0


@stage(IP_FORWARD)
def ip_forward(ctx: Ctx, batch: list[int]) -> Routed:
    """Route, decrement the TTL / hop limit, and send on to ether_output."""
    pool = ctx.pool
    w = pool.w
    buf = pool.buf
    routes = ctx.routes
    lookup = routes.lookup if routes is not None else None
    ifs = interfaces(ctx)
    nifs = len(ifs)
    icmp_on = ctx.config.icmp_time_exceeded
    D = FWD_DROPS
    out: list[int] = []
    err4: list[int] = []
    err6: list[int] = []
    n4 = n6 = 0
    for m in batch:
        b = m << 6
        o = pool.data_offset(m)
        ver = buf[o] >> 4
        if ver == 4:
            d0 = buf[o + 16]
            if (w[b + L.W_FLAGS] & (L.M_BCAST | L.M_MCAST) or d0 >= 224 or d0 == 127
                    or d0 == 0):
                ctx.drop(m, D.cantforward)
                continue
            if buf[o + 8] <= 1:
                if icmp_on:
                    e = icmp_error(ctx, m, type=ICMP_TIMXCEED, code=_ICMP_TIMXCEED_INTRANS)
                    if e:
                        err4.append(e)
                ctx.drop(m, D.timxceed)
                continue
            r = lookup(bytes(buf[o + 16 : o + 20])) if lookup is not None else None
            if r is None:
                ctx.drop(m, D.noroute)
                continue
            mtu = ifs[r.ifindex].mtu if r.ifindex < nifs else 1500
            if w[b + L.W_PKTLEN] > mtu:
                ctx.drop(m, D.cantfrag)
                continue
            dec_ttl_inplace(buf, o)
            n4 += 1
        elif ver == 6 and w[b + L.W_LEN] >= 40:
            s0, s1, d0, d1 = buf[o + 8], buf[o + 9], buf[o + 24], buf[o + 25]
            if (s0 == 0xFF or (s0 == 0xFE and s1 & 0xC0 == 0x80) or d0 == 0xFF
                    or (d0 == 0xFE and d1 & 0xC0 == 0x80)
                    or buf[o + 8 : o + 24] == bytes(16)):
                ctx.drop(m, D.cantforward6)
                continue
            if buf[o + 7] <= 1:
                if icmp_on:
                    e = icmp_error(ctx, m, type=ICMP6_TIME_EXCEEDED,
                                   code=_ICMP6_TIME_EXCEED_TRANSIT)
                    if e:
                        err6.append(e)
                ctx.drop(m, D.timxceed6)
                continue
            r = lookup(bytes(buf[o + 24 : o + 40])) if lookup is not None else None
            if r is None:
                ctx.drop(m, D.noroute6)
                continue
            mtu = ifs[r.ifindex].mtu if r.ifindex < nifs else 1500
            if w[b + L.W_PKTLEN] > mtu:
                ctx.drop(m, D.cantfrag6)
                continue
            buf[o + 7] -= 1
            n6 += 1
        else:
            ctx.drop(m, D.badpacket)
            continue
        w[b + L.W_AUX] = r.id + 1
        w[b + L.W_CSUM_FLAGS] = 0
        w[b + L.W_FLAGS] &= ~L.M_VLANTAG
        out.append(m)
    if n4:
        ctx.stats.add("ip.ips_forward", n4)
    if n6:
        ctx.stats.add("ip6.ip6s_forward", n6)
    res: Routed = {}
    if out:
        res[ETHER_OUTPUT] = out
    if err4:
        res[IP_OUTPUT] = err4
    if err6:
        res[IP6_OUTPUT] = err6
    return res
