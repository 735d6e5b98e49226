"""Streaming pcap and pcapng reading, and classic pcap writing.

The traffic generator replays captures and the wire can capture what it
carries; both need packet files that tshark, tcpdump and scapy agree with.
This module has no dependencies beyond the standard library, reads files
record by record (never the whole file), and turns every malformation into a
``PcapError`` that names the file, the byte offset and what is wrong.

Formats read (``read_packets`` detects which from the first four bytes):

- classic pcap, either byte order, microsecond (0xa1b2c3d4) or nanosecond
  (0xa1b23c4d) timestamps;
- pcapng: Section Header Blocks in either byte order (each section may differ),
  Interface Description Blocks with ``if_tsresol`` and ``if_tsoffset``,
  Enhanced Packet Blocks, Simple Packet Blocks (no timestamp: 0) and the
  obsolete Packet Block; other blocks are skipped.

Written: classic pcap, nanosecond (default) or microsecond resolution.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, Final

__all__ = [
    "LINKTYPE_ETHERNET",
    "PcapError",
    "PcapRecord",
    "PcapWriter",
    "detect_format",
    "read_packets",
    "read_pcap",
    "read_pcapng",
]

LINKTYPE_ETHERNET: Final = 1

_PCAP_MAGIC_US: Final = 0xA1B2C3D4
_PCAP_MAGIC_NS: Final = 0xA1B23C4D
_PCAPNG_SHB: Final = 0x0A0D0D0A
_PCAPNG_BOM: Final = 0x1A2B3C4D
_BT_IDB: Final = 0x00000001
_BT_PB: Final = 0x00000002  # obsolete Packet Block
_BT_SPB: Final = 0x00000003
_BT_EPB: Final = 0x00000006
_OPT_ENDOFOPT: Final = 0
_OPT_IF_TSRESOL: Final = 9
_OPT_IF_TSOFFSET: Final = 14

#: Largest record (classic) or block (pcapng) accepted; bigger means garbage.
MAX_RECORD: Final = 256 * 1024 * 1024
#: Default snap length written into pcap headers (tcpdump's default).
DEFAULT_SNAPLEN: Final = 262144

PathLike = str | os.PathLike[str]


class PcapError(ValueError):
    """A malformed or unsupported capture file."""

    def __init__(self, path: str, offset: int, message: str) -> None:
        super().__init__(f"{path}: offset {offset}: {message}")
        self.path = path
        self.offset = offset
        self.reason = message


@dataclass(frozen=True, slots=True)
class PcapRecord:
    """One captured packet.

    ``timestamp_ns``: capture time in ns since the Unix epoch (0 for pcapng
    Simple Packet Blocks, which carry none).  ``data``: the captured bytes
    (possibly cut at the snap length).  ``orig_len``: length on the wire.
    ``interface``: pcapng interface id (0 for classic pcap).  ``linktype``:
    LINKTYPE_* of the interface (1 = Ethernet).
    """

    timestamp_ns: int
    data: bytes
    orig_len: int
    interface: int = 0
    linktype: int = LINKTYPE_ETHERNET


def detect_format(path: PathLike) -> str:
    """``'pcap'`` or ``'pcapng'`` from the file's magic; ``PcapError`` otherwise."""
    name = os.fspath(path)
    with open(name, "rb") as f:
        head = f.read(4)
    return _detect(name, head)


def _detect(name: str, head: bytes) -> str:
    if len(head) < 4:
        raise PcapError(name, 0, f"file too short ({len(head)} bytes) to be pcap or pcapng")
    le = struct.unpack("<I", head)[0]
    be = struct.unpack(">I", head)[0]
    if le in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS) or be in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS):
        return "pcap"
    if le == _PCAPNG_SHB:
        return "pcapng"
    raise PcapError(
        name,
        0,
        f"unknown magic 0x{be:08x}: not pcap (a1b2c3d4 / a1b23c4d, either byte order) "
        "or pcapng (0a0d0d0a)",
    )


