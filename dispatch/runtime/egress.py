"""Conservation for what the host sends: the transmit half of every run's proof.

The receive equation (offered = delivered + dropped + absorbed + forwarded)
stops where a packet leaves the input path. What the host sends (ACKs,
replies, forwarded packets, the tx workload's data) must be accounted for
too, from the driver handoff to the far end of the wire:

- driver: every packet handed to if_transmit was taken off a tx ring by the
  NIC (sent, or counted in the NIC's oerrors) or dropped at the handoff with
  a reason (tx ring full, driver queue full);
- wire: every frame the NIC put on a port the generator reads arrived there
  (checked where the generator counts a port: tx and forward);
- workload: tx/UDP: every datagram the applications sent arrived or was
  dropped with a reason on the way; tx/TCP: every byte written arrived in
  order at the generator (sha256 equal) and was acknowledged; rr: every
  request was answered, and every answer reached the generator as a
  completed (or late) transaction.

Drops are split by direction: output stages (sosend ... if_transmit) belong
to this equation, input stages to the receive one.
"""

from __future__ import annotations

from typing import Any

from dispatch.stages import base as S

#: stages whose drops belong to the transmit direction
OUTPUT_DROP_STAGES = frozenset(S.OUTPUT_STAGES) | {S.IF_TRANSMIT, "nic_tx"}


def split_drops(drops: dict[str, dict[str, int]]) -> tuple[int, int]:
    """(input-side drops, output-side drops)."""
    inp = out = 0
    for stage, reasons in drops.items():
        n = sum(reasons.values())
        if stage in OUTPUT_DROP_STAGES:
            out += n
        else:
            inp += n
    return inp, out


def _ports(counters: dict[str, int], what: str) -> int:
    return counters.get(f"nic.{what}", 0) + sum(
        v for k, v in counters.items() if k.startswith("nic") and k.endswith(f".{what}")
        and k != f"nic.{what}" and k.split(".", 1)[0][3:].isdigit())


