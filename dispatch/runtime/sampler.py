"""The controller's watch over a run's traffic, kept out of the roles' way.

While traffic runs the controller samples the peak of mbufs in use (a scan of
every mbuf's owner word, ~0.5 ms) and publishes the live document (dispatch.live:
/proc figures of every role and the host's counters, ~6 ms) twice a second.
None of that is part of the emulated host; it is the observer. Run in the
controller's asyncio loop at the roles' priority, those slices of CPU sat in
front of the roles: `perf sched` of an rr run showed a NIC's ZeroMQ I/O thread,
woken onto the CPU where the controller was sampling, wait 3.7 ms for it
with the other CPU idle -- a request's round trip grew by as much.

So the sampling runs in a thread of its own under SCHED_IDLE (for that thread
only: Linux schedules threads separately): a waking role thread preempts it at
once, and a CPU running only it counts as idle when the scheduler places a
woken thread. (Nice 10 was tried first: the same trace then showed the NIC
waiting 3.2 ms behind a 3.2 ms sample, the other CPU idle again.) The
controller's event loop stays at the roles' priority for control messages.

The price, on a host whose roles keep both CPUs busy: the sampler runs when
a CPU has nothing else to do (SCHED_IDLE threads still get a sliver), so live
samples and peak-of-mbufs samples come further apart, and the controller's
own thread may wait for the interpreter lock a sample holds. The run's result
says how many peak samples it took (`peak_samples`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


def lower_this_threads_priority() -> str | None:
    """Put the calling thread under SCHED_IDLE (or, where that is refused or not
    offered, at nice 19): the policy it got ("idle", "nice 19"), or None where
    threads cannot be rescheduled one by one (not Linux)."""
    if not hasattr(threading, "get_native_id") or not hasattr(os, "setpriority"):
        return None
    tid = threading.get_native_id()  # (on Linux a tid names one thread to these calls)
    if hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
        except OSError:
            pass
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    except OSError:
        return None
    return "nice 19"


class Sampler:
    """Calls `sample()` every `interval_s` in a SCHED_IDLE thread until stopped.

    An exception from `sample` ends the thread and is raised again by `stop`,
    so a sampling failure fails the run as it would have in the event loop."""

    def __init__(self, sample: Callable[[], None], interval_s: float,
                 *, name: str = "dispatch-sampler") -> None:
        self._sample = sample
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.policy: str | None = None  # what lower_this_threads_priority got
        self.samples = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        self.policy = lower_this_threads_priority()
        try:
            while True:
                self._sample()
                self.samples += 1
                if self._stop.wait(self._interval_s):
                    return
        except BaseException as e:  # handed to stop()
            self._error = e

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop and wait for the thread (a sample in progress completes first)."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError(f"the sampling thread did not stop within {timeout_s} s")
        if self._error is not None:
            err, self._error = self._error, None
            raise err