def read_packets(path: PathLike) -> Iterator[PcapRecord]:
    """Stream the packets of a pcap or pcapng file, whichever it is."""
    name = os.fspath(path)
    fmt = detect_format(name)
    return read_pcap(name) if fmt == "pcap" else read_pcapng(name)


def _read_exact(f: BinaryIO, n: int, name: str, offset: int, what: str) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise PcapError(name, offset, f"truncated {what}: need {n} bytes, file has {len(b)}")
    return b


# -- classic pcap ------------------------------------------------------------


def read_pcap(path: PathLike) -> Iterator[PcapRecord]:
    """Stream the packets of a classic pcap file."""
    name = os.fspath(path)
    with open(name, "rb") as f:
        hdr = f.read(24)
        if len(hdr) < 4:
            raise PcapError(name, 0, f"file too short ({len(hdr)} bytes) for a pcap header")
        magic_le = struct.unpack("<I", hdr[:4])[0]
        magic_be = struct.unpack(">I", hdr[:4])[0]
        if magic_le in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS):
            endian, magic = "<", magic_le
        elif magic_be in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS):
            endian, magic = ">", magic_be
        else:
            raise PcapError(name, 0, f"bad pcap magic 0x{magic_be:08x}")
        if len(hdr) != 24:
            raise PcapError(
                name, 0, f"truncated pcap file header: need 24 bytes, file has {len(hdr)}"
            )
        major, _minor, _zone, _sigfigs, _snaplen, network = struct.unpack(endian + "HHiIII", hdr[4:])
        if major != 2:
            raise PcapError(name, 4, f"unsupported pcap version {major} (only 2.x)")
        linktype = network & 0x03FFFFFF  # upper bits: FCS length flags
        frac_mult = 1000 if magic == _PCAP_MAGIC_US else 1
        rec_hdr = struct.Struct(endian + "IIII")
        offset = 24
        while True:
            rh = f.read(16)
            if not rh:
                return
            if len(rh) != 16:
                raise PcapError(
                    name, offset, f"truncated record header: need 16 bytes, file has {len(rh)}"
                )
            sec, frac, incl, orig = rec_hdr.unpack(rh)
            if incl > MAX_RECORD:
                raise PcapError(
                    name, offset, f"record length {incl} is implausible (max {MAX_RECORD})"
                )
            data = _read_exact(f, incl, name, offset + 16, "packet data")
            yield PcapRecord(
                timestamp_ns=sec * 1_000_000_000 + frac * frac_mult,
                data=data,
                orig_len=orig,
                interface=0,
                linktype=linktype,
            )
            offset += 16 + incl


# -- pcapng -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Interface:
    linktype: int
    snaplen: int
    # timestamp units -> ns: ns = units * mul // div (div a power of 10 or 2)
    mul: int
    div: int
    offset_ns: int


def _parse_options(body: bytes, endian: str) -> Iterator[tuple[int, bytes]]:
    """Yield (code, value) options; stops at opt_endofopt or a malformed tail."""
    pos = 0
    n = len(body)
    while pos + 4 <= n:
        code, length = struct.unpack_from(endian + "HH", body, pos)
        pos += 4
        if code == _OPT_ENDOFOPT:
            return
        if pos + length > n:
            raise ValueError(f"option {code} length {length} runs past the block")
        yield code, body[pos : pos + length]
        pos += (length + 3) & ~3


def _tsresol(value: int) -> tuple[int, int]:
    """(mul, div) converting timestamp units to ns for an if_tsresol byte."""
    exp = value & 0x7F
    if value & 0x80:  # 2^-exp seconds
        return 1_000_000_000, 1 << exp
    if exp <= 9:
        return 10 ** (9 - exp), 1
    return 1, 10 ** (exp - 9)


