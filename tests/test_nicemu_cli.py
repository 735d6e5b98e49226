"""Tests for the nicemu command line (rss-hash)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nicemu.cli import main

MS_FLOW = ["--src", "66.9.149.187", "--dst", "161.142.100.80"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_rss_hash_tcp4(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "rss-hash", *MS_FLOW, "--sport", "2794", "--dport", "1766")
    assert rc == 0, err
    assert "hash:  0x51ccc178" in out
    assert "M_HASHTYPE_RSS_TCP_IPV4 (0x82)" in out
    assert "queue: 0 of 1" in out


def test_rss_hash_2tuple_and_queues(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "rss-hash", *MS_FLOW, "--queues", "8")
    assert rc == 0
    assert "0x323e8fc2" in out and "M_HASHTYPE_RSS_IPV4" in out
    # 0x323e8fc2 & 127 = 66, round-robin over 8 -> queue 2
    assert "queue: 2 of 8 (indirection entry 66)" in out


def test_rss_hash_ipv6_udp(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["rss-hash", "--src", "3ffe:2501:200:1fff::7", "--dst", "3ffe:2501:200:3::1",
            "--sport", "2794", "--dport", "1766", "--proto", "udp"]
    rc, out, _ = run(capsys, *args)
    assert rc == 0 and "0x40207d3d" in out and "M_HASHTYPE_RSS_UDP_IPV6 (0x89)" in out
    rc, out, _ = run(capsys, *args, "--no-udp-hash")
    assert rc == 0 and "0x2cc18cd5" in out and "M_HASHTYPE_RSS_IPV6 (0x83)" in out


def test_rss_hash_key_forms(capsys: pytest.CaptureFixture[str]) -> None:
    key = "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
    colons = ":".join(key[i : i + 2] for i in range(0, 80, 2))
    for k in (key, "0x" + key.upper(), colons):
        rc, out, _ = run(capsys, "rss-hash", *MS_FLOW, "--key", k)
        assert rc == 0 and "0x323e8fc2" in out
    rc, out, _ = run(capsys, "rss-hash", *MS_FLOW, "--key", "00" * 40)
    assert rc == 0 and "0x00000000" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--src", "1.2.3", "--dst", "1.2.3.4"], "not a valid address"),
        (["--src", "1.2.3.4", "--dst", "zz::1::2"], "IPv6"),
        (["--src", "1.2.3.4", "--dst", "::1"], "same family"),
        ([*MS_FLOW, "--sport", "65536", "--dport", "1"], "valid ports are 0..65535"),
        ([*MS_FLOW, "--sport", "-1", "--dport", "1"], "0..65535"),
        ([*MS_FLOW, "--sport", "http", "--dport", "1"], "not a port number"),
        ([*MS_FLOW, "--sport", "1"], "both --sport and --dport"),
        ([*MS_FLOW, "--key", "abcd"], "exactly 40 bytes"),
        ([*MS_FLOW, "--key", "xyz" * 27], "not hexadecimal"),
        ([*MS_FLOW, "--queues", "0"], "queues must be >= 1"),
        ([*MS_FLOW, "--queues", "many"], "queues must be >= 1"),
        ([*MS_FLOW, "--proto", "sctp"], "invalid choice"),
        (["--dst", "1.2.3.4"], "--src"),
    ],
)
def test_rss_hash_bad_input(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    rc, out, err = run(capsys, "rss-hash", *args)
    assert rc == 2
    assert needle in err
    assert out == ""


def test_no_command_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys)
    assert rc == 2 and "rss-hash" in err
    rc, _, err = run(capsys, "frobnicate")
    assert rc == 2 and "invalid choice" in err
    rc, out, _ = run(capsys, "--help")
    assert rc == 0 and "rss-hash" in out
    rc, out, _ = run(capsys, "rss-hash", "--help")
    assert rc == 0 and "--queues" in out


def test_module_entry_point_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nicemu.cli", "rss-hash", "--src", "3ffe:501:8::260:97ff:fe40:efab",
         "--dst", "ff02::1", "--sport", "14230", "--dport", "4739", "--queues", "4"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "0xdde51bbf" in proc.stdout and "M_HASHTYPE_RSS_TCP_IPV6" in proc.stdout
    # 0xdde51bbf & 127 = 63 -> queue 3 of 4
    assert "queue: 3 of 4" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "nicemu.cli", "rss-hash", "--src", "x", "--dst", "1.1.1.1"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert bad.returncode == 2 and "not a valid address" in bad.stderr
