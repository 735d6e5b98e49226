"""A running experiment's live state, published for `top`, `netstat --watch` and progress.

The controller's pool sampler (it runs every 10 ms while traffic flows) calls
`LivePublisher.sample` and, about twice a second, the publisher writes one
JSON document, atomically replaced, at
`${XDG_RUNTIME_DIR:-/tmp}/dispatch-emu/live/<run_id>.json`. Everything in it
is read from shared memory or /proc, never asked of the roles, so watching
costs the data plane nothing: role PIDs with CPU and context switches of all
their threads (procstat), netisr workstreams (Len, WMark, QDrops, ...) from
the NetisrTable, the pool's zones, packets the NIC put on its rx rings and
packets the sockets delivered so far, and the drops visible from outside
(netisr QDrops, socket-buffer drops, mbufs denied). Per-protocol drop
reasons are only known once the roles report at the end of a run.

The file is removed when the controller closes; a file whose controller PID
is gone is stale and is ignored (and removed) by readers. A process can also
observe its own controller in-process (`observe`), which is how the CLI's
progress display works without polling the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dispatch.runtime import procstat

if TYPE_CHECKING:
    from dispatch.runtime.config import RunConfig
    from dispatch.runtime.controller import Controller

INTERVAL_S = 0.5
Observer = Callable[[dict[str, Any]], None]
_observers: list[Observer] = []


class NoLiveRun(LookupError):
    """No running experiment matches: the message says what is running, if anything."""


def live_dir() -> Path:
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / "dispatch-emu" / "live"


def observe(fn: Observer) -> Callable[[], None]:
    """Call `fn(state)` on every publish in this process; returns the unsubscribe."""
    _observers.append(fn)
    return lambda: _observers.remove(fn) if fn in _observers else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LivePublisher:
    """Owned by one controller: samples its host and writes the live document."""

    def __init__(self, run_id: str, *, interval_s: float = INTERVAL_S) -> None:
        self.run_id = run_id
        self.path = live_dir() / f"{run_id}.json"
        self.interval_s = interval_s
        self.runs = 0
        self._cfg: RunConfig | None = None
        self._t0 = 0.0
        self._next = 0.0
        self._base_delivered = 0
        self._base_sock_drops = 0
        self._prev: dict[str, Any] = {}

    # ---------------------------------------------------------------- hooks
    def begin(self, ctl: Controller, cfg: RunConfig) -> None:
        """A run's traffic starts: take the baselines (socket counters persist)."""
        self._cfg = cfg
        self.runs += 1
        self._t0 = time.monotonic()
        self._next = 0.0
        d, sd = _socket_totals(ctl)
        self._base_delivered, self._base_sock_drops = d, sd
        self._prev = {}

    def sample(self, ctl: Controller, *, phase: str = "traffic", force: bool = False) -> None:
        """Publish if half a second has passed since the last time (or `force`)."""
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.interval_s
        try:
            state = self.state(ctl, phase, now)
        except Exception:  # a view must never fail the run it watches
            return
        self._write(state)
        for fn in list(_observers):
            with contextlib.suppress(Exception):  # a display must never fail a run
                fn(state)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    # ------------------------------------------------------------ the state
    def state(self, ctl: Controller, phase: str, now: float) -> dict[str, Any]:
        cfg = self._cfg or ctl.cfg
        elapsed = now - self._t0
        roles: dict[str, Any] = {}
        for name, pid in ctl.pids.items():
            s = procstat.sample(pid)
            r: dict[str, Any] = {"pid": pid, "alive": s is not None}
            if s is not None:
                cpu = s.cpu_user_s + s.cpu_sys_s
                csw = s.voluntary_ctxt + s.involuntary_ctxt
                r.update(cpu_s=round(cpu, 3), voluntary_ctxt=s.voluntary_ctxt,
                         involuntary_ctxt=s.involuntary_ctxt, threads=s.threads,
                         rss_bytes=s.peak_rss_bytes)
                prev = self._prev.get(name)
                if prev:
                    dt = max(1e-6, now - prev["t"])
                    r["cpu_pct"] = round(100 * (cpu - prev["cpu"]) / dt, 1)
                    r["csw_per_s"] = round((csw - prev["csw"]) / dt, 1)
                self._prev[name] = {"t": now, "cpu": cpu, "csw": csw}
            roles[name] = r
        ws = [w.as_dict() for w in ctl.netisr.stats()] if ctl.netisr is not None else []
        pool = ctl.pool.stats().as_dict() if ctl.pool is not None else None
        in_use = ctl.pool.in_use() if ctl.pool is not None else 0
        nic_rx = sum(r.head for r in ctl.rings.rx) if ctl.rings is not None else 0
        d, sd = _socket_totals(ctl)
        delivered, sock_drops = d - self._base_delivered, sd - self._base_sock_drops
        qdrops = sum(int(w["qdrops"]) for w in ws)
        denied = sum(pool["denied"].values()) if pool else 0
        prev = self._prev.get("_totals")
        rates = {"nic_rx_pps": None, "delivered_pps": None}
        if prev:
            dt = max(1e-6, now - prev["t"])
            rates = {"nic_rx_pps": round((nic_rx - prev["nic_rx"]) / dt, 1),
                     "delivered_pps": round((delivered - prev["delivered"]) / dt, 1)}
        self._prev["_totals"] = {"t": now, "nic_rx": nic_rx, "delivered": delivered}
        return {
            "schema_version": 1, "run_id": self.run_id, "pid": os.getpid(),
            "updated": time.time(), "phase": phase, "runs_started": self.runs,
            "model": cfg.model, "config": cfg.as_dict(),
            "elapsed_s": round(elapsed, 3),
            "remaining_s": (round(max(0.0, cfg.duration - elapsed), 3)
                            if cfg.duration else None),
            "target_pps": None if math.isinf(cfg.rate) else cfg.rate,
            "nic_rx": nic_rx, "delivered": delivered,
            "drops": {"netisr_qdrops": qdrops, "socket_sbfull": sock_drops,
                      "mbuf_denied": denied, "total": qdrops + sock_drops + denied},
            "rates": rates, "roles": roles,
            "netisr": {"policy": cfg.policy, "qlimit": cfg.qlimit, "threads": cfg.netisr,
                       "workstreams": ws},
            "mbuf": {**(pool or {}), "in_use": in_use, "peak_mbufs_in_use": ctl.peak_in_use},
        }

    def _write(self, state: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self.path)  # readers see the old or the new file, never half
        except OSError:  # a full or read-only runtime dir costs the live view, not the run
            with contextlib.suppress(OSError):
                tmp.unlink()


