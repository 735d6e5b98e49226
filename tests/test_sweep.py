"""Tests for dispatch.sweep: rate grids, MLFRR / NDR / collapse, and `dispatch sweep` end to end."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest

from dispatch.sweep import analyse, next_trial, parse_rates


def test_parse_rates_lists_and_ranges():
    assert parse_rates("10k,20k,max") == [10_000.0, 20_000.0, math.inf]
    assert parse_rates("10k:30k:3") == [10_000.0, 20_000.0, 30_000.0]
    assert parse_rates("1M") == [1e6]


@pytest.mark.parametrize("text,msg", [
    ("fast", "bad rate 'fast'"), ("20k,10k", "increasing order"), ("10k:20k:1", "STEPS >= 2"),
    ("10k:20k", "START:STOP:STEPS"), ("10k:5k:3", "START < STOP"), ("", "no rates"),
    ("10k:20k:x", "STEPS must be an integer"), ("10Mbps", "packets per second")])
def test_parse_rates_rejects_with_the_valid_forms(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_rates(text)


def _pt(rate: float, delivered: float, dropped: int, kind: str = "grid") -> dict:
    offered = int(rate)
    return {"kind": kind, "rate": rate, "offered": offered, "delivered": offered - dropped,
            "dropped": dropped, "offered_pps": rate, "delivered_pps": delivered,
            "loss_ratio": dropped / offered}


def test_mlfrr_ndr_bracket_and_collapse():
    pts = [_pt(10e3, 10e3, 0), _pt(20e3, 20e3, 0), _pt(40e3, 30e3, 500), _pt(80e3, 12e3, 9000)]
    a = analyse(pts, loss_ratio=0.0, collapse_fraction=0.1)
    assert a["mlfrr_pps"] == 20e3
    assert a["ndr_bracket"] == [20e3, 40e3]
    c = a["collapse"]
    assert c["peak_offered_pps"] == 40e3 and c["at_offered_pps"] == 80e3
    assert c["fall"] == pytest.approx(0.6)
    # with a loss ratio allowed (a PDR), the lossy 40k point counts as passing
    assert analyse(pts, loss_ratio=0.02, collapse_fraction=0.1)["ndr_pps"] == 40e3


def test_no_collapse_when_delivered_saturates():
    pts = [_pt(10e3, 10e3, 0), _pt(40e3, 30e3, 100), _pt(80e3, 29e3, 900)]
    assert analyse(pts, loss_ratio=0.0, collapse_fraction=0.1)["collapse"] is None


def test_ndr_binary_search_converges_to_the_threshold():
    """A system that drops above 37 kpps: the search brackets 37k within the tolerance."""
    threshold = 37_000.0

    def measure(rate: float, kind: str) -> dict:
        return _pt(rate, min(rate, threshold), 0 if rate <= threshold else 10, kind)

    pts = [measure(r, "grid") for r in (10e3, 20e3, 50e3, 100e3)]
    trials = 0
    while (t := next_trial(pts, loss_ratio=0.0, tolerance=0.02)) is not None:
        pts.append(measure(t, "ndr"))
        trials += 1
    lo, hi = analyse(pts, loss_ratio=0.0, collapse_fraction=0.1)["ndr_bracket"]
    assert lo <= threshold < hi and (hi - lo) <= 0.02 * hi
    assert 1 <= trials <= 8


def test_ndr_search_stops_when_nothing_was_lost():
    pts = [_pt(10e3, 10e3, 0), _pt(20e3, 20e3, 0)]
    assert next_trial(pts, loss_ratio=0.0, tolerance=0.05) is None


def _dispatch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dispatch.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_sweep_cli_end_to_end(tmp_path):
    out = tmp_path / "sw"
    r = _dispatch("sweep", "--model", "direct,deferred", "--rates", "4k,8k", "--count", "400",
                  "--quiet", "--out", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["kind"] == "sweep" and doc["models"] == ["direct", "deferred"]
    assert doc["software"]["dispatch_emu"]
    assert doc["conservation_ok"]
    for m in ("direct", "deferred"):
        assert len(doc["runs"][m]) == len(doc["points"][m]) >= 2
        assert doc["summary"][m]["peak_delivered_pps"] > 0
    # the printed table shows the JSON's numbers
    lines = r.stdout.splitlines()
    for m in ("direct", "deferred"):
        block = lines[lines.index(f"model {m}"):]
        for p in doc["points"][m]:
            row = next(ln for ln in block if ln.split()[0] == f"{p['rate'] / 1e3:.4g}k")
            assert row.split()[1:4] == [f"{p['offered_pps']:.0f}", f"{p['delivered_pps']:.0f}",
                                        str(p["dropped"])]
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == sum(len(v) for v in doc["points"].values())
    assert {float(x["delivered_pps"]) for x in rows} == {
        p["delivered_pps"] for v in doc["points"].values() for p in v}
    for name in ("delivered", "latency", "drops"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (out / f"{name}.svg").read_bytes()[:2000]


@pytest.mark.parametrize("args,msg", [
    (["--model", "bogus", "--rates", "10k"], "valid: direct, deferred"),
    (["--rates", "fast"], "bad rate 'fast'"),
    (["--rates", "20k,10k"], "increasing order"),
    ([], "give the offered rates"),
    (["--rates", "10k", "--tolerance", "0"], "--tolerance"),
    (["--rates", "10k", "--qlimit", "0"], "qlimit")])
def test_sweep_usage_errors_exit_2(args, msg):
    r = _dispatch("sweep", *args, timeout=60)
    assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
