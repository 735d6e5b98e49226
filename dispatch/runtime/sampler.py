"""The controller's watch over a run's traffic, kept out of the roles' way.

While traffic runs the controller samples the peak of mbufs in use (a scan of
every mbuf's owner word, ~0.5 ms) and publishes the live document (dispatch.live:
/proc figures of every role and the host's counters, ~6 ms) twice a second.
None of that is part of the emulated host; it is the observer. Run in the
controller's asyncio loop at the roles' priority, those slices of CPU sat in
front of the roles: `perf sched` of an rr run showed a NIC's ZeroMQ I/O thread,
woken onto the CPU where the controller was sampling, wait 3.7 ms for it
with the other CPU idle -- a request's round trip grew by as much.

So the sampling runs in a thread of its own at a lower priority (a higher
nice value, for that thread only: Linux schedules threads separately), which a
waking role thread preempts at once. The controller's event loop stays at the
roles' priority for control messages. A sample taken late is still a sample;
the figures it reads are the same.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

#: how much nicer than the controller the sampling thread runs (nice 0 -> 10: a
#: tenth of a nice-0 thread's weight, so the roles go first, yet it still runs on
#: a saturated machine)
SAMPLER_NICE = 10


def lower_this_threads_priority(by: int = SAMPLER_NICE) -> int | None:
    """Raise the calling thread's nice value by `by` (at most 19); the new value, or
    None where threads cannot be reniced one by one (not Linux) or it was refused."""
    if not hasattr(threading, "get_native_id") or not hasattr(os, "setpriority"):
        return None
    tid = threading.get_native_id()
    try:
        nice = min(19, os.getpriority(os.PRIO_PROCESS, tid) + by)
        os.setpriority(os.PRIO_PROCESS, tid, nice)  # (on Linux, a tid names one thread)
    except OSError:
        return None
    return nice


class Sampler:
    """Calls `sample()` every `interval_s` in a low-priority thread until stopped.

    An exception from `sample` ends the thread and is raised again by `stop`,
    so a sampling failure fails the run as it would have in the event loop."""

    def __init__(self, sample: Callable[[], None], interval_s: float,
                 *, name: str = "dispatch-sampler") -> None:
        self._sample = sample
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.nice: int | None = None
        self.samples = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        self.nice = lower_this_threads_priority()
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
