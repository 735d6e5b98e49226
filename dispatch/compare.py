"""Side-by-side comparison of dispatch models: interleaved runs, medians, honest claims.

A shared 2-core machine drifts: another process wakes, the CPU clocks
change. So runs are interleaved (A B A B ...) on one set of live roles
(re-planned per model, not restarted), each figure is the median of its R
runs with its spread (min..max), and a sentence such as "direct: p50 latency
0.62x deferred" is written only where the two models' ranges do not overlap.
Where they overlap, the table shows the figures and nothing is claimed.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dispatch.runtime.config import RunConfig

Metric = tuple[str, str, Callable[[dict[str, Any]], float | None], bool]  # key, label, fn, lower


def _lat(stage: str, pct: str) -> Callable[[dict[str, Any]], float | None]:
    def f(doc: dict[str, Any]) -> float | None:
        v = doc["latency_us"].get(stage, {})
        return v.get(pct) if v.get("count") else None

    return f


def _cpu(doc: dict[str, Any]) -> float:
    return sum(r.get("cpu_user_s", 0.0) + r.get("cpu_sys_s", 0.0) for r in doc["roles"].values())


def _per_pkt(fn: Callable[[dict[str, Any]], float]) -> Callable[[dict[str, Any]], float | None]:
    def f(doc: dict[str, Any]) -> float | None:
        return fn(doc) / doc["delivered"] if doc["delivered"] else None

    return f


def _csw(doc: dict[str, Any]) -> float:
    return sum(r.get("voluntary_ctxt", 0) + r.get("involuntary_ctxt", 0)
               for r in doc["roles"].values())


def _drops(doc: dict[str, Any]) -> float:
    return float(sum(n for r in doc["drops"].values() for n in r.values()))


def _qdrops(doc: dict[str, Any]) -> float:
    return float(sum(w["qdrops"] for w in doc["netisr"]["workstreams"]))


METRICS: list[Metric] = [
    ("throughput_pps", "delivered pps", lambda d: d["throughput_pps"], False),
    ("e2e_p50_us", "e2e latency p50 (us)", _lat("e2e", "p50"), True),
    ("e2e_p99_us", "e2e latency p99 (us)", _lat("e2e", "p99"), True),
    ("e2e_p999_us", "e2e latency p99.9 (us)", _lat("e2e", "p999"), True),
    ("dma_to_ithread_p50_us", "  dma->ithread p50 (us)", _lat("dma_to_ithread", "p50"), True),
    ("ithread_p50_us", "  ithread work p50 (us)", _lat("ithread", "p50"), True),
    ("netisr_queue_p50_us", "  netisr queue p50 (us)", _lat("netisr_queue", "p50"), True),
    ("netisr_p50_us", "  netisr work p50 (us)", _lat("netisr", "p50"), True),
    ("socket_queue_p50_us", "  socket queue p50 (us)", _lat("socket_queue", "p50"), True),
    ("drops", "drops (all stages)", _drops, True),
    ("qdrops", "netisr QDrops", _qdrops, True),
    ("cpu_s", "CPU seconds (all roles)", _cpu, True),
    ("csw_per_pkt", "context switches / packet", _per_pkt(_csw), True),
    ("copy_bytes_per_pkt", "bytes copied / packet",
     _per_pkt(lambda d: float(sum(d["copies"].values()))), True),
    ("peak_mbufs", "peak mbufs in use", lambda d: d["mbuf"].get("peak_mbufs_in_use"), True),
]
ROLE_PREFIXES = ("nic", "ithread", "netisr", "user", "txthread", "trafgen")


def _fig(*path: str) -> Callable[[dict[str, Any]], float | None]:
    def f(doc: dict[str, Any]) -> float | None:
        v: Any = doc.get("egress", {}).get("figures", {})
        for k in path:
            if not isinstance(v, dict):
                return None
            v = v.get(k)
        return None if v is None else float(v)

    return f


# what the generator measured, per workload: (key, label, getter, lower is better)
WORKLOAD_METRICS: dict[str, list[Metric]] = {
    "rr": [("rr_tps", "rr transactions/s", _fig("tps"), False),
           ("rr_rtt_p50_us", "rr RTT p50 (us)", _fig("rtt_us", "p50"), True),
           ("rr_rtt_p99_us", "rr RTT p99 (us)", _fig("rtt_us", "p99"), True),
           ("rr_rtt_p999_us", "rr RTT p99.9 (us)", _fig("rtt_us", "p999"), True)],
    "tx": [("tx_goodput_mbps", "tx goodput (Mbit/s)",
            lambda d: (_fig("tcp_goodput_bps")(d) or _fig("goodput_bps")(d) or 0) / 1e6,
            False),
           ("tx_pps", "tx frames at the generator /s", _fig("received_pps"), False),
           ("tx_lat_p50_us", "tx latency p50 (us)", _fig("latency_us", "p50"), True),
           ("tx_lat_p99_us", "tx latency p99 (us)", _fig("latency_us", "p99"), True)],
    "forward": [("fwd_pps", "forwarded pps", _fig("received_pps"), False),
                ("fwd_lat_p50_us", "forwarding latency p50 (us)", _fig("latency_us", "p50"),
                 True),
                ("fwd_lat_p99_us", "forwarding latency p99 (us)", _fig("latency_us", "p99"),
                 True)],
}


def _drop(stage: str, reason: str) -> Callable[[dict[str, Any]], float | None]:
    def f(doc: dict[str, Any]) -> float:
        return float(doc["drops"].get(stage, {}).get(reason, 0))

    return f


def metrics_for(runs: dict[str, list[dict[str, Any]]]) -> list[Metric]:
    """The fixed metrics, then one row per drop stage and reason seen in any run
    (after the all-stages total)."""
    seen = sorted({(st, r) for ds in runs.values() for d in ds
                   for st, rs in d["drops"].items() for r in rs})
    rows = [(f"drops.{st}.{r}", f"  drops: {st} {r}", _drop(st, r), True) for st, r in seen]
    at = next(i for i, m in enumerate(METRICS) if m[0] == "drops") + 1
    workloads = {d.get("workload", "rx") for ds in runs.values() for d in ds}
    first = [m for w in sorted(workloads) for m in WORKLOAD_METRICS.get(w, [])]
    return first + METRICS[:at] + rows + METRICS[at:]


@dataclass(frozen=True, slots=True)
class Cell:
    median: float | None
    lo: float | None
    hi: float | None

    def fmt(self) -> str:
        if self.median is None:
            return "-"
        spread = ((self.hi or 0) - (self.lo or 0)) / 2
        return f"{_num(self.median)} ±{_num(spread)}"


def _num(x: float) -> str:
    ax = abs(x)
    if ax >= 100_000:
        return f"{x / 1000:.0f}k"
    if ax >= 1000:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _cell(values: list[float | None]) -> Cell:
    vs = [v for v in values if v is not None]
    if not vs:
        return Cell(None, None, None)
    return Cell(statistics.median(vs), min(vs), max(vs))


def role_cpu(docs: list[dict[str, Any]]) -> dict[str, Cell]:
    """Median CPU seconds per role kind (all instances of a kind added up)."""
    per: dict[str, list[float]] = {}
    for d in docs:
        tot: dict[str, float] = {}
        for name, r in d["roles"].items():
            kind = name.rstrip("0123456789")
            tot[kind] = tot.get(kind, 0.0) + r.get("cpu_user_s", 0.0) + r.get("cpu_sys_s", 0.0)
        for k, v in tot.items():
            per.setdefault(k, []).append(v)
    return {k: _cell(v) for k, v in per.items()}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per model and metric: median, min, max; ratios to the first model; claims."""
    models = list(runs)
    metrics = metrics_for(runs)
    table: dict[str, dict[str, Cell]] = {}
    for m in models:
        table[m] = {key: _cell([fn(d) for d in runs[m]]) for key, _, fn, _ in metrics}
    base = models[0]
    claims = []
    # one run has no spread to compare against: nothing is claimed from it
    for m in (models[1:] if min(len(runs[m]) for m in models) >= 2 else []):
        for key, label, _, _lower in metrics:
            a, b = table[m][key], table[base][key]
            if not a.median or not b.median:  # no figure, or a zero: no ratio to claim
                continue
            if a.lo is None or b.hi is None or a.hi is None or b.lo is None:
                continue
            ratio = a.median / b.median
            # claimed only where the ranges do not overlap and the difference is not
            # lost in the rounding of the ratio (under 5 % is not worth a sentence)
            if (a.lo > b.hi or a.hi < b.lo) and abs(ratio - 1) >= 0.05:
                claims.append(f"{m}: {label.strip()} {ratio:.2f}x {base}")
    return {
        "models": models,
        "table": {m: {k: {"median": c.median, "min": c.lo, "max": c.hi}
                      for k, c in table[m].items()} for m in models},
        "role_cpu_s": {m: {k: c.median for k, c in role_cpu(runs[m]).items()} for m in models},
        "claims": claims,
        "conservation_ok": all(d["conservation"]["ok"] for ds in runs.values() for d in ds),
        "labels": {key: label.strip() for key, label, _, _ in metrics},
        "_cells": table,
        "_metrics": metrics,
    }