def build_egress(cfg: Any, counters: dict[str, int], drops: dict[str, dict[str, int]],
                 snapshots: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The document's `egress` section and the list of broken equations (empty: ok)."""
    missing: list[str] = []
    _, out_drops = split_drops(drops)
    if_drops = sum(drops.get(S.IF_TRANSMIT, {}).values())
    to_driver = counters.get("ether.if_opackets", 0)
    chains = _ports(counters, "tx_chains")
    oerrors = _ports(counters, "oerrors")
    on_wire = _ports(counters, "opackets")
    if to_driver != chains + if_drops:
        missing.append(f"driver: handed to if_transmit {to_driver} != taken by the NIC "
                       f"{chains} + dropped at the handoff {if_drops} "
                       f"({to_driver - chains - if_drops:+d} unaccounted)")
    gen = snapshots.get("trafgen0", {})
    sink = merge_sinks([s["sink"] for n, s in sorted(snapshots.items())
                        if n.startswith("trafgen") and "sink" in s])
    section: dict[str, Any] = {
        "to_driver": to_driver, "transmitted_chains": chains, "nic_oerrors": oerrors,
        "frames_on_wire": on_wire, "driver_drops": if_drops, "output_drops": out_drops,
    }
    wl = getattr(cfg, "workload", "rx")
    lost = dups = 0
    if sink is not None and wl in ("tx", "forward"):
        port = "nic1.opackets" if wl == "forward" else "nic.opackets"
        sent = counters.get(port, 0)
        imp = gen.get("wire_impairments", {})
        lost, dups = imp.get("loss", 0), imp.get("dup", 0)
        section["received_by_generator"] = sink["frames"]
        section["generator"] = sink
        if imp:
            section["wire_impairments"] = imp
        if sink["frames"] != sent - lost + dups:
            missing.append(f"wire: the NIC sent {sent} frames on the generator's port, the "
                           f"wire lost {lost} and duplicated {dups}, the generator received "
                           f"{sink['frames']}")
    users = [s.get("role", {}) for n, s in snapshots.items() if n.startswith("user")]
    if wl == "tx" and cfg.proto == "udp" and sink is not None:
        msgs = sum(u.get("app_msgs", 0) for u in users)
        section["app_sent"] = msgs
        if msgs != sink["frames"] + out_drops + oerrors + lost - dups:
            missing.append(f"tx: applications sent {msgs} datagrams != received "
                           f"{sink['frames']} + dropped on output {out_drops} + NIC oerrors "
                           f"{oerrors} ({msgs - sink['frames'] - out_drops - oerrors:+d})")
    if wl == "tx" and cfg.proto == "tcp":
        section["tcp"] = tcp = _tcp_streams(snapshots, gen)
        for s in tcp["streams"]:
            if not s["ok"]:
                missing.append(f"tx: TCP stream {s['local']} -> {s['remote']}: wrote "
                               f"{s['written']} bytes, generator got {s['received']} in order"
                               f"{'' if s['digest_equal'] else ', digests differ'}"
                               f"{'' if s['acked'] else ', not all acknowledged'}")
        if not tcp["streams"]:
            missing.append("tx: no TCP stream was established")
    if wl == "rr":
        answered = sum(u.get("rr_answered", 0) for u in users)
        src = gen.get("rr", {})
        done = int(src.get("transactions", 0))
        stale = int(src.get("stale", 0))
        section["rr"] = {"answered": answered, "transactions": done, "stale": stale,
                         "timeouts": int(src.get("timeouts", 0))}
        if cfg.proto == "udp" and answered != done + stale + out_drops + oerrors:
            missing.append(f"rr: the host answered {answered} requests != transactions {done}"
                           f" + late answers {stale} + dropped on output {out_drops}")
        if cfg.proto == "tcp" and done > answered:
            missing.append(f"rr: {done} transactions completed but only {answered} answers")
    return section, missing


def figures(cfg: Any, egress: dict[str, Any], source: dict[str, Any],
            elapsed_s: float, counters: dict[str, int] | None = None) -> dict[str, Any]:
    """The workload's headline figures, as the generator measured them."""
    wl = getattr(cfg, "workload", "rx")
    gen = egress.get("generator", {})
    out: dict[str, Any] = {}
    if wl in ("tx", "forward") and gen:
        out["received_pps"] = round(gen["frames"] / elapsed_s, 1)
        out["received_bytes"] = gen["bytes"]
        out["goodput_bps"] = round(gen["bytes"] * 8 / elapsed_s, 1)
        out["latency_us"] = gen["latency_us"]
    if wl == "tx" and "tcp" in egress and egress["tcp"].get("goodput_bps") is not None:
        out["tcp_goodput_bps"] = egress["tcp"]["goodput_bps"]
    frames = egress.get("frames_on_wire", 0)
    if wl != "rx" and frames:
        c = counters or {}
        out["copyin_bytes_per_frame"] = round(c.get("copies.copyin_bytes", 0) / frames, 1)
        out["dma_out_bytes_per_frame"] = round(c.get("copies.tx_wire_bytes", 0) / frames, 1)
    if wl == "rr":
        out["transactions"] = int(source.get("transactions", 0))
        out["tps"] = round(float(source.get("tps", 0.0)), 1)
        out["rtt_us"] = {k: round(float(source.get(f"rtt_{k}_ns", 0)) / 1000.0, 3)
                         for k in ("p50", "p90", "p99", "p999", "max")}
        out["timeouts"] = int(source.get("timeouts", 0))
    return out


def merge_sinks(sinks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What several generators received, as one: counts add, TTLs merge, and the
    latency percentiles come from their merged histograms."""
    if not sinks:
        return None
    if len(sinks) == 1:
        return {k: v for k, v in sinks[0].items() if k != "hist"}
    from dispatch.runtime.result import decode_into, new_histogram, summarize

    out: dict[str, Any] = {k: 0 for k in ("frames", "bytes", "other", "bad_ip_csum",
                                           "bad_udp_csum",
                                           "stamped", "flows")}
    ttl: dict[str, int] = {}
    h = new_histogram()
    for s in sinks:
        for k in out:
            out[k] += s.get(k, 0)
        for t, n in s.get("ttl", {}).items():
            ttl[t] = ttl.get(t, 0) + n
        decode_into(h, s.get("hist", ""))
    out["ttl"] = dict(sorted(ttl.items()))
    out["latency_us"] = summarize(h)
    out["generators"] = len(sinks)
    return out


def _tcp_streams(snapshots: dict[str, dict[str, Any]], gen: dict[str, Any]) -> dict[str, Any]:
    """Per TCP stream: bytes written (and their digest, from the user threads) against
    what the generator's receiver got in order."""
    written: dict[str, dict[str, Any]] = {}
    for n, s in snapshots.items():
        if n.startswith("user"):
            for key, info in s.get("tx_streams", {}).items():
                written[key] = info
    received = gen.get("tcp_sink", {}).get("flows", {})
    streams = []
    for key, w in sorted(written.items()):
        r = received.get(key, {})
        got = int(r.get("bytes", 0))
        eq = bool(r.get("sha256")) and r.get("sha256") == w.get("sha256")
        acked = bool(w.get("acked"))
        streams.append({"key": key, "local": w.get("local"), "remote": w.get("remote"),
                        "written": w.get("written", 0), "received": got,
                        "digest_equal": eq, "acked": acked,
                        "ok": got == w.get("written", 0) and eq and acked})
    goodput = sum(float(r.get("goodput_bps", 0.0)) for r in received.values()) \
        if received else None
    return {"streams": streams, "goodput_bps": goodput}
