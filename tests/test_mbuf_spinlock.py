"""Tests for dispatch.mbuf.spinlock: the zone locks exclude across processes, a dead
holder's lock is broken, and the pool's books stay whole through both."""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from dispatch.mbuf.spinlock import SpinLock, spin_take

N_ITER = 3000


def _hammer(buf: mmap.mmap, tag: int, n: int) -> None:
    """Increment a shared counter n times, read-modify-write in two steps (a torn
    update if two processes ever hold the lock at once)."""
    words = np.frombuffer(buf, np.uint32, 16, 0)
    counter = np.frombuffer(buf, np.int64, 1, 64)
    lock = SpinLock(words, 0, tag, lambda t: True)
    for _ in range(n):
        with lock:
            v = int(counter[0])
            if _ % 97 == 0:
                os.sched_yield()  # (widen the window a torn update would need)
            counter[0] = v + 1
    del words, counter


def test_two_processes_never_hold_the_lock_at_once() -> None:
    buf = mmap.mmap(-1, 4096)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(buf, t, N_ITER)) for t in (1, 2)]
    for p in procs:
        p.start()
    _hammer(buf, 3, N_ITER)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert int(np.frombuffer(buf, np.int64, 1, 64)[0]) == 3 * N_ITER
    assert int(np.frombuffer(buf, np.uint32, 1, 0)[0]) == 0  # released


def test_a_lock_held_by_a_dead_holder_is_broken_and_a_live_ones_is_waited_for() -> None:
    words = np.zeros(4, np.uint32)
    alive = {7: True}
    lock = SpinLock(words, 1, 5, lambda t: alive.get(t, False))
    words[1] = 7  # held by a live owner: a take waits
    done = []

    def release_later() -> None:
        time.sleep(0.05)
        words[1] = 0

    import threading

    t = threading.Thread(target=release_later)
    t.start()
    t0 = time.monotonic()
    with lock:
        done.append(time.monotonic() - t0)
        assert lock.holder() == 5
    t.join()
    assert done[0] >= 0.04
    words[1] = 9  # held by an owner the table says is gone: broken, then taken
    with lock:
        assert lock.holder() == 5
    assert lock.holder() == 0


def test_own_leftover_lock_is_taken_over_and_a_foreign_release_raises() -> None:
    words = np.zeros(2, np.uint32)
    lock = SpinLock(words, 0, 4, lambda t: True)
    words[0] = 4  # a take cut off by an exception before its `with` block
    with lock:
        pass
    assert words[0] == 0
    words[0] = 6
    with pytest.raises(RuntimeError, match="held by 6"):
        lock.__exit__(None, None, None)
    assert spin_take(words, 0, np.uint32(4), 3) == 6  # (a bounded spin reports the holder)


def test_bad_lock_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="nonzero"):
        SpinLock(np.zeros(2, np.uint32), 0, 0, lambda t: True)
    with pytest.raises(ValueError, match="uint32"):
        SpinLock(np.zeros(2, np.int64), 0, 1, lambda t: True)
    with pytest.raises(ValueError, match="outside"):
        SpinLock(np.zeros(2, np.uint32), 2, 1, lambda t: True)


def test_a_process_killed_inside_a_zone_lock_leaves_a_pool_that_recovers(pool) -> None:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from dispatch.mbuf import MbufPool
        p = MbufPool.attach({pool.name!r}, owner="doomed")
        p.getcl_batch(8)  # holds buffers too
        p._zone_locks[0].__enter__()
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        assert pool._lockw[0] != 0
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # the next refill finds the holder dead, breaks its lock and goes on
        got = [pool.getcl_batch(32) for _ in range(pool.counts[0] // 32 // 4)]
        assert all(len(h) == 32 for h in got)
        for h in got:
            pool.freem_batch(h)
        freed = pool.reap_dead()
        assert list(freed.values())[0]["mbuf"] >= 8
        assert pool.lock_words_free() and pool.audit().whole
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
