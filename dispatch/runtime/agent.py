"""A role process's side of the control plane.

Every role (nic, ithread, netisr, user, trafgen) is an agent: it starts,
connects to the controller by address (not by inheritance, so the same agent
runs as a local subprocess or in a container), says hello, receives its
plan, runs, answers for its statistics, drains, and can be re-planned for the
next model without a restart. The data plane is plain blocking ZeroMQ; the
role's loop calls `Agent.poll_control()` between batches, which costs one
non-blocking poll.

Messages are msgpack maps with a "type": hello, plan, ready, start, stats,
drain, drained, stop, error. `python -m dispatch.runtime.agent --controller
ENDPOINT --role ROLE --index N` is the process entry point.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
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


class Agent:
    """The control connection of one role instance."""

    def __init__(self, controller: str, role: str, index: int) -> None:
        self.role = role
        self.index = index
        self.name = f"{role}{index}"
        self.zctx = zmq.Context()
        self.ctl = self.zctx.socket(zmq.DEALER)
        self.ctl.setsockopt(zmq.IDENTITY, self.name.encode())
        self.ctl.setsockopt(zmq.LINGER, 2000)
        self.ctl.connect(controller)
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
        while self.ctl.poll(0):
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

    def serve(self) -> int:
        self.send({"type": "hello", "role": self.role, "index": self.index,
                   "pid": os.getpid()})
        while True:
            msg = self.pending or self.recv()
            self.pending = None
            assert msg is not None
            t = msg.get("type")
            try:
                if t == "plan":
                    if self.impl:
                        self.impl.close()
                        self.impl = None
                    self.plan = msg["plan"]
                    factory = _FACTORIES.get(self.role)
                    if factory is None:
                        raise ValueError(f"no role named {self.role!r}; known: "
                                         f"{sorted(_FACTORIES)}")
                    self.impl = factory(self, self.plan)
                    self.send({"type": "ready", "role": self.name})
                elif t == "start":
                    self.draining = False
                    if self.impl is None:
                        raise RuntimeError("start before plan")
                    self.impl.run(self)
                    if self.draining:
                        self.send({"type": "drained", "role": self.name,
                                   "data": self._snapshot()})
                        self.draining = False
                elif t == "stats":
                    self.send({"type": "stats", "role": self.name, "data": self._snapshot()})
                elif t == "drain":  # not running: nothing to drain
                    self.send({"type": "drained", "role": self.name, "data": self._snapshot()})
                elif t == "stop":
                    break
                else:
                    raise ValueError(f"unknown control message {t!r}")
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
