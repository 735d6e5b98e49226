"""A role process's side of the control plane.

Every role (nic, ithread, netisr, user, trafgen) is an agent: it starts,
connects to the controller by address (not by inheritance, so the same agent
runs as a local subprocess or in a container), says hello, receives its
plan, runs, answers for its statistics, drains, and can be re-planned for the
next model without a restart. The data plane is plain blocking ZeroMQ; the
role's loop calls `Agent.poll_control()` between batches, which costs one
non-blocking poll.

Messages are msgpack maps with a "type": hello, plan, ready, start, stats,
drain, drained, rusage, stop, error. `python -m dispatch.runtime.agent
--controller ENDPOINT --role ROLE --index N` is the process entry point.

An *attached* agent (`dispatch agent`, `attach_forever`) outlives
controllers: it keeps saying hello until a controller answers, serves it,
and on `stop` (or when the controller's heartbeats stop) releases its role
and waits for the next one, instead of exiting. That is how containers
started by docker compose, or processes on other hosts, are driven. A
heartbeat thread tells the controller it lives (and learns whether the
controller does) on a channel beside the control endpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

import msgpack
import zmq


class RoleImpl(Protocol):
    """What a role implementation offers the agent."""

    def run(self, agent: Agent) -> None: ...  # the data loop, until stop/drain/replan

    def snapshot(self) -> dict[str, Any]: ...  # statistics for the controller

    def close(self) -> None: ...


RoleFactory = Callable[["Agent", dict[str, Any]], RoleImpl]
_FACTORIES: dict[str, RoleFactory] = {}


def role_factory(name: str) -> Callable[[RoleFactory], RoleFactory]:
    def deco(fn: RoleFactory) -> RoleFactory:
        _FACTORIES[name] = fn
        return fn

    return deco


def pack(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(raw: bytes) -> dict[str, Any]:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


class ControllerLost(Exception):
    """The controller of an attached agent stopped answering its heartbeats."""


def identity() -> dict[str, Any]:
    """What lets a controller tell whether it can read this process's /proc: the same
    boot and the same PID namespace mean the PID it is told is the PID it sees."""

    def read(path: str, link: bool = False) -> str:
        try:
            return os.readlink(path) if link else open(path).read().strip()
        except OSError:
            return ""

    return {"pid": os.getpid(), "pidns": read("/proc/self/ns/pid", link=True),
            "boot": read("/proc/sys/kernel/random/boot_id")}


class Heartbeat(threading.Thread):
    """An attached agent's pulse: every `interval_s` it tells the controller's
    heartbeat channel that it lives, and notes when the controller last answered
    (and as which run). It also touches a health file for container healthchecks."""

    def __init__(self, endpoint: str, name: str, *, interval_s: float = 0.5,
                 health_file: str | None = None) -> None:
        super().__init__(name="dispatch-heartbeat", daemon=True)
        from dispatch.runtime import transport

        self.interval_s = interval_s
        self.health_file = health_file
        self.zctx = zmq.Context()
        self.sock = self.zctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, name.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 200)
        transport.connect(self.sock, endpoint)
        self.last_answer: dict[str, float] = {}  # run id -> monotonic time of its last answer
        self.engaged: str | None = None  # the run id this agent serves ("" before the plan)
        self.engaged_at = 0.0
        self.timeout_s = 5.0
        self.running = False  # the main thread is in a role's data loop
        self._signalled = -1.0  # engaged_at of the engagement already interrupted
        self._halt = threading.Event()
        self._main = threading.main_thread().ident

    def engage(self, run: str) -> None:
        self.engaged, self.engaged_at = run, time.monotonic()

    def release(self) -> None:
        self.engaged = None
        self.running = False

    def controller_lost(self) -> bool:
        """True if the controller this agent serves has not answered for timeout_s."""
        run = self.engaged
        if run is None:
            return False
        if run:
            last = self.last_answer.get(run, self.engaged_at)
        else:
            last = max([self.engaged_at, *self.last_answer.values()])
        return time.monotonic() - max(last, self.engaged_at) > self.timeout_s

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                try:
                    self.sock.send(pack({"type": "hb", "pid": os.getpid()}), zmq.NOBLOCK)
                except zmq.Again:
                    pass  # no controller connected: nothing to tell
                deadline = time.monotonic() + self.interval_s
                while (left := deadline - time.monotonic()) > 0:
                    if self.sock.poll(int(left * 1000) + 1):
                        msg = unpack(self.sock.recv())
                        self.last_answer[str(msg.get("run", ""))] = time.monotonic()
                if self.health_file:
                    with open(self.health_file, "w") as f:
                        f.write(f"{time.time():.0f}\n")
                if (self.running and self.controller_lost() and self._main is not None
                        and self._signalled != self.engaged_at):
                    self._signalled = self.engaged_at
                    signal.pthread_kill(self._main, signal.SIGUSR1)  # unwinds the data loop
        except zmq.ContextTerminated:
            pass
        finally:
            self.sock.close(0)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2 * self.interval_s + 1)
        self.zctx.term()


class Agent:
    """The control connection of one role instance."""

    def __init__(self, controller: str, role: str, index: int, *,
                 heartbeat: Heartbeat | None = None) -> None:
        from dispatch.runtime import transport

        self.role = role
        self.index = index
        self.name = f"{role}{index}"
        self.controller = controller
        self.heartbeat = heartbeat  # attached agents only
        self.zctx = zmq.Context()
        self.ctl = self.zctx.socket(zmq.DEALER)
        self.ctl.setsockopt(zmq.IDENTITY, self.name.encode())
        self.ctl.setsockopt(zmq.LINGER, 2000)
        if heartbeat is not None:
            # an attached agent's hello goes only to a live controller, never queued
            # for one that may come later (it says hello again until answered)
            self.ctl.setsockopt(zmq.IMMEDIATE, 1)
            self.ctl.setsockopt(zmq.RECONNECT_IVL, 200)
        transport.connect(self.ctl, controller)
        # kept, not made per look: pyzmq's Socket.poll builds a Poller every call
        self._ctl_poller = zmq.Poller()
        self._ctl_poller.register(self.ctl, zmq.POLLIN)
        self.impl: RoleImpl | None = None
        self.plan: dict[str, Any] = {}
        self.pending: dict[str, Any] | None = None  # a control message that ended run()
        self.draining = False

    def send(self, msg: dict[str, Any]) -> None:
        self.ctl.send(pack(msg))

    def recv(self, timeout_ms: int | None = None) -> dict[str, Any] | None:
        if timeout_ms is not None and not self.ctl.poll(timeout_ms):
            return None
        return unpack(self.ctl.recv())

    def poll_control(self) -> bool:
        """Handle control messages without blocking; True if the data loop must end.

        `stats` is answered here and the loop goes on; `drain`, `stop` and a
        new `plan` end the loop (the drain is done by the role before it
        returns, see `draining`).
        """
        while self._ctl_poller.poll(0):
            msg = unpack(self.ctl.recv())
            t = msg.get("type")
            if t == "stats":
                self.send({"type": "stats", "role": self.name, "data": self._snapshot()})
            elif t == "drain":
                self.draining = True
                self.pending = msg
                return True
            else:
                self.pending = msg
                return True
        return False

    def _snapshot(self) -> dict[str, Any]:
        return self.impl.snapshot() if self.impl else {}

    def hello(self) -> dict[str, Any]:
        """The hello message: who this is, and where its binders can be reached."""
        from dispatch.runtime import transport

        tc = transport.current()
        msg: dict[str, Any] = {"type": "hello", "role": self.role, "index": self.index,
                               **identity()}
        if self.controller.startswith("tcp://"):
            host, _ = transport.split_tcp(self.controller)
            msg["addr"] = tc.advertise or transport.local_address(host)
        return msg

    def _next_message(self) -> dict[str, Any]:
        """The next control message; an attached agent says hello again every 2 s until
        its controller answers, and gives up on a controller whose heartbeats stop."""
        if self.heartbeat is None:
            msg = self.recv()
            assert msg is not None
            return msg
        last_hello = time.monotonic()
        while True:
            msg = self.recv(200)
            if msg is not None:
                if self.heartbeat.engaged is None:
                    self.heartbeat.engage("")
                return msg
            if self.heartbeat.controller_lost():
                raise ControllerLost(f"{self.name}: the controller stopped answering")
            if self.heartbeat.engaged is None and time.monotonic() - last_hello > 2.0:
                self._send_hello()
                last_hello = time.monotonic()

    def _send_hello(self) -> None:
        try:
            self.ctl.send(pack(self.hello()), zmq.NOBLOCK if self.heartbeat else 0)
        except zmq.Again:
            pass  # no controller yet: say it again later

    def serve(self) -> int:
        """Serve one controller until `stop`; 0 on stop, 1 after reporting an error."""
        self._send_hello()
        while True:
            msg = self.pending or self._next_message()
            self.pending = None
            t = msg.get("type")
            try:
                if t == "plan":
                    if self.impl:
                        self.impl.close()
                        self.impl = None
                    self.plan = msg["plan"]
                    if self.heartbeat is not None:
                        self.heartbeat.engage(str(self.plan.get("pool", "")))
                    factory = _FACTORIES.get(self.role)
                    if factory is None:
                        raise ValueError(f"no role named {self.role!r}; known: "
                                         f"{sorted(_FACTORIES)}")
                    self.impl = factory(self, self.plan)
                    cfg = self.plan.get("config") or {}
                    if "sched" in cfg:  # every thread now exists (ZeroMQ's I/O threads too)
                        from dispatch.runtime import sched

                        sched.apply(str(cfg["sched"]))
                    self.send({"type": "ready", "role": self.name})
                elif t == "start":
                    self.draining = False
                    if self.impl is None:
                        raise RuntimeError("start before plan")
                    if self.heartbeat is not None:
                        self.heartbeat.running = True
                    # Everything alive now (modules, numba's compiled kernels, the plan's
                    # objects) lives as long as the process: take it out of the cyclic
                    # collector's sight, or a full collection (about 55 ms over numba's
                    # ~100 k objects here) lands in the middle of a run as a latency spike.
                    gc.freeze()
                    try:
                        self.impl.run(self)
                    finally:
                        if self.heartbeat is not None:
                            self.heartbeat.running = False
                    if self.draining:
                        self.send({"type": "drained", "role": self.name,
                                   "data": self._snapshot()})
                        self.draining = False
                elif t == "stats":
                    self.send({"type": "stats", "role": self.name, "data": self._snapshot()})
                elif t == "rusage":  # for a controller that cannot read this process's /proc
                    from dispatch.runtime import procstat

                    smp = procstat.sample(os.getpid())
                    self.send({"type": "rusage", "role": self.name,
                               "data": dataclasses.asdict(smp) if smp else {}})
                elif t == "drain":  # not running: nothing to drain
                    self.send({"type": "drained", "role": self.name, "data": self._snapshot()})
                elif t == "stop":
                    break
                else:
                    raise ValueError(f"unknown control message {t!r}")
            except ControllerLost:
                raise
            except Exception as e:  # report, then die: the controller fails the run cleanly
                self.send({"type": "error", "role": self.name, "error": repr(e),
                           "trace": traceback.format_exc()})
                self.close()
                return 1
        self.close()
        return 0

    def close(self) -> None:
        if self.impl:
            try:
                self.impl.close()
            finally:
                self.impl = None
        self.ctl.close(linger=1000)
        self.zctx.term()


def attach_forever(controller: str, role: str, index: int, *,
                   health_file: str | None = None, sessions: int | None = None) -> int:
    """Serve controller after controller at `controller` (an attached role: a
    container or a process on another host), until SIGTERM or `sessions` served.

    Each session: say hello until a controller answers, serve it, and on `stop`,
    on an error it was told of, or when its heartbeats stop, release the role and
    wait for the next controller.
    """
    from dispatch.runtime import transport

    def lost(signum: int, frame: object) -> None:
        raise ControllerLost("the controller stopped answering heartbeats")

    signal.signal(signal.SIGUSR1, lost)
    hb = Heartbeat(transport.heartbeat_endpoint(controller), f"{role}{index}",
                   health_file=health_file)
    hb.start()
    served = 0
    try:
        while sessions is None or served < sessions:
            hb.release()
            agent = Agent(controller, role, index, heartbeat=hb)
            try:
                rc = agent.serve()
                print(f"{agent.name}: released by the controller (status {rc}); waiting "
                      "for the next one", file=sys.stderr, flush=True)
            except ControllerLost as e:
                hb.release()
                print(f"{agent.name}: {e}; releasing the role and waiting for the next "
                      "controller", file=sys.stderr, flush=True)
                try:
                    agent.close()
                except Exception as ce:  # a half-torn role must not end the agent
                    print(f"{agent.name}: while releasing: {ce!r}", file=sys.stderr)
            served += 1
    finally:
        hb.release()
        hb.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dispatch-agent")
    ap.add_argument("--controller", required=True)
    ap.add_argument("--role", required=True)
    ap.add_argument("--index", type=int, default=0)
    args = ap.parse_args(argv)
    # SIGTERM unwinds through finally blocks (so segments and sockets close).
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))
    # Run as `python -m`, this file is __main__; the role modules register their
    # factories in the importable dispatch.runtime.agent, so serve from that one.
    import dispatch.runtime.agent as agent_mod
    from dispatch.runtime import hwroles, roles  # noqa: F401  (register the role factories)
    from dispatch.runtime.sched import set_timer_slack

    set_timer_slack()  # before any thread starts: ZeroMQ's I/O threads inherit it

    agent = agent_mod.Agent(args.controller, args.role, args.index)
    prof_dir = os.environ.get("DISPATCH_PROFILE_DIR")  # profile every role into this folder
    if not prof_dir:
        return agent.serve()
    import cProfile

    prof = cProfile.Profile()
    try:
        return prof.runcall(agent.serve)
    finally:
        prof.dump_stats(os.path.join(prof_dir, f"{agent.name}.prof"))


if __name__ == "__main__":
    raise SystemExit(main())
