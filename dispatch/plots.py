"""Plots of result documents (matplotlib, Agg backend: no display needed).

Views of the JSON, as tables are: a sweep's delivered-vs-offered curves,
latency percentiles against offered load and drops stacked by stage, and a
comparison's medians with their spread. Each function returns a Figure;
`save` writes PNG and SVG, and `svg_text` gives the inline SVG that the HTML
report embeds.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PCTS = (("e2e_p50_us", "p50", "-"), ("e2e_p99_us", "p99", "--"), ("e2e_p999_us", "p99.9", ":"))
_svg_count = 0
COMPARE_METRICS = (("throughput_pps", "delivered pps"), ("e2e_p50_us", "e2e p50 (us)"),
                   ("e2e_p99_us", "e2e p99 (us)"), ("cpu_s", "CPU seconds"),
                   ("csw_per_pkt", "context switches / packet"), ("drops", "drops"))


def _x(p: dict[str, Any]) -> float:
    return float(p["offered_pps"])


def _sorted(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(points, key=_x)


def delivered_vs_offered(doc: dict[str, Any]) -> Figure:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    top = 0.0
    for m in doc["models"]:
        ps = _sorted(doc["points"][m])
        xs, ys = [_x(p) for p in ps], [p["delivered_pps"] for p in ps]
        grid = [p for p in ps if p["kind"] == "grid"]
        trials = [p for p in ps if p["kind"] != "grid"]
        line = ax.plot([_x(p) for p in grid], [p["delivered_pps"] for p in grid], marker="o",
                       label=m)[0]
        if trials:  # the NDR search's trials: points, not part of the curve
            ax.scatter([_x(p) for p in trials], [p["delivered_pps"] for p in trials],
                       marker="x", color=line.get_color(), label=f"{m} NDR trials")
        s = doc["summary"][m]
        if s["collapse"]:
            c = s["collapse"]
            ax.annotate("collapse", (c["at_offered_pps"], c["delivered_pps"]),
                        color=line.get_color(), xytext=(0, -14), textcoords="offset points",
                        ha="center", fontsize=8)
        if s["ndr_pps"]:
            ax.axvline(s["ndr_pps"], color=line.get_color(), alpha=0.3, linestyle=":")
        top = max(top, *xs, *ys)
    ax.plot([0, top], [0, top], color="grey", linewidth=0.8, linestyle="--", label="no loss")
    ax.set_xlabel("offered (packets/s)")
    ax.set_ylabel("delivered (packets/s)")
    ax.set_title("Delivered vs offered load (dotted: NDR; x: NDR trials)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def latency_vs_offered(doc: dict[str, Any]) -> Figure:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, m in enumerate(doc["models"]):
        ps = _sorted([p for p in doc["points"][m] if p["kind"] == "grid"])
        for key, label, style in PCTS:
            pts = [(_x(p), p[key]) for p in ps if p[key]]
            if pts:
                ax.plot(*zip(*pts), linestyle=style, marker=".", color=colors[i % len(colors)],
                        label=f"{m} {label}")
    ax.set_yscale("log")
    ax.set_xlabel("offered (packets/s)")
    ax.set_ylabel("end-to-end latency (us)")
    ax.set_title("Latency percentiles vs offered load (grid points)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def drops_by_stage(doc: dict[str, Any]) -> Figure:
    models = doc["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), squeeze=False,
                             sharey=True)
    stages = sorted({s for ps in doc["points"].values() for p in ps for s in p["drops_by_stage"]})
    for ax, m in zip(axes[0], models):
        ps = _sorted(doc["points"][m])
        labels = [f"{_x(p) / 1e3:.0f}k" for p in ps]
        bottom = [0.0] * len(ps)
        for s in stages:
            vals = [float(p["drops_by_stage"].get(s, 0)) for p in ps]
            ax.bar(labels, vals, bottom=bottom, label=s)
            bottom = [a + b for a, b in zip(bottom, vals)]
        ax.set_title(f"{m}: drops by stage")
        ax.set_xlabel("offered (packets/s)")
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        if not stages:
            ax.text(0.5, 0.5, "no drops", transform=ax.transAxes, ha="center")
    axes[0][0].set_ylabel("packets dropped")
    if stages:
        axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_figures(doc: dict[str, Any]) -> dict[str, Figure]:
    return {"delivered": delivered_vs_offered(doc), "latency": latency_vs_offered(doc),
            "drops": drops_by_stage(doc)}


def compare_figure(summary: dict[str, Any]) -> Figure:
    """Medians with min..max error bars, one panel per headline metric."""
    models = summary["models"]
    fig, axes = plt.subplots(2, 3, figsize=(10, 5.6))
    for ax, (key, label) in zip(axes.flat, COMPARE_METRICS):
        med, err = [], [[], []]
        for m in models:
            c = summary["table"][m][key]
            v = c["median"]
            med.append(v if v is not None else 0.0)
            err[0].append(v - c["min"] if v is not None else 0.0)
            err[1].append(c["max"] - v if v is not None else 0.0)
        ax.bar(models, med, yerr=err, capsize=4,
               color=plt.rcParams["axes.prop_cycle"].by_key()["color"][:len(models)])
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("median of the runs; bars: min..max")
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str) -> None:
    """Write one file; the format follows the extension (.png, .svg, .pdf)."""
    fig.savefig(path, dpi=110)


def save_both(fig: Figure, stem: str) -> list[str]:
    """Write STEM.png and STEM.svg; returns the paths."""
    out = [f"{stem}.png", f"{stem}.svg"]
    for p in out:
        save(fig, p)
    return out


def svg_text(fig: Figure) -> str:
    """The figure as an inline <svg> element (no XML prolog, no external refs)."""
    global _svg_count
    _svg_count += 1
    buf = io.StringIO()
    # a salt per figure: several inline SVGs on one page must not share clip-path ids
    with matplotlib.rc_context({"svg.hashsalt": f"dispatch-{_svg_count}"}):
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    start = text.find("<svg")
    return text[start:] if start >= 0 else text


def close(fig: Figure) -> None:
    plt.close(fig)
