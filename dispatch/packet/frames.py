"""Complete Ethernet frames in one call, and a one-call summary of a frame.

The traffic generator and the tests want whole frames (Ethernet, optional
VLAN tags, IPv4 or IPv6 chosen by the address family, TCP/UDP/ICMP with every
length and checksum right, or deliberately wrong); tools want to know where
each layer of a captured frame starts.  Both are compositions of the layer
modules, kept here so that those stay small.  Frames carry no FCS.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from dispatch.packet.errors import BytesLike, PacketError
from dispatch.packet.ether import (
    ETHER_MIN_LEN_NOFCS,
    ETHERTYPE_IP,
    ETHERTYPE_IPV6,
    build_ether,
    parse_ether,
)
from dispatch.packet.icmp import ICMP_MINLEN, build_icmp6_echo, build_icmp_echo
from dispatch.packet.ipv4 import (
    IPDEFTTL,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    build_ipv4,
    ip_bytes,
    parse_ipv4,
)
from dispatch.packet.ipv6 import ExtHeader, Routing, build_ipv6, parse_ipv6
from dispatch.packet.tcp import TH_ACK, build_tcp, parse_tcp
from dispatch.packet.udp import UDP_HDR_LEN, build_udp, parse_udp

__all__ = [
    "DEFAULT_SRC_MAC",
    "DEFAULT_DST_MAC",
    "FrameInfo",
    "build_ip_frame",
    "build_udp_frame",
    "build_tcp_frame",
    "build_icmp_echo_frame",
    "frame_summary",
    "pad_to_min",
]

DEFAULT_SRC_MAC = b"\x02\x00\x00\x00\x00\x01"  # locally administered
DEFAULT_DST_MAC = b"\x02\x00\x00\x00\x00\x02"

_Addr = BytesLike | str | ipaddress.IPv4Address | ipaddress.IPv6Address
_Mac = BytesLike | str


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """Where the layers of a frame are, and their key fields.

    Offsets are from the start of the frame.  For a non-IP frame ``ip_version``,
    ``src``, ``dst``, ``proto`` and ``l4_offset`` are None and the payload is
    everything after the Ethernet header.  For a non-first fragment, or a
    protocol other than TCP/UDP/ICMP/ICMPv6, the payload starts at
    ``l4_offset`` and ports are None.  ``payload_length`` stops at the end of
    the IP packet (Ethernet padding excluded) or, for UDP, at its length field.
    """

    vlan: int | None
    ethertype: int
    ip_version: int | None
    src: bytes | None
    dst: bytes | None
    proto: int | None
    src_port: int | None
    dst_port: int | None
    l3_offset: int
    l4_offset: int | None
    payload_offset: int
    payload_length: int
    is_fragment: bool = False
    vlans: tuple[int, ...] = ()


def pad_to_min(frame: BytesLike, min_len: int = ETHER_MIN_LEN_NOFCS) -> bytes:
    """Zero-pad a frame to the 60-byte Ethernet minimum (64 with the FCS the wire adds)."""
    f = bytes(frame)
    if len(f) < min_len:
        f += b"\0" * (min_len - len(f))
    return f


def _pseudo_dst(dst: bytes, ext_headers: Sequence[ExtHeader]) -> bytes:
    """RFC 8200 s. 8.1: with a routing header, the pseudo-header uses the final destination."""
    for h in ext_headers:
        if isinstance(h, Routing) and h.addresses and h.segments_left:
            return ip_bytes(h.addresses[-1])
    return dst


def build_ip_frame(
    *,
    src_ip: _Addr,
    dst_ip: _Addr,
    proto: int,
    l4: BytesLike,
    src_mac: _Mac = DEFAULT_SRC_MAC,
    dst_mac: _Mac = DEFAULT_DST_MAC,
    vlan: int | Sequence[int] | None = None,
    pcp: int = 0,
    ttl: int = IPDEFTTL,
    tos: int = 0,
    ident: int = 0,
    df: bool = False,
    flow_label: int = 0,
    ext_headers: Sequence[ExtHeader] = (),
    ip_checksum: int | None = None,
    pad: bool = False,
) -> bytes:
    """Wrap an already built transport message ``l4`` in IPv4 or IPv6 (by the address family,
    ``ttl``/``tos`` becoming hop limit/traffic class) and Ethernet.

    IPv4-only arguments (``ident``, ``df``, ``ip_checksum``) and IPv6-only ones
    (``flow_label``, ``ext_headers``) raise :class:`ValueError` for the other family.
    """
    s, d = ip_bytes(src_ip), ip_bytes(dst_ip)
    if len(s) != len(d):
        raise ValueError("src_ip and dst_ip are of different address families")
    if len(s) == 4:
        if flow_label or ext_headers:
            raise ValueError("flow_label and ext_headers are IPv6 only")
        ip = build_ipv4(
            src=s, dst=d, proto=proto, payload=l4, ttl=ttl, tos=tos, ident=ident, df=df,
            checksum=ip_checksum,
        )  # fmt: skip
        etype = ETHERTYPE_IP
    else:
        if ident or df or ip_checksum is not None:
            raise ValueError("ident, df and ip_checksum are IPv4 only")
        ip = build_ipv6(
            src=s, dst=d, next_header=proto, payload=l4, hop_limit=ttl, traffic_class=tos,
            flow_label=flow_label, ext_headers=ext_headers,
        )  # fmt: skip
        etype = ETHERTYPE_IPV6
    frame = build_ether(dst=dst_mac, src=src_mac, ethertype=etype, payload=ip, vlan=vlan, pcp=pcp)
    return pad_to_min(frame) if pad else frame


def build_udp_frame(
    *,
    src_ip: _Addr,
    dst_ip: _Addr,
    src_port: int,
    dst_port: int,
    payload: BytesLike = b"",
    udp_checksum: int | None = None,
    src_mac: _Mac = DEFAULT_SRC_MAC,
    dst_mac: _Mac = DEFAULT_DST_MAC,
    vlan: int | Sequence[int] | None = None,
    pcp: int = 0,
    ttl: int = IPDEFTTL,
    tos: int = 0,
    ident: int = 0,
    df: bool = False,
    flow_label: int = 0,
    ext_headers: Sequence[ExtHeader] = (),
    ip_checksum: int | None = None,
    pad: bool = False,
) -> bytes:
    """Ethernet / IPv4-or-IPv6 / UDP frame with correct lengths and checksums
    (``udp_checksum``/``ip_checksum`` override; ``pad`` pads to 60 bytes)."""
    s, d = ip_bytes(src_ip), ip_bytes(dst_ip)
    l4 = build_udp(
        src_port=src_port, dst_port=dst_port, payload=payload, src_ip=s,
        dst_ip=_pseudo_dst(d, ext_headers), checksum=udp_checksum,
    )  # fmt: skip
    return build_ip_frame(
        src_ip=s, dst_ip=d, proto=IPPROTO_UDP, l4=l4, src_mac=src_mac, dst_mac=dst_mac,
        vlan=vlan, pcp=pcp, ttl=ttl, tos=tos, ident=ident, df=df, flow_label=flow_label,
        ext_headers=ext_headers, ip_checksum=ip_checksum, pad=pad,
    )  # fmt: skip


def build_tcp_frame(
    *,
    src_ip: _Addr,
    dst_ip: _Addr,
    src_port: int,
    dst_port: int,
    seq: int = 0,
    ack: int = 0,
    flags: int = TH_ACK,
    window: int = 65535,
    options: BytesLike = b"",
    payload: BytesLike = b"",
    urgent: int = 0,
    tcp_checksum: int | None = None,
    src_mac: _Mac = DEFAULT_SRC_MAC,
    dst_mac: _Mac = DEFAULT_DST_MAC,
    vlan: int | Sequence[int] | None = None,
    pcp: int = 0,
    ttl: int = IPDEFTTL,
    tos: int = 0,
    ident: int = 0,
    df: bool = False,
    flow_label: int = 0,
    ext_headers: Sequence[ExtHeader] = (),
    ip_checksum: int | None = None,
    pad: bool = False,
) -> bytes:
    """Ethernet / IPv4-or-IPv6 / TCP frame with correct lengths and checksums
    (``options`` are padded to 4 bytes; see ``tcp.build_tcp_options``)."""
    s, d = ip_bytes(src_ip), ip_bytes(dst_ip)
    l4 = build_tcp(
        src_port=src_port, dst_port=dst_port, seq=seq, ack=ack, flags=flags, window=window,
        payload=payload, options=options, urgent=urgent, src_ip=s,
        dst_ip=_pseudo_dst(d, ext_headers), checksum=tcp_checksum,
    )  # fmt: skip
    return build_ip_frame(
        src_ip=s, dst_ip=d, proto=IPPROTO_TCP, l4=l4, src_mac=src_mac, dst_mac=dst_mac,
        vlan=vlan, pcp=pcp, ttl=ttl, tos=tos, ident=ident, df=df, flow_label=flow_label,
        ext_headers=ext_headers, ip_checksum=ip_checksum, pad=pad,
    )  # fmt: skip


def build_icmp_echo_frame(
    *,
    src_ip: _Addr,
    dst_ip: _Addr,
    ident: int,
    seq: int,
    payload: BytesLike = b"",
    reply: bool = False,
    icmp_checksum: int | None = None,
    src_mac: _Mac = DEFAULT_SRC_MAC,
    dst_mac: _Mac = DEFAULT_DST_MAC,
    vlan: int | Sequence[int] | None = None,
    pcp: int = 0,
    ttl: int = IPDEFTTL,
    tos: int = 0,
    ip_ident: int = 0,
    df: bool = False,
    flow_label: int = 0,
    ext_headers: Sequence[ExtHeader] = (),
    ip_checksum: int | None = None,
    pad: bool = False,
) -> bytes:
    """Ethernet / IPv4 / ICMP echo, or Ethernet / IPv6 / ICMPv6 echo, request or reply.
    ``ident`` is the echo identifier; the IPv4 header's is ``ip_ident``."""
    s, d = ip_bytes(src_ip), ip_bytes(dst_ip)
    if len(s) == 4:
        proto = IPPROTO_ICMP
        l4 = build_icmp_echo(ident=ident, seq=seq, payload=payload, reply=reply,
                             checksum=icmp_checksum)  # fmt: skip
    else:
        proto = IPPROTO_ICMPV6
        l4 = build_icmp6_echo(
            ident=ident, seq=seq, payload=payload, reply=reply, src_ip=s,
            dst_ip=_pseudo_dst(d, ext_headers), checksum=icmp_checksum,
        )  # fmt: skip
    return build_ip_frame(
        src_ip=s, dst_ip=d, proto=proto, l4=l4, src_mac=src_mac, dst_mac=dst_mac,
        vlan=vlan, pcp=pcp, ttl=ttl, tos=tos, ident=ip_ident, df=df, flow_label=flow_label,
        ext_headers=ext_headers, ip_checksum=ip_checksum, pad=pad,
    )  # fmt: skip


