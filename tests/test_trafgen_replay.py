"""Tests for nicemu.trafgen.replay: --fixcsum, timing, and a byte-identical round trip."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from shared_paths import CAPTURES as CAPS  # noqa: E402

from nicemu.pcap import PcapWriter, read_packets
from nicemu.trafgen.flows import make_flows
from nicemu.trafgen.replay import ReplayConfig, Replayer, fix_checksums, load_capture
from nicemu.trafgen.tcpstream import hostless_segments
from nicemu.wire import WireRx, WireTx

if not CAPS.is_dir():
    CAPS = Path(__file__).resolve().parents[2] / "shared" / "captures"


def _capture_sink(ep: str, out: str, ready: mp.Event) -> None:  # type: ignore[valid-type]
    with WireRx(ep) as rx, PcapWriter(out) as w:
        ready.set()  # type: ignore[attr-defined]
        while not rx.ended:
            got = rx.recv_batch(5000)
            if got is None:
                continue
            for f in got[0]:
                w.write(f, timestamp_ns=1)


@pytest.mark.parametrize(
    "name", ["zeek_ssh-dups.pcap", "chrissanders_http_ip4and6.pcapng"]
)
def test_round_trip_byte_identical(tmp_path: Path, name: str) -> None:
    src = CAPS / name
    ep = f"ipc://{tmp_path}/wire"
    out = tmp_path / "again.pcap"
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(target=_capture_sink, args=(ep, str(out), ready))
    p.start()
    try:
        assert ready.wait(10)
        tx = WireTx(ep)
        stats = Replayer(ReplayConfig(path=str(src), timing="max", loop=2)).run(tx)
        assert tx.close(confirm=True)
        p.join(10)
    finally:
        if p.is_alive():
            p.kill()
            p.join()
    assert p.exitcode == 0
    orig = [r.data for r in read_packets(src)]
    again = [r.data for r in read_packets(out)]
    assert stats.frames == 2 * len(orig)
    assert again == orig + orig


def test_fixcsum() -> None:
    flow = make_flows(1)[0]
    good = hostless_segments(flow, [100, 200])
    for g in good:
        bad = bytearray(g)
        bad[24] ^= 0x55  # IPv4 header checksum
        bad[-1] ^= 0x01  # payload byte: TCP checksum now wrong
        fixed = fix_checksums(bad)
        p = Ether(fixed)
        c, ipc = p[TCP].chksum, p[IP].chksum
        del p[TCP].chksum, p[IP].chksum
        q = Ether(bytes(p))
        assert q[TCP].chksum == c and q[IP].chksum == ipc
        assert fix_checksums(g) == g
    frames, _, _ = load_capture(CAPS / "chrissanders_http_ip4and6.pcapng")
    for f in frames:
        assert fix_checksums(fix_checksums(f)) == fix_checksums(f)
        assert len(fix_checksums(f)) == len(f)


def test_capture_timing_and_rate(tmp_path: Path) -> None:
    src = tmp_path / "t.pcap"
    with PcapWriter(src) as w:
        for i in range(20):
            w.write(hostless_segments(make_flows(1)[0], [10], syn=False, fin=False)[0],
                    timestamp_ns=1_000_000_000 + i * 5_000_000)  # fmt: skip
    ep = f"ipc://{tmp_path}/wire"
    with WireRx(ep) as rx:
        tx = WireTx(ep)
        stats = Replayer(ReplayConfig(path=str(src), timing="capture", batch=1)).run(tx)
        tx.close(confirm=False)
        assert 0.09 <= stats.elapsed_s < 0.5 and stats.frames == 20
        tx = WireTx(ep)
        stats = Replayer(ReplayConfig(path=str(src), timing="rate", rate="1k", loop=3)).run(tx)
        tx.close(confirm=False)
        assert stats.frames == 60 and 0.05 < stats.elapsed_s < 0.5
        n = 0
        while (got := rx.recv_batch(200)) is not None:
            n += len(got[0])
        assert n == 80


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="one of"):
        ReplayConfig(path="x", timing="fast")
    with pytest.raises(ValueError, match="needs a rate"):
        ReplayConfig(path="x", timing="rate")
    with pytest.raises(ValueError):
        ReplayConfig(path="x", loop=0)
