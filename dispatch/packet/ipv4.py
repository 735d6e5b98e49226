"""IPv4 headers (RFC 791, FreeBSD ``netinet/ip.h``), plus the protocol numbers and
address conversions shared by every layer (the ``netinet/in.h`` part).

The hot path reads headers with :data:`IPV4_HDR` ``.unpack_from`` on a memoryview
and checks the checksum with :func:`ipv4_checksum_ok`; :func:`parse_ipv4` is
the complete, validating parser for tools, tests and the traffic generator.
Fragment offsets are in **bytes** everywhere in this API (the header stores
8-byte units).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from dispatch.packet.checksum import in_cksum, incr_update_ttl
from dispatch.packet.errors import BytesLike, PacketError

__all__ = [
    "IPPROTO_HOPOPTS",
    "IPPROTO_ICMP",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "IPPROTO_IPV6",
    "IPPROTO_ROUTING",
    "IPPROTO_FRAGMENT",
    "IPPROTO_ESP",
    "IPPROTO_AH",
    "IPPROTO_ICMPV6",
    "IPPROTO_NONE",
    "IPPROTO_DSTOPTS",
    "IPVERSION",
    "IPV4_HDR_LEN",
    "IPV4_MAX_HDR_LEN",
    "IP_MAXPACKET",
    "IP_RF",
    "IP_DF",
    "IP_MF",
    "IP_OFFMASK",
    "IPDEFTTL",
    "IPV4_HDR",
    "IPv4Header",
    "ip_bytes",
    "ip_str",
    "build_ipv4",
    "parse_ipv4",
    "ipv4_checksum_ok",
    "dec_ttl_inplace",
]

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_IPV6 = 41
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60

IPVERSION = 4
IPV4_HDR_LEN = 20
IPV4_MAX_HDR_LEN = 60
IP_MAXPACKET = 65535
IP_RF = 0x8000  # reserved ("evil") bit
IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFMASK = 0x1FFF
IPDEFTTL = 64

#: (ver_ihl, tos, total_len, id, flags_frag, ttl, proto, sum, src4, dst4)
IPV4_HDR = struct.Struct("!BBHHHBBH4s4s")


def ip_bytes(addr: BytesLike | str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """An IPv4 or IPv6 address as 4 or 16 bytes, from bytes, a string or an ``ipaddress`` object."""
    if isinstance(addr, str):
        return ipaddress.ip_address(addr).packed
    if isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return addr.packed
    b = bytes(addr)
    if len(b) not in (4, 16):
        raise ValueError(f"an IP address is 4 or 16 bytes, not {len(b)}")
    return b


def ip_str(addr: BytesLike) -> str:
    """The usual text form of a 4- or 16-byte address (``'10.0.0.1'``, ``'2001:db8::1'``)."""
    return str(ipaddress.ip_address(bytes(addr)))


def _ip4(addr: BytesLike | str | ipaddress.IPv4Address) -> bytes:
    b = ip_bytes(addr)
    if len(b) != 4:
        raise ValueError(f"not an IPv4 address: {addr!r}")
    return b


@dataclass(frozen=True, slots=True)
class IPv4Header:
    """A parsed IPv4 header.

    ``hdr_len`` is in bytes (IHL * 4); ``frag_offset`` is in bytes; ``flags``
    is the 3-bit field (``IP_DF >> 13`` etc.); ``checksum_ok`` says whether the
    header checksum verified.
    """

    version: int
    hdr_len: int
    tos: int
    total_length: int
    ident: int
    flags: int
    frag_offset: int
    ttl: int
    proto: int
    checksum: int
    src: bytes
    dst: bytes
    options: bytes
    checksum_ok: bool

    @property
    def df(self) -> bool:
        return bool(self.flags & 0b010)

    @property
    def mf(self) -> bool:
        return bool(self.flags & 0b001)

    @property
    def is_fragment(self) -> bool:
        """True for any fragment (MF set or non-zero offset)."""
        return self.mf or self.frag_offset != 0

    @property
    def payload_length(self) -> int:
        return self.total_length - self.hdr_len


def build_ipv4(
    *,
    src: BytesLike | str | ipaddress.IPv4Address,
    dst: BytesLike | str | ipaddress.IPv4Address,
    proto: int,
    payload: BytesLike = b"",
    ttl: int = IPDEFTTL,
    ident: int = 0,
    tos: int = 0,
    df: bool = False,
    more_fragments: bool = False,
    frag_offset: int = 0,
    reserved_flag: bool = False,
    options: BytesLike = b"",
    total_length: int | None = None,
    ihl: int | None = None,
    version: int = IPVERSION,
    checksum: int | None = None,
) -> bytes:
    """An IPv4 header followed by ``payload``.

    ``options`` are padded with zero bytes (EOL) to a multiple of 4.
    ``frag_offset`` is in bytes and must be a multiple of 8.  ``total_length``,
    ``ihl`` (in 32-bit words), ``version`` and ``checksum`` override the
    computed values to make deliberately bad packets.
    """
    opts = bytes(options)
    if len(opts) & 3:
        opts += b"\0" * (4 - (len(opts) & 3))
    if len(opts) > IPV4_MAX_HDR_LEN - IPV4_HDR_LEN:
        raise ValueError(f"IPv4 options too long ({len(opts)} bytes, max 40)")
    if frag_offset & 7 or not 0 <= frag_offset <= IP_OFFMASK * 8:
        raise ValueError(f"frag_offset {frag_offset} must be a multiple of 8 in 0..65528")
    hl = IPV4_HDR_LEN + len(opts)
    if ihl is None:
        ihl = hl >> 2
    if total_length is None:
        total_length = hl + len(payload)
        if total_length > IP_MAXPACKET:
            raise ValueError(f"IPv4 packet too long ({total_length} bytes)")
    off = (frag_offset >> 3) | (IP_DF if df else 0) | (IP_MF if more_fragments else 0)
    off |= IP_RF if reserved_flag else 0
    hdr = bytearray(
        IPV4_HDR.pack(
            ((version & 0xF) << 4) | (ihl & 0xF),
            tos,
            total_length,
            ident,
            off,
            ttl,
            proto,
            0,
            _ip4(src),
            _ip4(dst),
        )
    )
    hdr += opts
    if checksum is None:
        checksum = in_cksum(hdr)
    hdr[10] = checksum >> 8
    hdr[11] = checksum & 0xFF
    return bytes(hdr) + bytes(payload)


def ipv4_checksum_ok(buf: BytesLike, offset: int = 0) -> bool:
    """Whether the IPv4 header at ``offset`` has a correct checksum (IHL read from the header).

    Assumes the header is present (the caller has checked the length).
    """
    hl = (buf[offset] & 0xF) << 2
    return in_cksum(buf[offset : offset + hl]) == 0


def parse_ipv4(buf: BytesLike, offset: int = 0) -> IPv4Header:
    """Parse and validate the IPv4 header at ``offset``.

    Checks, in FreeBSD ``ip_input`` order, raising :class:`PacketError`:
    ``too_short`` (fewer than 20 bytes), ``bad_version``, ``bad_hlen`` (IHL < 5
    or header past the data), ``bad_len`` (total length < header length),
    ``too_short`` (total length past the data).  Bytes after ``total_length``
    (Ethernet padding) are allowed.  The checksum is reported in
    ``checksum_ok``, not enforced.
    """
    if offset < 0:
        raise ValueError("negative offset")
    avail = len(buf) - offset
    if avail < IPV4_HDR_LEN:
        raise PacketError("too_short", f"ipv4: {avail} bytes")
    vhl, tos, tlen, ident, off, ttl, proto, cks, src, dst = IPV4_HDR.unpack_from(buf, offset)
    if vhl >> 4 != IPVERSION:
        raise PacketError("bad_version", f"ipv4: version {vhl >> 4}")
    hl = (vhl & 0xF) << 2
    if hl < IPV4_HDR_LEN or hl > avail:
        raise PacketError("bad_hlen", f"ipv4: header length {hl}, {avail} bytes")
    if tlen < hl:
        raise PacketError("bad_len", f"ipv4: total length {tlen} < header length {hl}")
    if tlen > avail:
        raise PacketError("too_short", f"ipv4: total length {tlen} > {avail} bytes")
    hdr = buf[offset : offset + hl]
    return IPv4Header(
        version=4,
        hdr_len=hl,
        tos=tos,
        total_length=tlen,
        ident=ident,
        flags=off >> 13,
        frag_offset=(off & IP_OFFMASK) << 3,
        ttl=ttl,
        proto=proto,
        checksum=cks,
        src=src,
        dst=dst,
        options=bytes(hdr[IPV4_HDR_LEN:]),
        checksum_ok=in_cksum(hdr) == 0,
    )


def dec_ttl_inplace(buf: bytearray | memoryview, offset: int = 0, decrement: int = 1) -> int:
    """Decrement the TTL of the IPv4 header at ``offset`` in a writable buffer, updating the
    checksum incrementally (RFC 1624), as ``ip_forward`` does.  Returns the new TTL.

    Raises :class:`ValueError` if the TTL would go below zero (the caller should
    have sent ICMP time exceeded instead).
    """
    ttl = buf[offset + 8]
    proto = buf[offset + 9]
    hc = (buf[offset + 10] << 8) | buf[offset + 11]
    hc = incr_update_ttl(hc, ttl, proto, decrement)
    buf[offset + 8] = ttl - decrement
    buf[offset + 10] = hc >> 8
    buf[offset + 11] = hc & 0xFF
    return ttl - decrement