def read_pcapng(path: PathLike) -> Iterator[PcapRecord]:
    """Stream the packets of a pcapng file."""
    name = os.fspath(path)
    with open(name, "rb") as f:
        offset = 0
        endian: str | None = None
        ifaces: list[_Interface] = []
        while True:
            head = f.read(8)
            if not head:
                if endian is None:
                    raise PcapError(name, 0, "empty file")
                return
            if len(head) != 8:
                raise PcapError(
                    name, offset, f"truncated block header: need 8 bytes, file has {len(head)}"
                )
            btype_le = struct.unpack("<I", head[:4])[0]
            if btype_le == _PCAPNG_SHB:
                # The byte-order magic decides how this section is read.
                bom = _read_exact(f, 4, name, offset + 8, "section header byte-order magic")
                if struct.unpack("<I", bom)[0] == _PCAPNG_BOM:
                    endian = "<"
                elif struct.unpack(">I", bom)[0] == _PCAPNG_BOM:
                    endian = ">"
                else:
                    raise PcapError(
                        name, offset + 8, f"bad section byte-order magic 0x{bom.hex()}"
                    )
                blen = struct.unpack(endian + "I", head[4:])[0]
                if blen < 28 or blen % 4:
                    raise PcapError(
                        name, offset, f"section header block length {blen} invalid "
                        "(must be a multiple of 4, at least 28)"
                    )
                if blen > MAX_RECORD:
                    raise PcapError(name, offset, f"block length {blen} is implausible")
                rest = _read_exact(f, blen - 12, name, offset + 12, "section header block")
                major = struct.unpack(endian + "H", rest[:2])[0]
                if major != 1:
                    raise PcapError(name, offset + 12, f"unsupported pcapng version {major}")
                trailer = struct.unpack(endian + "I", rest[-4:])[0]
                if trailer != blen:
                    raise PcapError(
                        name, offset + blen - 4,
                        f"block trailing length {trailer} != leading length {blen}",
                    )
                ifaces = []
                offset += blen
                continue
            if endian is None:
                raise PcapError(name, 0, "pcapng file does not start with a section header block")
            btype, blen = struct.unpack(endian + "II", head)
            if blen < 12 or blen % 4:
                raise PcapError(
                    name, offset,
                    f"block length {blen} invalid (must be a multiple of 4, at least 12)",
                )
            if blen > MAX_RECORD:
                raise PcapError(name, offset, f"block length {blen} is implausible")
            rest = _read_exact(f, blen - 8, name, offset + 8, f"block of type 0x{btype:08x}")
            trailer = struct.unpack(endian + "I", rest[-4:])[0]
            if trailer != blen:
                raise PcapError(
                    name, offset + blen - 4,
                    f"block trailing length {trailer} != leading length {blen}",
                )
            body = rest[:-4]
            try:
                rec = _block(btype, body, endian, ifaces)
            except (ValueError, struct.error) as e:
                raise PcapError(name, offset, f"block type 0x{btype:08x}: {e}") from None
            if rec is not None:
                yield rec
            offset += blen


