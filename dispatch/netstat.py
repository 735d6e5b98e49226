"""netstat views: the emulator's counters in the layouts FreeBSD users know.

Each function takes plain figures (a live pool's stats, or the parts of a
result document) and returns the text `netstat` would print, so the same
view serves a live pool, a running experiment and a finished run.
"""

from __future__ import annotations

from dispatch.mbuf.pool import PoolStats


def _k(n: int) -> str:
    return f"{n // 1024}K"


def format_mbuf(stats: PoolStats) -> str:
    """`netstat -m`. Zones are preallocated, so total equals max; nothing is delayed
    (every allocation is M_NOWAIT: it succeeds or is denied and counted)."""
    z = stats.zones
    mb, cl, j4, j9, j16 = z
    lines = [
        f"{mb.current}/{mb.cache}/{mb.total} mbufs in use (current/cache/total)",
        f"{cl.current}/{cl.cache}/{cl.total}/{cl.total} mbuf clusters in use "
        f"(current/cache/total/max)",
        f"{j4.current}/{j4.cache}/{j4.total}/{j4.total} 4k (page size) jumbo clusters in use "
        f"(current/cache/total/max)",
        f"{j9.current}/{j9.cache}/{j9.total}/{j9.total} 9k jumbo clusters in use "
        f"(current/cache/total/max)",
        f"{j16.current}/{j16.cache}/{j16.total}/{j16.total} 16k jumbo clusters in use "
        f"(current/cache/total/max)",
        f"{_k(stats.bytes_current)}/{_k(stats.bytes_cache)}/"
        f"{_k(stats.bytes_current + stats.bytes_cache)} bytes allocated to network "
        f"(current/cache/total)",
        f"{mb.denied}/{cl.denied}/{stats.getcl_denied} requests for mbufs denied "
        f"(mbufs/clusters/mbuf+clusters)",
        "0/0/0 requests for mbufs delayed (mbufs/clusters/mbuf+clusters)",
        "0/0/0 requests for jumbo clusters delayed (4k/9k/16k)",
        f"{j4.denied}/{j9.denied}/{j16.denied} requests for jumbo clusters denied "
        f"(4k/9k/16k)",
    ]
    return "\n".join(lines)


def stats_from_doc(mbuf: dict) -> PoolStats:
    """Rebuild PoolStats from a result document's `mbuf` section."""
    from dispatch.mbuf.pool import ZoneStats

    zones = tuple(ZoneStats(name, z["size"], z["current"], z["cache"], z["total"], z["denied"])
                  for name, z in mbuf["zones"].items())
    return PoolStats(zones, mbuf["denied"]["mbuf+clusters"])


DISPD, HDISPD = "Disp'd", "HDisp'd"


def format_netisr(doc: dict) -> str:
    """`netstat -Q`: configuration, protocols and workstreams, from a result document."""
    n = doc["netisr"]
    cfg = doc["config"]
    model = doc["model"]
    dispatch = {"direct": "direct", "polling": "direct", "deferred": "deferred",
                "hybrid": "hybrid", "toe": "direct"}.get(model, model)
    bound = "enabled" if cfg.get("bindthreads") else "disabled"
    lines = [
        "Configuration:",
        f"{'Setting':<24}{'Current':>12}{'Limit':>12}",
        f"{'Thread count':<24}{n['threads']:>12}{64:>12}",
        f"{'Default queue limit':<24}{n['qlimit']:>12}{10240:>12}",
        f"{'Dispatch policy':<24}{dispatch:>12}{'n/a':>12}",
        f"{'Threads bound to CPUs':<24}{bound:>12}{'n/a':>12}",
        "",
        "Protocols:",
        f"{'Name':<6}{'Proto':>6}{'QLimit':>7}{'Policy':>8}{'Dispatch':>9}{'Flags':>6}",
        f"{'ip':<6}{1:>6}{n['qlimit']:>7}{n['policy']:>8}{'default':>9}{'---':>6}",
        f"{'ip6':<6}{10:>6}{n['qlimit']:>7}{n['policy']:>8}{'default':>9}{'---':>6}",
        "",
        "Workstreams:",
        f"{'WSID':>4}{'CPU':>4}  {'Name':<5}{'Len':>6}{'WMark':>6}{DISPD:>9}{HDISPD:>9}"
        f"{'QDrops':>9}{'Queued':>9}{'Handled':>9}",
    ]
    for w in n["workstreams"]:
        lines.append(f"{w['wsid']:>4}{w['cpu']:>4}  {w['name']:<5}{w['len']:>6}{w['wmark']:>6}"
                     f"{w['dispatched']:>9}{w['hybrid_dispatched']:>9}{w['qdrops']:>9}"
                     f"{w['queued']:>9}{w['handled']:>9}")
    return "\n".join(lines)


_LAYERS = (("ip", ("ip.", "ip_input", "ip_output", "ip_forward")),
           ("ip6", ("ip6.", "ip6_input", "ip6_output")),
           ("icmp", ("icmp.", "icmp6.", "icmp_input")),
           ("tcp", ("tcp.", "tcp_input", "tcp_output")),
           ("udp", ("udp.", "udp_input", "udp_output")),
           ("socket", ("socket.", "soreceive", "sosend")),
           ("netisr", ("netisr",)),
           ("nic", ("nic.", "nic", "if_transmit")))


def format_protocols(doc: dict) -> str:
    """`netstat -s`: per-protocol counters, then every drop with its reason's text."""
    from dispatch.stages import all as _all  # noqa: F401  (declares every reason)
    from dispatch.stages.base import REASONS

    counters: dict[str, int] = doc.get("counters", {})
    drops: dict[str, dict[str, int]] = doc.get("drops", {})
    out = []
    for layer, prefixes in _LAYERS:
        # zero counters are left out, as FreeBSD's `netstat -s -s` does
        rows = [f"\t{v} {k.split('.', 1)[1]}" for k, v in sorted(counters.items())
                if v and k.startswith(tuple(p for p in prefixes if p.endswith(".")))]
        for stage, reasons in sorted(drops.items()):
            if stage in prefixes:
                for name, n in sorted(reasons.items()):
                    r = REASONS.get(f"{stage}.{name}")
                    text = r.text if r else name
                    stat = f" ({r.stat})" if r else ""
                    rows.append(f"\t{n} dropped: {text}{stat}")
        if rows:
            out.append(f"{layer}:")
            out += rows
    return "\n".join(out)
