"""IPv6 input and output (FreeBSD netinet6/ip6_input.c, ip6_output.c).

``ip6_input`` checks what FreeBSD's does, in its order, each a named counted
drop: too small, bad version, bad scope (multicast source, unspecified
destination, ::1 on the wire), jumbogram (unsupported), payload length past
the data (ip6s_tooshort); it trims link padding and then decides, as for
IPv4: ours (a local address, all-nodes multicast, or anything with
``auto_sockets``), not a member of the multicast group, forward, or cannot
forward. For ours it walks the extension headers (hop-by-hop only first,
routing headers only with no segments left, destination options, the
fragment header through frag.py's reassembly) to the transport header and
records its offset from the IPv6 header as l3hlen; TCP, UDP and ICMPv6 go
to tcp_input, udp_input and icmp_input, anything else is ip6s_noproto.
Extension headers must be contiguous in the first mbuf (pullup otherwise,
which holds at most MHLEN bytes: ip6s_exthdrtoolong when that is not
enough).

``ip6_output`` takes m_data at an IPv6 header with next header, addresses
and (optionally) traffic class and flow label set, and fills the version if
the first byte is 0, the payload length, hop limit 64 if 0 and the source
if unspecified; computes TCP/UDP checksums the interface cannot (CSUM_IP6_TCP,
CSUM_IP6_UDP requested but not in its hwassist) in software; routes, and
hands to ether_output with route id + 1 in W_AUX. No source fragmentation:
packets over the MTU (not marked for TSO) are counted ip6s_cantfrag.
"""

from __future__ import annotations

import ipaddress
import struct

from dispatch.mbuf import layout as L
from dispatch.stages.base import (
    ETHER_OUTPUT,
    IP6_INPUT,
    IP6_OUTPUT,
    Ctx,
    Routed,
    declare_reasons,
    stage,
)
from dispatch.stages.frag import IP6_FRAG_DROPS, _expire, frag6_input
from dispatch.stages.ip import _CSUM_L4_TX, _TX_MASK, demux_out, l4_delayed_cksum
from dispatch.stages.route import interfaces, local_addrs

__all__ = ["IP6_DROPS", "IP6_OUT_DROPS", "ip6_input", "ip6_output"]

IP6_DROPS = declare_reasons(
    IP6_INPUT,
    ("toosmall", "ip6s_toosmall", "packets with size smaller than minimum"),
    ("tooshort", "ip6s_tooshort", "packets with data size < data length"),
    ("badvers", "ip6s_badvers", "packets with incorrect version number"),
    ("badscope", "ip6s_badscope", "packets that violated scope rules"),
    ("badoptions", "ip6s_badoptions", "packets with bad options or extension headers"),
    ("exthdrtoolong", "ip6s_exthdrtoolong", "packets whose headers are not contiguous"),
    ("notmember", "ip6s_notmember", "multicast packets which we don't join"),
    ("cantforward", "ip6s_cantforward", "packets not forwardable (not for this host)"),
    ("noproto", "ip6s_noproto", "packets for unknown/unsupported protocol"),
)
IP6_OUT_DROPS = declare_reasons(
    IP6_OUTPUT,
    ("badpacket", "ip6s_odropped", "output packets without a valid IPv6 header"),
    ("noroute", "ip6s_noroute", "output packets discarded due to no route"),
    ("cantfrag", "ip6s_cantfrag", "datagrams that can't be fragmented"),
)

_IP6IN = struct.Struct("!4xHB1x16s16s")  # plen, nxt, src, dst
_LOOP6 = ipaddress.IPv6Address("::1").packed
_ANY6 = bytes(16)
_ALLNODES = ipaddress.IPv6Address("ff02::1").packed
_EXT = (0, 43, 60, 44)  # hop-by-hop, routing, destination options, fragment


def _walk(ctx: Ctx, m: int, pos: int, nxt: int, prevoff: int,
          end: int) -> tuple[int, int, int]:
    """Walk extension headers from ``pos``; returns (m, upper protocol, its offset).

    m is 0 when the packet was dropped or is held for reassembly.
    """
    pool = ctx.pool
    buf = pool.buf
    w = pool.w
    D = IP6_DROPS
    while nxt in _EXT:
        if nxt == 0 and pos != 40:
            ctx.drop(m, D.badoptions)  # hop-by-hop must come first
            return 0, 0, 0
        if pos + 8 > end:
            ctx.drop(m, D.tooshort)
            return 0, 0, 0
        if w[(m << 6) + L.W_LEN] < pos + 8:
            m = pool.pullup(m, pos + 8)
            if not m:
                ctx.stats.drop(D.exthdrtoolong)
                return 0, 0, 0
        o = pool.data_offset(m)
        if nxt == 44:
            m, nxt = frag6_input(ctx, m, fhoff=pos, prevoff=prevoff, end=end)
            if not m:
                return 0, 0, 0
            end = pool.pkt_len(m)  # reassembled: trimmed to its payload length
            continue  # the fragment's payload now sits at pos
        ln = (buf[o + pos + 1] + 1) << 3
        if pos + ln > end:
            ctx.drop(m, D.tooshort)
            return 0, 0, 0
        if w[(m << 6) + L.W_LEN] < pos + ln:
            m = pool.pullup(m, pos + ln)
            if not m:
                ctx.stats.drop(D.exthdrtoolong)
                return 0, 0, 0
            o = pool.data_offset(m)
        if nxt == 43 and buf[o + pos + 3]:  # routing header with segments left
            ctx.drop(m, D.badoptions)
            return 0, 0, 0
        prevoff = pos
        nxt = buf[o + pos]
        pos += ln
    return m, nxt, pos


