"""Endpoints, CURVE and attached roles (dispatch.runtime.transport, launcher, agent).

Real sockets and real processes: a CURVE client with the right key gets
through, one with a wrong key is refused (counted and logged), plain tcp off
loopback is refused unless allowed, and a controller drives a role that was
started on its own (`dispatch agent`) over tcp:// with CURVE, then notices
when such a role dies.
"""

from __future__ import annotations

import logging
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from dispatch.deploy_cli import write_keys
from dispatch.runtime import transport as T
from dispatch.runtime.transport import Keys, TransportConfig, TransportError

ROOT = Path(__file__).resolve().parent.parent


def free_base(span: int = 260) -> int:
    """A port base whose first ports are free now (the layout uses up to base+235),
    below the kernel's ephemeral range: a client connection made during the test
    could otherwise take one of the layout's ports before its binder does."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    top = max(ephemeral_low, 20000 + 2 * span) - span
    for _ in range(50):
        base = random.randrange(10000, top)
        try:
            for off in (0, 1, 2, 3, 4, 5, 6, 10, 30, 100):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    write_keys(d)
    return d


def non_loopback_address() -> str | None:
    addr = T.local_address()
    return None if T.is_loopback(addr) else addr


# ------------------------------------------------------------------ endpoints
def test_ipc_endpoints_are_todays_paths() -> None:
    assert T.make_endpoint("netisr3", kind="ipc", rundir="/tmp/r") == "ipc:///tmp/r/netisr3"
    assert T.make_endpoint("ctl", kind="ipc", rundir="/tmp/r") == "ipc:///tmp/r/ctl"


def test_tcp_endpoints_follow_the_port_layout() -> None:
    mk = T.make_endpoint
    assert mk("ctl", kind="tcp", host="10.0.0.2", port_base=6000) == "tcp://10.0.0.2:6000"
    assert mk("wire", kind="tcp", host="h", port_base=6000) == "tcp://h:6002"
    assert mk("irq1", kind="tcp", host="h", port_base=6000) == "tcp://h:6011"
    assert mk("netisr2", kind="tcp", host="h", port_base=6000) == "tcp://h:6032"
    assert mk("user63", kind="tcp", host="h", port_base=6000) == "tcp://h:6163"
    assert mk("ctl", kind="tcp", host="::1", port_base=6000) == "tcp://[::1]:6000"
    names = ["ctl", "heartbeat", "wire", "reply", "doorbell", "reply1", "txq"] + \
        [f"irq{i}" for i in range(16)] + [f"netisr{i}" for i in range(64)] + \
        [f"user{i}" for i in range(64)] + [f"reply-g{g}" for g in range(1, 16)] + \
        [f"reply1-g{g}" for g in range(1, 16)]
    offsets = [T.port_offset(n) for n in names]
    assert len(set(offsets)) == len(offsets), "two endpoints share a port"


def test_binders() -> None:
    assert T.binder_of("irq2") == "ithread2"
    assert T.binder_of("netisr5") == "netisr5"
    assert T.binder_of("wire") == T.binder_of("doorbell") == "nic0"
    assert T.binder_of("reply") == "trafgen0"
    assert T.binder_of("reply-g3") == T.binder_of("reply1-g3") == "trafgen3"
    assert T.binder_of("ctl") == "controller"


@pytest.mark.parametrize("bad", ["bogus", "netisr64", "irq16", "user", "netisrx"])
def test_unknown_endpoint_names_are_refused(bad: str) -> None:
    with pytest.raises(TransportError, match="valid are"):
        T.port_offset(bad)


def test_bad_transport_settings_name_what_is_valid(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="one of ipc, tcp"):
        T.make_endpoint("ctl", kind="udp", rundir="/x")
    with pytest.raises(TransportError, match="one of ipc, tcp"):
        TransportConfig.from_env({"DISPATCH_TRANSPORT": "quic"})
    with pytest.raises(TransportError, match="DISPATCH_PORT_BASE"):
        TransportConfig.from_env({"DISPATCH_PORT_BASE": "eighty"})
    with pytest.raises(TransportError, match="does not exist"):
        TransportConfig.from_env({"DISPATCH_KEYS": str(tmp_path / "nope")})
    with pytest.raises(TransportError, match="40-character"):
        TransportConfig.from_env({"DISPATCH_SERVER_PUBLIC": "short"})
    with pytest.raises(TransportError, match="tcp://HOST:PORT"):
        T.split_tcp("tcp://host")
    assert T.heartbeat_endpoint("tcp://ctl:5550") == "tcp://ctl:5551"
    assert T.heartbeat_endpoint("ipc:///r/ctl") == "ipc:///r/ctl.hb"


def test_keys_by_directory_and_by_environment(keys: Path) -> None:
    k = Keys.from_dir(keys)
    assert k.can_serve() and k.can_connect()
    assert k.allowed_clients == {k.client_public}
    cfg = TransportConfig.from_env({"DISPATCH_TRANSPORT": "tcp", "DISPATCH_KEYS": str(keys)})
    assert cfg.keys == k
    # the same keys given only as environment variables
    env = TransportConfig(kind="tcp", keys=k).to_env()
    assert TransportConfig.from_env(env).keys == k
    # a remote generator holds only the server's public key and its own pair
    gen = {"DISPATCH_SERVER_PUBLIC": k.server_public.decode(),
           "DISPATCH_CLIENT_PUBLIC": k.client_public.decode(),
           "DISPATCH_CLIENT_SECRET": k.client_secret.decode()}
    g = TransportConfig.from_env(gen).keys
    assert g.can_connect() and not g.can_serve()


def test_keys_command_refuses_to_overwrite(keys: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "dispatch.cli", "keys", str(keys)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "--force" in r.stderr
    assert oct((keys / "server.key_secret").stat().st_mode & 0o777) == "0o600"


# ------------------------------------------------------------- plain and CURVE
def _pair(ctx: zmq.Context, ep: str, server: TransportConfig,
          client: TransportConfig) -> tuple[zmq.Socket, zmq.Socket]:
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    T.bind(pull, ep, server)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    T.connect(push, ep, client)
    return pull, push


def test_plain_tcp_on_loopback_passes() -> None:
    ctx = zmq.Context()
    ep = f"tcp://127.0.0.1:{free_base()}"
    plain = TransportConfig(kind="tcp")
    pull, push = _pair(ctx, ep, plain, plain)
    try:
        push.send(b"hello")
        assert pull.poll(5000) and pull.recv() == b"hello"
    finally:
        pull.close()
        push.close()
        ctx.term()


def test_plain_tcp_off_loopback_is_refused_without_the_flag() -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    try:
        plain = TransportConfig(kind="tcp")
        with pytest.raises(TransportError, match="DISPATCH_PLAIN_TCP=1"):
            T.bind(s, "tcp://192.0.2.7:5550", plain)  # binds * : off loopback
        with pytest.raises(TransportError, match="refusing to connect"):
            T.connect(s, "tcp://192.0.2.7:5550", plain)
    finally:
        s.close(0)
        ctx.term()


def test_plain_tcp_off_loopback_with_the_flag() -> None:
    addr = non_loopback_address()
    if addr is None:
        pytest.skip("SKIPPED: this machine has no non-loopback address to test on")
    ctx = zmq.Context()
    cfg = TransportConfig(kind="tcp", plain_tcp=True, bind_interface=addr)
    pull, push = _pair(ctx, f"tcp://{addr}:{free_base()}", cfg, cfg)
    try:
        push.send(b"x")
        assert pull.poll(5000) and pull.recv() == b"x"
    finally:
        pull.close()
        push.close()
        ctx.term()


def test_curve_client_with_the_right_key_is_accepted(keys: Path) -> None:
    ctx = zmq.Context()
    cfg = TransportConfig(kind="tcp", keys=Keys.from_dir(keys))
    before = T.zap_counts()
    pull, push = _pair(ctx, f"tcp://127.0.0.1:{free_base()}", cfg, cfg)
    try:
        push.send(b"secret")
        assert pull.poll(5000) and pull.recv() == b"secret"
        assert T.zap_counts()["accepted"] > before["accepted"]
        assert T.zap_counts()["refused"] == before["refused"]
    finally:
        pull.close()
        push.close()
        ctx.term()


def test_curve_client_with_a_wrong_key_is_refused_counted_and_logged(
        keys: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = TransportConfig(kind="tcp", keys=Keys.from_dir(keys))
    other = tmp_path / "other"
    write_keys(other)
    o = Keys.from_dir(other)
    # knows the server's public key, but its client key was never allowed
    intruder = TransportConfig(kind="tcp", keys=Keys(
        server_public=server.keys.server_public, client_public=o.client_public,
        client_secret=o.client_secret))
    ctx = zmq.Context()
    before = T.zap_counts()["refused"]
    caplog.set_level(logging.WARNING, logger="dispatch.transport")
    pull, push = _pair(ctx, f"tcp://127.0.0.1:{free_base()}", server, intruder)
    try:
        push.send(b"let me in")
        deadline = time.monotonic() + 10
        while T.zap_counts()["refused"] == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert T.zap_counts()["refused"] > before
        assert not pull.poll(300), "a refused client's message was delivered"
        assert any("refused CURVE client" in r.getMessage() and o.client_public.decode()
                   in r.getMessage() for r in caplog.records)
    finally:
        pull.close()
        push.close()
        ctx.term()


def test_a_plain_client_is_refused_by_a_curve_server(keys: Path) -> None:
    server = TransportConfig(kind="tcp", keys=Keys.from_dir(keys))
    ctx = zmq.Context()
    pull, push = _pair(ctx, f"tcp://127.0.0.1:{free_base()}", server, TransportConfig("tcp"))
    try:
        push.send(b"plain")
        assert not pull.poll(500)
    finally:
        pull.close()
        push.close()
        ctx.term()


# ------------------------------------------------------------- attached roles
def _agent(base: int, keys: Path, role: str = "trafgen", sessions: int = 1,
           health: Path | None = None, index: int = 0) -> subprocess.Popen:
    env = {**os.environ, "DISPATCH_TRANSPORT": "tcp", "DISPATCH_PORT_BASE": str(base),
           "DISPATCH_KEYS": str(keys), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "dispatch.cli", "agent", "--role", role, "--index", str(index),
           "--controller", f"tcp://127.0.0.1:{base}", "--sessions", str(sessions)]
    if health is not None:
        cmd += ["--health-file", str(health)]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _stop(p: subprocess.Popen) -> str:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        out, _ = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return out


def test_an_attached_generator_is_driven_over_tcp_with_curve(keys: Path,
                                                              tmp_path: Path) -> None:
    """The generator runs on its own (as in a container or on another host) and is
    served by two controllers in turn; the host's roles are spawned locally."""
    from dispatch.runtime.config import RunConfig
    from dispatch.runtime.controller import Controller, _asyncio_run

    base = free_base()
    health = tmp_path / "alive"
    agent = _agent(base, keys, sessions=2, health=health)
    cfg = RunConfig(model="deferred", source="trafgen", rate=5000, duration=None, count=2000)
    tc = TransportConfig(kind="tcp", port_base=base, keys=Keys.from_dir(keys))

    async def go() -> list[dict]:
        docs = []
        for model in ("direct", "deferred"):  # two controllers, one after the other
            async with Controller(cfg.replace(model=model), transport=tc,
                                  attach=frozenset({"trafgen"})) as ctl:
                docs.append(await ctl.run())
        return docs

    try:
        docs = _asyncio_run(go())
        agent.wait(timeout=20)
    finally:
        out = _stop(agent)
    assert agent.returncode == 0, out
    assert out.count("released by the controller") == 2, out
    for doc in docs:
        assert doc["conservation"]["ok"], doc["conservation"]
        assert doc["offered"] == doc["delivered"] == 2000
        # the generator's PID is visible here (same PID namespace): its CPU is measured
        assert doc["roles"]["trafgen0"]["cpu_user_s"] > 0
    assert health.exists()


