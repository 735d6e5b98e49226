"""Tests for dispatch.compare and `dispatch compare` end to end (real processes)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from dispatch.compare import summarize


def _doc(pps: float, p50: float) -> dict:
    return {"throughput_pps": pps, "delivered": 100, "drops": {},
            "latency_us": {"e2e": {"count": 100, "p50": p50, "p99": p50 * 2, "p999": p50 * 3}},
            "roles": {"ithread0": {"cpu_user_s": 1.0, "cpu_sys_s": 0.5, "voluntary_ctxt": 10,
                                   "involuntary_ctxt": 5}},
            "netisr": {"workstreams": [{"qdrops": 0}]}, "copies": {"copyout_bytes": 1800},
            "mbuf": {"peak_mbufs_in_use": 50}, "conservation": {"ok": True}}


def test_claims_only_where_ranges_do_not_overlap():
    runs = {"direct": [_doc(1000, 10), _doc(1010, 11), _doc(990, 12)],
            "deferred": [_doc(1005, 30), _doc(995, 31), _doc(1001, 29)]}
    s = summarize(runs)
    assert s["table"]["deferred"]["e2e_p50_us"] == {"median": 30, "min": 29, "max": 31}
    assert "deferred: e2e latency p50 (us) 2.73x direct" in s["claims"]
    assert not any("delivered pps" in c for c in s["claims"])  # overlapping: no claim


def test_compare_cli_end_to_end(tmp_path):
    j, c, png = tmp_path / "cmp.json", tmp_path / "cmp.csv", tmp_path / "cmp.svg"
    out = subprocess.run([sys.executable, "-m", "dispatch.cli", "compare", "direct", "deferred",
                          "--repeat", "2", "--count", "800", "--rate", "20k", "--quiet",
                          "--json", str(j), "--csv", str(c), "--plot", str(png)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(j.read_text())
    assert [len(doc["runs"][m]) for m in ("direct", "deferred")] == [2, 2]
    assert all(r["conservation"]["ok"] for rs in doc["runs"].values() for r in rs)
    table = doc["summary"]["table"]
    # the printed table shows the JSON's medians
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("bytes copied / packet"))
    assert f"{table['direct']['copy_bytes_per_pkt']['median']:.1f}" in line
    rows = list(csv.DictReader(c.open()))
    assert {r["model"] for r in rows} == {"direct", "deferred"}
    assert doc["kind"] == "compare" and doc["software"]["dispatch_emu"]
    svg = png.read_text()
    assert "<svg" in svg and "delivered pps" in svg
    # the delivered-pps medians of the table are the JSON's
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("delivered pps"))
    for m in ("direct", "deferred"):
        med = table[m]["throughput_pps"]["median"]
        assert (f"{med / 1000:.0f}k" if med >= 100_000 else f"{med:.0f}") in line


def test_one_run_per_model_claims_nothing():
    runs = {"direct": [_doc(1000, 10)], "deferred": [_doc(2000, 30)]}
    s = summarize(runs)
    assert s["claims"] == []
    from dispatch.compare import format_table

    assert "no spread to judge by" in format_table(s, 1)


def test_compare_usage_errors():
    for args, msg in ((["compare", "bogus"], "valid: direct, deferred"),
                      (["compare", "--repeat", "0"], "at least 1"),
                      (["compare", "--qlimit", "0"], "qlimit"),
                      (["compare", "--plot", "x.gif"], ".png, .svg or .pdf")):
        out = subprocess.run([sys.executable, "-m", "dispatch.cli", *args], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2 and msg in out.stderr, (args, out.stderr)


def test_drops_by_stage_and_reason_get_their_own_rows():
    from dispatch.compare import format_table

    lossy = _doc(900, 20)
    lossy["drops"] = {"netisr": {"qdrop": 7}, "nic": {"ring_full": 3}}
    runs = {"direct": [_doc(1000, 10), _doc(1000, 10)], "deferred": [lossy, lossy]}
    s = summarize(runs)
    assert s["table"]["deferred"]["drops.netisr.qdrop"]["median"] == 7
    assert s["table"]["direct"]["drops.netisr.qdrop"]["median"] == 0
    assert s["labels"]["drops.nic.ring_full"] == "drops: nic ring_full"
    text = format_table(s, 2)
    row = next(ln for ln in text.splitlines() if ln.strip().startswith("drops: netisr qdrop"))
    assert row.split()[-2:] == ["7.00", "±0.00"]
