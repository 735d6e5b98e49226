"""Per-process resource figures read from /proc, all threads included.

psutil's context-switch count covers only a process's main thread, and
ZeroMQ's I/O threads would be missed; so this reads every thread's
/proc/PID/task/TID/status and the process's /proc/PID/stat (CPU user and
system time of all threads, dead ones included) and VmHWM (peak RSS).
`thread_cpu_s` reads the CPU time of a process's live threads to the
nanosecond (/proc/PID/task/TID/schedstat), for intervals too short for
the clock ticks /proc/PID/stat counts in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcSample:
    cpu_user_s: float
    cpu_sys_s: float
    voluntary_ctxt: int
    involuntary_ctxt: int
    peak_rss_bytes: int
    threads: int

    def minus(self, before: ProcSample) -> ProcSample:
        """Figures over an interval (peak RSS stays the peak)."""
        return ProcSample(self.cpu_user_s - before.cpu_user_s,
                          self.cpu_sys_s - before.cpu_sys_s,
                          self.voluntary_ctxt - before.voluntary_ctxt,
                          self.involuntary_ctxt - before.involuntary_ctxt,
                          self.peak_rss_bytes, self.threads)

    def as_dict(self) -> dict[str, float | int]:
        return {"cpu_user_s": round(self.cpu_user_s, 4), "cpu_sys_s": round(self.cpu_sys_s, 4),
                "voluntary_ctxt": self.voluntary_ctxt,
                "involuntary_ctxt": self.involuntary_ctxt,
                "peak_rss_bytes": self.peak_rss_bytes, "threads": self.threads}


def sample(pid: int) -> ProcSample | None:
    """Read the figures of `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        fields = raw[raw.rindex(b")") + 2 :].split()
        utime, stime = int(fields[11]), int(fields[12])
        vol = invol = 0
        tids = os.listdir(f"/proc/{pid}/task")
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches"):
                            invol += int(line.split()[1])
            except FileNotFoundError:
                continue  # a thread that ended between listdir and open
        hwm = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    hwm = int(line.split()[1]) * 1024
                    break
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return ProcSample(utime / _TICK, stime / _TICK, vol, invol, hwm, len(tids))


def thread_cpu_s(pid: int) -> float:
    """CPU seconds of every live thread of `pid` (ZeroMQ's I/O threads included), to
    the nanosecond: threads that ended are not counted (see `sample` for that)."""
    t = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:  # ns on the CPU first
                t += int(f.read().split()[0])
        except FileNotFoundError:
            continue  # a thread that ended between listdir and open
    return t / 1e9
