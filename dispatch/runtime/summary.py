"""A human summary of one result document (the text `dispatch run` prints)."""

from __future__ import annotations

from typing import Any


def _lat(d: dict[str, Any]) -> str:
    if not d or not d.get("count"):
        return "-"
    return f"p50 {d['p50']:.1f}  p90 {d['p90']:.1f}  p99 {d['p99']:.1f}  max {d['max']:.1f} us"


def format_summary(doc: dict[str, Any]) -> str:
    c = doc["conservation"]
    lines = [
        f"model {doc['model']}: offered {doc['offered']}, delivered {doc['delivered']} "
        f"in {doc['elapsed_s']:.2f} s = {doc['throughput_pps'] / 1e3:.1f} kpps delivered "
        f"({doc['offered_pps'] / 1e3:.1f} kpps offered)",
        f"  latency {'e2e':<15s}{_lat(doc['latency_us'].get('e2e', {}))}",
    ]
    for k, v in doc["latency_us"].items():
        if k != "e2e" and v.get("count"):
            lines.append(f"  latency {k:<15s}{_lat(v)}")
    lines += _egress_lines(doc)
    if doc["drops"]:
        lines.append("  drops: " + ", ".join(
            f"{s}.{r}={n}" for s, rs in sorted(doc["drops"].items()) for r, n in sorted(rs.items())))
    else:
        lines.append("  drops: none")
    for name, r in sorted(doc["roles"].items()):
        if "cpu_user_s" in r:
            lines.append(f"  {name:<9s} cpu {r['cpu_user_s'] + r['cpu_sys_s']:.2f} s "
                         f"(user {r['cpu_user_s']:.2f}, sys {r['cpu_sys_s']:.2f}), "
                         f"ctx switches {r['voluntary_ctxt']} vol / {r['involuntary_ctxt']} invol")
    if doc["copies"]:
        lines.append("  copies: " + ", ".join(f"{k}={v}" for k, v in sorted(doc["copies"].items())))
    if c["ok"]:
        lines.append(f"  conservation: ok (offered {c['offered']} = accounted {c['accounted']}, "
                     f"nothing in flight, pool whole)")
    else:
        lines.append("  CONSERVATION FAILED: " + "; ".join(c["missing"]))
    return "\n".join(lines)


def _egress_lines(doc: dict[str, Any]) -> list[str]:
    """What the generator measured for the tx, rr and forward workloads."""
    wl = doc.get("workload", "rx")
    e = doc.get("egress", {})
    f = e.get("figures", {})
    if wl == "rr" and f:
        r = f["rtt_us"]
        return [f"  rr: {f['transactions']} transactions, {f['tps']:.0f}/s, RTT p50 "
                f"{r['p50']:.1f}  p90 {r['p90']:.1f}  p99 {r['p99']:.1f}  max {r['max']:.1f} us"
                f" ({f['timeouts']} timeouts)"]
    if wl in ("tx", "forward") and f:
        what = "forwarded" if wl == "forward" else "sent"
        out = [f"  {what}: generator received {e.get('received_by_generator', 0)} frames = "
               f"{f['received_pps'] / 1e3:.1f} kpps, {f['goodput_bps'] / 1e6:.1f} Mbit/s",
               f"  latency {'to generator':<15s}{_lat(f.get('latency_us', {}))}"]
        if "tcp_goodput_bps" in f:
            out.append(f"  tcp goodput {f['tcp_goodput_bps'] / 1e6:.1f} Mbit/s")
        return out
    return []
