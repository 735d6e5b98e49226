"""The wire and the control channel across hosts, with two network namespaces.

Two namespaces joined by a veth pair play two hosts: the emulated host (the
controller and its locally spawned roles) in one, the traffic generator (an
attached `dispatch agent --role trafgen`) in the other, talking tcp:// with
CURVE over the veth. With the deployment's keys the run delivers and
conserves; a generator whose client key was never allowed is refused by the
host's ZAP handler, which counts and logs the refusal, and the run fails
naming the missing role and the refusals. Needs root and `ip netns`; skips
loudly otherwise.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dispatch.deploy_cli import write_keys

ROOT = Path(__file__).resolve().parent.parent
HOST_IP, GEN_IP = "10.77.0.1", "10.77.0.2"


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "not root: network namespaces need CAP_SYS_ADMIN"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"demu-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns add` failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


_why = _netns_unavailable()
pytestmark = pytest.mark.skipif(_why is not None,
                                reason=f"SKIPPED LOUDLY: two-namespace test not run: {_why}")


@dataclass
class Hosts:
    host: str  # namespace of the emulated host
    gen: str  # namespace of the generator


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    tag = f"{os.getpid() % 100000}"
    h = Hosts(f"demu-h{tag}", f"demu-g{tag}")
    va, vb = f"dh{tag}", f"dg{tag}"
    try:
        _ip("netns", "add", h.host)
        _ip("netns", "add", h.gen)
        _ip("link", "add", va, "type", "veth", "peer", "name", vb)
        _ip("link", "set", va, "netns", h.host)
        _ip("link", "set", vb, "netns", h.gen)
        for ns, dev, addr in ((h.host, va, HOST_IP), (h.gen, vb, GEN_IP)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield h
    finally:
        for ns in (h.host, h.gen):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _env(keys: Path, base: int, **extra: str) -> dict[str, str]:
    return {**os.environ, "DISPATCH_TRANSPORT": "tcp", "DISPATCH_PORT_BASE": str(base),
            "DISPATCH_KEYS": str(keys), "PYTHONUNBUFFERED": "1", **extra}


def _in(ns: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    # `ip netns exec` execs the command: the PID is the Python process's own
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(p: subprocess.Popen[str], timeout: float = 120) -> str:
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        try:
            out, _ = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
    return out


def _stop(p: subprocess.Popen[str]) -> str:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    return _finish(p, timeout=10)


def _generator(h: Hosts, keys: Path, base: int) -> subprocess.Popen[str]:
    return _in(h.gen, [sys.executable, "-m", "dispatch.cli", "agent", "--role", "trafgen",
                       "--index", "0", "--controller", f"tcp://{HOST_IP}:{base}",
                       "--sessions", "1"], _env(keys, base))


def _host_run(h: Hosts, keys: Path, base: int, out: Path,
              **extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "dispatch.cli", "run", "--model", "deferred", "--source",
           "trafgen", "--rate", "5000", "--count", "3000", "--json", str(out)]
    return _in(h.host, cmd, _env(keys, base, DISPATCH_ATTACH="trafgen",
                                 DISPATCH_ADVERTISE=HOST_IP, **extra))


def test_a_generator_in_another_namespace_drives_the_host_over_curve(
        hosts: Hosts, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    write_keys(keys)  # the deployment's keys, copied to both hosts
    base = random.randrange(10000, 32000)  # below the ephemeral port range
    gen = _generator(hosts, keys, base)
    try:
        host = _host_run(hosts, keys, base, tmp_path / "run.json")
        host_out = _finish(host)
    finally:
        gen_out = _stop(gen)
    assert host.returncode == 0, f"host:\n{host_out}\ngenerator:\n{gen_out}"
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["conservation"]["ok"], doc["conservation"]
    assert doc["offered"] == 3000 and doc["delivered"] == 3000
    assert doc["config"]["source"] == "trafgen"
    assert "released by the controller" in gen_out


def test_a_generator_with_a_wrong_key_is_refused_counted_and_logged(
        hosts: Hosts, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    write_keys(keys)
    # the intruder knows the host's public key (it is public) but has its own client key
    intruder = tmp_path / "intruder"
    write_keys(intruder)
    shutil.copy(keys / "server.key", intruder / "server.key")
    (intruder / "server.key_secret").unlink()
    base = random.randrange(10000, 32000)  # below the ephemeral port range
    gen = _in(hosts.gen, [sys.executable, "-m", "dispatch.cli", "agent", "--role", "trafgen",
                          "--index", "0", "--controller", f"tcp://{HOST_IP}:{base}",
                          "--sessions", "1"], _env(intruder, base))
    try:
        host = _host_run(hosts, keys, base, tmp_path / "run.json",
                         DISPATCH_ATTACH_TIMEOUT="6")
        host_out = _finish(host)
    finally:
        _stop(gen)
    assert host.returncode != 0, host_out
    assert not (tmp_path / "run.json").exists()
    assert "trafgen0 did not say hello" in host_out, host_out
    assert "refused by CURVE authentication" in host_out, host_out
    client = (intruder / "client.key").read_text()
    pub = next(line.split('"')[1] for line in client.splitlines() if "public-key" in line)
    assert f"refused CURVE client {pub} from {GEN_IP}" in host_out, host_out
