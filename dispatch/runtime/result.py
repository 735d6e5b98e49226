"""The result document: one versioned JSON object per run, and its conservation proof.

Tables, CSV and plots are views of this document, so it holds everything:
the effective configuration, offered and delivered counts, drops by stage and
reason, latency percentiles per stage and end to end (from HDR histograms
merged across the user processes), per-role CPU and context switches,
netstat -Q, netstat -m, copy counters, per-socket bytes and digests, and the
conservation check, which every run must pass:

    offered = delivered + dropped + absorbed + forwarded (+ LRO-coalesced)

with nothing in flight (rings, netisr queues, sockets) and the pool whole,
and its transmit half (`egress`): what the host sent reached the far end or
was dropped with a reason.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

from dispatch import __version__
from dispatch.runtime.config import RunConfig

if TYPE_CHECKING:
    from dispatch.runtime.controller import Controller

SCHEMA_VERSION = 1
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))
LATENCY_STAGES = ("e2e", "wire_to_dma", "dma_to_ithread", "ithread", "netisr_queue", "netisr",
                  "socket_queue")
HIST_MAX_NS = 60_000_000_000  # one minute
HIST_DIGITS = 3


def new_histogram() -> Any:
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(1, HIST_MAX_NS, HIST_DIGITS)


def encode_histogram(h: Any) -> str:
    return h.encode().decode() if h.get_total_count() else ""


def decode_into(total: Any, blob: str) -> None:
    if blob:
        from hdrh.histogram import HdrHistogram

        total.add(HdrHistogram.decode(blob.encode()))


def summarize(h: Any) -> dict[str, float | int]:
    """Percentiles of a nanosecond histogram, in microseconds."""
    if not h.get_total_count():
        return {"count": 0, **{k: None for k, _ in PERCENTILES}, "max": None}  # type: ignore
    out: dict[str, float | int] = {"count": h.get_total_count()}
    for k, p in PERCENTILES:
        out[k] = round(h.get_value_at_percentile(p) / 1000.0, 3)
    out["max"] = round(h.get_max_value() / 1000.0, 3)
    return out


def setup_sockets(sockets: Any, cfg: RunConfig) -> None:
    """Open the sockets a workload needs (auto-sockets mode opens them on demand)."""
    from dispatch.runtime.workload import open_sockets

    open_sockets(sockets, cfg)


def _merge_counts(dst: dict[str, int], src: dict[str, int]) -> None:
    for k, v in src.items():
        dst[k] = dst.get(k, 0) + v


def build(cfg: RunConfig, *, controller: Controller, source_report: dict[str, Any],
          snapshots: dict[str, dict[str, Any]], resources: dict[str, dict[str, Any]],
          t0: int, t1: int) -> dict[str, Any]:
    """Assemble the document from every role's drained snapshot."""
    counters: dict[str, int] = {}
    drops: dict[str, dict[str, int]] = {}
    hists = {k: new_histogram() for k in LATENCY_STAGES}
    for snap in snapshots.values():
        _merge_counts(counters, snap.get("counters", {}))
        for stage, reasons in snap.get("drops", {}).items():
            _merge_counts(drops.setdefault(stage, {}), reasons)
        for k, blob in snap.get("hist", {}).items():
            if k in hists:
                decode_into(hists[k], blob)
    pool = controller.pool
    netisr = controller.netisr
    assert pool is not None and netisr is not None
    from dispatch.runtime.egress import build_egress, split_drops

    offered = int(source_report.get("offered", 0))
    if cfg.workload == "tx":  # the generator only answers (ACKs): what it put on the wire
        offered = int(snapshots.get("trafgen0", {}).get("role", {}).get("wire_sent", 0))
    delivered = counters.get("socket.rcv_packets", 0)
    dropped, _out_dropped = split_drops(drops)
    absorbed = sum(v for k, v in counters.items() if k.startswith("absorbed."))
    # packets that leave the host again: forwarded, or turned into an ICMP echo reply
    forwarded = sum(counters.get(k, 0) for k in ("ip.ips_forward", "ip6.ip6s_forward",
                                                  "icmp.icps_reflect", "icmp6.icp6s_reflect"))
    coalesced = counters.get("nic.lro_coalesced", 0)
    # a reassembly split turns one segment into two delivered packets
    splits = counters.get("tcp.reass_splits", 0)
    accounted = delivered + dropped + absorbed + forwarded + coalesced - splits
    in_flight = {"netisr": netisr.in_flight(), "rings": controller.rings_in_flight(),
                 "pool_in_use": pool.in_use()}
    audit = pool.audit()
    pool_whole = audit.whole
    nothing_in_flight = in_flight["netisr"] == 0 and in_flight["rings"] == 0
    egress, egress_missing = build_egress(cfg, counters, drops, snapshots)
    ok = offered == accounted and nothing_in_flight and pool_whole and not egress_missing
    missing: list[str] = list(egress_missing)
    if offered != accounted:
        missing.append(f"offered {offered} != delivered {delivered} + dropped {dropped} + "
                       f"absorbed {absorbed} + forwarded {forwarded} + coalesced {coalesced} "
                       f"- reassembly splits {splits} "
                       f"(= {accounted}; {offered - accounted:+d} unaccounted)")
    if not nothing_in_flight:
        missing.append(f"still in flight: {in_flight}")
    if not pool_whole:
        missing.append(f"pool not whole: in use {audit.in_use}, problems {list(audit.problems)}")
    elapsed = max(1e-9, (t1 - t0) / 1e9)
    from dispatch.runtime.egress import figures

    egress["figures"] = figures(cfg, egress, source_report, elapsed, counters)
    roles: dict[str, Any] = {}
    for name, snap in snapshots.items():
        roles[name] = {**resources.get(name, {}), **snap.get("role", {})}
    digests = _merged_digests(snapshots)
    socks = []
    for info in controller.sockets.sockets():
        d = info.as_dict()
        if cfg.digest:
            d["sha256"] = digests.get(info.index)
        socks.append(d)
    return {
        "schema_version": SCHEMA_VERSION,
        "software": {"dispatch_emu": __version__, "python": platform.python_version(),
                     "machine": f"{platform.machine()} {platform.platform()}"},
        "model": cfg.model,
        "config": cfg.as_dict(),
        "offered": offered,
        "delivered": delivered,
        "elapsed_s": round(elapsed, 6),
        "throughput_pps": round(delivered / elapsed, 1),
        "offered_pps": round(offered / elapsed, 1),
        "drops": drops,
        "absorbed": {k.split(".", 1)[1]: v for k, v in counters.items()
                     if k.startswith("absorbed.")},
        "latency_us": {k: summarize(h) for k, h in hists.items()},
        "roles": roles,
        "netisr": {"policy": cfg.policy, "qlimit": cfg.qlimit, "threads": cfg.netisr,
                   "workstreams": [w.as_dict() for w in netisr.stats()]},
        "mbuf": {**pool.stats().as_dict(), "peak_mbufs_in_use": controller.peak_in_use,
                 "peak_samples": controller.peak_samples},
        "copies": {k.split(".", 1)[1]: v for k, v in counters.items()
                   if k.startswith("copies.")},
        "counters": counters,
        "source": source_report,
        "sockets": socks,
        "workload": cfg.workload,
        "egress": egress,
        "conservation": {"ok": ok, "offered": offered, "accounted": accounted,
                         "in_flight": in_flight, "pool_whole": pool_whole,
                         "missing": missing},
    }


def _merged_digests(snapshots: dict[str, dict[str, Any]]) -> dict[int, str]:
    out: dict[int, str] = {}
    for snap in snapshots.values():
        for k, v in snap.get("digests", {}).items():
            out[int(k)] = v
    return out
