"""Tests for dispatch.runtime.netisr: exact queue limits, hybrid flags, policies."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dispatch.runtime.netisr import NetisrTable, choose_workstream


@pytest.fixture
def table(pool_name):
    t = NetisrTable.create(pool_name + ".isr", workers=2, producers=2)
    yield t
    t.close()


def test_qlimit_is_exact_across_producers(table):
    assert table.try_enqueue(0, 0, 200, qlimit=256) == 200
    assert table.try_enqueue(1, 0, 100, qlimit=256) == 56  # 44 dropped
    assert table.qlen(0) == 256
    table.worker_begin(0)
    table.worker_end(0, 100)
    assert table.qlen(0) == 156
    assert table.try_enqueue(1, 0, 10, qlimit=256) == 10
    st = table.stats()[0]
    assert (st.queued, st.qdrops, st.length, st.wmark, st.handled) == (266, 44, 166, 256, 100)


def test_hybrid_inline_only_when_idle_and_empty(table):
    assert table.try_inline(1)  # idle and empty: the ithread may run it inline
    assert not table.try_inline(1)  # already dispatching
    table.end_inline(1)
    table.try_enqueue(0, 1, 1, qlimit=10)
    assert not table.try_inline(1)  # queued work: a direct packet must not overtake it
    table.worker_begin(1)
    table.worker_end(1, 1)
    table.worker_begin(1)
    assert not table.try_inline(1)  # the worker is running
    table.worker_end(1, 0)
    assert table.try_inline(1)
    table.end_inline(1)
    table.count_dispatch(0, 1, 5, hybrid=True)
    table.count_dispatch(1, 1, 3)
    st = table.stats()[1]
    assert (st.hybrid_dispatched, st.dispatched, st.handled) == (5, 3, 1 + 8)


def test_counters_are_shared_with_another_process(table):
    table.try_enqueue(0, 1, 7, qlimit=100)
    out = subprocess.run([sys.executable, "-c", (
        "from dispatch.runtime.netisr import NetisrTable\n"
        f"t = NetisrTable.attach({table.name!r})\n"
        "t.worker_begin(1); t.worker_end(1, 7); print(t.qlen(1)); t.close()")],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0" and table.qlen(1) == 0


def test_a_workstream_lock_left_by_a_killed_process_is_broken(table):
    proc = subprocess.Popen([sys.executable, "-c", (
        "import time\n"
        "from dispatch.runtime.netisr import NetisrTable\n"
        f"t = NetisrTable.attach({table.name!r})\n"
        "t._locks[1].__enter__(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert table._lockw[1] == proc.pid
        proc.kill()
        proc.wait(timeout=30)
        assert table.try_inline(1)  # the dead holder's lock is broken, the flag taken
        table.end_inline(1)
        assert table._lockw[1] == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_a_forked_child_takes_workstream_locks_under_its_own_pid(table):
    import os

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # (the child reports its lock tag and leaves without cleanup)
        os.write(w, str(table._locks[0]._tag).encode())
        os._exit(0)
    os.close(w)
    tag = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    assert int(tag) == pid and table._locks[0]._tag == os.getpid()


def test_policies():
    assert choose_workstream("flow", flowid=7, source=0, cpu=0, workers=4) == 3
    assert choose_workstream("source", flowid=7, source=5, cpu=0, workers=4) == 1
    assert choose_workstream("cpu", flowid=7, source=0, cpu=2, workers=4) == 2
    with pytest.raises(ValueError, match="source, flow, cpu"):
        choose_workstream("rr", flowid=0, source=0, cpu=0, workers=1)
