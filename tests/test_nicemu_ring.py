"""Tests for nicemu.ring: SPSC rings (in one process and across two), tx rings, IRQ blocks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.mbuf import PoolError
from nicemu.ring import IrqControl, Ring, RingSet, TxRing, check_ring_size, ring_set_name


def test_push_pop_full_empty():
    r = Ring.over(8)
    assert (len(r), r.space(), r.capacity) == (0, 8, 8)
    assert r.pop_many() == []
    assert r.push_many(list(range(1, 6))) == 5
    assert r.push_many([6, 7, 8, 9, 10]) == 3  # only 3 fit
    assert len(r) == 8 and r.space() == 0
    assert r.push_many([11]) == 0
    assert r.pop_many(3) == [1, 2, 3]
    assert r.pop_many() == [4, 5, 6, 7, 8]
    assert len(r) == 0 and r.space() == 8


def test_words_travel_with_handles():
    r = Ring.over(8)
    r.push_many([5, 6, 7], [60, 70, 80])
    assert r.peek_words(2).tolist() == [60, 70]
    assert r.pop_many() == [5, 6, 7]


def test_any_handle_array_pushes_as_its_values():
    """The compiled push takes handle batches of either dtype, strided or not, read-only
    or not, lists and words of other types; what pops is the values given."""
    r = Ring.over(64)
    base = np.arange(1, 41, dtype=np.intp)
    ro = np.arange(100, 104, dtype=np.uint32)
    ro.flags.writeable = False
    cases = [base[::2], base[::-3], base.astype(np.uint32)[1::4], ro, [7, 8, 9],
             np.array([[11, 12], [13, 14]]).T.ravel()]
    for hs in cases:
        words = np.asarray(hs, dtype=np.int64)[::-1] + 1000
        assert r.push_many(hs, words) == len(hs)
        assert r.peek_words().tolist() == words.tolist()
        assert r.pop_many() == [int(x) for x in np.asarray(hs).ravel()]
    with pytest.raises(ValueError, match="words for"):
        r.push_many([1, 2, 3], [9])


def test_wraparound_many_times():
    r = Ring.over(16)
    nxt = 1
    expect = 1
    for step in range(1000):
        k = (step * 7) % 13 + 1
        pushed = r.push_many(list(range(nxt, nxt + k)))
        nxt += pushed
        got = r.pop_many((step * 5) % 11 + 1)
        assert got == list(range(expect, expect + len(got)))
        expect += len(got)
    assert r.head > 16 * 100  # the free-running indices went round the ring many times
    assert r.pop_many() == list(range(expect, nxt))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([8, 16, 64]),
       st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=60))
def test_ring_matches_a_bounded_fifo(cap, ops):
    r = Ring.over(cap)
    model: deque[int] = deque()
    nxt = 1
    for push, k in ops:
        if push:
            acc = r.push_many(np.arange(nxt, nxt + k, dtype=np.uint32))
            assert acc == min(k, cap - len(model))
            model.extend(range(nxt, nxt + acc))
            nxt += k
        else:
            got = r.pop_many(k)
            assert got == [model.popleft() for _ in range(min(k, len(model)))]
        assert len(r) == len(model) and r.space() == cap - len(model)


def test_tx_ring_three_indices():
    t = TxRing.over(8)
    assert t.push_many([1, 2, 3, 4]) == 4
    assert (t.pending(), t.completed(), len(t)) == (4, 0, 4)
    assert t.reclaim().tolist() == []  # nothing completed yet
    assert t.fetch(3).tolist() == [1, 2, 3]
    t.complete(3)
    assert (t.pending(), t.completed()) == (1, 3)
    assert t.push_many(range(10, 20)) == 4  # the slots of completed descriptors are not free yet
    assert t.reclaim().tolist() == [1, 2, 3]
    assert t.space() == 3
    with pytest.raises(ValueError, match="cannot complete"):
        t.complete(99)


def test_irq_control_rearm_protocol():
    c = IrqControl.over()
    assert not c.masked
    c.raise_irq(100)
    assert c.masked and c.raised == 1 and c.last_raise_ns == 100
    c.rearm()
    assert not c.masked and c.rearmed == 1 and c.rearms == 1
    c.set_disabled(True)
    assert c.masked and c.disabled
    c.set_disabled(False)
    assert not c.masked


@pytest.mark.parametrize("bad", [0, 7, 12, 1 << 17, True, "8"])
def test_bad_ring_size_names_valid_values(bad):
    with pytest.raises(ValueError, match="powers of two"):
        check_ring_size(bad)


def test_ring_set_create_attach_close(pool_name):
    name = ring_set_name(pool_name, 0)
    assert name == f"{pool_name}.nic0"
    rs = RingSet.create(name, rx_queues=2, tx_queues=3, rx_size=16, tx_size=32)
    try:
        other = RingSet.attach(name)
        try:
            assert (other.n_rx, other.n_tx, other.rx_size, other.tx_size) == (2, 3, 16, 32)
            rs.rx[1].push_many([7, 8])
            assert other.rx[1].pop_many() == [7, 8]
            other.irq[1].rearm()
            assert rs.irq[1].rearms == 1
            other.tx[2].push_many([9])
            assert rs.tx[2].fetch().tolist() == [9]
        finally:
            other.close()
        assert os.path.exists(f"/dev/shm/{name}")  # an attacher does not unlink
    finally:
        rs.close()
    assert not os.path.exists(f"/dev/shm/{name}")
    with pytest.raises(PoolError, match="no pool named"):
        RingSet.attach(name)


def test_ring_set_bad_queue_count(pool_name):
    with pytest.raises(ValueError, match="valid values are 1..64"):
        RingSet.create(pool_name, rx_queues=0)


_CONSUMER = textwrap.dedent("""
    import sys, time
    from nicemu.ring import RingSet
    rs = RingSet.attach(sys.argv[1])
    total, n = int(sys.argv[2]), 0
    r = rs.rx[0]
    expect = 1
    ok = True
    deadline = time.monotonic() + 30
    while n < total and time.monotonic() < deadline:
        got = r.pop_array(100)
        if len(got):
            if got[0] != expect or got[-1] != expect + len(got) - 1:
                ok = False
            expect += len(got)
            n += len(got)
    rs.close()
    print(n, ok, expect)
""")


def test_spsc_across_two_processes(pool_name):
    """A producer here and a consumer in another process: every handle arrives once, in
    order, through many wraparounds of a small ring."""
    total = 100_000
    rs = RingSet.create(pool_name, rx_size=64)
    proc = subprocess.Popen([sys.executable, "-c", _CONSUMER, pool_name, str(total)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r = rs.rx[0]
        nxt = 1
        deadline = time.monotonic() + 30
        while nxt <= total and time.monotonic() < deadline and proc.poll() is None:
            k = min(37, total - nxt + 1)
            nxt += r.push_many(np.arange(nxt, nxt + k, dtype=np.uint32))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        n, ok, expect = out.split()
        assert (int(n), ok, int(expect)) == (total, "True", total + 1)
        assert len(r) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, 9)
            proc.wait()
        rs.close()
