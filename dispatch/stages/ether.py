"""Ethernet in and out: the link layer's share of the path (FreeBSD net/if_ethersubr.c).

``ether_input`` is the first stage a received frame sees and ``ether_output``
the last one a sent packet passes before the driver's transmit ring, so the
conventions every L2/L3 stage relies on are written down here, once.

MBUF CONVENTIONS (input)

* The NIC hands over one packet-header mbuf (+ cluster) per frame, m_data at
  the Ethernet header, m_pkthdr.len = frame length (no FCS). Chains (from LRO
  or from tests) are allowed: a stage that needs a header contiguous calls
  ``pool.pullup`` as FreeBSD does, and a failed pullup (which frees the chain)
  is a counted drop.
* ``W_CSUM_FLAGS`` (receive side) is set by the NIC when rxcsum is on:
  CSUM_L3_CALC | CSUM_L3_VALID for an IPv4 header it verified good
  (CSUM_L3_CALC alone: verified bad), CSUM_L4_CALC | CSUM_L4_VALID
  (= CSUM_PSEUDO_HDR | CSUM_DATA_VALID) with ``W_CSUM_DATA`` = 0xffff for a
  verified transport checksum. A stage skips software verification only when
  the flags say the NIC verified.
* ``W_HDRLENS`` = l2hlen (bits 0-7) | l3hlen (bits 8-23) | l4hlen (bits 24-31).
  ether_input writes l2hlen (14, or 18 with an 802.1Q tag) and clears the
  rest; ip_input / ip6_input write l3hlen (the offset of the transport header
  from the IP header, IPv6 extension headers included); transport input
  writes l4hlen.
* ether_input strips the Ethernet header (m_adj: m_data and m_len move in the
  first mbuf, m_pkthdr.len shrinks), so L3 stages find m_data at the IP
  header. ip_input trims link-layer padding beyond ip_len and leaves the IP
  header in place: transport input needs it for the pseudo-header, and finds
  its own header at m_data + l3hlen.
* 802.1Q: the tag's TCI goes in the low 16 bits of ``W_VTAG`` and M_VLANTAG
  is set (as a NIC with hardware VLAN stripping would leave it). Frames sent
  to a group address get M_BCAST (ff:ff:ff:ff:ff:ff) or M_MCAST.
* ``W_RCVIF`` is the receiving interface's index (the NIC's business).

MBUF CONVENTIONS (output)

* ip_output / ip6_output receive m_data at the IP header (see ip.py, ip6.py);
  they, and ip_forward, leave the chosen route in ``W_AUX`` as route id + 1
  (``RouteTable.routes[id]``; 0 means "not chosen": ether_output then looks
  the destination up itself, or with no table at all sends on interface 0).
* ether_output prepends the Ethernet header (pool.prepend: into the leading
  space the receive path left, or a new mbuf), destination MAC from the
  neighbour table for the route's next hop (gateway, or the destination
  itself), source MAC from the interface, an 802.1Q tag if the interface has
  a ``vlan``; then it sets ``W_AUX`` = the outgoing interface's index, which
  is what "if_transmit" (the driver's transmit ring) reads, and l2hlen.
  Transmit checksum requests stay in ``W_CSUM_FLAGS`` (CSUM_IP, CSUM_TCP, ...)
  only for what the interface's ``hwassist`` says the NIC does.
* Without a neighbour table (``ctx.neighbors is None``) the link is taken as
  point to point with the traffic generator: every frame goes to
  ``ctx.extra.get("peer_mac", frames.DEFAULT_SRC_MAC)``.
"""

from __future__ import annotations

import struct

import numpy as np

from dispatch.mbuf import layout as L
from dispatch.packet.ether import (
    ETHER_HDR_LEN,
    ETHER_VLAN_ENCAP_LEN,
    ETHERTYPE_ARP,
    ETHERTYPE_IP,
    ETHERTYPE_IPV6,
    ETHERTYPE_QINQ,
    ETHERTYPE_VLAN,
)
from dispatch.packet.frames import DEFAULT_SRC_MAC
from dispatch.stages import kernels as _k
from dispatch.stages.base import (
    ETHER_INPUT,
    ETHER_OUTPUT,
    IF_TRANSMIT,
    IP6_INPUT,
    IP_INPUT,
    Batch,
    Ctx,
    Routed,
    as_list,
    declare_reasons,
    stage,
)
from dispatch.stages.route import interfaces

__all__ = ["ETHER_IN_DROPS", "ETHER_OUT_DROPS", "ether_input", "ether_output"]

ETHER_IN_DROPS = declare_reasons(
    ETHER_INPUT,
    ("tooshort", "if_ierrors", "frames shorter than an Ethernet header"),
    ("toolong", "if_ierrors", "frames longer than the interface MTU allows"),
    ("arp", "if_noproto", "ARP frames (the neighbour table is static)"),
    ("noproto", "if_noproto", "frames of an unknown or unsupported protocol"),
)
ETHER_OUT_DROPS = declare_reasons(
    ETHER_OUTPUT,
    ("noneighbor", "arps_dropped", "packets dropped for want of a neighbour (ARP/NDP) entry"),
    ("nobufs", "if_oqdrops", "packets dropped for want of an mbuf for the link header"),
    ("badpacket", "if_oerrors", "packets with no IP header to send"),
)

