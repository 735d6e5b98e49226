"""The scheduling policy a role applies to all of its threads (dispatch.runtime.sched)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from dispatch.runtime import sched
from dispatch.runtime.config import ConfigError, RunConfig


def _threads() -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{os.getpid()}/task")]


def _in_thread(fn):
    """Run fn in a fresh thread (the policy stays with that thread, which then ends)."""
    out: dict = {}
    started, done = threading.Event(), threading.Event()

    def body() -> None:
        try:
            out["value"] = fn(started, done)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            out["error"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_apply_switches_every_thread_and_back():
    # done in a child process: the test runner's own threads must keep their policy
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        ok = False
        try:
            gate = threading.Event()
            side = threading.Thread(target=gate.wait)
            side.start()
            n = sched.apply("batch")
            ok = n >= 2 and all(sched.policy_name(t) == "batch" for t in _threads())
            ok = ok and sched.apply("batch") == 0  # nothing left to switch
            ok = ok and sched.apply("other") >= 2
            ok = ok and all(sched.policy_name(t) == "other" for t in _threads())
            gate.set()
            side.join()
        finally:
            os.write(w, b"1" if ok else b"0")
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert got == b"1"


def test_a_fifo_thread_keeps_its_policy():
    def body(started, done) -> tuple[str, str]:
        me = threading.get_native_id()
        try:
            os.sched_setscheduler(me, os.SCHED_FIFO, os.sched_param(1))
        except PermissionError:
            pytest.skip("SCHED_FIFO needs privilege here")
        try:
            # this thread only: apply() goes over the whole process, so run it on a
            # child whose only thread is FIFO instead
            pid = os.fork()
            if pid == 0:  # pragma: no cover
                try:
                    n = sched.apply("batch")
                    os._exit(0 if n == 0 and sched.policy_name(threading.get_native_id())
                             == "fifo" else 1)
                finally:
                    os._exit(2)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        finally:
            os.sched_setscheduler(me, os.SCHED_OTHER, os.sched_param(0))

    assert _in_thread(body) == 0


def test_unknown_policies_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="other, batch"):
        sched.apply("fifo")
    with pytest.raises(ConfigError, match="--sched 'idle' is not valid: one of other, batch"):
        RunConfig(sched="idle").validate()
    assert RunConfig(sched="batch").validate().sched == "batch"
    assert RunConfig.from_dict(RunConfig(sched="batch").as_dict()).sched == "batch"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl timer slack is Linux's")
def test_timer_slack_is_set_and_inherited_by_threads_started_after():
    def body(*_: object) -> tuple[int | None, int | None, int]:
        before = sched.timer_slack()
        assert sched.set_timer_slack(sched.TIMER_SLACK_NS)
        seen: list[int | None] = []
        t = threading.Thread(target=lambda: seen.append(sched.timer_slack()))
        t.start()
        t.join()
        return before, seen[0], int(sched.timer_slack() or -1)

    before, child, now = _in_thread(body)  # (a thread of its own: the slack is per thread)
    assert before is not None and before > 0
    assert child == now == sched.TIMER_SLACK_NS

