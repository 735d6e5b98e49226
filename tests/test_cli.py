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
