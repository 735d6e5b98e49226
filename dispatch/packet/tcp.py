"""TCP headers and options (RFC 9293, RFC 7323, RFC 2018; FreeBSD ``netinet/tcp.h``).

:data:`TCP_HDR` is for the hot path; :func:`parse_tcp` adds a strict option
parser for tools and tests, and :func:`build_tcp` computes the checksum over
the IPv4 or IPv6 pseudo-header, chosen by address length.  Flags are an int
of ``TH_*`` bits, including the AE (formerly NS) bit as ``TH_AE`` (0x100).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from dispatch.packet.checksum import l4_checksum
from dispatch.packet.errors import BytesLike, PacketError
from dispatch.packet.ipv4 import IPPROTO_TCP, ip_bytes

__all__ = [
    "TH_FIN",
    "TH_SYN",
    "TH_RST",
    "TH_PUSH",
    "TH_ACK",
    "TH_URG",
    "TH_ECE",
    "TH_CWR",
    "TH_AE",
    "TH_FLAGS",
    "TCP_HDR_LEN",
    "TCP_MAX_HDR_LEN",
    "TCP_MAXOLEN",
    "TCP_MAXWINSHIFT",
    "TCPOPT_EOL",
    "TCPOPT_NOP",
    "TCPOPT_MAXSEG",
    "TCPOPT_WINDOW",
    "TCPOPT_SACK_PERMITTED",
    "TCPOPT_SACK",
    "TCPOPT_TIMESTAMP",
    "TCPOLEN_MAXSEG",
    "TCPOLEN_WINDOW",
    "TCPOLEN_SACK_PERMITTED",
    "TCPOLEN_SACK",
    "TCPOLEN_TIMESTAMP",
    "TCP_HDR",
    "TCPOptions",
    "TCPHeader",
    "opt_eol",
    "opt_nop",
    "opt_mss",
    "opt_wscale",
    "opt_sack_permitted",
    "opt_sack",
    "opt_timestamp",
    "pad_options",
    "build_tcp_options",
    "build_tcp",
    "parse_tcp_options",
    "parse_tcp",
    "tcp_checksum_ok",
    "flags_str",
]

TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
TH_PUSH = 0x08
TH_ACK = 0x10
TH_URG = 0x20
TH_ECE = 0x40
TH_CWR = 0x80
TH_AE = 0x100  # accurate ECN (RFC 9768), formerly NS; bit 0 of the data-offset byte
TH_FLAGS = 0x1FF

TCP_HDR_LEN = 20
TCP_MAX_HDR_LEN = 60
TCP_MAXOLEN = TCP_MAX_HDR_LEN - TCP_HDR_LEN  # 40
TCP_MAXWINSHIFT = 14

TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_MAXSEG = 2
TCPOPT_WINDOW = 3
TCPOPT_SACK_PERMITTED = 4
TCPOPT_SACK = 5
TCPOPT_TIMESTAMP = 8
TCPOLEN_MAXSEG = 4
TCPOLEN_WINDOW = 3
TCPOLEN_SACK_PERMITTED = 2
TCPOLEN_SACK = 8  # per block; the option is 2 + 8 * nblocks
TCPOLEN_TIMESTAMP = 10

#: (sport, dport, seq, ack, off_x2, flags8, win, sum, urp).  Data offset in bytes is
#: ``(off_x2 >> 4) << 2``; the full flags are ``(off_x2 & 1) << 8 | flags8``.
TCP_HDR = struct.Struct("!HHIIBBHHH")

_FLAG_NAMES = ((TH_FIN, "F"), (TH_SYN, "S"), (TH_RST, "R"), (TH_PUSH, "P"), (TH_ACK, "A"),
               (TH_URG, "U"), (TH_ECE, "E"), (TH_CWR, "C"), (TH_AE, "N"))  # fmt: skip


def flags_str(flags: int) -> str:
    """Flags in scapy/tcpdump letter order: ``'SA'`` for SYN|ACK (N = AE)."""
    return "".join(name for bit, name in _FLAG_NAMES if flags & bit)


@dataclass(frozen=True, slots=True)
class TCPOptions:
    """Parsed TCP options.  ``unknown`` lists the kinds of skipped options, in order."""

    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    timestamp: tuple[int, int] | None = None  # (TSval, TSecr)
    unknown: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class TCPHeader:
    """A parsed TCP header.  ``hdr_len`` is the data offset in bytes (payload starts there)."""

    src_port: int
    dst_port: int
    seq: int
    ack: int
    hdr_len: int
    flags: int
    window: int
    checksum: int
    urgent: int
    options: TCPOptions
    options_raw: bytes

    @property
    def data_offset(self) -> int:
        """The data offset field in 32-bit words."""
        return self.hdr_len >> 2


# --- option builders ---------------------------------------------------------------


def opt_eol() -> bytes:
    return b"\x00"


def opt_nop() -> bytes:
    return b"\x01"


def opt_mss(mss: int) -> bytes:
    return struct.pack("!BBH", TCPOPT_MAXSEG, TCPOLEN_MAXSEG, mss)


def opt_wscale(shift: int) -> bytes:
    return struct.pack("!BBB", TCPOPT_WINDOW, TCPOLEN_WINDOW, shift)


def opt_sack_permitted() -> bytes:
    return struct.pack("!BB", TCPOPT_SACK_PERMITTED, TCPOLEN_SACK_PERMITTED)


def opt_sack(blocks: Sequence[tuple[int, int]]) -> bytes:
    """A SACK option with up to 4 (left, right) blocks."""
    if not 1 <= len(blocks) <= 4:
        raise ValueError("a SACK option holds 1 to 4 blocks")
    return struct.pack("!BB", TCPOPT_SACK, 2 + TCPOLEN_SACK * len(blocks)) + b"".join(
        struct.pack("!II", left, right) for left, right in blocks
    )


def opt_timestamp(val: int, ecr: int) -> bytes:
    return struct.pack("!BBII", TCPOPT_TIMESTAMP, TCPOLEN_TIMESTAMP, val, ecr)


def pad_options(options: BytesLike) -> bytes:
    """Pad options to a multiple of 4 bytes with EOL then zeros (as FreeBSD ``tcp_addoptions``)."""
    opts = bytes(options)
    return opts + b"\0" * ((-len(opts)) % 4)


def build_tcp_options(
    *,
    mss: int | None = None,
    wscale: int | None = None,
    sack_permitted: bool = False,
    timestamp: tuple[int, int] | None = None,
    sack_blocks: Sequence[tuple[int, int]] = (),
) -> bytes:
    """The usual option block, each option NOP-aligned to 32 bits: MSS, NOP+WS,
    NOP+NOP+SACK-permitted, NOP+NOP+TS, NOP+NOP+SACK.  Always a multiple of 4 bytes."""
    out = []
    if mss is not None:
        out.append(opt_mss(mss))
    if wscale is not None:
        out.append(opt_nop() + opt_wscale(wscale))
    if sack_permitted:
        out.append(opt_nop() * 2 + opt_sack_permitted())
    if timestamp is not None:
        out.append(opt_nop() * 2 + opt_timestamp(*timestamp))
    if sack_blocks:
        out.append(opt_nop() * 2 + opt_sack(sack_blocks))
    opts = b"".join(out)
    if len(opts) > TCP_MAXOLEN:
        raise ValueError(f"TCP options too long ({len(opts)} bytes, max 40)")
    return opts


# --- segments ----------------------------------------------------------------------


def build_tcp(
    *,
    src_port: int,
    dst_port: int,
    seq: int = 0,
    ack: int = 0,
    flags: int = TH_ACK,
    window: int = 65535,
    payload: BytesLike = b"",
    options: BytesLike = b"",
    urgent: int = 0,
    src_ip: BytesLike | str | ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
    dst_ip: BytesLike | str | ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
    checksum: int | None = None,
    data_offset: int | None = None,
) -> bytes:
    """A TCP segment (header, padded options, payload).

    The checksum covers the pseudo-header of ``src_ip``/``dst_ip`` (IPv4 or
    IPv6 by address family), which are required unless ``checksum`` is given
    explicitly (e.g. a deliberately bad one, or 0 for offload).
    ``data_offset`` (32-bit words) overrides the computed header length.
    """
    opts = pad_options(options)
    if len(opts) > TCP_MAXOLEN:
        raise ValueError(f"TCP options too long ({len(opts)} bytes, max 40)")
    hl = TCP_HDR_LEN + len(opts)
    if data_offset is None:
        data_offset = hl >> 2
    if flags & ~TH_FLAGS:
        raise ValueError(f"flags {flags:#x} has bits outside TH_FLAGS")
    hdr = TCP_HDR.pack(
        src_port,
        dst_port,
        seq & 0xFFFFFFFF,
        ack & 0xFFFFFFFF,
        ((data_offset & 0xF) << 4) | (flags >> 8),
        flags & 0xFF,
        window,
        0,
        urgent,
    )
    seg = bytearray(hdr)
    seg += opts
    seg += payload
    if checksum is None:
        if src_ip is None or dst_ip is None:
            raise ValueError("build_tcp needs src_ip and dst_ip to compute the checksum")
        checksum = l4_checksum(ip_bytes(src_ip), ip_bytes(dst_ip), IPPROTO_TCP, seg)
    seg[16] = checksum >> 8
    seg[17] = checksum & 0xFF
    return bytes(seg)


def parse_tcp_options(opts: BytesLike) -> TCPOptions:
    """Parse a TCP option block strictly.

    EOL ends the list; NOP is skipped; MSS, window scale, SACK-permitted,
    SACK and timestamps are decoded; other kinds are skipped by their length.
    A length byte missing, below 2, past the end, or wrong for a fixed-size
    option raises :class:`PacketError` ``bad_option``.  The window scale is
    reported as sent (callers clamp to 14 as RFC 7323 says).
    """
    mss = wscale = None
    sackp = False
    blocks: tuple[tuple[int, int], ...] = ()
    ts = None
    unknown: list[int] = []
    n = len(opts)
    i = 0
    while i < n:
        kind = opts[i]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise PacketError("bad_option", f"tcp: option {kind} has no length")
        ln = opts[i + 1]
        if ln < 2 or i + ln > n:
            raise PacketError("bad_option", f"tcp: option {kind} length {ln}")
        if kind == TCPOPT_MAXSEG:
            if ln != TCPOLEN_MAXSEG:
                raise PacketError("bad_option", f"tcp: MSS length {ln}")
            mss = (opts[i + 2] << 8) | opts[i + 3]
        elif kind == TCPOPT_WINDOW:
            if ln != TCPOLEN_WINDOW:
                raise PacketError("bad_option", f"tcp: window scale length {ln}")
            wscale = opts[i + 2]
        elif kind == TCPOPT_SACK_PERMITTED:
            if ln != TCPOLEN_SACK_PERMITTED:
                raise PacketError("bad_option", f"tcp: SACK-permitted length {ln}")
            sackp = True
        elif kind == TCPOPT_TIMESTAMP:
            if ln != TCPOLEN_TIMESTAMP:
                raise PacketError("bad_option", f"tcp: timestamp length {ln}")
            ts = struct.unpack_from("!II", opts, i + 2)
        elif kind == TCPOPT_SACK:
            if (ln - 2) % TCPOLEN_SACK or ln == 2:
                raise PacketError("bad_option", f"tcp: SACK length {ln}")
            vals = struct.unpack_from(f"!{(ln - 2) // 4}I", opts, i + 2)
            blocks = tuple(zip(vals[0::2], vals[1::2]))
        else:
            unknown.append(kind)
        i += ln
    return TCPOptions(mss, wscale, sackp, blocks, ts, tuple(unknown))


def parse_tcp(buf: BytesLike, offset: int = 0) -> TCPHeader:
    """Parse the TCP header at ``offset`` (``buf`` should end where the segment ends).

    Raises :class:`PacketError`: ``too_short`` (fewer than 20 bytes or fewer
    than the data offset), ``bad_hlen`` (data offset < 5), ``bad_option``.
    The checksum is not verified here (see :func:`tcp_checksum_ok`).
    """
    if offset < 0:
        raise ValueError("negative offset")
    avail = len(buf) - offset
    if avail < TCP_HDR_LEN:
        raise PacketError("too_short", f"tcp: {avail} bytes")
    sport, dport, seq, ack, offx, fl, win, cks, urp = TCP_HDR.unpack_from(buf, offset)
    hl = (offx >> 4) << 2
    if hl < TCP_HDR_LEN:
        raise PacketError("bad_hlen", f"tcp: data offset {hl}")
    if hl > avail:
        raise PacketError("too_short", f"tcp: data offset {hl} > {avail} bytes")
    raw = bytes(buf[offset + TCP_HDR_LEN : offset + hl])
    opts = parse_tcp_options(raw) if raw else TCPOptions()
    return TCPHeader(sport, dport, seq, ack, hl, ((offx & 1) << 8) | fl, win, cks, urp, opts, raw)


def tcp_checksum_ok(
    segment: BytesLike,
    src_ip: BytesLike | str | ipaddress.IPv4Address | ipaddress.IPv6Address,
    dst_ip: BytesLike | str | ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> bool:
    """Whether a whole TCP ``segment`` (header + payload) verifies against its pseudo-header."""
    return l4_checksum(ip_bytes(src_ip), ip_bytes(dst_ip), IPPROTO_TCP, segment) == 0
