"""Load sweeps: delivered and latency against offered load, per dispatch model.

A sweep runs each model at each offered rate (models interleaved at every
rate, on one set of live roles re-planned per run, as `compare` does) and
derives the figures the receive-livelock literature uses:

- MLFRR, the maximum loss-free receive rate (Mogul & Ramakrishnan): the
  highest rate of the grid at which nothing was dropped;
- NDR, the no-drop rate, refined by binary search between the highest
  loss-free and the lowest lossy rate until the bracket is narrower than a
  tolerance (FD.io CSIT's MLRsearch does this; its PDR is the same search
  with a loss ratio above zero, `--loss-ratio`);
- collapse: where delivered throughput *falls* as offered load rises past
  its peak, the signature of receive livelock.

Every run's full result document is kept; the points, CSV, table and plots
are views of them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from typing import Any

from dispatch.runtime.config import RunConfig

SCHEMA_VERSION = 1
NDR_MAX_TRIALS = 8


def parse_rates(text: str) -> list[float]:
    """`10k,20k,max` (a list) or `10k:100k:5` (START:STOP:STEPS, evenly spaced).

    Raises ValueError naming the bad part and the valid forms.
    """
    from nicemu.trafgen.dist import parse_rate

    def one(t: str) -> float:
        t = t.strip()
        if t == "max":
            return math.inf
        try:
            r = parse_rate(t)
        except ValueError as e:
            raise ValueError(f"bad rate {t!r}: {e}") from None
        if r.unit != "pps":
            raise ValueError(f"bad rate {t!r}: give packets per second (e.g. 100k) or max")
        v = float(r.pps())
        if not v > 0:
            raise ValueError(f"bad rate {t!r}: must be positive")
        return v

    forms = "give a list (10k,20k,50k) or START:STOP:STEPS (10k:100k:5)"
    if not text.strip():
        raise ValueError(f"no rates: {forms}")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"bad rates {text!r}: {forms}")
        start, stop = one(parts[0]), one(parts[1])
        try:
            steps = int(parts[2])
        except ValueError:
            raise ValueError(f"bad rates {text!r}: STEPS must be an integer; {forms}") from None
        if steps < 2 or math.isinf(start) or math.isinf(stop) or stop <= start:
            raise ValueError(f"bad rates {text!r}: need START < STOP (not max) and "
                             f"STEPS >= 2; {forms}")
        return [start + (stop - start) * i / (steps - 1) for i in range(steps)]
    rates = [one(t) for t in text.split(",")]
    if sorted(rates) != rates or len(set(rates)) != len(rates):
        raise ValueError(f"bad rates {text!r}: list them in increasing order, each once")
    return rates


def dropped(doc: dict[str, Any]) -> int:
    return sum(n for r in doc["drops"].values() for n in r.values())


def point(doc: dict[str, Any], rate: float, kind: str) -> dict[str, Any]:
    """One row of the sweep: what was asked, what came, what was lost and how late.

    For the forward and tx workloads, "delivered" is what reached the generator
    (forwarded out of port 1, or sent by the host) and the latency is the one
    the generator measured; offered is what entered the host (forward) or what
    its applications sent (tx)."""
    e2e = doc["latency_us"].get("e2e", {})
    d = dropped(doc)
    offered, delivered = doc["offered"], doc["delivered"]
    offered_pps, delivered_pps = doc["offered_pps"], doc["throughput_pps"]
    wl = doc.get("workload", "rx")
    if wl in ("forward", "tx"):
        e = doc["egress"]
        fig = e.get("figures", {})
        delivered = e.get("received_by_generator", 0)
        delivered_pps = fig.get("received_pps", 0.0)
        e2e = fig.get("latency_us", {})
        if wl == "tx":
            offered = e.get("app_sent", delivered + d)
            offered_pps = offered / doc["elapsed_s"] if doc["elapsed_s"] else 0.0
    return {
        "kind": kind, "rate": "max" if math.isinf(rate) else rate,
        "offered": offered, "delivered": delivered, "dropped": d,
        "offered_pps": offered_pps, "delivered_pps": delivered_pps,
        "loss_ratio": d / offered if offered else 0.0,
        **{f"e2e_{p}_us": e2e.get(p) for p in ("p50", "p90", "p99", "p999")},
        "drops_by_stage": {s: sum(r.values()) for s, r in doc["drops"].items()},
        "conservation_ok": doc["conservation"]["ok"],
    }


def _rate_of(p: dict[str, Any]) -> float:
    return p["offered_pps"] if p["rate"] == "max" else float(p["rate"])


def analyse(points: list[dict[str, Any]], *, loss_ratio: float,
            collapse_fraction: float) -> dict[str, Any]:
    """MLFRR over the grid, the NDR bracket from every trial, and collapse."""
    grid = sorted((p for p in points if p["kind"] == "grid"), key=_rate_of)
    ok = [p for p in points if p["loss_ratio"] <= loss_ratio]
    lossy = [p for p in points if p["loss_ratio"] > loss_ratio]
    mlfrr = max((_rate_of(p) for p in grid if p["dropped"] == 0), default=None)
    lo_rate = max((_rate_of(p) for p in ok), default=None)
    hi_rate = min((_rate_of(p) for p in lossy if lo_rate is None or _rate_of(p) > lo_rate),
                  default=None)
    peak = max(grid, key=lambda p: p["delivered_pps"], default=None)
    # collapse: the deepest fall of delivered below the best delivered at any lower
    # offered load (a curve that turns down, even if it recovers later)
    collapse = None
    best: dict[str, Any] | None = None
    for p in sorted(grid, key=lambda p: p["offered_pps"]):
        if best is not None and best["delivered_pps"] > 0:
            fall = 1 - p["delivered_pps"] / best["delivered_pps"]
            if fall > collapse_fraction and (collapse is None or fall > collapse["fall"]):
                collapse = {"peak_offered_pps": best["offered_pps"],
                            "peak_delivered_pps": best["delivered_pps"],
                            "at_offered_pps": p["offered_pps"],
                            "delivered_pps": p["delivered_pps"], "fall": fall}
        if best is None or p["delivered_pps"] > best["delivered_pps"]:
            best = p
    return {"mlfrr_pps": mlfrr, "ndr_pps": lo_rate, "ndr_bracket": [lo_rate, hi_rate],
            "ndr_below_grid": lo_rate is None, "ndr_above_grid": hi_rate is None,
            "peak_delivered_pps": peak["delivered_pps"] if peak else None,
            "collapse": collapse}


def next_trial(points: list[dict[str, Any]], *, loss_ratio: float,
               tolerance: float) -> float | None:
    """The next NDR trial rate (midpoint of the bracket), or None when it is narrow
    enough, unbounded above (no loss seen), or the trial budget is spent."""
    a = analyse(points, loss_ratio=loss_ratio, collapse_fraction=1.0)
    lo, hi = a["ndr_bracket"]
    if hi is None or sum(p["kind"] == "ndr" for p in points) >= NDR_MAX_TRIALS:
        return None
    lo = lo or 0.0
    if hi - lo <= tolerance * hi:
        return None
    return (lo + hi) / 2


async def sweep(cfg: RunConfig, models: list[str], rates: list[float], *,
                ndr: bool = True, loss_ratio: float = 0.0, tolerance: float = 0.05,
                collapse_fraction: float = 0.1,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the grid (models interleaved at each rate), then each model's NDR search."""
    from dispatch.runtime.controller import Controller

    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
    points: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
    total = len(models) * len(rates)
    n = 0
    async with Controller(cfg.replace(model=models[0], rate=rates[0])) as ctl:
        for r in rates:
            for m in models:
                n += 1
                if progress:
                    progress(f"point {n}/{total}: {m} at {_fmt_rate(r)}")
                doc = await ctl.run(cfg.replace(model=m, rate=r))
                runs[m].append(doc)
                points[m].append(point(doc, r, "grid"))
        if ndr:
            for m in models:
                while (t := next_trial(points[m], loss_ratio=loss_ratio,
                                       tolerance=tolerance)) is not None:
                    if progress:
                        progress(f"NDR search: {m} at {_fmt_rate(t)}")
                    doc = await ctl.run(cfg.replace(model=m, rate=t))
                    runs[m].append(doc)
                    points[m].append(point(doc, t, "ndr"))
    summary = {m: analyse(points[m], loss_ratio=loss_ratio,
                          collapse_fraction=collapse_fraction) for m in models}
    return {
        "schema_version": SCHEMA_VERSION, "kind": "sweep", "models": models,
        "rates": ["max" if math.isinf(r) else r for r in rates],
        "search": {"ndr": ndr, "loss_ratio": loss_ratio, "tolerance": tolerance,
                   "max_trials": NDR_MAX_TRIALS, "collapse_fraction": collapse_fraction},
        "config": cfg.as_dict(), "points": points, "summary": summary,
        "conservation_ok": all(d["conservation"]["ok"] for ds in runs.values() for d in ds),
        "runs": runs,
    }