_ETH = struct.Struct("!6s6sH")
_ETH_IN = struct.Struct("!B11xH")  # first byte of the destination, ethertype
_ETH_VLAN = struct.Struct("!6s6sHHH")
_MAX_OVERHEAD = ETHER_HDR_LEN + ETHER_VLAN_ENCAP_LEN
_BCAST = b"\xff" * 6


def _max_frame(ctx: Ctx) -> int:
    """The longest frame any interface accepts (cached: one dict probe per batch)."""
    extra = ctx.extra
    cached = extra.get("_ether_maxframe")
    if cached is None or cached[0] is not extra.get("interfaces") or cached[1] is not ctx.config:
        ifs = interfaces(ctx)
        cached = (extra.get("interfaces"), ctx.config,
                  max((i.mtu for i in ifs), default=1500) + _MAX_OVERHEAD)
        extra["_ether_maxframe"] = cached
    return cached[2]


# The compiled path (kernels.ether_input): a batch whose every frame is untagged
# unicast IPv4/IPv6 in a cluster, at least a header long and not over the MTU, in
# one pass; any other batch goes through `_ether_input_slow`. (It replaced two
# whole-batch numpy paths that paid only from 48 packets on: each numpy call costs
# ~1-2 us here.)
_FAST_MIN = 1


def _ether_input_fast(ctx: Ctx, batch: Batch) -> Routed | None:
    """The compiled path; None (nothing changed) for any batch it does not take.
    Exactly what `_ether_input_slow` does with such a batch."""
    pool = ctx.pool
    n = len(batch)
    sc = ctx.extra.get("_ether_scratch")
    if sc is None or len(sc[0]) < n:
        sc = ctx.extra["_ether_scratch"] = (np.empty(max(n, 64), np.uint8), np.zeros(2, np.int64))
    route, tally = sc
    arr = np.asarray(batch, dtype=np.intp)
    if _k.ether_input(pool.headers, pool.segment, pool.cluster_base, arr, _max_frame(ctx),
                      route, tally) < 0:
        return None
    out: Routed
    if tally[1] == 0:
        out = {IP_INPUT: batch}
    else:
        r = route[:n]
        out = {}
        if tally[1] < n:
            out[IP_INPUT] = arr[r == 4].tolist()
        out[IP6_INPUT] = arr[r == 6].tolist()
    stats = ctx.stats
    stats.add("ether.if_ipackets", n)
    stats.add("ether.if_ibytes", int(tally[0]))
    return out


@stage(ETHER_INPUT, arrays=True)
def ether_input(ctx: Ctx, batch: Batch) -> Routed:
    """Check, strip and demultiplex Ethernet frames to ip_input / ip6_input.

    The common case (every frame of the batch untagged unicast IPv4/IPv6 in a
    cluster, at least a header long, not over the MTU) goes through the
    compiled `_ether_input_fast`; any other batch through `_ether_input_slow`,
    the per-packet reference, with exactly the same results.
    """
    if len(batch) >= _FAST_MIN:
        r = _ether_input_fast(ctx, batch)
        if r is not None:
            return r
    return _ether_input_slow(ctx, as_list(batch))