def _socket_totals(ctl: Controller) -> tuple[int, int]:
    if ctl.sockets is None:
        return 0, 0
    delivered = drops = 0
    for i in ctl.sockets.indices():
        info = ctl.sockets.info(i)
        delivered += info.packets_delivered
        drops += info.counters.get("drops", 0)
    return delivered, drops


# ------------------------------------------------------------------ readers
def running() -> list[dict[str, Any]]:
    """Live states of running experiments (newest first); stale files are removed."""
    out = []
    d = live_dir()
    if not d.is_dir():
        return []
    for p in d.glob("*.json"):
        try:
            state = json.loads(p.read_text())
        except (OSError, ValueError):
            continue  # being replaced, or not ours
        if not _pid_alive(int(state.get("pid", 0))):
            with contextlib.suppress(OSError):
                p.unlink()
            continue
        out.append(state)
    return sorted(out, key=lambda s: s.get("updated", 0), reverse=True)


def read(run_id: str | None = None) -> dict[str, Any]:
    """The live state of `run_id`, or of the only running experiment."""
    states = running()
    if run_id:
        for s in states:
            if s["run_id"] == run_id:
                return s
        names = ", ".join(s["run_id"] for s in states) or "none"
        raise NoLiveRun(f"no running experiment {run_id!r}; running: {names}")
    if not states:
        raise NoLiveRun(f"no running experiment (nothing published under {live_dir()}); "
                        f"start one with dispatch run/compare/sweep")
    return states[0]  # several: the most recently updated (name one to choose)
