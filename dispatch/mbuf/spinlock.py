"""A cross-process spin lock on a word of a shared segment: the pool's zone and
refcount locks, netisr's workstream locks, the socket table's pcb lock.

Why it exists: these were open-file-description locks, two fcntl system
calls per critical section, taken per bucket refill or flush (the pool), per
batch (netisr, pcb) and per send (pcb). On the machines this project
runs on (a Firecracker VM) a system call costs about 3 us, so a lock and
unlock was 6 us: a cross-process allocate/free pipeline paid about 20 us
per bucket and zone, more than the pool's own work on the bucket
(docs/BENCHMARKS.md, "fourth round"). Here a lock is a u32 word in the
segment, taken with an atomic compare-and-swap from compiled code
(`jit.cas32`): about 1 us to take and release from Python, nothing inside a
kernel.

A locked word holds the holder's tag (a pool owner's slot + 1, else the
taker's pid), so a waiter can tell who holds it. What the kernel did for an fcntl lock when its holder
died, a waiter does here: after spinning a while it yields the CPU, and
every few dozen yields it asks whether the holder still runs; a holder
whose process is gone has its lock broken. (What the dead holder was doing
may be half done; `MbufPool.reclaim`, which the controller runs for a dead
role, rebuilds the free stacks from the buffer states, as it did before.)

Critical sections are a bucket's worth of handle moves (about a
microsecond), never a system call or a wait, so a holder is rarely
preempted inside one; a waiter spins for about that long before yielding.
A lock found held by the caller's own tag was left by a take that an
exception (a signal turned into SystemExit) cut off between the swap and
the ``with`` block: it is the caller's, and is taken over.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from dispatch.jit import cas32, cpu_relax, entry, kernel, types, u32_1d

from .segment import process_start_time

#: how many compare-and-swap attempts a take makes before yielding the CPU
SPINS = 2000
#: yields between two looks at whether the holder is alive
CHECK_EVERY = 32


@kernel(types.uint32(u32_1d, types.int64, types.uint32, types.int64))
def spin_take(words, i, tag, spins):  # type: ignore[no-untyped-def]
    """Try to take lock word i for `tag`, up to `spins` times. Returns 0 when taken
    (or already held by `tag`), else the holder's tag."""
    old = np.uint32(0)
    for _ in range(spins):
        old = cas32(words, i, 0, tag)
        if old == 0 or old == tag:
            return np.uint32(0)
        cpu_relax()
    return old


@kernel(types.uint32(u32_1d, types.int64, types.uint32, types.uint32))
def spin_swap(words, i, expected, new):  # type: ignore[no-untyped-def]
    """Release (expected = our tag, new = 0) or break (expected = a dead holder's tag):
    returns the word's value before, which equals `expected` when it worked."""
    return cas32(words, i, expected, new)


def pid_alive(pid: int) -> bool:
    """`alive` for locks tagged with the taker's pid (tables other than the pool,
    whose takers have no owner slot): whether that process still runs."""
    return process_start_time(pid) != 0


# what SpinLock calls: its arguments are always the pool's own u32 view, ints and ints
_take = entry(spin_take)
_swap = entry(spin_swap)


class SpinLock:
    """One lock word of a segment, taken as owner `tag` (nonzero), as a context manager.

    `alive(tag)` says whether the holder with that tag still runs; it is
    asked only after the lock has been found held for a while."""

    __slots__ = ("_words", "_i", "_tag", "_alive")

    def __init__(self, words: np.ndarray, i: int, tag: int,
                 alive: Callable[[int], bool]) -> None:
        if not tag:
            raise ValueError("a lock tag must be nonzero (0 is the unlocked word)")
        if words.dtype != np.uint32 or not words.flags.c_contiguous or words.ndim != 1:
            raise ValueError("lock words must be a C-contiguous 1-d uint32 array")
        if not 0 <= i < len(words):
            raise ValueError(f"lock word {i} outside the {len(words)} words given")
        self._words = words
        self._i = int(i)
        self._tag = int(tag)
        self._alive = alive

    def __enter__(self) -> SpinLock:
        if _take(self._words, self._i, self._tag, SPINS):
            self._wait()
        return self

    def _wait(self) -> None:
        yields = 0
        while True:
            os.sched_yield()
            holder = _take(self._words, self._i, self._tag, SPINS)
            if not holder:
                return
            yields += 1
            if yields % CHECK_EVERY == 0 and not self._alive(int(holder)):
                _swap(self._words, self._i, holder, 0)  # (no-op if it changed meanwhile)

    def __exit__(self, *exc: object) -> None:
        old = _swap(self._words, self._i, self._tag, 0)
        if old != self._tag:
            raise RuntimeError(f"lock word {self._i} released by tag {self._tag} "
                               f"but held by {old}")

    def holder(self) -> int:
        """The tag holding the lock now (0: free)."""
        return int(self._words[self._i])
