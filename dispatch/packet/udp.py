"""UDP headers (RFC 768; RFC 8200 s. 8.1 for IPv6).

A transmitted UDP checksum that computes to 0 is sent as ``0xFFFF``, because 0
on the wire means "no checksum" (allowed over IPv4 only; over IPv6 a zero
checksum is invalid and :func:`udp_checksum_ok` rejects it).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from dispatch.packet.checksum import in_cksum, l4_checksum, pseudo_header_sum
from dispatch.packet.errors import BytesLike, PacketError
from dispatch.packet.ipv4 import IPPROTO_UDP, ip_bytes

__all__ = [
    "UDP_HDR_LEN",
    "UDP_HDR",
    "UDPHeader",
    "build_udp",
    "parse_udp",
    "udp_checksum_ok",
]

UDP_HDR_LEN = 8
#: (sport, dport, length, checksum)
UDP_HDR = struct.Struct("!HHHH")

_Addr = BytesLike | str | ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class UDPHeader:
    """A parsed UDP header; ``length`` covers header and payload, ``payload_length`` the payload."""

    src_port: int
    dst_port: int
    length: int
    checksum: int

    @property
    def payload_length(self) -> int:
        return self.length - UDP_HDR_LEN


def build_udp(
    *,
    src_port: int,
    dst_port: int,
    payload: BytesLike = b"",
    src_ip: _Addr | None = None,
    dst_ip: _Addr | None = None,
    checksum: int | None = None,
    length: int | None = None,
) -> bytes:
    """A UDP datagram.  The checksum is computed over the pseudo-header of
    ``src_ip``/``dst_ip`` (v4 or v6 by address family; a computed 0 is sent as
    0xFFFF) unless ``checksum`` is given (0 = no checksum, IPv4 only).
    ``length`` overrides the length field (the pseudo-header uses it too)."""
    if length is None:
        length = UDP_HDR_LEN + len(payload)
        if length > 0xFFFF:
            raise ValueError(f"UDP datagram too long ({length} bytes)")
    dgram = bytearray(UDP_HDR.pack(src_port, dst_port, length, 0))
    dgram += payload
    if checksum is None:
        if src_ip is None or dst_ip is None:
            raise ValueError("build_udp needs src_ip and dst_ip (or checksum=0 for none)")
        s, d = ip_bytes(src_ip), ip_bytes(dst_ip)
        checksum = in_cksum(dgram, pseudo_header_sum(s, d, IPPROTO_UDP, length)) or 0xFFFF
    dgram[6] = checksum >> 8
    dgram[7] = checksum & 0xFF
    return bytes(dgram)


def parse_udp(buf: BytesLike, offset: int = 0) -> UDPHeader:
    """Parse the UDP header at ``offset`` (``buf`` should end where the IP payload ends).

    Raises :class:`PacketError`: ``too_short`` (fewer than 8 bytes, or length
    field past the data), ``bad_len`` (length field < 8).  Bytes past
    ``length`` are allowed (the IP layer trims them).
    """
    if offset < 0:
        raise ValueError("negative offset")
    avail = len(buf) - offset
    if avail < UDP_HDR_LEN:
        raise PacketError("too_short", f"udp: {avail} bytes")
    sport, dport, ln, cks = UDP_HDR.unpack_from(buf, offset)
    if ln < UDP_HDR_LEN:
        raise PacketError("bad_len", f"udp: length {ln}")
    if ln > avail:
        raise PacketError("too_short", f"udp: length {ln} > {avail} bytes")
    return UDPHeader(sport, dport, ln, cks)


def udp_checksum_ok(dgram: BytesLike, src_ip: _Addr, dst_ip: _Addr) -> bool:
    """Whether a whole UDP datagram verifies.  A zero checksum field is accepted over
    IPv4 (no checksum) and rejected over IPv6."""
    s, d = ip_bytes(src_ip), ip_bytes(dst_ip)
    if dgram[6] == 0 and dgram[7] == 0:
        return len(s) == 4
    return l4_checksum(s, d, IPPROTO_UDP, dgram) == 0
