"""Views of a running experiment's live state: `dispatch top`, netstat --watch, progress.

The state comes from dispatch.live (a file another process reads, or an
in-process observer for the run's own progress line). Frames are plain text,
so `--once` prints exactly what the refreshing view shows; on a terminal,
rich redraws them in place.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from dispatch import live
from dispatch.netstat import format_mbuf, format_netisr, stats_from_doc


def _rate(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isinf(v)):
        return "-"
    return f"{v / 1e3:.1f} kpps"


def headline(state: dict[str, Any]) -> str:
    """One line: model, time, offered (target), NIC rx and delivered rates, drops."""
    dur = state["config"].get("duration")
    count = state["config"].get("count")
    t = f"{state['elapsed_s']:.1f}/{dur:g} s" if dur else f"{state['elapsed_s']:.1f} s"
    if count and not dur:
        t += f" ({state['nic_rx']}/{count} pkts sent)"
    target = state.get("target_pps")
    d = state["drops"]
    return (f"{state['model']} [{state['phase']}] {t}: offered "
            f"{'max' if target is None else _rate(target)}, "
            f"nic rx {_rate(state['rates']['nic_rx_pps'])}, delivered "
            f"{_rate(state['rates']['delivered_pps'])} ({state['delivered']} pkts), "
            f"drops {d['total']}")


def format_top(state: dict[str, Any]) -> str:
    """A top-like frame: the run, then one line per role, then the workstreams."""
    d = state["drops"]
    rem = state.get("remaining_s")
    lines = [
        f"dispatch top - {state['run_id']} (controller pid {state['pid']}), run "
        f"{state['runs_started']}, {time.strftime('%H:%M:%S', time.localtime(state['updated']))}",
        headline(state) + (f", {rem:.1f} s left" if rem is not None else ""),
        f"drops so far: netisr QDrops {d['netisr_qdrops']}, socket buffer full "
        f"{d['socket_sbfull']}, mbufs denied {d['mbuf_denied']}; mbufs in use "
        f"{state['mbuf']['in_use']} (peak {state['mbuf']['peak_mbufs_in_use']})",
        "",
        f"{'ROLE':<10}{'PID':>8}{'CPU%':>7}{'CPU s':>8}{'CSW/s':>9}{'VOL':>9}{'INVOL':>8}"
        f"{'THR':>5}",
    ]
    for name, r in state["roles"].items():
        if not r.get("alive"):
            lines.append(f"{name:<10}{r['pid']:>8}  (gone)")
            continue
        cpu_pct = r.get("cpu_pct")
        csw = r.get("csw_per_s")
        lines.append(f"{name:<10}{r['pid']:>8}{'-' if cpu_pct is None else f'{cpu_pct:.0f}':>7}"
                     f"{r['cpu_s']:>8.2f}{'-' if csw is None else f'{csw:.0f}':>9}"
                     f"{r['voluntary_ctxt']:>9}{r['involuntary_ctxt']:>8}{r['threads']:>5}")
    ws = state["netisr"]["workstreams"]
    if ws:
        lines += ["", f"{'WSID':>4}{'Len':>6}{'WMark':>6}{'QDrops':>9}{'Queued':>9}"
                      f"{'Handled':>9}"]
        lines += [f"{w['wsid']:>4}{w['len']:>6}{w['wmark']:>6}{w['qdrops']:>9}"
                  f"{w['queued']:>9}{w['handled']:>9}" for w in ws]
    return "\n".join(lines)


def format_live_protocols(state: dict[str, Any]) -> str:
    """netstat -s while a run goes on: what shared memory shows. Per-protocol counters
    and drop reasons are reported by the roles at the end of a run."""
    d = state["drops"]
    return "\n".join([
        "socket:", f"\t{state['delivered']} packets delivered to sockets",
        f"\t{d['socket_sbfull']} dropped: socket buffer full",
        "netisr:", f"\t{d['netisr_qdrops']} dropped: queue full (QDrops)",
        "mbuf:", f"\t{d['mbuf_denied']} requests for mbufs denied",
        "(per-protocol counters and every drop reason: at the end of the run, "
        "dispatch netstat -s --result FILE)"])


def netstat_views(state: dict[str, Any], *, m: bool, q: bool, s: bool) -> str:
    doc = {"netisr": state["netisr"], "config": state["config"], "model": state["model"]}
    views = [f"{state['run_id']}: {headline(state)}"]
    if m:
        views.append(format_mbuf(stats_from_doc(state["mbuf"])))
    if q:
        views.append(format_netisr(doc))
    if s:
        views.append(format_live_protocols(state))
    return "\n\n".join(views)


def watch(render: Any, run_id: str | None, *, once: bool, interval_s: float,
          iterations: int | None, out: TextIO = sys.stdout) -> int:
    """Refresh `render(state)` until the run ends, `iterations` frames, or Ctrl-C.

    Returns 0, or 1 if no experiment is running (the message says so)."""
    try:
        return _watch(render, run_id, once=once, interval_s=interval_s,
                      iterations=iterations, out=out)
    except KeyboardInterrupt:  # leaving a watch is not an error
        return 0


def _watch(render: Any, run_id: str | None, *, once: bool, interval_s: float,
           iterations: int | None, out: TextIO) -> int:
    try:
        state = live.read(run_id)
    except live.NoLiveRun as e:
        print(f"dispatch: {e}", file=sys.stderr)
        return 1
    run_id = state["run_id"]
    if once or not out.isatty():
        n = 0
        while True:
            print(render(state), file=out, flush=True)
            n += 1
            if once or (iterations is not None and n >= iterations):
                return 0
            time.sleep(interval_s)
            try:
                state = live.read(run_id)
            except live.NoLiveRun:
                print(f"{run_id}: finished", file=out)
                return 0
            print(file=out)
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    n = 1
    ended = False
    with Live(Text(render(state)), console=Console(file=out), auto_refresh=False,
              screen=False) as view:
        while iterations is None or n < iterations:
            time.sleep(interval_s)
            try:
                state = live.read(run_id)
            except live.NoLiveRun:
                ended = True
                break
            view.update(Text(render(state)), refresh=True)
            n += 1
    if ended:
        print(f"{run_id}: finished", file=out)
    return 0


class Progress:
    """The run's own progress on stderr: rich in place on a terminal, else a plain line
    every few seconds; nothing with `quiet`."""

    def __init__(self, *, quiet: bool, stream: TextIO = sys.stderr,
                 plain_every_s: float = 2.0) -> None:
        self.quiet = quiet
        self.stream = stream
        self.tty = stream.isatty()
        self.plain_every_s = plain_every_s
        self.label = ""
        self._last_plain = 0.0
        self._unsub: Any = None
        self._live: Any = None

    def __enter__(self) -> Progress:
        if self.quiet:
            return self
        self._unsub = live.observe(self.update)
        if self.tty:
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            self._live = Live(Text("starting the roles ..."),
                              console=Console(file=self.stream), transient=True,
                              refresh_per_second=4)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._unsub:
            self._unsub()
        if self._live is not None:
            self._live.stop()

    def step(self, label: str) -> None:
        """A new run of a compare or sweep: `run 2/6: deferred`."""
        self.label = label
        if self.quiet:
            return
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(f"{label}: starting"))
        else:
            print(f"  {label}", file=self.stream, flush=True)

    def update(self, state: dict[str, Any]) -> None:
        text = (f"{self.label}: " if self.label else "") + headline(state)
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(text))
            return
        now = time.monotonic()
        if state["phase"] == "traffic" and state["rates"]["delivered_pps"] is not None \
                and now - self._last_plain >= self.plain_every_s:
            self._last_plain = now
            print(f"  {text}", file=self.stream, flush=True)
