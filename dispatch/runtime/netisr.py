"""netisr workstreams: exact queue limits and netstat -Q counters in shared memory.

ZeroMQ's high-water mark is approximate (it counts messages, per pipe, with
slack), so a workstream's queue limit is enforced here with counters: each
producer (an ithread) writes only its own "enqueued" counter per workstream,
the worker writes only its "dequeued" counter, and the queue length is their
difference, exact without atomics. A batch that would overflow `qlimit` is
cut and the excess dropped and counted (QDrops), as netisr_queue does.

Hybrid dispatch needs FreeBSD's per-workstream flags: the ithread may run the
work inline only when the workstream is neither running nor dispatching and
has nothing queued, so that a direct packet never overtakes queued work. The
check-and-set is made under a per-workstream spin lock (a word of the
segment, dispatch.mbuf.spinlock, held by the taker's pid), once per batch.

Placement policies choose the workstream: `flow` (flowid % workers), `source`
(the rx queue the packet came in on), `cpu` (the ithread's own CPU, which in
the emulator is its index).
"""

from __future__ import annotations

import mmap
import os
import time
import weakref
from dataclasses import dataclass

import numpy as np

from dispatch.mbuf.segment import (
    attach_segment,
    close_at_exit,
    create_segment,
    forget,
    shm_path,
)
from dispatch.mbuf.spinlock import SpinLock, pid_alive

MAGIC = b"DEMUNISR"
MAX_WS = 64
MAX_PRODUCERS = 32
HDR_WORDS = 16
# per-workstream words (consumer side and flags)
WS_DEQ, WS_HANDLED, WS_RUNNING, WS_DISPATCHING = 0, 1, 2, 3
WS_WORDS = 8
# per (producer, workstream) words
P_ENQ, P_QDROPS, P_DISP, P_HDISP, P_WMARK = 0, 1, 2, 3, 4
P_WORDS = 8
WORDS = HDR_WORDS + MAX_WS * WS_WORDS + MAX_PRODUCERS * MAX_WS * P_WORDS
LOCKS_OFF = (64 + WORDS * 8 + 63) // 64 * 64  # MAX_WS u32 spin-lock words, after the counters
POLICIES = ("source", "flow", "cpu")
QLIMIT_MAX = 10240


@dataclass(frozen=True, slots=True)
class WorkstreamStats:
    """One row of `netstat -Q`'s workstream table."""

    wsid: int
    cpu: int
    name: str
    length: int
    wmark: int
    dispatched: int
    hybrid_dispatched: int
    qdrops: int
    queued: int
    handled: int

    def as_dict(self) -> dict[str, int | str]:
        return {"wsid": self.wsid, "cpu": self.cpu, "name": self.name, "len": self.length,
                "wmark": self.wmark, "dispatched": self.dispatched,
                "hybrid_dispatched": self.hybrid_dispatched, "qdrops": self.qdrops,
                "queued": self.queued, "handled": self.handled}


def _size(nws: int, nprod: int) -> int:
    return (LOCKS_OFF + MAX_WS * 4 + 4095) // 4096 * 4096


_TABLES: weakref.WeakSet[NetisrTable] = weakref.WeakSet()


def _retag_after_fork() -> None:
    """A forked child takes the locks under its own pid, not its parent's."""
    for t in list(_TABLES):
        if t._buf is not None:
            t._make_locks()


os.register_at_fork(after_in_child=_retag_after_fork)


