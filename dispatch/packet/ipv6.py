"""IPv6 headers and extension-header chains (RFC 8200, FreeBSD ``netinet/ip6.h``).

Unlike IPv4, an IPv6 packet does not say where its transport header is: the
fixed header's Next Header may name a hop-by-hop, routing, destination-options
or fragment header, each naming the next, until an upper-layer protocol.
:func:`parse_ipv6` walks that chain and returns the upper-layer protocol and
the transport header's offset; the builders lay such a chain out from a list
of :class:`HopByHop`, :class:`Routing`, :class:`DestOpts` and
:class:`Fragment` values.  Fragment offsets are in bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from dispatch.packet.errors import BytesLike, PacketError
from dispatch.packet.ipv4 import (
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_NONE,
    IPPROTO_ROUTING,
    ip_bytes,
)

__all__ = [
    "IPPROTO_HOPOPTS",
    "IPPROTO_ROUTING",
    "IPPROTO_FRAGMENT",
    "IPPROTO_DSTOPTS",
    "IPPROTO_NONE",
    "IPV6_VERSION",
    "IPV6_HDR_LEN",
    "IPV6_FRAG_HDR_LEN",
    "IPV6_DEFHLIM",
    "IP6F_OFF_MASK",
    "IP6F_MORE_FRAG",
    "IP6OPT_PAD1",
    "IP6OPT_PADN",
    "IPV6_HDR",
    "IPV6_EXT_HDR",
    "IPV6_FRAG_HDR",
    "EXT_HEADER_PROTOS",
    "HopByHop",
    "DestOpts",
    "Routing",
    "Fragment",
    "ExtHeader",
    "ExtHeaderInfo",
    "FragmentInfo",
    "IPv6Header",
    "pad_ext_options",
    "build_ext_headers",
    "build_ipv6",
    "parse_ipv6",
]

IPV6_VERSION = 6
IPV6_HDR_LEN = 40
IPV6_FRAG_HDR_LEN = 8
IPV6_DEFHLIM = 64
IP6F_OFF_MASK = 0xFFF8  # in the 16-bit offlg word: offset in bytes, already a multiple of 8
IP6F_MORE_FRAG = 0x0001
IP6OPT_PAD1 = 0
IP6OPT_PADN = 1

#: (ver_tc_flow 32 bits, payload_len, next_header, hop_limit, src16, dst16)
IPV6_HDR = struct.Struct("!IHBB16s16s")
#: The first two bytes of hop-by-hop, routing and destination-options headers:
#: (next_header, hdr_ext_len in 8-octet units not counting the first 8).
IPV6_EXT_HDR = struct.Struct("!BB")
#: (next_header, reserved, offlg, ident); offlg = offset_bytes | more.
IPV6_FRAG_HDR = struct.Struct("!BBHI")

#: Extension headers :func:`parse_ipv6` walks; anything else is the upper layer.
EXT_HEADER_PROTOS = frozenset({IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT})


@dataclass(frozen=True, slots=True)
class HopByHop:
    """A hop-by-hop options header; ``options`` are TLVs, padded with Pad1/PadN by the builder."""

    options: bytes = b""
    proto = IPPROTO_HOPOPTS


@dataclass(frozen=True, slots=True)
class DestOpts:
    """A destination options header; ``options`` are TLVs, padded with Pad1/PadN by the builder."""

    options: bytes = b""
    proto = IPPROTO_DSTOPTS


@dataclass(frozen=True, slots=True)
class Routing:
    """A routing header.

    ``data`` is everything after the 4 fixed bytes (next header, length, type,
    segments left), zero-padded by the builder to a multiple of 8 in total.
    With ``addresses`` (and empty ``data``) it is laid out as type 0: a 4-byte
    reserved field, then the 16-byte addresses.
    """

    routing_type: int = 0
    segments_left: int = 0
    data: bytes = b""
    addresses: tuple[bytes | str, ...] = ()
    proto = IPPROTO_ROUTING


@dataclass(frozen=True, slots=True)
class Fragment:
    """A fragment header; ``offset`` in bytes (multiple of 8), ``more`` = M flag."""

    offset: int = 0
    more: bool = False
    ident: int = 0
    proto = IPPROTO_FRAGMENT


ExtHeader = HopByHop | DestOpts | Routing | Fragment


@dataclass(frozen=True, slots=True)
class ExtHeaderInfo:
    """One extension header found by :func:`parse_ipv6`: its protocol number, absolute
    offset in the buffer and length in bytes."""

    proto: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class FragmentInfo:
    """The fragment header of a packet: ``offset`` in bytes, ``more`` (M flag), ``ident``,
    and ``hdr_offset``, the fragment header's absolute offset in the buffer."""

    offset: int
    more: bool
    ident: int
    hdr_offset: int


