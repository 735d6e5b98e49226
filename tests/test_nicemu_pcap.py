"""Tests for nicemu.pcap against scapy and tshark, plus hand-built and broken files."""

from __future__ import annotations

import shutil
import struct
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shared_paths import CAPTURES  # noqa: E402

from nicemu.pcap import (
    LINKTYPE_ETHERNET,
    PcapError,
    PcapRecord,
    PcapWriter,
    detect_format,
    read_packets,
    read_pcap,
    read_pcapng,
)

FILES = sorted(CAPTURES.glob("*.pcap*"))
EXPECTED_COUNTS = {
    "chrissanders_http_ip4and6.pcapng": 20,
    "chrissanders_tcp_dupack.pcapng": 9,
    "zeek_rdp-proprietary-encryption.pcap": 542,
    "zeek_ssh-dups.pcap": 377,
}


def test_captures_present() -> None:
    assert {p.name for p in FILES} == set(EXPECTED_COUNTS)


def _scapy_records(path: Path) -> list[tuple[int, bytes, int]]:
    """(timestamp ns, bytes, wire length) per packet, as scapy reads them."""
    from scapy.utils import PcapNgReader, PcapReader

    reader_cls = PcapNgReader if path.suffix == ".pcapng" else PcapReader
    out = []
    with reader_cls(str(path)) as reader:
        for p in reader:
            ts = int(Decimal(str(p.time)) * 10**9)
            out.append((ts, bytes(p.original), int(p.wirelen)))
    return out


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_against_scapy(path: Path) -> None:
    from scapy.utils import rdpcap

    ours = list(read_packets(path))
    assert len(ours) == EXPECTED_COUNTS[path.name]
    assert len(rdpcap(str(path))) == len(ours)
    theirs = _scapy_records(path)
    assert len(theirs) == len(ours)
    for i, (rec, (ts, data, wirelen)) in enumerate(zip(ours, theirs)):
        assert rec.data == data, f"packet {i}"
        assert rec.orig_len == wirelen, f"packet {i}"
        assert abs(rec.timestamp_ns - ts) <= 1000, f"packet {i}: {rec.timestamp_ns} vs {ts}"
        assert rec.linktype == LINKTYPE_ETHERNET
        assert rec.interface == 0


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_against_tshark(path: Path) -> None:
    proc = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.len", "-e", "frame.cap_len",
         "-e", "frame.time_epoch"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    rows = [line.split("\t") for line in proc.stdout.splitlines() if line]
    ours = list(read_packets(path))
    assert len(rows) == len(ours)
    for rec, (flen, caplen, epoch) in zip(ours, rows):
        assert int(flen) == rec.orig_len
        assert int(caplen) == len(rec.data)
        sec, _, frac = epoch.partition(".")
        assert int(sec) * 10**9 + int(frac.ljust(9, "0")[:9]) == rec.timestamp_ns


def test_detect_format() -> None:
    for p in FILES:
        assert detect_format(p) == ("pcapng" if p.suffix == ".pcapng" else "pcap")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("nanosecond", [True, False])
def test_round_trip(path: Path, nanosecond: bool, tmp_path: Path) -> None:
    ours = list(read_packets(path))
    out = tmp_path / "rt.pcap"
    with PcapWriter(out, nanosecond=nanosecond) as w:
        for rec in ours:
            w.write_record(rec)
    assert w.count == len(ours)
    again = list(read_packets(out))
    assert [r.data for r in again] == [r.data for r in ours]
    assert [r.orig_len for r in again] == [r.orig_len for r in ours]
    # The captures hold microsecond timestamps, so both resolutions keep them.
    assert [r.timestamp_ns for r in again] == [r.timestamp_ns for r in ours]
    # scapy reads what we wrote the same way
    theirs = _scapy_records(out)
    assert [(d, n) for _, d, n in theirs] == [(r.data, r.orig_len) for r in ours]


def test_writer_resolution_and_snaplen(tmp_path: Path) -> None:
    p = tmp_path / "w.pcap"
    t = 1_700_000_000_123_456_789
    with PcapWriter(p, nanosecond=True, snaplen=100) as w:
        w.write(b"\xaa" * 150, timestamp_ns=t)
        w.write(b"\xbb" * 60, timestamp_ns=t + 1, orig_len=64)
    recs = list(read_pcap(p))
    assert recs == [
        PcapRecord(t, b"\xaa" * 100, 150, 0, LINKTYPE_ETHERNET),
        PcapRecord(t + 1, b"\xbb" * 60, 64, 0, LINKTYPE_ETHERNET),
    ]
    with PcapWriter(tmp_path / "u.pcap", nanosecond=False) as w:
        w.write(b"\x00" * 60, timestamp_ns=t)
    assert next(read_packets(tmp_path / "u.pcap")).timestamp_ns == t // 1000 * 1000
    w = PcapWriter(tmp_path / "c.pcap")
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.write(b"", timestamp_ns=0)
    with PcapWriter(tmp_path / "d.pcap") as w, pytest.raises(ValueError, match="orig_len"):
        w.write(b"\x00" * 10, timestamp_ns=0, orig_len=5)