@stage(IP6_INPUT)
def ip6_input(ctx: Ctx, batch: list[int]) -> Routed:
    """Validate IPv6 packets, walk extension headers, send to transport/forward/drop."""
    pool = ctx.pool
    w = pool.w
    buf = pool.buf
    cl_base = pool.cl_base
    mbase = pool.mbuf_off
    stats = ctx.stats
    local6 = local_addrs(ctx)[1]
    cfg = ctx.config
    auto = cfg.auto_sockets
    fwd = cfg.forwarding
    unpack = _IP6IN.unpack_from
    drop = ctx.drop
    D = IP6_DROPS
    ip6q = ctx.extra.get("ip6q")
    if ip6q is not None and ip6q.queues:
        _expire(ctx, ip6q, IP6_FRAG_DROPS.fragtimeout, "ip6.ip6s_fragtimeout")
    tcp: list[int] = []
    udp: list[int] = []
    icmp: list[int] = []
    fw: list[int] = []
    for m in batch:
        b = m << 6
        pktlen = w[b + L.W_PKTLEN]
        if pktlen < 40:
            drop(m, D.toosmall)
            continue
        if w[b + L.W_LEN] < 40:
            m = pool.pullup(m, 40)
            if not m:
                stats.drop(D.toosmall)
                continue
            b = m << 6
        e = w[b + L.W_EXT]
        o = (cl_base[e] if e else mbase + (m << 8)) + w[b + L.W_DATA]
        if buf[o] & 0xF0 != 0x60:
            drop(m, D.badvers)
            continue
        plen, nxt, src, dst = unpack(buf, o)
        if src[0] == 0xFF or dst == _ANY6 or src == _LOOP6 or dst == _LOOP6:
            drop(m, D.badscope)
            continue
        if plen == 0 and nxt == 0:
            drop(m, D.badoptions)  # a jumbogram: unsupported
            continue
        end = 40 + plen
        if pktlen < end:
            drop(m, D.tooshort)
            continue
        if pktlen > end:
            if w[b + L.W_LEN] == pktlen:
                w[b + L.W_LEN] = end
                w[b + L.W_PKTLEN] = end
            else:
                pool.adj(m, end - pktlen)
        if not auto and dst not in local6:
            if dst[0] == 0xFF:
                w[b + L.W_FLAGS] |= L.M_MCAST
                if dst != _ALLNODES:
                    drop(m, D.notmember)
                    continue
            elif fwd:
                fw.append(m)
                continue
            else:
                drop(m, D.cantforward)
                continue
        pos = 40
        if nxt in _EXT:
            m, nxt, pos = _walk(ctx, m, pos, nxt, 6, end)
            if not m:
                continue
            b = m << 6
        w[b + L.W_HDRLENS] = (w[b + L.W_HDRLENS] & 0xFF) | (pos << 8)
        if nxt == 6:
            tcp.append(m)
        elif nxt == 17:
            udp.append(m)
        elif nxt == 58:
            icmp.append(m)
        else:
            drop(m, D.noproto)
    return demux_out(stats, "ip6.ip6s", len(batch), tcp, udp, icmp, fw)


@stage(IP6_OUTPUT)
def ip6_output(ctx: Ctx, batch: list[int]) -> Routed:
    """Complete locally generated IPv6 headers, route, checksum, and pass to ether_output."""
    pool = ctx.pool
    w = pool.w
    buf = pool.buf
    routes = ctx.routes
    ifs = interfaces(ctx)
    D = IP6_OUT_DROPS
    out: list[int] = []
    for m in batch:
        b = m << 6
        if w[b + L.W_LEN] < 40:
            m = pool.pullup(m, 40)
            if not m:
                ctx.stats.drop(D.badpacket)
                continue
            b = m << 6
        o = pool.data_offset(m)
        if buf[o] == 0:
            buf[o] = 0x60
        plen = w[b + L.W_PKTLEN] - 40
        if buf[o] >> 4 != 6 or plen > 0xFFFF:
            ctx.drop(m, D.badpacket)
            continue
        dst = bytes(buf[o + 24 : o + 40])
        if routes is not None:
            r = routes.lookup(dst)
            if r is None:
                ctx.drop(m, D.noroute)
                continue
            w[b + L.W_AUX] = r.id + 1
            iface = ifs[r.ifindex] if r.ifindex < len(ifs) else ifs[0]
        else:
            w[b + L.W_AUX] = 0
            iface = ifs[0]
        csf = w[b + L.W_CSUM_FLAGS] & _TX_MASK
        if plen + 40 > iface.mtu and not csf & L.CSUM_TSO:
            ctx.drop(m, D.cantfrag)
            continue
        buf[o + 4] = plen >> 8
        buf[o + 5] = plen & 0xFF
        if buf[o + 7] == 0:
            buf[o + 7] = 64
        if buf[o + 8 : o + 24] == _ANY6:
            for a in iface.addrs:
                if ":" in a:
                    buf[o + 8 : o + 24] = ipaddress.IPv6Address(a).packed
                    break
        sw = csf & ~iface.hwassist
        if sw & _CSUM_L4_TX:
            l4_delayed_cksum(pool, m, l3off=0, l4off=40, proto=buf[o + 6],
                             src=bytes(buf[o + 8 : o + 24]), dst=dst)
            csf &= ~_CSUM_L4_TX
        w[b + L.W_CSUM_FLAGS] = csf
        w[b + L.W_HDRLENS] = (w[b + L.W_HDRLENS] & 0xFF0000FF) | (40 << 8)
        out.append(m)
    ctx.stats.add("ip6.ip6s_localout", len(batch))
    return {ETHER_OUTPUT: out} if out else {}
