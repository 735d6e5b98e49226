"""Tests for dispatch.cli: netstat -m on a live pool, pool clean, usage errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from dispatch.cli import main
from dispatch.mbuf import MbufPool, PoolConfig

SMALL = PoolConfig(nmbufs=64, nclusters=16, njumbop=0, njumbo9=0, njumbo16=0)


def test_netstat_m_reads_a_live_pool_from_another_process(pool_name):
    with MbufPool.create(pool_name, SMALL) as p:
        m = p.getcl()
        out = subprocess.run([sys.executable, "-m", "dispatch.cli", "netstat", "-m", "--pool",
                              pool_name], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0] == "1/63/64 mbufs in use (current/cache/total)"
        p.freem(m)


def test_netstat_usage_errors(capsys):
    assert main(["netstat"]) == 2
    assert "-m" in capsys.readouterr().err
    assert main(["netstat", "-m"]) == 2
    assert main(["netstat", "-m", "--pool", "demu-does-not-exist"]) == 1
    assert "no pool named" in capsys.readouterr().err
    assert main([]) == 2


def test_pool_clean_removes_only_stale_segments(pool_name, capsys):
    child = subprocess.Popen([sys.executable, "-c", (
        "import time; from dispatch.mbuf import MbufPool, PoolConfig\n"
        f"p = MbufPool.create({pool_name!r}, PoolConfig(nmbufs=8, nclusters=0, njumbop=0, "
        "njumbo9=0, njumbo16=0)); print('up', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "up"
    assert main(["pool", "clean", pool_name]) == 1
    assert "left alone" in capsys.readouterr().out
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert main(["pool", "clean", pool_name]) == 0
    assert "removed" in capsys.readouterr().out
    assert not os.path.exists(f"/dev/shm/{pool_name}")


def test_ctrl_c_stops_every_role_and_removes_every_segment():
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatch.cli", "run", "--model", "deferred", "--duration", "30",
         "--rate", "5k"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        tag = f"demu-{proc.pid}-"
        deadline = time.monotonic() + 30
        while not any(n.startswith(tag) for n in os.listdir("/dev/shm")):
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.1)
        time.sleep(2.0)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, (out, err)
    assert "interrupted" in err
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(tag)]
    left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True)
    assert not left.stdout.strip(), f"role processes left: {left.stdout}"


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "dispatch.cli", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for cmd in ("run", "compare", "sweep", "netstat", "top", "report", "pool"):
        assert cmd in out.stdout


def test_usage_errors_of_the_new_commands(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert main(["top", "--once"]) == 1  # nothing running: exit 1, said plainly
    assert "no running experiment" in capsys.readouterr().err
    assert main(["top", "--interval", "0"]) == 2
    assert main(["netstat", "-m", "--watch", "--once"]) == 1
    assert main(["report", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err