class NetisrTable:
    """The shared workstream table; one per emulated host."""

    def __init__(self, name: str, fd: int, mm: mmap.mmap, nws: int, nprod: int,
                 *, creator: bool) -> None:
        self.name = name
        self.nws = nws
        self.nprod = nprod
        self.creator = creator
        self._fd = fd
        self._mm = mm
        self._buf = memoryview(mm)
        self.q = self._buf[64 : 64 + WORDS * 8].cast("Q")
        self._ws0 = HDR_WORDS
        self._p0 = HDR_WORDS + MAX_WS * WS_WORDS
        self._lockw = np.frombuffer(mm, np.uint32, MAX_WS, LOCKS_OFF)
        self._make_locks()
        _TABLES.add(self)

    def _make_locks(self) -> None:
        pid = os.getpid()
        self._locks = [SpinLock(self._lockw, i, pid, pid_alive) for i in range(MAX_WS)]

    @classmethod
    def create(cls, name: str, *, workers: int, producers: int) -> NetisrTable:
        if not 1 <= workers <= MAX_WS:
            raise ValueError(f"netisr workers must be 1..{MAX_WS}, not {workers}")
        if not 1 <= producers <= MAX_PRODUCERS:
            raise ValueError(f"producers (rx queues) must be 1..{MAX_PRODUCERS}, "
                             f"not {producers}")
        fd, mm = create_segment(name, _size(workers, producers), (workers, producers),
                                magic=MAGIC)
        table = cls(name, fd, mm, workers, producers, creator=True)
        close_at_exit(table)
        return table

    @classmethod
    def attach(cls, name: str) -> NetisrTable:
        fd, mm, sb = attach_segment(name, magic=MAGIC)
        return cls(name, fd, mm, sb.counts[0], sb.counts[1], creator=False)

    def close(self) -> None:
        if self._buf is None:
            return
        forget(self)
        self.q.release()
        del self._locks, self._lockw
        self._buf.release()
        self._buf = None  # type: ignore[assignment]
        self._mm.close()
        os.close(self._fd)
        if self.creator:
            try:
                os.unlink(shm_path(self.name))
            except FileNotFoundError:
                pass

    def reset(self) -> None:
        """Zero every counter (between runs; only while nothing is queued)."""
        for i in range(len(self.q)):
            self.q[i] = 0

    # ---------------------------------------------------------------- indices
    def _w(self, ws: int, k: int) -> int:
        return self._ws0 + ws * WS_WORDS + k

    def _p(self, p: int, ws: int, k: int) -> int:
        return self._p0 + (p * MAX_WS + ws) * P_WORDS + k

    # --------------------------------------------------------------- producer
    def qlen(self, ws: int) -> int:
        q = self.q
        enq = 0
        for p in range(self.nprod):
            enq += q[self._p0 + (p * MAX_WS + ws) * P_WORDS + P_ENQ]
        return enq - q[self._ws0 + ws * WS_WORDS + WS_DEQ]

    def try_enqueue(self, p: int, ws: int, n: int, qlimit: int) -> int:
        """Account n packets for workstream ws from producer p; returns how many fit.

        The caller sends that many and drops (and frees) the rest.
        """
        length = self.qlen(ws)
        fit = max(0, min(n, qlimit - length))
        q = self.q
        base = self._p0 + (p * MAX_WS + ws) * P_WORDS
        if fit:
            q[base + P_ENQ] += fit
            if length + fit > q[base + P_WMARK]:
                q[base + P_WMARK] = length + fit
        if fit < n:
            q[base + P_QDROPS] += n - fit
        return fit

    def count_dispatch(self, p: int, ws: int, n: int, *, hybrid: bool = False) -> None:
        """Count packets run inline by producer p (direct: Disp'd; hybrid: HDisp'd)."""
        self.q[self._p(p, ws, P_HDISP if hybrid else P_DISP)] += n

    def try_inline(self, ws: int) -> bool:
        """Hybrid: claim the workstream for inline work if idle and empty."""
        with self._locks[ws]:
            q = self.q
            if q[self._w(ws, WS_RUNNING)] or q[self._w(ws, WS_DISPATCHING)] or self.qlen(ws):
                return False
            q[self._w(ws, WS_DISPATCHING)] = 1
            return True

    def end_inline(self, ws: int) -> None:
        self.q[self._w(ws, WS_DISPATCHING)] = 0

    # --------------------------------------------------------------- consumer
    def worker_begin(self, ws: int) -> None:
        """The worker marks its workstream running, waiting out an inline dispatch."""
        while True:
            with self._locks[ws]:
                if not self.q[self._w(ws, WS_DISPATCHING)]:
                    self.q[self._w(ws, WS_RUNNING)] = 1
                    return
            time.sleep(0)

    def worker_end(self, ws: int, handled: int) -> None:
        q = self.q
        q[self._w(ws, WS_DEQ)] += handled
        q[self._w(ws, WS_HANDLED)] += handled
        q[self._w(ws, WS_RUNNING)] = 0

    # ------------------------------------------------------------------ views
    def stats(self) -> list[WorkstreamStats]:
        q = self.q
        out = []
        for ws in range(self.nws):
            rows = [self._p0 + (p * MAX_WS + ws) * P_WORDS for p in range(self.nprod)]
            disp = sum(q[r + P_DISP] for r in rows)
            hdisp = sum(q[r + P_HDISP] for r in rows)
            out.append(WorkstreamStats(
                wsid=ws, cpu=ws, name="ip", length=self.qlen(ws),
                wmark=max((q[r + P_WMARK] for r in rows), default=0),
                dispatched=disp, hybrid_dispatched=hdisp,
                qdrops=sum(q[r + P_QDROPS] for r in rows),
                queued=sum(q[r + P_ENQ] for r in rows),
                handled=q[self._w(ws, WS_HANDLED)] + disp + hdisp))
        return out

    def in_flight(self) -> int:
        return sum(self.qlen(ws) for ws in range(self.nws))

    # ------------------------------------------- a counted queue with no limit
    # The same table also counts handoffs that never drop (the socket wakeups to
    # user threads): the producer counts what it sends, the consumer what it
    # takes, so a drain can wait until nothing is left in the pipe between them.
    def count_enqueue(self, p: int, ws: int, n: int) -> None:
        self.q[self._p0 + (p * MAX_WS + ws) * P_WORDS + P_ENQ] += n

    def count_dequeue(self, ws: int, n: int) -> None:
        self.q[self._ws0 + ws * WS_WORDS + WS_DEQ] += n
        self.q[self._ws0 + ws * WS_WORDS + WS_HANDLED] += n


def choose_workstream(policy: str, *, flowid: int, source: int, cpu: int, workers: int) -> int:
    """FreeBSD's placement policies (NETISR_POLICY_SOURCE / FLOW / CPU)."""
    if policy == "flow":
        return flowid % workers
    if policy == "source":
        return source % workers
    if policy == "cpu":
        return cpu % workers
    raise ValueError(f"unknown netisr policy {policy!r}; valid: {', '.join(POLICIES)}")
