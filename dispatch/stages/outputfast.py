"""The fused fast path of the UDP/IPv4 output path: udp -> ip -> ether in one pass.

Why it exists: an rr answer or a tx datagram goes through udp_output,
ip_output and ether_output one after the other in the sending thread, each
a Python loop that looks the packet's header words up again, prepends into
the same leading space again and packs its own header; with the Runner's
bookkeeping between them that was most of what a user thread spent per
answer (~200 us of it after a wakeup on this VM, where every line of code
run after a sleep runs cold). When all three stages are local to the runner
(always: the output path runs in the sending thread), `udp4_output_fused`
makes every stage's check on each packet first, then writes the 42 bytes of
Ethernet, IPv4 and UDP header with one pack and sets the header words once.

It takes only the common batch: no routing table and no VLAN on interface 0
(the rx, tx and rr workloads' host), IPv4 connected sockets, each packet one
writable mbuf (its own storage, or a cluster it alone holds) with room for
the headers in front of its payload (what `sosend_copyin` makes for a
datagram of up to a cluster), within the MTU, and the IP and UDP checksums
offloaded (txcsum, and the interface's hwassist has them). Anything else
returns None having changed nothing, and the Runner runs the stages one by
one with the same results, which tests/test_stages_outputfast.py holds it to
on random mixed batches: routed lists, drops, counters, socket counters,
every header word and byte.
"""

from __future__ import annotations

import struct

from dispatch.mbuf import layout as L
from dispatch.packet.checksum import ones_sum
from dispatch.stages.base import (
    ETHER_OUTPUT,
    IF_TRANSMIT,
    IP_OUTPUT,
    UDP_OUTPUT,
    Batch,
    Ctx,
    Routed,
    fusion,
)
from dispatch.stages.ether import _peer_mac
from dispatch.stages.ip import _next_id, iface_v4
from dispatch.stages.route import interfaces
from dispatch.stages.socktab import AF_INET6, P_FPORT, Q_SND_REMOVED, Q_SNDBYTE, Q_SNDPACK
from dispatch.stages.tcp_output import endpoints, offload
from dispatch.stages.udp import udp_pseudo_sum

__all__ = ["udp4_output_fused"]

#: Ethernet + IPv4 (no options) + UDP, as the three stages write them
_HDRS = struct.Struct("!6s6sH BBHHHBBH4s4s HHHH")
_HL = 14 + 20 + 8
_NEED = L.CSUM_IP | L.CSUM_IP_UDP  # the interface must do both checksums
_FLAGS_OUT = L.CSUM_UDP | L.CSUM_IP  # what ip_output leaves asked of the NIC
_HDRLENS = 14 | (20 << 8) | (8 << 24)
_ANY4 = b"\x00\x00\x00\x00"
_W_NEXT, _W_DATA, _W_LEN, _W_FLAGS = 0, L.W_DATA, L.W_LEN, L.W_FLAGS
_W_PKTLEN, _W_SOCKID, _W_EXT = L.W_PKTLEN, L.W_SOCKID, L.W_EXT
_W_CSUM_FLAGS, _W_CSUM_DATA, _W_HDRLENS, _W_AUX = (L.W_CSUM_FLAGS, L.W_CSUM_DATA,
                                                    L.W_HDRLENS, L.W_AUX)
_ROOM = L.M_PKTDAT_OFF + _HL  # m_data at or beyond this: the headers fit in front


@fusion(UDP_OUTPUT, IP_OUTPUT, ETHER_OUTPUT)
def udp4_output_fused(ctx: Ctx, batch: Batch, entry: str) -> Routed | None:
    """udp_output + ip_output + ether_output over a whole batch, or None (nothing
    changed) when the batch is not the common case (see the module's docstring)."""
    if entry != UDP_OUTPUT or ctx.routes is not None:
        return None
    ifs = interfaces(ctx)
    iface = ifs[0]
    if iface.vlan is not None or iface.hwassist & _NEED != _NEED or \
            not offload(ctx, "txcsum"):
        return None
    if ctx.neighbors is None:
        peer: bytes | None = _peer_mac(ctx)
    else:
        peer = None
    pool = ctx.pool
    w = pool.w
    tab = ctx.sockets
    tw = tab.w
    cl_meta = pool.cl_meta
    mtu = iface.mtu
    # every check of the three stages first, nothing written
    plan: list[tuple[int, int, tuple[int, bytes, bytes, int, int], bytes]] = []
    for m in batch:
        b = m << 6
        sid = w[b + _W_SOCKID] - 1
        f = w[b + _W_FLAGS]
        if sid < 0 or not tw[(sid << 7) + P_FPORT] or w[b + _W_NEXT] or f & L.M_RDONLY \
                or not f & L.M_PKTHDR:
            return None
        plen = w[b + _W_PKTLEN]
        if w[b + _W_LEN] != plen or plen + 28 > mtu:
            return None
        if f & L.M_EXT:  # a cluster of its own (M_WRITABLE), the headers' room in front
            if w[b + _W_DATA] < _HL or cl_meta[w[b + _W_EXT] << 1] != 1:
                return None
        elif w[b + _W_DATA] < _ROOM:
            return None
        ep = endpoints(ctx, tab, sid)
        if ep[0] == AF_INET6:
            return None
        dmac = peer if peer is not None else ctx.neighbors.lookup(ep[2])
        if dmac is None:
            return None
        plan.append((m, sid, ep, dmac))
    buf = pool.buf
    tq = tab.q
    ident = _next_id(ctx, len(plan))
    src_any: bytes | None = None
    smac = iface.mac
    base = pool.mbuf_off
    cl_base = pool.cl_base
    nbytes = 0
    for m, sid, (_fam, la, fa, lp, fp), dmac in plan:
        b = m << 6
        plen = w[b + _W_PKTLEN]
        ulen = plen + 8
        src = la
        if la == _ANY4:  # as ip_output: the interface's first IPv4 address
            if src_any is None:
                src_any = iface_v4(iface) or _ANY4
            src = src_any
        d = w[b + _W_DATA] - _HL
        e = w[b + _W_EXT] if w[b + _W_FLAGS] & L.M_EXT else 0
        _HDRS.pack_into(buf, (cl_base[e] if e else base + (m << 8)) + d, dmac, smac, 0x0800,
                        0x45, 0, 20 + ulen, ident, 0, 64, 17, 0, src, fa,
                        lp, fp, ulen, ones_sum(b"", udp_pseudo_sum(la, fa, ulen)))
        ident = (ident + 1) & 0xFFFF
        w[b + _W_DATA] = d
        w[b + _W_LEN] = plen + _HL
        w[b + _W_PKTLEN] = plen + _HL
        w[b + _W_CSUM_FLAGS] = _FLAGS_OUT
        w[b + _W_CSUM_DATA] = 6
        w[b + _W_HDRLENS] = _HDRLENS
        w[b + _W_AUX] = 0
        w[b + _W_FLAGS] &= ~L.M_VLANTAG
        nbytes += plen + _HL
        qb = sid << 6
        tq[qb + Q_SND_REMOVED] += plen
        tq[qb + Q_SNDPACK] += 1
        tq[qb + Q_SNDBYTE] += plen
    n = len(plan)
    st = ctx.stats.counters
    st["udp.udps_opackets"] += n
    st["ip.ips_localout"] += n
    st["ether.if_opackets"] += n
    st["ether.if_obytes"] += nbytes
    return {IF_TRANSMIT: [p[0] for p in plan]}

