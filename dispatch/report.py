"""`dispatch report`: result documents as one self-contained HTML page.

The page needs no network and no script: styles are inline, plots are
inline SVG drawn by matplotlib from the documents, and every table is plain
HTML. It accepts any mix of the three documents the CLI writes: a run
(`dispatch run --json`), a comparison (`compare --json`) and a sweep
(`sweep --json`), and shows for each its table, its curves (for a sweep) or
bars (for a comparison), its conservation verdict and its full configuration,
so the page alone says how to repeat what it shows.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any

from dispatch import __version__

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:72em;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}
.ok{color:#176317}.fail{color:#a01010;font-weight:bold}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}
details{margin:.5em 0 1.5em}table.config td{text-align:left}code{background:#f4f4f4;padding:0 .2em}
"""


class ReportError(ValueError):
    """A file that is not a result document (the message names it and what is valid)."""


def kind_of(doc: dict[str, Any]) -> str:
    if doc.get("kind") == "sweep" or ("points" in doc and "summary" in doc):
        return "sweep"
    if "runs" in doc and "summary" in doc:
        return "compare"
    if "conservation" in doc and "model" in doc:
        return "run"
    raise ReportError("not a result document: expected the JSON of dispatch run --json, "
                      "compare --json or sweep --json")


def load(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: cannot read it as JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ReportError(f"{path}: not a result document (a JSON object is expected)")
    try:
        kind_of(doc)
    except ReportError as e:
        raise ReportError(f"{path}: {e}") from None
    return doc


def _e(x: object) -> str:
    return html.escape(str(x))


def _table(head: list[str], rows: list[list[str]], cls: str) -> str:
    h = "".join(f"<th>{_e(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def _figure(fig: Any, caption: str) -> str:
    from dispatch import plots

    try:
        svg = plots.svg_text(fig)
    finally:
        plots.close(fig)
    return f'<figure class="plot">{svg}<figcaption>{_e(caption)}</figcaption></figure>'


def _config(cfg: dict[str, Any], software: dict[str, Any] | None,
            experiment: dict[str, Any] | None) -> str:
    rows = [[k, json.dumps(v) if isinstance(v, dict | list) else str(v)]
            for k, v in cfg.items()]
    extra = ""
    if software:
        extra += "<p>software: " + ", ".join(f"{_e(k)} <code>{_e(v)}</code>"
                                             for k, v in software.items()) + "</p>"
    if experiment:
        extra += (f"<p>experiment file <code>{_e(experiment.get('file'))}</code> "
                  f"(sha256 {_e(str(experiment.get('sha256', ''))[:16])}...)</p>")
    return ("<details open><summary>configuration</summary>"
            + _table(["option", "value"], rows, "config") + extra + "</details>")


def _verdict(ok: bool) -> str:
    return ('<p class="ok">conservation: ok in every run</p>' if ok else
            '<p class="fail">CONSERVATION FAILED in at least one run</p>')


def _run_section(doc: dict[str, Any]) -> str:
    from dispatch.compare import metrics_for

    rows = []
    for _key, label, fn, _ in metrics_for({doc["model"]: [doc]}):
        v = fn(doc)
        rows.append([label.strip(), "-" if v is None else f"{v:,.2f}"])
    body = _table(["metric", doc["model"]], rows, "summary")
    return body + _verdict(doc["conservation"]["ok"]) + _config(
        doc["config"], doc.get("software"), doc.get("experiment"))


def _compare_section(doc: dict[str, Any]) -> str:
    from dispatch import plots
    from dispatch.compare import Cell

    s = doc["summary"]
    models = s["models"]
    base = models[0]
    rows = []
    labels: dict[str, str] = s.get("labels") or {k: k for k in s["table"][base]}
    for key, label in labels.items():
        row = [label]
        for m in models:
            c = s["table"][m][key]
            cell = Cell(c["median"], c["min"], c["max"]).fmt()
            b = s["table"][base][key]["median"]
            if m != base and c["median"] is not None and b:
                cell += f" ({c['median'] / b:.2f}x)"
            row.append(cell)
        rows.append(row)
    out = _table(["metric", *models], rows, "compare")
    claims = s.get("claims", [])
    out += ("<ul class=\"claims\">" + "".join(f"<li>{_e(c)}</li>" for c in claims) + "</ul>"
            if claims else "<p>No difference larger than the spread (nothing claimed).</p>")
    out += _figure(plots.compare_figure(s), "medians of the runs; bars: min..max")
    first = next(iter(doc["runs"].values()))[0]
    ok = s.get("conservation_ok", all(d["conservation"]["ok"]
                                      for ds in doc["runs"].values() for d in ds))
    return out + _verdict(ok) + _config(first["config"], first.get("software"),
                                        doc.get("experiment"))


def _sweep_section(doc: dict[str, Any]) -> str:
    from dispatch import plots
    from dispatch.sweep import _fmt_rate, _rate_of, summary_sentences

    out = ""
    for m in doc["models"]:
        rows = []
        for p in sorted(doc["points"][m], key=_rate_of):
            rows.append([_fmt_rate(p["rate"]) + ("" if p["kind"] == "grid" else " (NDR)"),
                         f"{p['offered_pps']:.0f}", f"{p['delivered_pps']:.0f}",
                         str(p["dropped"]), f"{p['loss_ratio']:.2%}",
                         *("-" if p[k] is None else f"{p[k]:.1f}"
                           for k in ("e2e_p50_us", "e2e_p99_us", "e2e_p999_us"))])
        out += f"<h3>{_e(m)}</h3>" + _table(
            ["rate", "offered pps", "delivered pps", "dropped", "loss", "p50 us", "p99 us",
             "p99.9 us"], rows, "sweep")
        out += "<ul>" + "".join(f"<li>{_e(t.strip())}</li>"
                                for t in summary_sentences(m, doc["summary"][m],
                                                           doc["search"])) + "</ul>"
    figs = plots.sweep_figures(doc)
    captions = {"delivered": "delivered vs offered load", "latency": "latency vs offered load",
                "drops": "drops by stage"}
    out += "".join(_figure(f, captions[k]) for k, f in figs.items())
    return out + _verdict(doc["conservation_ok"]) + _config(
        doc["config"], doc.get("software"), doc.get("experiment"))


SECTIONS = {"run": _run_section, "compare": _compare_section, "sweep": _sweep_section}


def render(docs: list[tuple[str, dict[str, Any]]]) -> str:
    """The whole page for (name, document) pairs."""
    parts = []
    for i, (name, doc) in enumerate(docs):
        kind = kind_of(doc)
        if kind == "run":
            title = f"run: {doc['model']}"
        elif kind == "compare":
            title = "comparison: " + " vs ".join(doc["summary"]["models"])
        else:
            title = "sweep: " + ", ".join(doc["models"])
        parts.append(f'<section class="{kind}" id="doc-{i}"><h2>{_e(title)}</h2>'
                     f"<p>from <code>{_e(name)}</code></p>{SECTIONS[kind](doc)}</section>")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>dispatch-emu report</title><style>{STYLE}</style></head><body>"
            f"<h1>dispatch-emu report</h1><p>{len(docs)} document(s); generated {_e(stamp)} "
            f"by dispatch-emu {_e(__version__)}</p>{''.join(parts)}</body></html>\n")


def write(paths: list[str], out: str) -> None:
    """Read every document (all are checked before anything is written), then the page."""
    docs = [(p, load(p)) for p in paths]
    page = render(docs)
    with open(out, "w") as f:
        f.write(page)
