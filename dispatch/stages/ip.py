"""IPv4 input and output (FreeBSD netinet/ip_input.c, ip_output.c).

``ip_input`` makes FreeBSD's validations in FreeBSD's order, each a named,
counted drop: too short (ips_tooshort / ips_toosmall), bad version, bad
header length, loopback address on the wire (ips_badaddr), bad header
checksum (in software unless the NIC set CSUM_L3_CALC; with CSUM_L3_VALID
too it verified good, without it bad), total length below the header
(ips_badlen), packet shorter than ip_len (ips_tooshort). It trims link
padding beyond ip_len, records l3hlen, leaves the IP header in place, and
decides: ours (a local address, the limited broadcast, or anything with
``auto_sockets``) goes through reassembly (frag.py) to tcp_input /
udp_input / icmp_input, multicast (no group is joined) is dropped as
ips_notmember, and the rest goes to ip_forward or, with forwarding off, is
dropped as ips_cantforward. IP options are carried but not processed.

``ip_output`` takes a packet whose m_data is at an IPv4 header in which the
caller (tcp_output, udp_output, icmp) has set at least tos, ttl, protocol,
source and destination; it fills the rest as FreeBSD's does: version and
header length if the first byte is 0, ip_len from m_pkthdr.len, ip_id, TTL
64 if 0, the source address if 0.0.0.0 (the outgoing interface's first), and
the checksums: CSUM_IP / CSUM_TCP / CSUM_UDP requested in W_CSUM_FLAGS stay
requested only where the interface's hwassist has them, the rest is
computed here in software (in_delayed_cksum). It looks the route up, leaves
route id + 1 in W_AUX, and hands the packet to ether_output. Datagrams over
the interface MTU are not fragmented (not implemented: counted ips_cantfrag)
unless marked for TSO.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import numpy as np

from dispatch.mbuf import layout as L
from dispatch.packet.checksum import pseudo_header_sum_v4, pseudo_header_sum_v6
from dispatch.packet.ipv4 import IPPROTO_TCP, IPPROTO_UDP
from dispatch.stages import kernels as _k
from dispatch.stages.base import (
    ETHER_OUTPUT,
    ICMP_INPUT,
    IP_FORWARD,
    IP_INPUT,
    IP_OUTPUT,
    TCP_INPUT,
    UDP_INPUT,
    Ctx,
    Routed,
    Stats,
    declare_reasons,
    stage,
)
from dispatch.stages.frag import IP_FRAG_DROPS, _expire, ip_reass
from dispatch.stages.route import Interface, interfaces, local_addrs

if TYPE_CHECKING:
    from dispatch.mbuf.pool import MbufPool

__all__ = ["IP_DROPS", "IP_OUT_DROPS", "ip_input", "ip_output", "chain_sum", "l4_delayed_cksum"]

IP_DROPS = declare_reasons(
    IP_INPUT,
    ("tooshort", "ips_tooshort", "packets with data size < data length"),
    ("toosmall", "ips_toosmall", "packets with size smaller than minimum"),
    ("badvers", "ips_badvers", "packets with incorrect version number"),
    ("badhlen", "ips_badhlen", "packets with header length < data size"),
    ("badaddr", "ips_badaddr", "packets with a loopback address on the wire"),
    ("badsum", "ips_badsum", "bad header checksums"),
    ("badlen", "ips_badlen", "packets with data length < header length"),
    ("notmember", "ips_notmember", "multicast packets for groups not joined"),
    ("cantforward", "ips_cantforward", "packets not forwardable (not for this host)"),
    ("noproto", "ips_noproto", "packets for unknown/unsupported protocol"),
)
IP_OUT_DROPS = declare_reasons(
    IP_OUTPUT,
    ("badpacket", "ips_odropped", "output packets without a valid IPv4 header"),
    ("toolong", "ips_toolong", "output packets longer than IP_MAXPACKET"),
    ("noroute", "ips_noroute", "output packets discarded due to no route"),
    ("cantfrag", "ips_cantfrag", "datagrams that can't be fragmented"),
)

_IP10 = struct.Struct("!10H")
_M = 0xFFFF
_ANY4 = b"\x00\x00\x00\x00"
_CSUM_L4_TX = L.CSUM_IP_TCP | L.CSUM_IP_UDP | L.CSUM_IP6_TCP | L.CSUM_IP6_UDP
_TX_MASK = 0x00FFFFFF  # transmit-side csum_flags; the receive-side bits are cleared on output
_CKOFF = {IPPROTO_TCP: 16, IPPROTO_UDP: 6}


def chain_sum(pool: MbufPool, m: int, off: int, length: int) -> int:
    """Unfolded ones-sum (mod 0xFFFF) of ``length`` bytes of a chain from ``off``, in place.

    Uses 2**16 == 1 (mod 0xFFFF): a segment that starts at an odd byte position
    contributes its value times 256. No byte is copied out of the pool.
    """
    w = pool.w
    buf = pool.buf
    while m and off >= w[(m << 6) + L.W_LEN]:
        off -= w[(m << 6) + L.W_LEN]
        m = w[m << 6]
    acc = 0
    left = length
    while m and left > 0:
        ln = min(w[(m << 6) + L.W_LEN] - off, left)
        if ln > 0:
            o = pool.data_offset(m) + off
            acc = (acc * (256 if ln & 1 else 1) + int.from_bytes(buf[o : o + ln], "big")) % _M
            left -= ln
        off = 0
        m = w[m << 6]
    if length & 1:
        acc = acc * 256 % _M
    return acc


def l4_delayed_cksum(pool: MbufPool, m: int, *, l3off: int, l4off: int, proto: int,
                     src: bytes, dst: bytes) -> None:
    """in_delayed_cksum: compute and store a TCP/UDP checksum the NIC will not compute.

    ``l3off``/``l4off`` are offsets of the IP and transport headers from m_data;
    the pseudo-header is v4 or v6 by address length. The checksum field is
    zeroed first, so whatever the caller left in it does not matter.
    """
    ck = _CKOFF.get(proto)
    if ck is None:
        return
    total = pool.pkt_len(m)
    length = total - l4off
    if length < ck + 2:
        return
    if pool.w[(m << 6) + L.W_LEN] < l4off + ck + 2:
        return  # the header is not contiguous: the caller's chain is malformed
    o = pool.data_offset(m) + l4off + ck
    buf = pool.buf
    buf[o] = buf[o + 1] = 0
    if len(src) == 4:
        ph = pseudo_header_sum_v4(src, dst, proto, length)
    else:
        ph = pseudo_header_sum_v6(src, dst, proto, length)
    s = (chain_sum(pool, m, l4off, length) + ph) % _M
    c = (-s) % _M
    if c == 0 and proto == IPPROTO_UDP:
        c = _M
    buf[o] = c >> 8
    buf[o + 1] = c & 0xFF


def _local4_ints(ctx: Ctx) -> frozenset[int]:
    """The host's IPv4 addresses as 32-bit integers (an int hashes faster than bytes).

    Cached against the config and interface list objects: one dict probe per batch.
    """
    extra = ctx.extra
    cached = extra.get("_local4_ints")
    if cached is None or cached[0] is not ctx.config or cached[1] is not extra.get("interfaces"):
        local4 = local_addrs(ctx)[0]
        cached = (ctx.config, extra.get("interfaces"),
                  frozenset(int.from_bytes(a, "big") for a in local4))
        extra["_local4_ints"] = cached
    return cached[2]


# The compiled fast path (kernels.ip4_input). A batch takes it when every packet
# passes every check of the per-packet code and nothing but the header words it
# writes changes: version 4, IHL 5, no loopback source or destination, checksum
# good (verified by the NIC or in software), 20 <= ip_len <= m_pkthdr.len with the
# whole packet in the first mbuf (a cluster), not a fragment, destination local,
# protocol TCP, UDP or ICMP. (It replaced a whole-batch numpy path that paid only
# from 48 packets on: each numpy call costs ~1-2 us here.)
_FAST_MIN = 1
_PROTO_STAGE = {6: TCP_INPUT, 17: UDP_INPUT, 1: ICMP_INPUT}


def _fast_local(ctx: Ctx) -> tuple[np.ndarray, int]:
    """(local addresses as u32, whether the destination must be one of them: not in
    auto-sockets mode, where every destination is ours). Cached like `_local4_ints`."""
    local4 = _local4_ints(ctx)
    extra = ctx.extra
    cached = extra.get("_ip_fast_local")
    if cached is None or cached[0] is not local4 or cached[1] is not ctx.config:
        arr = np.array(sorted(local4), dtype=np.uint32)
        cached = extra["_ip_fast_local"] = (local4, ctx.config,
                                            (arr, 0 if ctx.config.auto_sockets else 1))
    return cached[2]


def _ip_input_fast(ctx: Ctx, batch: list[int]) -> Routed | None:
    """The compiled path; None (nothing changed) for a batch it does not take."""
    ipq = ctx.extra.get("ipq")
    if ipq is not None and ipq.queues:
        return None  # ip_input expires fragments first
    n = len(batch)
    sc = ctx.extra.get("_ip_scratch")
    if sc is None or len(sc) < n:
        sc = ctx.extra["_ip_scratch"] = np.empty(max(n, 64), np.uint8)
    local, check = _fast_local(ctx)
    pool = ctx.pool
    arr = np.array(batch, dtype=np.intp)
    if _k.ip4_input(pool.headers, pool.segment, pool.cluster_base, arr, local, check, sc) < 0:
        return None
    p = sc[:n]
    out: Routed = {}
    p0 = int(p[0])
    if n == 1 or p.tobytes() == bytes((p0,)) * n:
        out[_PROTO_STAGE[p0]] = list(batch)
    else:
        for proto in (6, 17, 1):
            sel = p == proto
            if sel.any():
                out[_PROTO_STAGE[proto]] = arr[sel].tolist()
    stats = ctx.stats
    stats.add("ip.ips_total", n)
    stats.add("ip.ips_delivered", n)
    return out


@stage(IP_INPUT)
def ip_input(ctx: Ctx, batch: list[int]) -> Routed:
    """Validate IPv4 packets and send each to transport input, ip_forward, or a drop.

    A batch whose every packet is a plain, valid IPv4 packet for this host goes
    through the compiled `_ip_input_fast`; any other batch through
    `_ip_input_slow`, the per-packet reference, with exactly the same results.
    """
    if len(batch) >= _FAST_MIN:
        r = _ip_input_fast(ctx, batch)
        if r is not None:
            return r
    return _ip_input_slow(ctx, batch)


def _ip_input_slow(ctx: Ctx, batch: list[int]) -> Routed:
    """The per-packet ip_input: the reference the fast path is held to."""
    pool = ctx.pool
    w = pool.w
    buf = pool.buf
    cl_base = pool.cl_base
    mbase = pool.mbuf_off
    stats = ctx.stats
    local4 = _local4_ints(ctx)
    cfg = ctx.config
    auto = cfg.auto_sockets
    fwd = cfg.forwarding
    unpack = _IP10.unpack_from
    drop = ctx.drop
    D = IP_DROPS
    ipq = ctx.extra.get("ipq")
    if ipq is not None and ipq.queues:
        _expire(ctx, ipq, IP_FRAG_DROPS.fragtimeout, "ip.ips_fragtimeout")
    tcp: list[int] = []
    udp: list[int] = []
    icmp: list[int] = []
    fw: list[int] = []
    for m in batch:
        b = m << 6
        plen = w[b + 8]  # W_PKTLEN
        ln = w[b + 3]  # W_LEN
        if ln < 20:
            if plen < 20:
                drop(m, D.tooshort)
                continue
            m = pool.pullup(m, 20)
            if not m:
                stats.drop(D.toosmall)
                continue
            b = m << 6
            ln = w[b + 3]
        e = w[b + 7]  # W_EXT
        o = (cl_base[e] if e else mbase + (m << 8)) + w[b + 2]  # W_DATA
        # the fixed header as ten 16-bit words: every field, and the checksum by sum()
        h = unpack(buf, o)
        vhl = h[0] >> 8
        if vhl & 0xF0 != 0x40:
            drop(m, D.badvers)
            continue
        hl = (vhl & 0xF) << 2
        if hl != 20:
            if hl < 20:
                drop(m, D.badhlen)
                continue
            if hl > ln:
                m = pool.pullup(m, hl)
                if not m:
                    stats.drop(D.badhlen)
                    continue
                b = m << 6
                ln = w[b + 3]
                o = pool.data_offset(m)
        dhi = h[8]
        if dhi >> 8 == 127 or h[6] >> 8 == 127:
            drop(m, D.badaddr)
            continue
        csf = w[b + 12]  # W_CSUM_FLAGS
        if csf & 0x01000000:  # CSUM_L3_CALC: the NIC checked
            if not csf & 0x02000000:  # ... and did not find it valid
                drop(m, D.badsum)
                continue
        elif (sum(h) if hl == 20 else int.from_bytes(buf[o : o + hl], "big")) % _M:
            drop(m, D.badsum)
            continue
        ip_len = h[1]
        if ip_len < hl:
            drop(m, D.badlen)
            continue
        if plen != ip_len:
            if plen < ip_len:
                drop(m, D.tooshort)
                continue
            if ln == plen:  # link-layer padding
                w[b + 3] = ip_len
                w[b + 8] = ip_len
            else:
                pool.adj(m, ip_len - plen)
        w[b + 14] = (w[b + 14] & 0xFF) | (hl << 8)  # W_HDRLENS: l3hlen
        if not auto and (dhi << 16 | h[9]) not in local4:
            if dhi >= 0xE000:
                if dhi == 0xFFFF and h[9] == 0xFFFF:
                    w[b + 5] |= L.M_BCAST
                else:
                    w[b + 5] |= L.M_MCAST
                    drop(m, D.notmember if dhi < 0xF000 else D.cantforward)
                    continue
            elif dhi == 0 and h[9] == 0:
                w[b + 5] |= L.M_BCAST  # INADDR_ANY: the old broadcast
            elif fwd:
                fw.append(m)
                continue
            else:
                drop(m, D.cantforward)
                continue
        if h[3] & 0x3FFF:  # IP_MF | IP_OFFMASK: reassemble
            m = ip_reass(ctx, m, hl=hl, ip_len=ip_len, ip_off=h[3])
            if not m:
                continue
        proto = h[4] & 0xFF
        if proto == 6:
            tcp.append(m)
        elif proto == 17:
            udp.append(m)
        elif proto == 1:
            icmp.append(m)
        else:
            drop(m, D.noproto)
    return demux_out(stats, "ip.ips", len(batch), tcp, udp, icmp, fw)


def demux_out(stats: Stats, prefix: str, total: int, tcp: list[int], udp: list[int],
              icmp: list[int], fw: list[int]) -> Routed:
    """The end of ip_input / ip6_input: route by protocol (in that order) and count
    `<prefix>_total` and `<prefix>_delivered` (prefix "ip.ips" or "ip6.ip6s")."""
    stats.add(f"{prefix}_total", total)
    out: Routed = {}
    n = 0
    if tcp:
        out[TCP_INPUT] = tcp
        n += len(tcp)
    if udp:
        out[UDP_INPUT] = udp
        n += len(udp)
    if icmp:
        out[ICMP_INPUT] = icmp
        n += len(icmp)
    if n:
        stats.add(f"{prefix}_delivered", n)
    if fw:
        out[IP_FORWARD] = fw
    return out


def iface_v4(iface: Interface) -> bytes | None:
    """The interface's first IPv4 address (packed), the source ip_output gives a
    datagram sent from 0.0.0.0; None if it has none."""
    for a in iface.addrs:
        if ":" not in a:
            return bytes(int(x) for x in a.split("."))
    return None


def _next_id(ctx: Ctx, n: int) -> int:
    i = ctx.extra.get("ip_id", 0)
    ctx.extra["ip_id"] = (i + n) & 0xFFFF
    return i


@stage(IP_OUTPUT)
def ip_output(ctx: Ctx, batch: list[int]) -> Routed:
    """Complete locally generated IPv4 headers, route, checksum, and pass to ether_output."""
    pool = ctx.pool
    w = pool.w
    buf = pool.buf
    routes = ctx.routes
    ifs = interfaces(ctx)
    ident = _next_id(ctx, len(batch))
    D = IP_OUT_DROPS
    out: list[int] = []
    for m in batch:
        b = m << 6
        if w[b + L.W_LEN] < 20:
            m = pool.pullup(m, 20)
            if not m:
                ctx.stats.drop(D.badpacket)
                continue
            b = m << 6
        o = pool.data_offset(m)
        if buf[o] == 0:
            buf[o] = 0x45
        vhl = buf[o]
        hl = (vhl & 0xF) << 2
        if vhl >> 4 != 4 or hl < 20 or hl > w[b + L.W_LEN]:
            ctx.drop(m, D.badpacket)
            continue
        plen = w[b + L.W_PKTLEN]
        if plen > 0xFFFF:
            ctx.drop(m, D.toolong)
            continue
        dst = bytes(buf[o + 16 : o + 20])
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
        csf = (w[b + L.W_CSUM_FLAGS] & _TX_MASK) | L.CSUM_IP
        if plen > iface.mtu and not csf & L.CSUM_TSO:
            ctx.drop(m, D.cantfrag)
            continue
        buf[o + 2] = plen >> 8
        buf[o + 3] = plen & 0xFF
        buf[o + 4] = ident >> 8
        buf[o + 5] = ident & 0xFF
        ident = (ident + 1) & 0xFFFF
        if buf[o + 8] == 0:
            buf[o + 8] = 64
        if buf[o + 12 : o + 16] == _ANY4:
            src = iface_v4(iface)
            if src is not None:
                buf[o + 12 : o + 16] = src
        sw = csf & ~iface.hwassist
        if sw & _CSUM_L4_TX:
            l4_delayed_cksum(pool, m, l3off=0, l4off=hl, proto=buf[o + 9],
                             src=bytes(buf[o + 12 : o + 16]), dst=dst)
            csf &= ~_CSUM_L4_TX
        buf[o + 10] = buf[o + 11] = 0
        if sw & L.CSUM_IP:
            s = (-(int.from_bytes(buf[o : o + hl], "big") % _M)) % _M
            buf[o + 10] = s >> 8
            buf[o + 11] = s & 0xFF
            csf &= ~L.CSUM_IP
        w[b + L.W_CSUM_FLAGS] = csf
        w[b + L.W_HDRLENS] = (w[b + L.W_HDRLENS] & 0xFF0000FF) | (hl << 8)
        out.append(m)
    ctx.stats.add("ip.ips_localout", len(batch))
    return {ETHER_OUTPUT: out} if out else {}
