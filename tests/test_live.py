"""Tests for dispatch.live and dispatch.liveview: the published live state, top, netstat --watch,
progress lines, and the clean-up of the live file (real runs, real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dispatch import live


@pytest.fixture
def runtime_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path / "dispatch-emu" / "live"


async def test_controller_publishes_and_removes_its_live_state(runtime_dir):
    from dispatch.runtime.config import RunConfig
    from dispatch.runtime.controller import Controller

    seen: list[dict] = []
    on_disk: list[bool] = []
    policy: dict[str, int] = {}  # by phase: the scheduling policy of the publishing thread

    def observer(state: dict) -> None:
        seen.append(state)
        on_disk.append((runtime_dir / f"{state['run_id']}.json").exists())
        policy[state["phase"]] = os.sched_getscheduler(threading.get_native_id())

    unsubscribe = live.observe(observer)
    try:
        async with Controller(RunConfig(model="deferred", rate=5000, duration=1.5)) as ctl:
            doc = await ctl.run()
            path = runtime_dir / f"{ctl.session.run_id}.json"
            on_file = json.loads(path.read_text())
    finally:
        unsubscribe()
    assert doc["conservation"]["ok"]
    assert not path.exists(), "the live file must go with the controller"
    traffic = [s for s in seen if s["phase"] == "traffic"]
    assert len(traffic) >= 2 and all(on_disk)
    last = traffic[-1]
    assert set(last["roles"]) == {"nic0", "ithread0", "netisr0", "user0"}
    assert all(r["alive"] and r["pid"] > 0 for r in last["roles"].values())
    assert last["rates"]["delivered_pps"] is not None and last["delivered"] > 0
    assert last["netisr"]["workstreams"][0]["queued"] > 0
    assert seen[-1]["phase"] == "draining"
    # traffic is watched from a SCHED_IDLE thread (sampler.py), and the controller itself
    # (which published the draining state) keeps its own policy
    assert policy["traffic"] == os.SCHED_IDLE
    assert policy["draining"] == os.sched_getscheduler(0) != os.SCHED_IDLE
    assert 0 < doc["mbuf"]["peak_mbufs_in_use"] <= doc["mbuf"]["zones"]["mbuf"]["total"]
    assert doc["mbuf"]["peak_samples"] >= len(traffic)
    # what was on file at the end is the final state, and it never counts more than the run
    assert on_file["run_id"] == ctl.session.run_id
    assert on_file["delivered"] <= doc["delivered"]


def test_stale_live_files_are_ignored_and_removed(runtime_dir):
    runtime_dir.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    f = runtime_dir / "demu-stale.json"
    f.write_text(json.dumps({"run_id": "demu-stale", "pid": int(dead), "updated": 1}))
    assert live.running() == []
    assert not f.exists()
    with pytest.raises(live.NoLiveRun, match="no running experiment"):
        live.read()


def _dispatch(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dispatch.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_top_and_netstat_watch_follow_a_running_experiment(runtime_dir):
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir.parent.parent)}
    none = _dispatch("top", "--once", env=env)
    assert none.returncode == 1 and "no running experiment" in none.stderr
    proc = subprocess.Popen([sys.executable, "-m", "dispatch.cli", "run", "--model", "deferred",
                             "--rate", "5k", "--duration", "8"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not list(runtime_dir.glob(f"demu-{proc.pid}-*.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "no live state"
            time.sleep(0.1)
        run_id = next(runtime_dir.glob(f"demu-{proc.pid}-*.json")).stem
        wrong = _dispatch("top", "demu-nope", "--once", env=env)  # (while the run is up)
        assert wrong.returncode == 1 and run_id in wrong.stderr
        top = _dispatch("top", run_id, "--once", env=env)
        assert top.returncode == 0, top.stderr
        assert f"dispatch top - {run_id}" in top.stdout
        for role in ("nic0", "ithread0", "netisr0", "user0"):
            assert role in top.stdout
        assert "WSID" in top.stdout
        ns = _dispatch("netstat", "-Q", "-m", "--watch", run_id, "--iterations", "2",
                       "--interval", "0.5", env=env)
        assert ns.returncode == 0, ns.stderr
        assert ns.stdout.count("Workstreams:") == 2
        assert ns.stdout.count("mbufs in use (current/cache/total)") == 2
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    # not a terminal: plain progress lines on stderr, the summary on stdout
    assert "deferred [traffic]" in err and "delivered" in err
    assert "model deferred" in out
    assert not list(runtime_dir.glob("*.json")), "the live file must be removed"


def test_quiet_silences_progress(runtime_dir):
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir.parent.parent)}
    r = _dispatch("run", "--rate", "5k", "--duration", "2.5", "--quiet", env=env)
    assert r.returncode == 0 and r.stderr == "" and r.stdout == ""


def test_netstat_watch_usage_errors():
    r = subprocess.run([sys.executable, "-m", "dispatch.cli", "netstat", "-Q", "--watch",
                        "--result", "x.json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--watch reads a running experiment" in r.stderr