def frame_summary(frame: BytesLike) -> FrameInfo:
    """Parse a whole frame through the layer parsers (which raise :class:`PacketError`).

    Checksums are not verified.  TCP, UDP, ICMP and ICMPv6 headers are parsed
    (first fragments included); other protocols are reported with their offsets only.
    """
    buf = memoryview(frame)
    eh = parse_ether(buf)
    l3 = eh.hdr_len
    base = dict(vlan=eh.vlan, ethertype=eh.ethertype, l3_offset=l3, vlans=eh.vlans)
    if eh.ethertype == ETHERTYPE_IP:
        ip4 = parse_ipv4(buf, l3)
        version, src, dst, proto = 4, ip4.src, ip4.dst, ip4.proto
        l4 = l3 + ip4.hdr_len
        end = l3 + ip4.total_length
        frag = ip4.is_fragment
        first = ip4.frag_offset == 0
    elif eh.ethertype == ETHERTYPE_IPV6:
        ip6 = parse_ipv6(buf, l3)
        version, src, dst, proto = 6, ip6.src, ip6.dst, ip6.upper_proto
        l4 = ip6.l4_offset
        end = ip6.end
        fr = ip6.fragment
        frag = fr is not None
        first = fr is None or fr.offset == 0
    else:
        return FrameInfo(
            ip_version=None, src=None, dst=None, proto=None, src_port=None, dst_port=None,
            l4_offset=None, payload_offset=l3, payload_length=len(buf) - l3, **base,
        )  # fmt: skip
    seg = buf[:end]
    sport = dport = None
    poff = l4
    plen = end - l4
    if first:
        if proto == IPPROTO_TCP:
            th = parse_tcp(seg, l4)
            sport, dport = th.src_port, th.dst_port
            poff = l4 + th.hdr_len
            plen = end - poff
        elif proto == IPPROTO_UDP:
            uh = parse_udp(seg, l4)
            sport, dport = uh.src_port, uh.dst_port
            poff = l4 + UDP_HDR_LEN
            plen = uh.length - UDP_HDR_LEN
        elif proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            if end - l4 < ICMP_MINLEN:
                raise PacketError("too_short", f"icmp: {end - l4} bytes")
            poff = l4 + ICMP_MINLEN
            plen = end - poff
    return FrameInfo(
        ip_version=version, src=src, dst=dst, proto=proto, src_port=sport, dst_port=dport,
        l4_offset=l4, payload_offset=poff, payload_length=plen, is_fragment=frag, **base,
    )  # fmt: skip