def format_table(summary: dict[str, Any], repeat: int) -> str:
    models = summary["models"]
    cells: dict[str, dict[str, Cell]] = summary["_cells"]
    metrics: list[Metric] = summary["_metrics"]
    base = models[0]
    w0 = max(len(label) for _, label, _, _ in metrics) + 2
    texts: dict[str, dict[str, str]] = {}
    for m in models:
        texts[m] = {}
        for key, _, _, _ in metrics:
            cell, b = cells[m][key], cells[base][key]
            txt = cell.fmt()
            if m != base and cell.median is not None and b.median:
                txt += f" ({cell.median / b.median:.2f}x)"
            texts[m][key] = txt
    cols = [max(len(m), *(len(t) for t in texts[m].values())) + 3 for m in models]
    head = "metric".ljust(w0) + "".join(m.rjust(c) for m, c in zip(models, cols))
    lines = [f"median of {repeat} interleaved runs ±half the range; (x) = ratio to {base}",
             head, "-" * len(head)]
    for key, label, _, _ in metrics:
        lines.append(label.ljust(w0) + "".join(texts[m][key].rjust(c)
                                               for m, c in zip(models, cols)))
    roles = summary["role_cpu_s"]
    kinds = [k for k in ROLE_PREFIXES if any(k in roles[m] for m in models)]
    for k in kinds:
        row = f"CPU s, {k}".ljust(w0)
        for m, c in zip(models, cols):
            v = roles[m].get(k)
            row += ("-" if v is None else f"{v:.2f}").rjust(c)
        lines.append(row)
    lines.append("")
    if summary["claims"]:
        lines.append("Differences larger than the spread:")
        lines += [f"  {c}" for c in summary["claims"]]
    elif repeat < 2:
        lines.append("One run per model: no spread to judge by (nothing claimed).")
    else:
        lines.append("No difference larger than the spread (nothing claimed).")
    if not summary["conservation_ok"]:
        lines.append("CONSERVATION FAILED in at least one run: see the JSON document")
    return "\n".join(lines)


def write_csv(path: str, summary: dict[str, Any]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "model", "median", "min", "max"])
        for m in summary["models"]:
            for key, v in summary["table"][m].items():
                w.writerow([key, m, v["median"], v["min"], v["max"]])


async def compare(cfg: RunConfig, models: list[str], repeat: int,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run each model `repeat` times, interleaved, on one set of live roles."""
    from dispatch.runtime.controller import Controller

    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
    async with Controller(cfg.replace(model=models[0])) as ctl:
        for r in range(repeat):
            for m in models:
                if progress:
                    progress(f"run {r + 1}/{repeat}: {m}")
                runs[m].append(await ctl.run(cfg.replace(model=m)))
    return {"runs": runs, "summary": summarize(runs)}