def test_a_dead_attached_role_fails_the_run_clearly(keys: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from dispatch.runtime.config import RunConfig
    from dispatch.runtime.controller import Controller, RunFailed, _asyncio_run

    monkeypatch.setenv("DISPATCH_HEARTBEAT_TIMEOUT", "1.5")
    base = free_base()
    agent = _agent(base, keys)
    cfg = RunConfig(model="direct", source="trafgen", rate=2000, duration=30.0)
    tc = TransportConfig(kind="tcp", port_base=base, keys=Keys.from_dir(keys))

    async def go() -> None:
        async with Controller(cfg, transport=tc, attach=frozenset({"trafgen"})) as ctl:
            agent.kill()  # the generator's host goes away
            await ctl.run()

    try:
        with pytest.raises(RunFailed, match=r"attached role lost: trafgen0 \(no heartbeat"):
            _asyncio_run(go())
    finally:
        _stop(agent)


def test_a_missing_attached_role_is_named(keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dispatch.runtime.config import RunConfig
    from dispatch.runtime.controller import Controller, RunFailed, _asyncio_run

    monkeypatch.setenv("DISPATCH_ATTACH_TIMEOUT", "2")
    cfg = RunConfig(model="direct", source="trafgen", count=10, duration=None)
    tc = TransportConfig(kind="tcp", port_base=free_base(), keys=Keys.from_dir(keys))

    async def go() -> None:
        async with Controller(cfg, transport=tc, attach=frozenset({"trafgen"})):
            pass

    with pytest.raises(RunFailed, match="trafgen0 did not say hello within 2 s"):
        _asyncio_run(go())


def test_attach_names_are_validated() -> None:
    from dispatch.runtime.launcher import attached_roles

    assert attached_roles({"DISPATCH_ATTACH": "trafgen"}) == {"trafgen"}
    assert "netisr" in attached_roles({"DISPATCH_ATTACH": "all"})
    assert attached_roles({}) == frozenset()
    with pytest.raises(ValueError, match="valid are all, none"):
        attached_roles({"DISPATCH_ATTACH": "trafgen,gpu"})


def test_an_attached_role_outlives_a_controller_that_dies_mid_run(keys: Path) -> None:
    """The controller is killed while the generator runs: the generator notices the
    heartbeats stop, leaves its data loop, releases the role and serves the next one."""
    import glob

    from dispatch.runtime.config import RunConfig
    from dispatch.runtime.controller import Controller, _asyncio_run

    base = free_base()
    agent = _agent(base, keys, sessions=2)
    env = {**os.environ, "DISPATCH_TRANSPORT": "tcp", "DISPATCH_PORT_BASE": str(base),
           "DISPATCH_KEYS": str(keys), "DISPATCH_ATTACH": "trafgen"}
    doomed = subprocess.Popen([sys.executable, "-m", "dispatch.cli", "run", "--model", "direct",
                               "--source", "trafgen", "--rate", "2000", "--duration", "60"],
                              env=env, cwd=ROOT, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # wait for the run's first progress line: traffic flows, so the generator is
        # in its data loop (a fixed wait after the segments appeared raced the roles'
        # start-up on a slow machine: the controller died before the agent attached)
        deadline = time.monotonic() + 60
        assert doomed.stderr is not None
        while True:
            assert time.monotonic() < deadline and doomed.poll() is None, "no traffic"
            ready, _, _ = select.select([doomed.stderr], [], [], 1.0)
            if ready and "[traffic]" in doomed.stderr.readline():
                break
        time.sleep(0.5)
        os.killpg(doomed.pid, signal.SIGKILL)  # the controller and the roles it spawned
        doomed.wait()
        cfg = RunConfig(model="direct", source="trafgen", rate=5000, count=1000, duration=None)
        tc = TransportConfig(kind="tcp", port_base=base, keys=Keys.from_dir(keys))

        async def go() -> dict:
            async with Controller(cfg, transport=tc, attach=frozenset({"trafgen"})) as ctl:
                return await ctl.run()

        doc = _asyncio_run(go())
        agent.wait(timeout=20)
    finally:
        out = _stop(agent)
        if doomed.poll() is None:
            os.killpg(doomed.pid, signal.SIGKILL)
            doomed.wait()
        if doomed.stderr is not None:
            doomed.stderr.close()
        for name in os.listdir("/dev/shm"):  # what the killed controller could not remove
            if name.startswith(f"demu-{doomed.pid}-"):
                suffix = name.split("-")[2].split(".")[0]
                os.unlink(f"/dev/shm/{name}")
                for d in glob.glob(f"/tmp/dispatch-emu-*{suffix}"):
                    shutil.rmtree(d, ignore_errors=True)
    assert "the controller stopped answering" in out, out
    assert "released by the controller" in out, out
    assert doc["conservation"]["ok"] and doc["delivered"] == 1000


def test_two_attached_generators_drive_one_host(keys: Path) -> None:
    """Scaling out: two generators (as on two other hosts) attach over tcp with CURVE;
    each offers its share, and each gets the replies of its own TCP flows."""
    from dispatch.runtime.config import RunConfig
    from dispatch.runtime.controller import Controller, _asyncio_run

    base = free_base()
    agents = [_agent(base, keys, index=g) for g in (0, 1)]
    cfg = RunConfig(model="direct", source="trafgen", proto="tcp", rate=4000, duration=None,
                    count=1000, trafgens=2)
    tc = TransportConfig(kind="tcp", port_base=base, keys=Keys.from_dir(keys))

    async def go() -> dict:
        async with Controller(cfg, transport=tc, attach=frozenset({"trafgen"})) as ctl:
            return await ctl.run()

    try:
        doc = _asyncio_run(go())
        for a in agents:
            a.wait(timeout=20)
    finally:
        outs = [_stop(a) for a in agents]
    assert all(a.returncode == 0 for a in agents), outs
    assert doc["conservation"]["ok"], doc["conservation"]
    assert doc["delivered"] == 1000
    per = doc["source"]["per_source"]
    assert [p["handshakes"] for p in per] == [2, 2]


def test_an_attached_role_that_never_beats_after_hello_is_lost(tmp_path: Path) -> None:
    """Gone between its hello and its first heartbeat (the race that once left a
    run waiting 30 s for 'ready'): lost once the timeout passes from the hello."""
    import time

    from dispatch.runtime.launcher import AttachedLauncher

    al = AttachedLauncher(f"ipc://{tmp_path}/hb", "run-x", timeout_s=0.2)
    try:
        a = al.expect("trafgen0")
        assert al.dead() == []  # no hello yet: nothing is due
        a.hello_at = time.monotonic()
        assert al.dead() == []
        time.sleep(0.3)
        (name, why), = al.dead()
        assert name == "trafgen0" and why.startswith("no heartbeat for")
    finally:
        al.close()
