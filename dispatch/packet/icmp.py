"""ICMP (RFC 792) and ICMPv6 (RFC 4443) headers, with echo request/reply builders.

Both share the 8-byte layout type, code, checksum, then 4 bytes whose meaning
depends on the type (identifier and sequence for echo).  The ICMPv4 checksum
covers the message only; the ICMPv6 checksum also covers the IPv6
pseudo-header, so the v6 builder and checker need the addresses.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from dispatch.packet.checksum import in_cksum, l4_checksum
from dispatch.packet.errors import BytesLike, PacketError
from dispatch.packet.ipv4 import IPPROTO_ICMPV6, ip_bytes

__all__ = [
    "ICMP_ECHOREPLY",
    "ICMP_UNREACH",
    "ICMP_REDIRECT",
    "ICMP_ECHO",
    "ICMP_TIMXCEED",
    "ICMP_PARAMPROB",
    "ICMP6_DST_UNREACH",
    "ICMP6_PACKET_TOO_BIG",
    "ICMP6_TIME_EXCEEDED",
    "ICMP6_PARAM_PROB",
    "ICMP6_ECHO_REQUEST",
    "ICMP6_ECHO_REPLY",
    "ICMP_MINLEN",
    "ICMP_HDR",
    "ICMPHeader",
    "build_icmp",
    "build_icmp_echo",
    "build_icmp6",
    "build_icmp6_echo",
    "parse_icmp",
    "icmp_checksum_ok",
    "icmp6_checksum_ok",
]

ICMP_ECHOREPLY = 0
ICMP_UNREACH = 3
ICMP_REDIRECT = 5
ICMP_ECHO = 8
ICMP_TIMXCEED = 11
ICMP_PARAMPROB = 12

ICMP6_DST_UNREACH = 1
ICMP6_PACKET_TOO_BIG = 2
ICMP6_TIME_EXCEEDED = 3
ICMP6_PARAM_PROB = 4
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129

ICMP_MINLEN = 8
#: (type, code, checksum, ident, seq); for non-echo types the last two are the
#: type-specific 32-bit word split in halves.
ICMP_HDR = struct.Struct("!BBHHH")

_Addr = BytesLike | str | ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class ICMPHeader:
    """A parsed ICMP/ICMPv6 header.  ``ident``/``seq`` are bytes 4-5 and 6-7 whatever
    the type (for echo they are the identifier and sequence number)."""

    type: int
    code: int
    checksum: int
    ident: int
    seq: int

    @property
    def rest(self) -> int:
        """The type-specific 32-bit word (bytes 4-7)."""
        return (self.ident << 16) | self.seq


def build_icmp(
    *, type: int, code: int = 0, rest: int = 0, payload: BytesLike = b"", checksum: int | None = None
) -> bytes:
    """An ICMPv4 message; ``rest`` is the 32-bit type-specific word."""
    msg = bytearray(struct.pack("!BBHI", type, code, 0, rest))
    msg += payload
    if checksum is None:
        checksum = in_cksum(msg)
    msg[2] = checksum >> 8
    msg[3] = checksum & 0xFF
    return bytes(msg)


def build_icmp_echo(
    *,
    ident: int,
    seq: int,
    payload: BytesLike = b"",
    reply: bool = False,
    checksum: int | None = None,
) -> bytes:
    """An ICMPv4 echo request (type 8), or reply (type 0) with ``reply=True``."""
    return build_icmp(
        type=ICMP_ECHOREPLY if reply else ICMP_ECHO,
        rest=(ident << 16) | seq,
        payload=payload,
        checksum=checksum,
    )


def build_icmp6(
    *,
    type: int,
    src_ip: _Addr,
    dst_ip: _Addr,
    code: int = 0,
    rest: int = 0,
    payload: BytesLike = b"",
    checksum: int | None = None,
) -> bytes:
    """An ICMPv6 message; the checksum covers the IPv6 pseudo-header of ``src_ip``/``dst_ip``."""
    msg = bytearray(struct.pack("!BBHI", type, code, 0, rest))
    msg += payload
    if checksum is None:
        checksum = l4_checksum(ip_bytes(src_ip), ip_bytes(dst_ip), IPPROTO_ICMPV6, msg)
    msg[2] = checksum >> 8
    msg[3] = checksum & 0xFF
    return bytes(msg)


def build_icmp6_echo(
    *,
    ident: int,
    seq: int,
    src_ip: _Addr,
    dst_ip: _Addr,
    payload: BytesLike = b"",
    reply: bool = False,
    checksum: int | None = None,
) -> bytes:
    """An ICMPv6 echo request (type 128), or reply (129) with ``reply=True``."""
    return build_icmp6(
        type=ICMP6_ECHO_REPLY if reply else ICMP6_ECHO_REQUEST,
        src_ip=src_ip,
        dst_ip=dst_ip,
        rest=(ident << 16) | seq,
        payload=payload,
        checksum=checksum,
    )


def parse_icmp(buf: BytesLike, offset: int = 0) -> ICMPHeader:
    """Parse an ICMP or ICMPv6 header at ``offset``.  Raises :class:`PacketError`
    ``too_short`` for fewer than 8 bytes.  Checksums: :func:`icmp_checksum_ok`,
    :func:`icmp6_checksum_ok`."""
    if offset < 0:
        raise ValueError("negative offset")
    avail = len(buf) - offset
    if avail < ICMP_MINLEN:
        raise PacketError("too_short", f"icmp: {avail} bytes")
    return ICMPHeader(*ICMP_HDR.unpack_from(buf, offset))


def icmp_checksum_ok(msg: BytesLike) -> bool:
    """Whether a whole ICMPv4 message verifies."""
    return in_cksum(msg) == 0


def icmp6_checksum_ok(msg: BytesLike, src_ip: _Addr, dst_ip: _Addr) -> bool:
    """Whether a whole ICMPv6 message verifies against its IPv6 pseudo-header."""
    return l4_checksum(ip_bytes(src_ip), ip_bytes(dst_ip), IPPROTO_ICMPV6, msg) == 0