@dataclass(frozen=True, slots=True)
class IPv6Header:
    """A parsed IPv6 header and its extension-header chain.

    ``next_header`` is the fixed header's field; ``upper_proto`` the protocol
    after the last extension header (``IPPROTO_NONE`` possible); ``l4_offset``
    the absolute offset in the buffer where that protocol's header starts;
    ``end`` the absolute offset just past the payload (40 + payload_length
    after the header).  For a non-first fragment (``fragment.offset != 0``)
    the bytes at ``l4_offset`` are fragment data, not a transport header.
    """

    version: int
    traffic_class: int
    flow_label: int
    payload_length: int
    next_header: int
    hop_limit: int
    src: bytes
    dst: bytes
    upper_proto: int
    l4_offset: int
    end: int
    ext_headers: tuple[ExtHeaderInfo, ...] = ()
    fragment: FragmentInfo | None = None

    @property
    def hdr_len(self) -> int:
        """Bytes from the start of the IPv6 header to the upper-layer header."""
        return self.l4_offset - (self.end - IPV6_HDR_LEN - self.payload_length)

    @property
    def l4_length(self) -> int:
        """Length of the upper-layer data (what the pseudo-header's length counts)."""
        return self.end - self.l4_offset


def pad_ext_options(options: BytesLike) -> bytes:
    """Pad hop-by-hop/destination option TLVs with Pad1 or PadN so that the header
    (2 fixed bytes + options) is a multiple of 8 bytes long (at least 8)."""
    opts = bytes(options)
    need = (-(2 + len(opts))) % 8
    if need == 1:
        opts += bytes([IP6OPT_PAD1])
    elif need > 1:
        opts += bytes([IP6OPT_PADN, need - 2]) + b"\0" * (need - 2)
    return opts


def _ext_body(h: ExtHeader) -> bytes:
    """The header after its next-header byte (length byte included where there is one)."""
    if isinstance(h, Fragment):
        if h.offset & 7 or not 0 <= h.offset <= 0xFFF8:
            raise ValueError(f"fragment offset {h.offset} must be a multiple of 8 in 0..65528")
        return struct.pack("!BHI", 0, h.offset | int(h.more), h.ident)
    if isinstance(h, Routing):
        data = h.data
        if h.addresses and not data:
            data = b"\0" * 4 + b"".join(ip_bytes(a) for a in h.addresses)
        body = bytes([h.routing_type, h.segments_left]) + data
        body += b"\0" * ((-(2 + len(body))) % 8)
    else:
        body = pad_ext_options(h.options)
    total = 2 + len(body)
    if total > 2048:
        raise ValueError("extension header longer than 2048 bytes")
    return bytes([(total >> 3) - 1]) + body


def build_ext_headers(ext_headers: Sequence[ExtHeader], upper_proto: int) -> tuple[int, bytes]:
    """Lay out a chain of extension headers ending in ``upper_proto``.

    Returns ``(first_next_header, chain_bytes)``: the value for the fixed
    header's Next Header field and the chain.  Order is kept as given (RFC 8200
    recommends hop-by-hop, dest opts, routing, fragment, dest opts).
    """
    chunks = []
    for i, h in enumerate(ext_headers):
        nxt = ext_headers[i + 1].proto if i + 1 < len(ext_headers) else upper_proto
        chunks.append(bytes([nxt]) + _ext_body(h))
    first = ext_headers[0].proto if ext_headers else upper_proto
    return first, b"".join(chunks)


