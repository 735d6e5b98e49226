"""Tests for dispatch.runtime.sampler: the controller's watch over a run, in a thread
of its own below the controller's priority."""

from __future__ import annotations

import os
import threading
import time

import pytest

from dispatch.runtime.sampler import Sampler, lower_this_threads_priority


def _policy_of_this_thread() -> int:
    return os.sched_getscheduler(threading.get_native_id())


def test_samples_run_in_their_own_thread_under_sched_idle():
    seen: list[tuple[str, int]] = []
    mine = _policy_of_this_thread()

    def sample() -> None:
        seen.append((threading.current_thread().name, _policy_of_this_thread()))

    s = Sampler(sample, 0.01).start()
    time.sleep(0.2)
    s.stop()
    assert len(seen) >= 3 and s.samples == len(seen)
    assert {name for name, _ in seen} == {"dispatch-sampler"}
    assert {policy for _, policy in seen} == {os.SCHED_IDLE} and s.policy == "idle"
    assert _policy_of_this_thread() == mine  # only the sampling thread was rescheduled


def test_the_first_sample_is_taken_at_once_and_stop_does_not_wait_an_interval():
    first = threading.Event()
    s = Sampler(first.set, 60.0).start()
    assert first.wait(5)
    t0 = time.monotonic()
    s.stop()
    assert time.monotonic() - t0 < 1.0
    assert s.samples == 1


def test_a_failing_sample_fails_the_stop_and_ends_the_sampling():
    calls = []

    def sample() -> None:
        calls.append(1)
        raise ValueError("pool gone")

    s = Sampler(sample, 0.001).start()
    time.sleep(0.05)
    with pytest.raises(ValueError, match="pool gone"):
        s.stop()
    assert calls == [1]
    s.stop()  # (the error is raised once)


def test_where_sched_idle_is_refused_the_thread_gets_nice_19(monkeypatch):
    def refuse(*_a: object) -> None:
        raise PermissionError("not here")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    out: list[object] = []

    def body() -> None:
        out.append(lower_this_threads_priority())
        out.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert out == ["nice 19", 19]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