# -- hand-built files: byte orders, resolutions, block kinds --------------------


def _classic(endian: str, magic: int, recs: list[tuple[int, int, bytes, int]]) -> bytes:
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1)
    for sec, frac, data, orig in recs:
        out += struct.pack(endian + "IIII", sec, frac, len(data), orig) + data
    return out


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize(("magic", "mult"), [(0xA1B2C3D4, 1000), (0xA1B23C4D, 1)])
def test_classic_byte_orders(endian: str, magic: int, mult: int, tmp_path: Path) -> None:
    p = tmp_path / "x.pcap"
    p.write_bytes(_classic(endian, magic, [(10, 999, b"abc", 3), (11, 5, b"", 70)]))
    assert detect_format(p) == "pcap"
    assert list(read_packets(p)) == [
        PcapRecord(10 * 10**9 + 999 * mult, b"abc", 3),
        PcapRecord(11 * 10**9 + 5 * mult, b"", 70),
    ]


def _block(endian: str, btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(endian + "II", btype, n) + body + struct.pack(endian + "I", n)


def _shb(endian: str) -> bytes:
    return _block(endian, 0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def _opt(endian: str, code: int, value: bytes) -> bytes:
    return struct.pack(endian + "HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def _idb(endian: str, linktype: int = 1, snaplen: int = 0, opts: bytes = b"") -> bytes:
    if opts:
        opts += struct.pack(endian + "HH", 0, 0)
    return _block(endian, 1, struct.pack(endian + "HHI", linktype, 0, snaplen) + opts)


def _epb(endian: str, ifid: int, units: int, data: bytes, orig: int | None = None) -> bytes:
    hdr = struct.pack(
        endian + "IIIII", ifid, units >> 32, units & 0xFFFFFFFF, len(data),
        len(data) if orig is None else orig,
    )
    return _block(endian, 6, hdr + data)


def _spb(endian: str, data: bytes, orig: int | None = None) -> bytes:
    return _block(endian, 3, struct.pack(endian + "I", len(data) if orig is None else orig) + data)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_blocks_and_resolutions(endian: str, tmp_path: Path) -> None:
    e = endian
    blob = (
        _shb(e)
        + _idb(e)  # default: microseconds
        + _idb(e, opts=_opt(e, 9, b"\x09"))  # nanoseconds
        + _idb(e, linktype=101, opts=_opt(e, 9, b"\x94"))  # 2^-20 s
        + _idb(e, opts=_opt(e, 9, b"\x03") + _opt(e, 14, struct.pack(e + "q", 100)))  # ms + 100 s
        + _block(e, 0x0BAD, b"unknown block, skipped")
        + _epb(e, 0, 1_500_000, b"\x01" * 5)
        + _epb(e, 1, 1_500_000_123, b"\x02" * 4, orig=1000)
        + _epb(e, 2, 3 << 20, b"\x03")
        + _epb(e, 3, 7, b"")
        + _spb(e, b"\x04" * 7)
        + _block(e, 2, struct.pack(e + "HHIIII", 1, 0, 0, 42, 2, 2) + b"\x05\x05")  # obsolete PB
        + _block(e, 5, b"\x00" * 8)  # interface statistics: skipped
    )
    p = tmp_path / "x.pcapng"
    p.write_bytes(blob)
    assert detect_format(p) == "pcapng"
    assert list(read_packets(p)) == [
        PcapRecord(1_500_000_000, b"\x01" * 5, 5, 0, 1),
        PcapRecord(1_500_000_123, b"\x02" * 4, 1000, 1, 1),
        PcapRecord(3_000_000_000, b"\x03", 1, 2, 101),
        PcapRecord(100_007_000_000, b"", 0, 3, 1),
        PcapRecord(0, b"\x04" * 7, 7, 0, 1),
        PcapRecord(42, b"\x05\x05", 2, 1, 1),
    ]


def test_pcapng_sections_change_byte_order(tmp_path: Path) -> None:
    blob = (
        _shb("<") + _idb("<") + _epb("<", 0, 1, b"a")
        + _shb(">") + _idb(">", opts=_opt(">", 9, b"\x09")) + _epb(">", 0, 2, b"b")
    )
    p = tmp_path / "s.pcapng"
    p.write_bytes(blob)
    assert [(r.timestamp_ns, r.data) for r in read_pcapng(p)] == [(1000, b"a"), (2, b"b")]


def test_spb_respects_snaplen(tmp_path: Path) -> None:
    p = tmp_path / "spb.pcapng"
    p.write_bytes(_shb("<") + _idb("<", snaplen=4) + _spb("<", b"\x09" * 8, orig=1500))
    assert list(read_packets(p)) == [PcapRecord(0, b"\x09" * 4, 1500, 0, 1)]


# -- malformed files ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("blob", "needle"),
    [
        (b"", "too short"),
        (b"\x00\x01\x02\x03garbage", "unknown magic"),
        (struct.pack("<I", 0xA1B2C3D4) + b"\x02\x00", "truncated pcap file header"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 1, 0, 0, 0, 0, 1), "unsupported pcap version"),
        (_classic("<", 0xA1B2C3D4, [(1, 2, b"abcdef", 6)])[:-2], "truncated packet data"),
        (_classic("<", 0xA1B2C3D4, [(1, 2, b"ab", 2)]) + b"\x00" * 5, "truncated record header"),
        (_classic("<", 0xA1B2C3D4, []) + struct.pack("<IIII", 0, 0, 2**30, 10), "implausible"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\xde\xad\xbe\xef" + b"\x00" * 16, "byte-order magic"),
        (_shb("<")[:-4] + b"\x00\x00\x00\x00", "trailing length"),
        (_shb("<") + _idb("<") + _epb("<", 5, 0, b"x"), "interface id 5"),
        (_shb("<") + struct.pack("<II", 6, 13) + b"\x00" * 5, "multiple of 4"),
        (_shb("<") + _spb("<", b"x"), "before any interface"),
        (_shb("<") + _idb("<") + _epb("<", 0, 0, b"xyz")[:-3], "truncated block"),
        (_idb("<"), "unknown magic"),
    ],
)
def test_malformed(blob: bytes, needle: str, tmp_path: Path) -> None:
    p = tmp_path / "bad.cap"
    p.write_bytes(blob)
    with pytest.raises(PcapError, match=needle) as info:
        list(read_packets(p))
    assert str(p) in str(info.value)
    assert "offset" in str(info.value)
    assert info.value.path == str(p)


def test_error_offset_points_at_record(tmp_path: Path) -> None:
    blob = _classic("<", 0xA1B2C3D4, [(1, 2, b"abcd", 4), (1, 3, b"efgh", 4)])
    p = tmp_path / "t.pcap"
    p.write_bytes(blob[:-1])
    with pytest.raises(PcapError) as info:
        list(read_packets(p))
    assert info.value.offset == 24 + 20 + 16  # second record's data


# -- truncation fuzzing ----------------------------------------------------------


def _prefix_or_error(path: Path, full: list[PcapRecord]) -> None:
    got: list[PcapRecord] = []
    try:
        for rec in read_packets(path):
            got.append(rec)
    except PcapError:
        pass
    assert got == full[: len(got)]


SMALL = [CAPTURES / "chrissanders_tcp_dupack.pcapng", CAPTURES / "zeek_ssh-dups.pcap"]


@pytest.mark.parametrize("src", SMALL, ids=lambda p: p.name)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_truncation_raises_only_pcap_error(src: Path, tmp_path: Path, data: st.DataObject) -> None:
    blob = src.read_bytes()[:20_000]
    full = list(read_packets(src))
    cut = data.draw(st.integers(min_value=0, max_value=len(blob)), label="cut")
    p = tmp_path / "trunc"
    p.write_bytes(blob[:cut])
    _prefix_or_error(p, full)


@pytest.mark.parametrize("src", SMALL, ids=lambda p: p.name)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_corruption_raises_only_pcap_error(src: Path, tmp_path: Path, data: st.DataObject) -> None:
    blob = bytearray(src.read_bytes()[:4000])
    pos = data.draw(st.integers(min_value=0, max_value=len(blob) - 1), label="pos")
    blob[pos] = data.draw(st.integers(min_value=0, max_value=255), label="byte")
    p = tmp_path / "corrupt"
    p.write_bytes(bytes(blob))
    try:
        for rec in read_packets(p):
            assert isinstance(rec.data, bytes)
    except PcapError:
        pass
