"""The local launcher: role agents as subprocesses of the controller.

It starts each role with `python -m dispatch.runtime.agent`, remembers its
PID, notices when one dies (with its exit status), and stops them all by PID:
SIGTERM first, SIGKILL for any that outlive the grace period. Pinning to CPUs
and a higher priority for the ithread are options applied right after spawn
(sched_setaffinity; nice, or SCHED_FIFO where permitted), never defaults:
pinning a role onto the core of its own ZeroMQ I/O thread cost 10-40 % here.

The attached launcher is for roles that are already running (containers
started by docker compose, processes on other hosts): they connect to the
controller by address, and it watches their heartbeats instead of PIDs.
DISPATCH_ATTACH names the roles that attach (`all`, or e.g. `trafgen`); the
others are still spawned locally.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Child:
    name: str
    role: str
    index: int
    proc: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.proc.pid

    def placement(self) -> dict[str, object]:
        """The CPUs, scheduling policy and nice value the process actually has."""
        try:
            cpus = sorted(os.sched_getaffinity(self.pid))
            from dispatch.runtime.sched import policy_name

            policy = policy_name(self.pid)
            nice = os.getpriority(os.PRIO_PROCESS, self.pid)
        except (ProcessLookupError, PermissionError, OSError):
            return {}
        return {"cpus": cpus, "sched": policy, "nice": nice}


def warm_kernels() -> None:
    """Have every compiled kernel in numba's on-disk cache before roles start: here
    once (about 15 s on a fresh machine, then a fraction of a second to load),
    instead of in every role at once, each compiling the same kernels on the same
    two cores for longer than a role is given to say hello."""
    import dispatch.stages.all  # noqa: F401  (the stage kernels with their stages)
    import nicemu.kernels  # noqa: F401


@dataclass
class LocalLauncher:
    controller: str
    children: dict[str, Child] = field(default_factory=dict)
    env: dict[str, str] | None = None

    def spawn(self, role: str, index: int, *, cpus: list[int] | None = None,
              nice: int | None = None, fifo: int | None = None) -> Child:
        warm_kernels()
        name = f"{role}{index}"
        cmd = [sys.executable, "-m", "dispatch.runtime.agent", "--controller", self.controller,
               "--role", role, "--index", str(index)]
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        child = Child(name, role, index, proc)
        self.children[name] = child
        if cpus:
            os.sched_setaffinity(proc.pid, cpus)
        if fifo is not None:
            try:
                os.sched_setscheduler(proc.pid, os.SCHED_FIFO, os.sched_param(fifo))
            except PermissionError:
                if nice is None:
                    nice = -10
        if nice is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, proc.pid, nice)
            except PermissionError:
                pass  # lowering niceness needs privilege; the run records what it got
        return child

    def dead(self) -> list[tuple[str, int]]:
        """(name, exit status) of every child that has exited."""
        out = []
        for c in self.children.values():
            rc = c.proc.poll()
            if rc is not None:
                out.append((c.name, rc))
        return out

    def stop_all(self, grace_s: float = 5.0) -> dict[str, int]:
        """Stop every child by PID; returns exit statuses. Idempotent."""
        for c in self.children.values():
            if c.proc.poll() is None:
                try:
                    os.kill(c.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        for c in self.children.values():
            left = max(0.0, deadline - time.monotonic())
            try:
                c.proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                os.kill(c.pid, signal.SIGKILL)
                c.proc.wait()
        return {c.name: c.proc.returncode for c in self.children.values()}

    def wait_all(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        for c in self.children.values():
            try:
                c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True


ATTACH_ENV = "DISPATCH_ATTACH"  # roles started elsewhere that attach: "all" or "trafgen,..."
ATTACH_TIMEOUT_ENV = "DISPATCH_ATTACH_TIMEOUT"  # seconds to wait for their hellos
HEARTBEAT_TIMEOUT_ENV = "DISPATCH_HEARTBEAT_TIMEOUT"  # seconds of silence that mean dead


def attached_roles(env: dict[str, str] | None = None) -> frozenset[str]:
    """The roles that attach instead of being spawned, from DISPATCH_ATTACH."""
    from dispatch.runtime.placement import ROLES

    raw = (os.environ if env is None else env).get(ATTACH_ENV, "").strip()
    if not raw or raw == "none":
        return frozenset()
    if raw == "all":
        return frozenset(ROLES) | {"trafgen"}
    names = frozenset(r.strip() for r in raw.split(",") if r.strip())
    valid = set(ROLES) | {"trafgen"}
    bad = sorted(names - valid)
    if bad:
        raise ValueError(f"{ATTACH_ENV}={raw!r} names {', '.join(bad)}: valid are all, none, "
                         f"or a comma list of {', '.join(sorted(valid))}")
    return names


def env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not v > 0:
        raise ValueError(f"{name}={raw!r} is not valid: a positive number of seconds")
    return v


@dataclass
class Attached:
    """A role instance that runs elsewhere (a container, another host)."""

    name: str
    pid: int | None = None  # valid in this PID namespace, else None
    addr: str | None = None
    last_seen: float | None = None
    hello_at: float | None = None  # when it said hello (its heartbeats are due from then)


class AttachedLauncher:
    """Roles that are already running and attach to the controller by address.

    It starts nothing and can stop nothing: it serves the heartbeat channel
    (a ROUTER beside the control endpoint) on a thread, answering every beat
    with the run's id so that agents know their controller lives, and reports
    a role as dead when its beats stop for `timeout_s`.
    """

    def __init__(self, endpoint: str, run_id: str, *, timeout_s: float = 5.0,
                 transport: Any = None) -> None:
        import zmq

        from dispatch.runtime import transport as T

        self.endpoint = endpoint
        self.run_id = run_id
        self.timeout_s = timeout_s
        self.roles: dict[str, Attached] = {}
        self.beats: dict[str, float] = {}
        self._zctx = zmq.Context()
        self._sock = self._zctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        try:
            T.bind(self._sock, endpoint, transport)
        except BaseException:
            self._sock.close(0)
            self._zctx.term()
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dispatch-heartbeats",
                                        daemon=True)
        self._thread.start()

    def expect(self, name: str) -> Attached:
        a = self.roles[name] = Attached(name)
        return a

    def _serve(self) -> None:
        import zmq

        from dispatch.runtime.agent import pack

        answer = pack({"type": "hb", "run": self.run_id})
        try:
            while not self._stop.is_set():
                if not self._sock.poll(100):
                    continue
                ident, _raw = self._sock.recv_multipart()
                self.beats[ident.decode(errors="replace")] = time.monotonic()
                self._sock.send_multipart([ident, answer], zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        finally:
            self._sock.close(0)

    def dead(self) -> list[tuple[str, str]]:
        """(name, why) of every attached role whose heartbeats stopped."""
        now = time.monotonic()
        out = []
        for name, a in self.roles.items():
            # a role that said hello and then never beat (gone before its heartbeat
            # connected) is as lost as one whose beats stopped
            seen = self.beats.get(name, a.hello_at)
            if seen is not None and now - seen > self.timeout_s:
                out.append((name, f"no heartbeat for {now - seen:.1f} s "
                                  f"(limit {self.timeout_s:g} s)"))
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._zctx.term()