def _block(btype: int, body: bytes, endian: str, ifaces: list[_Interface]) -> PcapRecord | None:
    if btype == _BT_IDB:
        if len(body) < 8:
            raise ValueError("interface description block too short")
        linktype, _res, snaplen = struct.unpack_from(endian + "HHI", body, 0)
        mul, div, toff = 1000, 1, 0  # default resolution: microseconds
        for code, value in _parse_options(body[8:], endian):
            if code == _OPT_IF_TSRESOL and len(value) >= 1:
                mul, div = _tsresol(value[0])
            elif code == _OPT_IF_TSOFFSET and len(value) >= 8:
                toff = struct.unpack(endian + "q", value[:8])[0] * 1_000_000_000
        ifaces.append(_Interface(linktype, snaplen, mul, div, toff))
        return None
    if btype == _BT_EPB or btype == _BT_PB:
        if len(body) < 20:
            raise ValueError("packet block too short")
        if btype == _BT_EPB:
            ifid, hi, lo, caplen, orig = struct.unpack_from(endian + "IIIII", body, 0)
        else:
            ifid, _drops, hi, lo, caplen, orig = struct.unpack_from(endian + "HHIIII", body, 0)
        if ifid >= len(ifaces):
            raise ValueError(f"interface id {ifid} not described ({len(ifaces)} interfaces)")
        if 20 + caplen > len(body):
            raise ValueError(f"captured length {caplen} runs past the block")
        iface = ifaces[ifid]
        units = (hi << 32) | lo
        ts = units * iface.mul // iface.div + iface.offset_ns
        return PcapRecord(ts, bytes(body[20 : 20 + caplen]), orig, ifid, iface.linktype)
    if btype == _BT_SPB:
        if len(body) < 4:
            raise ValueError("simple packet block too short")
        if not ifaces:
            raise ValueError("simple packet block before any interface description")
        (orig,) = struct.unpack_from(endian + "I", body, 0)
        iface = ifaces[0]
        caplen = min(orig, len(body) - 4)
        if iface.snaplen:
            caplen = min(caplen, iface.snaplen)
        return PcapRecord(0, bytes(body[4 : 4 + caplen]), orig, 0, iface.linktype)
    return None  # unknown or uninteresting block: skipped


# -- writing ------------------------------------------------------------------


class PcapWriter:
    """Write a classic pcap file, one record at a time.

    ``with PcapWriter(path) as w: w.write(frame, timestamp_ns=t)``.
    ``nanosecond=True`` (default) writes the 0xa1b23c4d magic and keeps full
    ns timestamps; ``False`` writes microseconds (ns truncated).  Native byte
    order; ``linktype`` Ethernet unless told.  Data longer than ``snaplen`` is
    cut and its original length kept.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        nanosecond: bool = True,
        linktype: int = LINKTYPE_ETHERNET,
        snaplen: int = DEFAULT_SNAPLEN,
    ) -> None:
        if snaplen <= 0:
            raise ValueError(f"snaplen must be positive, got {snaplen}")
        self.path = os.fspath(path)
        self.nanosecond = nanosecond
        self.linktype = linktype
        self.snaplen = snaplen
        self.count = 0
        self._rec = struct.Struct("=IIII")
        self._f: BinaryIO | None = open(self.path, "wb")
        magic = _PCAP_MAGIC_NS if nanosecond else _PCAP_MAGIC_US
        self._f.write(struct.pack("=IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))

    def write(
        self,
        data: bytes | bytearray | memoryview,
        *,
        timestamp_ns: int,
        orig_len: int | None = None,
    ) -> None:
        """Append one packet captured at ``timestamp_ns`` (ns since the epoch)."""
        if self._f is None:
            raise ValueError(f"{self.path}: writer is closed")
        if timestamp_ns < 0:
            raise ValueError(f"timestamp must be >= 0, got {timestamp_ns}")
        b = bytes(data)
        orig = len(b) if orig_len is None else orig_len
        if orig < len(b):
            raise ValueError(f"orig_len {orig} < captured length {len(b)}")
        if len(b) > self.snaplen:
            b = b[: self.snaplen]
        sec, ns = divmod(timestamp_ns, 1_000_000_000)
        if sec > 0xFFFFFFFF:
            raise ValueError(f"timestamp {timestamp_ns} ns does not fit pcap's 32-bit seconds")
        frac = ns if self.nanosecond else ns // 1000
        self._f.write(self._rec.pack(sec, frac, len(b), orig))
        self._f.write(b)
        self.count += 1

    def write_record(self, rec: PcapRecord) -> None:
        """Append a record read from another file (timestamp, data, orig_len)."""
        self.write(rec.data, timestamp_ns=rec.timestamp_ns, orig_len=rec.orig_len)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
