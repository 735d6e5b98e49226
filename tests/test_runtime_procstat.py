"""Tests for dispatch.runtime.procstat: every thread's CPU and context switches."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from dispatch.runtime.procstat import sample, thread_cpu_s


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_second_threads_cpu_is_counted_by_both_readers():
    pid = os.getpid()
    before, cpu0 = sample(pid), thread_cpu_s(pid)
    assert before is not None
    started = threading.Event()
    stop = threading.Event()

    def work() -> None:
        _burn(0.3)
        started.set()
        stop.wait()  # alive while the figures are read

    t = threading.Thread(target=work)
    t.start()
    started.wait()
    try:
        after, cpu1 = sample(pid), thread_cpu_s(pid)
        assert after is not None
        assert cpu1 - cpu0 >= 0.3  # the thread's 0.3 s, to the nanosecond
        d = after.minus(before)
        assert d.cpu_user_s + d.cpu_sys_s >= 0.25  # (clock ticks)
        assert after.threads >= 2 and d.voluntary_ctxt >= 0
    finally:
        stop.set()
        t.join()


def test_a_process_that_is_gone_reads_as_none():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert sample(p.pid) is None
