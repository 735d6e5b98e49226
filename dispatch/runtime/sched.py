"""A role's scheduling policy, applied by the role to every one of its threads.

Why the role does it (not the launcher): a policy set on a PID covers only
that thread, and a role's ZeroMQ I/O threads exist by the time its plan
arrives; attached roles (containers, other hosts) have no launcher beside
them. Applied per plan, so the next run of a re-planned role gets its own.

Only the time-sharing policies are switched (SCHED_OTHER <-> SCHED_BATCH):
a thread the launcher put under SCHED_FIFO (`--ithread-prio`) keeps it, and
its nice value is kept by either policy.

Also here: a role's timer slack (`set_timer_slack`). Linux lets a sleep of a
time-sharing thread end up to 50 us late by default, so that wakeups
coalesce; the emulated NIC's interrupt-moderation timer, the generator's
pacer and a polling ithread's pause are sleeps of 20-100 us, which that slack
roughly doubled (a 50 us sleep took 108 us here, 58 us with a 1 us slack).
Hardware timers fire when due, so every role runs with a 1 us slack.
"""

from __future__ import annotations

import ctypes
import os
import sys

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


#: the timer slack every role runs with (Linux's default is 50 us)
TIMER_SLACK_NS = 1000
_PR_SET_TIMERSLACK = 29
_PR_GET_TIMERSLACK = 30


def set_timer_slack(ns: int = TIMER_SLACK_NS) -> bool:
    """Set the calling thread's timer slack (threads it starts afterwards inherit
    it: call before creating a ZeroMQ context). False where Linux's prctl is not
    there, or refused it: sleeps then keep the system's slack."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def timer_slack() -> int | None:
    """The calling thread's timer slack in ns (None where it cannot be read)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        r = int(libc.prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0))
    except (OSError, AttributeError):
        return None
    return r if r >= 0 else None