def build_ipv6(
    *,
    src: BytesLike | str | ipaddress.IPv6Address,
    dst: BytesLike | str | ipaddress.IPv6Address,
    next_header: int,
    payload: BytesLike = b"",
    hop_limit: int = IPV6_DEFHLIM,
    traffic_class: int = 0,
    flow_label: int = 0,
    ext_headers: Sequence[ExtHeader] = (),
    payload_length: int | None = None,
    version: int = IPV6_VERSION,
) -> bytes:
    """An IPv6 header, extension-header chain and ``payload``.

    ``next_header`` is the upper-layer protocol of ``payload``; the fixed
    header's Next Header names the first extension header when there are any.
    ``payload_length`` and ``version`` override computed values.
    """
    s = ip_bytes(src)
    d = ip_bytes(dst)
    if len(s) != 16 or len(d) != 16:
        raise ValueError("IPv6 addresses must be 16 bytes")
    if not 0 <= flow_label <= 0xFFFFF:
        raise ValueError(f"flow label {flow_label} out of range")
    first, chain = build_ext_headers(ext_headers, next_header)
    if payload_length is None:
        payload_length = len(chain) + len(payload)
        if payload_length > 0xFFFF:
            raise ValueError(f"IPv6 payload too long ({payload_length}); jumbograms unsupported")
    vtf = ((version & 0xF) << 28) | ((traffic_class & 0xFF) << 20) | flow_label
    return IPV6_HDR.pack(vtf, payload_length, first, hop_limit, s, d) + chain + bytes(payload)


def parse_ipv6(buf: BytesLike, offset: int = 0) -> IPv6Header:
    """Parse the IPv6 header at ``offset`` and walk its extension headers to the upper layer.

    Raises :class:`PacketError`: ``too_short`` (fewer than 40 bytes, or payload
    length past the data), ``bad_version``, ``bad_ext`` (an extension header
    runs past the payload, or hop-by-hop is not first).  Bytes after the
    payload (Ethernet padding) are allowed.  The walk stops at the first
    protocol that is not in :data:`EXT_HEADER_PROTOS`, and after a fragment
    header with non-zero offset (what follows it is not a header).
    """
    if offset < 0:
        raise ValueError("negative offset")
    avail = len(buf) - offset
    if avail < IPV6_HDR_LEN:
        raise PacketError("too_short", f"ipv6: {avail} bytes")
    vtf, plen, nxt, hlim, src, dst = IPV6_HDR.unpack_from(buf, offset)
    if vtf >> 28 != IPV6_VERSION:
        raise PacketError("bad_version", f"ipv6: version {vtf >> 28}")
    if IPV6_HDR_LEN + plen > avail:
        raise PacketError("too_short", f"ipv6: payload length {plen} > {avail - 40} bytes")
    end = offset + IPV6_HDR_LEN + plen
    pos = offset + IPV6_HDR_LEN
    proto = nxt
    exts: list[ExtHeaderInfo] = []
    frag: FragmentInfo | None = None
    while proto in EXT_HEADER_PROTOS:
        if proto == IPPROTO_HOPOPTS and exts:
            raise PacketError("bad_ext", "ipv6: hop-by-hop header not first")
        if end - pos < 8:
            raise PacketError("bad_ext", f"ipv6: extension header {proto} truncated")
        if proto == IPPROTO_FRAGMENT:
            n, _res, offlg, ident = IPV6_FRAG_HDR.unpack_from(buf, pos)
            frag = FragmentInfo(offlg & IP6F_OFF_MASK, bool(offlg & IP6F_MORE_FRAG), ident, pos)
            ln = IPV6_FRAG_HDR_LEN
        else:
            n, elen = IPV6_EXT_HDR.unpack_from(buf, pos)
            ln = (elen + 1) << 3
            if ln > end - pos:
                raise PacketError("bad_ext", f"ipv6: extension header {proto} runs past payload")
        exts.append(ExtHeaderInfo(proto, pos, ln))
        pos += ln
        proto = n
        if frag is not None and frag.offset != 0:
            break
    return IPv6Header(
        version=IPV6_VERSION,
        traffic_class=(vtf >> 20) & 0xFF,
        flow_label=vtf & 0xFFFFF,
        payload_length=plen,
        next_header=nxt,
        hop_limit=hlim,
        src=src,
        dst=dst,
        upper_proto=proto,
        l4_offset=pos,
        end=end,
        ext_headers=tuple(exts),
        fragment=frag,
    )

