"""Tests for nicemu.trafgen.generator: valid frames, size mixes, determinism, runs on a wire."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from nicemu.pcap import PcapWriter, read_packets
from nicemu.trafgen.flows import FlowSpec, parse_stamp
from nicemu.trafgen.generator import Generator, GeneratorConfig, parse_arrival
from nicemu.trafgen.impair import ImpairConfig
from nicemu.trafgen.tcpstream import TcpConfig
from nicemu.wire import WireRx, WireTx

V4 = FlowSpec(count=8, src="10.0.0.1-10.0.0.4", dst="10.1.0.1", sport="4000-4001")
V6 = FlowSpec(count=8, src="2001:db8::1-2001:db8::8", dst="2001:db8:1::1")


def assert_valid(frame: bytes) -> None:
    """scapy agrees with every length and checksum of the frame."""
    p = Ether(frame)
    ip = p[IP] if IP in p else p[IPv6]
    l4 = p[UDP] if UDP in p else p[TCP]
    c = l4.chksum
    del l4.chksum
    if IP in p:
        ipc = ip.chksum
        del ip.chksum, ip.len
    else:
        del ip.plen
    if UDP in p:
        del l4.len
    q = Ether(bytes(p))
    assert q[type(l4)].chksum == c
    if IP in p:
        assert q[IP].chksum == ipc
    assert bytes(q) == frame


@pytest.mark.parametrize("flows", [V4, V6], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize("size", ["64", "imix", "bimodal:0.3", "100:1,1000:1"])
def test_frames_valid_per_scapy(flows: FlowSpec, proto: str, size: str) -> None:
    g = Generator(GeneratorConfig(proto=proto, size=size, flows=flows, seed=2))
    frames = g.open_frames() + g.frames(300) + g.close_frames()
    for f in frames:
        assert_valid(f)
    stamped = [parse_stamp(f) for f in frames]
    assert sum(s is not None for s in stamped) == 300


def test_min_sizes_and_per_flow_sequence() -> None:
    g = Generator(GeneratorConfig(size="64", flows=V4, seed=1))
    frames = g.frames(1000)
    assert {len(f) for f in frames} == {60}  # 64 with FCS
    per: dict[tuple[int, int], list[int]] = {}
    for f in frames:
        p = Ether(f)
        st = parse_stamp(f)
        assert st is not None
        per.setdefault((p[IP].src, p[UDP].sport), []).append(st[0])  # type: ignore[arg-type]
    assert len(per) == 8
    for seqs in per.values():
        assert seqs == list(range(len(seqs)))
    g6 = Generator(GeneratorConfig(size="64", flows=V6))
    assert {len(f) for f in g6.frames(10)} == {78}
    gt = Generator(GeneratorConfig(proto="tcp", size="64"))
    assert {len(f) for f in gt.frames(10)} == {70}


def _ratio_ok(counts: Counter[int], probs: dict[int, float], n: int) -> None:
    for size, p in probs.items():
        sd = (n * p * (1 - p)) ** 0.5
        assert abs(counts[size] - n * p) <= 5 * sd, (size, counts[size], n * p)


def test_imix_and_bimodal_ratios() -> None:
    n = 24_000
    g = Generator(GeneratorConfig(size="imix", seed=4))
    _, c = np.unique(g.build_udp(n, now_ns=0)[0], return_counts=True)
    counts = Counter(dict(zip([60, 590, 1514], c.tolist())))
    _ratio_ok(counts, {60: 7 / 12, 590: 4 / 12, 1514: 1 / 12}, n)
    g = Generator(GeneratorConfig(size="bimodal:0.8", seed=4))
    counts = Counter(len(f) for f in g.frames(n))
    _ratio_ok(counts, {60: 0.8, 1514: 0.2}, n)


def test_deterministic_given_seed() -> None:
    cfg = GeneratorConfig(size="imix", flows=V4, seed=9,
                          impair=ImpairConfig(loss=0.05, dup=0.05, reorder=0.05))  # fmt: skip
    a = Generator(cfg, clock=lambda: 42).frames(500)
    b = Generator(cfg, clock=lambda: 42).frames(500)
    assert a == b
    # batching does not change the bytes
    g = Generator(cfg, clock=lambda: 42)
    c: list[bytes] = []
    for k in (1, 7, 100, 392):
        c += g.frames(k)
    assert c == a
    # with the real clock only the stamp time and the checksum over it differ
    d = Generator(cfg).frames(500)

    def mask(f: bytes) -> bytes:
        b2 = bytearray(f)
        if len(b2) >= 58:
            b2[40:42] = b"\0\0"
            b2[50:58] = bytes(8)
        return bytes(b2)

    assert [mask(x) for x in a] == [mask(x) for x in d]
    assert Generator(GeneratorConfig(size="imix", flows=V4, seed=10)).frames(50) != a[:50]


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="one of"):
        GeneratorConfig(proto="sctp")
    with pytest.raises(ValueError, match="valid forms"):
        GeneratorConfig(size="63")
    with pytest.raises(ValueError, match="valid forms"):
        GeneratorConfig(rate="fast")
    with pytest.raises(ValueError, match="valid forms"):
        parse_arrival("onoff:1")
    assert parse_arrival("onoff:0.1:0.2") == ("onoff", 0.1, 0.2)
    with pytest.raises(ValueError, match="count or duration"):
        Generator(GeneratorConfig()).run(None)  # type: ignore[arg-type]


def _receive_all(rx: WireRx, out: list[bytes]) -> None:
    while not rx.ended:
        got = rx.recv_batch(2000)
        if got is not None:
            out.extend(bytes(f) for f in got[0])


def test_run_over_ipc_with_capture(tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/wire"
    cap = tmp_path / "sent.pcap"
    cfg = GeneratorConfig(proto="tcp", size="imix", count=2000, rate="max", flows=V4,
                          impair=ImpairConfig(loss=0.01, dup=0.01), seed=5)  # fmt: skip
    got: list[bytes] = []
    with WireRx(ep) as rx:
        th = threading.Thread(target=_receive_all, args=(rx, got))
        th.start()
        tx = WireTx(ep)
        with PcapWriter(cap) as w:
            stats = Generator(cfg).run(tx, capture=w)
        assert tx.close(confirm=True)
        th.join()
    assert stats.scheduled == 2000 and stats.syn == 8 and stats.fin == 8
    assert stats.frames == len(got) == 2000 + 16 - stats.impairments["loss"] + stats.impairments[
        "dup"]  # fmt: skip
    assert [r.data for r in read_packets(cap)] == got
    if shutil.which("tshark"):
        r = subprocess.run(["tshark", "-r", str(cap), "-o", "tcp.check_checksum:TRUE",
                            "-Y", "tcp.checksum.status == 0 || ip.checksum.status == 0 || "
                            "_ws.malformed || _ws.expert.severity >= error"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "", r.stdout[:2000]
        r = subprocess.run(["tshark", "-r", str(cap)], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
        assert len(r.stdout.splitlines()) == len(got)


def test_udp_tshark_valid(tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    cap = tmp_path / "udp.pcap"
    g = Generator(GeneratorConfig(size="imix", flows=V6, seed=1))
    with PcapWriter(cap) as w:
        for f in g.frames(500):
            w.write(f, timestamp_ns=1)
    r = subprocess.run(["tshark", "-r", str(cap), "-o", "udp.check_checksum:TRUE", "-Y",
                        "udp.checksum.status != 1 || _ws.malformed"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout[:2000] + r.stderr


def test_paced_run_reaches_rate(tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/wire"
    cfg = GeneratorConfig(rate="20k", duration_s=0.5, flows=V4, arrival="poisson")
    got: list[bytes] = []
    with WireRx(ep) as rx:
        th = threading.Thread(target=_receive_all, args=(rx, got))
        th.start()
        tx = WireTx(ep)
        stats = Generator(cfg).run(tx)
        tx.close()
        th.join()
    assert len(got) == stats.frames
    assert stats.target_pps is not None and stats.ratio is not None
    assert 0.9 < stats.ratio <= 1.05 and 7000 < stats.frames < 13000
    d = stats.to_dict()
    assert d["pacer"]["frames"] == stats.frames


def test_bps_rate_uses_mean_frame() -> None:
    g = Generator(GeneratorConfig(size="imix", rate="100Mbps"))
    assert g.mean_frame == pytest.approx(4294 / 12)
    g2 = Generator(GeneratorConfig(proto="tcp", size="64", tcp=TcpConfig()))
    assert g2.mean_frame == 70