def _fmt_rate(r: float | str | None) -> str:
    if r is None:
        return "-"
    if r == "max" or (isinstance(r, float) and math.isinf(r)):
        return "max"
    r = float(r)
    if r >= 1e6:
        return f"{r / 1e6:.3g}M"
    if r >= 1e3:
        return f"{r / 1e3:.4g}k"
    return f"{r:.0f}"


def _us(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def format_table(doc: dict[str, Any]) -> str:
    """The sweep as text: one block per model, then its MLFRR, NDR and collapse."""
    lines = []
    head = (f"{'rate':>8} {'offered pps':>12} {'delivered pps':>14} {'dropped':>8} "
            f"{'loss':>7} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9}")
    for m in doc["models"]:
        lines += [f"model {m}", head, "-" * len(head)]
        for p in sorted(doc["points"][m], key=_rate_of):
            tag = "" if p["kind"] == "grid" else "  (NDR trial)"
            lines.append(f"{_fmt_rate(p['rate']):>8} {p['offered_pps']:>12.0f} "
                         f"{p['delivered_pps']:>14.0f} {p['dropped']:>8} "
                         f"{p['loss_ratio']:>7.2%} {_us(p['e2e_p50_us']):>8} "
                         f"{_us(p['e2e_p99_us']):>8} {_us(p['e2e_p999_us']):>9}{tag}")
        lines += summary_sentences(m, doc["summary"][m], doc["search"]) + [""]
    if not doc["conservation_ok"]:
        lines.append("CONSERVATION FAILED in at least one run: see the JSON document")
    return "\n".join(lines).rstrip()


def summary_sentences(model: str, s: dict[str, Any], search: dict[str, Any]) -> list[str]:
    out = []
    mlfrr = s["mlfrr_pps"]
    out.append(f"  MLFRR (highest loss-free rate of the grid): {_fmt_rate(mlfrr)} pps"
               if mlfrr is not None else "  MLFRR: every rate of the grid dropped packets")
    lo, hi = s["ndr_bracket"]
    what = "NDR" if search["loss_ratio"] == 0 else f"PDR (loss <= {search['loss_ratio']:.2%})"
    if s["ndr_above_grid"]:
        out.append(f"  {what}: at least {_fmt_rate(lo)} pps (no loss at any rate tried)")
    elif s["ndr_below_grid"]:
        out.append(f"  {what}: below {_fmt_rate(hi)} pps (loss at every rate tried)")
    else:
        out.append(f"  {what}: {_fmt_rate(lo)} pps (loss from {_fmt_rate(hi)} pps)")
    c = s["collapse"]
    if c:
        out.append(f"  COLLAPSE (receive livelock): delivered falls from "
                   f"{_fmt_rate(c['peak_delivered_pps'])} pps at {_fmt_rate(c['peak_offered_pps'])}"
                   f" offered to {_fmt_rate(c['delivered_pps'])} pps at "
                   f"{_fmt_rate(c['at_offered_pps'])} offered ({c['fall']:.0%} lower)")
    else:
        out.append("  no collapse: delivered does not fall as offered rises")
    return out


CSV_FIELDS = ["model", "kind", "rate", "offered_pps", "delivered_pps", "offered", "delivered",
              "dropped", "loss_ratio", "e2e_p50_us", "e2e_p90_us", "e2e_p99_us", "e2e_p999_us",
              "conservation_ok"]


def write_csv(path: str, doc: dict[str, Any]) -> None:
    stages = sorted({s for ps in doc["points"].values() for p in ps for s in p["drops_by_stage"]})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS + [f"drops_{s}" for s in stages])
        for m in doc["models"]:
            for p in sorted(doc["points"][m], key=_rate_of):
                w.writerow([m] + [p[k] for k in CSV_FIELDS[1:]] +
                           [p["drops_by_stage"].get(s, 0) for s in stages])