def _ether_input_slow(ctx: Ctx, batch: list[int]) -> Routed:
    """The per-packet ether_input: the reference the fast path is held to."""
    pool = ctx.pool
    w = pool.w
    buf = pool.buf
    cl_base = pool.cl_base
    mbase = pool.mbuf_off
    maxframe = _max_frame(ctx)
    stats = ctx.stats
    v4: list[int] = []
    v6: list[int] = []
    nbytes = 0
    unpack = _ETH_IN.unpack_from
    drop = ctx.drop
    D = ETHER_IN_DROPS
    for m in batch:
        b = m << 6
        plen = w[b + 8]  # W_PKTLEN
        nbytes += plen
        ln = w[b + 3]  # W_LEN
        if ln < ETHER_HDR_LEN:
            if plen < ETHER_HDR_LEN:
                drop(m, D.tooshort)
                continue
            m = pool.pullup(m, ETHER_HDR_LEN)
            if not m:
                stats.drop(D.tooshort)
                continue
            b = m << 6
            ln = w[b + 3]
        e = w[b + 7]  # W_EXT
        d = w[b + 2]  # W_DATA
        o = (cl_base[e] if e else mbase + (m << 8)) + d
        d0, et = unpack(buf, o)
        hl = ETHER_HDR_LEN
        if et == ETHERTYPE_VLAN or et == ETHERTYPE_QINQ:
            hl = ETHER_HDR_LEN + ETHER_VLAN_ENCAP_LEN
            if plen < hl:
                drop(m, D.tooshort)
                continue
            if ln < hl:
                m = pool.pullup(m, hl)
                if not m:
                    stats.drop(D.tooshort)
                    continue
                b = m << 6
                ln = w[b + 3]
                d = w[b + 2]
                e = w[b + 7]
                o = (cl_base[e] if e else mbase + (m << 8)) + d
            w[b + L.W_VTAG] = (w[b + L.W_VTAG] & 0xFFFF0000) | (buf[o + 14] << 8) | buf[o + 15]
            w[b + L.W_FLAGS] |= L.M_VLANTAG
            et = (buf[o + 16] << 8) | buf[o + 17]
        if plen > maxframe and not w[b + L.W_CSUM_FLAGS] & L.CSUM_COALESCED:
            drop(m, D.toolong)
            continue
        if et == ETHERTYPE_IP:
            v4.append(m)
        elif et == ETHERTYPE_IPV6:
            v6.append(m)
        elif et == ETHERTYPE_ARP:
            drop(m, D.arp)
            continue
        else:
            drop(m, D.noproto)
            continue
        if d0 & 1:  # a group address
            w[b + 5] |= L.M_BCAST if buf[o : o + 6] == _BCAST else L.M_MCAST
        # m_adj(m, hl), in the first mbuf (the header is contiguous there)
        w[b + 2] = d + hl
        w[b + 3] = ln - hl
        w[b + 8] = plen - hl
        w[b + 14] = hl  # W_HDRLENS: l2hlen, l3hlen and l4hlen cleared
    stats.add("ether.if_ipackets", len(batch))
    stats.add("ether.if_ibytes", nbytes)
    out: Routed = {}
    if v4:
        out[IP_INPUT] = v4
    if v6:
        out[IP6_INPUT] = v6
    return out


def _peer_mac(ctx: Ctx) -> bytes:
    return ctx.extra.get("peer_mac", DEFAULT_SRC_MAC)


@stage(ETHER_OUTPUT)
def ether_output(ctx: Ctx, batch: list[int]) -> Routed:
    """Resolve the next hop's MAC, prepend the Ethernet header, hand to if_transmit."""
    pool = ctx.pool
    w = pool.w
    buf = pool.buf
    routes = ctx.routes
    neighbors = ctx.neighbors
    ifs = interfaces(ctx)
    peer = _peer_mac(ctx) if neighbors is None else None
    out: list[int] = []
    nbytes = 0
    for m in batch:
        b = m << 6
        if w[b + L.W_LEN] < 20:
            m = pool.pullup(m, 20)
            if not m:
                ctx.stats.drop(ETHER_OUT_DROPS.badpacket)
                continue
            b = m << 6
        o = pool.data_offset(m)
        ver = buf[o] >> 4
        if ver == 4:
            et = ETHERTYPE_IP
            dst = bytes(buf[o + 16 : o + 20])
        elif ver == 6 and w[b + L.W_LEN] >= 40:
            et = ETHERTYPE_IPV6
            dst = bytes(buf[o + 24 : o + 40])
        else:
            ctx.drop(m, ETHER_OUT_DROPS.badpacket)
            continue
        aux = w[b + L.W_AUX]
        r = None
        if aux and routes is not None:
            r = routes.routes[aux - 1]
        elif routes is not None:
            r = routes.lookup(dst)
        if r is not None:
            ifx = r.ifindex
            nh = r.gateway if r.gateway is not None else dst
        else:
            ifx = 0
            nh = dst
        iface = ifs[ifx] if ifx < len(ifs) else None
        if iface is None:
            ctx.drop(m, ETHER_OUT_DROPS.noneighbor)
            continue
        dmac = peer if peer is not None else neighbors.lookup(nh)
        if dmac is None:
            ctx.drop(m, ETHER_OUT_DROPS.noneighbor)
            continue
        vlan = iface.vlan
        hl = ETHER_HDR_LEN if vlan is None else ETHER_HDR_LEN + ETHER_VLAN_ENCAP_LEN
        m = pool.prepend(m, hl)
        if not m:
            ctx.stats.drop(ETHER_OUT_DROPS.nobufs)
            continue
        b = m << 6
        o = pool.data_offset(m)
        if vlan is None:
            _ETH.pack_into(buf, o, dmac, iface.mac, et)
        else:
            _ETH_VLAN.pack_into(buf, o, dmac, iface.mac, ETHERTYPE_VLAN, vlan & 0xFFF, et)
        w[b + L.W_FLAGS] &= ~L.M_VLANTAG
        w[b + L.W_AUX] = ifx
        w[b + L.W_HDRLENS] = (w[b + L.W_HDRLENS] & ~0xFF) | hl
        nbytes += w[b + L.W_PKTLEN]
        out.append(m)
    ctx.stats.add("ether.if_opackets", len(out))
    ctx.stats.add("ether.if_obytes", nbytes)
    return {IF_TRANSMIT: out} if out else {}
