"""A role's scheduling policy, applied by the role to every one of its threads.

Why the role does it (not the launcher): a policy set on a PID covers only
that thread, and a role's ZeroMQ I/O threads exist by the time its plan
arrives; attached roles (containers, other hosts) have no launcher beside
them. Applied per plan, so the next run of a re-planned role gets its own.

Only the time-sharing policies are switched (SCHED_OTHER <-> SCHED_BATCH):
a thread the launcher put under SCHED_FIFO (`--ithread-prio`) keeps it, and
its nice value is kept by either policy.
"""

from __future__ import annotations

import os

POLICIES: dict[str, int] = {"other": os.SCHED_OTHER, "batch": os.SCHED_BATCH}
NAMES: dict[int, str] = {os.SCHED_OTHER: "other", os.SCHED_BATCH: "batch",
                         os.SCHED_FIFO: "fifo", os.SCHED_RR: "rr"}


def policy_name(tid: int) -> str:
    """The policy of a thread (or process: its main thread) as a CLI name."""
    return NAMES.get(os.sched_getscheduler(tid), "other")


def apply(name: str, pid: int | None = None) -> int:
    """Give every time-sharing thread of process `pid` (default: this one) the
    policy `name` (one of POLICIES); returns how many threads were switched.
    Threads that exit meanwhile are skipped."""
    if name not in POLICIES:
        raise ValueError(f"sched {name!r} is not valid: one of {', '.join(POLICIES)}")
    want = POLICIES[name]
    pid = os.getpid() if pid is None else pid
    switched = 0
    for entry in os.listdir(f"/proc/{pid}/task"):
        tid = int(entry)
        try:
            cur = os.sched_getscheduler(tid)
            if cur == want or cur not in POLICIES.values():
                continue
            os.sched_setscheduler(tid, want, os.sched_param(0))
            switched += 1
        except (ProcessLookupError, PermissionError):
            continue
    return switched
