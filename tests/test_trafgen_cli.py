"""Tests for ``nicemu trafgen``: error paths (exit 2, naming the problem) and real runs."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from shared_paths import CAPTURES

from nicemu.cli import main
from nicemu.pcap import read_packets
from nicemu.wire import WireRx


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["trafgen", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--wire", "/tmp/x"], "ipc://PATH"),
        (["--wire", "ipc:///x", "--rate", "fast"], "valid forms"),
        (["--wire", "ipc:///x", "--size", "63"], "valid forms"),
        (["--wire", "ipc:///x", "--size", "jumbo"], "valid forms"),
        (["--wire", "ipc:///x", "--loss", "2"], "0..1"),
        (["--wire", "ipc:///x", "--flows", "0"], ">= 1"),
        (["--wire", "ipc:///x", "--src", "10.0.0.999"], "valid forms"),
        (["--wire", "ipc:///x", "--sport", "99999"], "valid forms"),
        (["--wire", "ipc:///x", "--src", "10.0.0.1", "--dst", "::1"], "same family"),
        (["--wire", "ipc:///x", "--flows", "5", "--sport", "1-2"], "distinct"),
        (["--wire", "ipc:///x", "--arrival", "bursty"], "onoff:ON:OFF"),
        (["--wire", "ipc:///x", "--rr", "1"], "REQ:RESP"),
        (["--wire", "ipc:///x", "--rr", "1:1"], "--reply"),
        (["--wire", "ipc:///x", "--fixcsum"], "--replay"),
        (["--wire", "ipc:///x", "--replay", "/nonexistent.pcap"], "nonexistent"),
        (["--wire", "ipc:///x", "--count", "5", "--duration", "1"], "not allowed"),
        (["--wire", "ipc:///x", "--proto", "sctp"], "invalid choice"),
        (["--wire", "ipc:///x", "--handshake", "await", "--proto", "tcp"], "--reply"),
        (["--wire", "ipc:///x", "--line-rate", "1000"], "bits/s"),
    ],
)
def test_errors_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], needle: str) -> None:
    rc, _out, err = run(capsys, *args)
    assert rc == 2
    assert needle in err


def _sink(rx: WireRx, n: list[int]) -> None:
    while not rx.ended:
        got = rx.recv_batch(2000)
        if got is not None:
            n[0] += len(got[0])


def test_run_json_and_capture(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/wire"
    n = [0]
    with WireRx(ep) as rx:
        th = threading.Thread(target=_sink, args=(rx, n))
        th.start()
        cap = tmp_path / "c.pcap"
        rc, out, err = run(capsys, "--wire", ep, "--count", "500", "--flows", "4", "--size",
                           "imix", "--dup", "0.1", "--seed", "3", "--capture", str(cap),
                           "--json")  # fmt: skip
        th.join()
    assert rc == 0, err
    d = json.loads(out)
    assert d["confirmed"] and d["scheduled"] == 500
    assert d["frames"] == n[0] == 500 + d["impairments"]["dup"] > 500
    assert len(list(read_packets(cap))) == n[0]


def test_run_summary_paced_tcp(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/wire"
    n = [0]
    with WireRx(ep) as rx:
        th = threading.Thread(target=_sink, args=(rx, n))
        th.start()
        rc, out, err = run(capsys, "--wire", ep, "--proto", "tcp", "--rate", "5k",
                           "--duration", "0.2", "--flows", "2", "--arrival", "onoff:0.05:0.05")
        th.join()
    assert rc == 0, err
    assert "sent:" in out and "target" in out and "tcp: syn 2" in out


def test_replay_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/wire"
    n = [0]
    src = str(CAPTURES / "chrissanders_tcp_dupack.pcapng")
    if not Path(src).exists():
        pytest.skip("captures not present")
    with WireRx(ep) as rx:
        th = threading.Thread(target=_sink, args=(rx, n))
        th.start()
        rc, out, err = run(capsys, "--wire", ep, "--replay", src, "--timing", "max",
                           "--loop", "3", "--fixcsum")  # fmt: skip
        th.join()
    assert rc == 0, err
    assert n[0] == 27 and "sent: 27 frames" in out
