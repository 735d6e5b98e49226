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


def test_policies():
    assert choose_workstream("flow", flowid=7, source=0, cpu=0, workers=4) == 3
    assert choose_workstream("source", flowid=7, source=5, cpu=0, workers=4) == 1
    assert choose_workstream("cpu", flowid=7, source=0, cpu=2, workers=4) == 2
    with pytest.raises(ValueError, match="source, flow, cpu"):
        choose_workstream("rr", flowid=0, source=0, cpu=0, workers=1)
