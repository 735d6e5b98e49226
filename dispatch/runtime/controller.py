"""The controller: spawns the roles, plans them, runs traffic, drains, collects.

One controller drives one emulated host. It creates the host's shared state
(the mbuf pool, the socket table, the netisr workstream table and the NIC's
rings) so that their lifetimes end with it, then has a launcher start the
role agents, which attach to everything by name. A run is: plan every role
for the model, start, let the source run, stop it, drain the pipeline in
order, collect every role's figures, check conservation and build the
result document. The roles stay up between runs: `compare` re-plans them
for the next model without a restart, as net.isr.dispatch is a runtime
setting in FreeBSD.

The control plane is asyncio (uvloop) with zmq.asyncio; a watchdog task
notices a role that dies and fails the run cleanly, naming the role and
its exit status. Teardown (also on Ctrl-C) stops every child by PID and
removes every segment and the run directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from dispatch.mbuf import MbufPool
from dispatch.runtime import procstat
from dispatch.runtime.agent import pack, unpack
from dispatch.runtime.config import RunConfig
from dispatch.runtime.launcher import LocalLauncher
from dispatch.runtime.netisr import NetisrTable
from dispatch.runtime.placement import placement


class RunFailed(RuntimeError):
    """A run could not complete (a role died, timed out, or reported an error)."""


@dataclass
class Session:
    """Names and endpoints of one emulated host's shared state and queues."""

    run_id: str
    rundir: str
    ctl_endpoint: str
    pool: str
    sockets: str
    netisr: str
    rings: str
    roles: dict[str, tuple[str, int]] = field(default_factory=dict)

    def endpoint(self, what: str) -> str:
        return f"ipc://{self.rundir}/{what}"


class Controller:
    """Drives one host's roles through runs; use as an async context manager."""

    def __init__(self, cfg: RunConfig, *, timeout_s: float = 30.0) -> None:
        self.cfg = cfg.validate()
        self.timeout_s = timeout_s
        self.zctx = zmq.asyncio.Context()
        self.router: zmq.asyncio.Socket | None = None
        self.launcher: LocalLauncher | None = None
        self.pool: MbufPool | None = None
        self.netisr: NetisrTable | None = None
        self.sockets: Any = None
        self.rings: Any = None
        self.session: Session | None = None
        self._inbox: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._failure: RunFailed | None = None
        self.pids: dict[str, int] = {}
        self.peak_in_use = 0

    # ------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Controller:
        try:
            await self.open()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _role_list(self) -> list[tuple[str, int]]:
        c = self.cfg
        roles = [("nic", 0)] + [("ithread", i) for i in range(c.rxq)] + \
            [("netisr", i) for i in range(c.netisr)] + [("user", i) for i in range(c.users)]
        if c.source == "trafgen":
            roles.append(("trafgen", 0))
        return roles

    async def open(self) -> None:
        from dispatch.stages.socktab import SocketTable

        c = self.cfg
        rundir = tempfile.mkdtemp(prefix="dispatch-emu-")
        run_id = f"demu-{os.getpid()}-{os.path.basename(rundir)[-6:]}"
        s = self.session = Session(run_id, rundir, f"ipc://{rundir}/ctl", pool=run_id,
                                   sockets=f"{run_id}.sock", netisr=f"{run_id}.isr",
                                   rings=f"{run_id}.nic0")
        self.pool = MbufPool.create(s.pool, c.pool, owner="controller")
        self.netisr = NetisrTable.create(s.netisr, workers=c.netisr, producers=c.rxq)
        self.sockets = SocketTable.create(s.sockets, capacity=max(1024, 4 * c.flows),
                                          nusers=c.users)
        self.router = self.zctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(s.ctl_endpoint)
        self._reader = asyncio.create_task(self._read_control())
        self.launcher = LocalLauncher(s.ctl_endpoint)
        for role, idx in self._role_list():
            prio = c.ithread_prio and role == "ithread"
            child = self.launcher.spawn(role, idx, cpus=c.cpus_of(role, idx),
                                        fifo=10 if prio else None)
            s.roles[child.name] = (role, idx)
            self.pids[child.name] = child.pid
        await self._gather("hello", list(s.roles))

    def tx_queues(self) -> int:
        c = self.cfg
        return c.rxq + c.netisr + c.users + 1  # ithreads, workers, users, the nic (toe)

    def tx_queue_of(self, role: str, index: int) -> int:
        c = self.cfg
        base = {"ithread": 0, "netisr": c.rxq, "user": c.rxq + c.netisr,
                "nic": c.rxq + c.netisr + c.users}
        return base.get(role, 0) + (index if role != "nic" else 0)

    async def close(self) -> None:
        if self.router is not None and self.session is not None:
            for name in self.session.roles:
                with contextlib.suppress(Exception):
                    await self.router.send_multipart([name.encode(), pack({"type": "stop"})])
        if self.launcher is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.launcher.wait_all, 3.0)
            self.launcher.stop_all()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self.router is not None:
            self.router.close(linger=0)
            self.router = None
        for obj in (self.rings, self.sockets, self.netisr, self.pool):
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()
        self.rings = self.sockets = self.netisr = self.pool = None
        if self.session is not None:
            shutil.rmtree(self.session.rundir, ignore_errors=True)
        self.zctx.term()

    # ------------------------------------------------------- control channel
    async def _read_control(self) -> None:
        assert self.router is not None
        while True:
            ident, raw = await self.router.recv_multipart()
            msg = unpack(raw)
            name = ident.decode()
            if msg.get("type") == "error":
                self._failure = RunFailed(f"role {name} failed: {msg.get('error')}\n"
                                          f"{msg.get('trace', '')}")
            self._inbox.setdefault(name, asyncio.Queue()).put_nowait(msg)

    async def send(self, name: str, msg: dict[str, Any]) -> None:
        assert self.router is not None
        await self.router.send_multipart([name.encode(), pack(msg)])

    def _check_alive(self) -> None:
        if self._failure is not None:
            raise self._failure
        assert self.launcher is not None
        dead = self.launcher.dead()
        if dead:
            desc = ", ".join(f"{n} (exit status {rc})" for n, rc in dead)
            raise RunFailed(f"role process died: {desc}")

    async def expect(self, name: str, mtype: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait for one message of `mtype` from role `name`, watching for deaths."""
        q = self._inbox.setdefault(name, asyncio.Queue())
        deadline = time.monotonic() + (timeout or self.timeout_s)
        while True:
            self._check_alive()
            try:
                msg = await asyncio.wait_for(q.get(), 0.1)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise RunFailed(f"role {name} did not answer {mtype!r} within "
                                    f"{timeout or self.timeout_s:.0f} s") from None
                continue
            if msg.get("type") == mtype:
                return msg
            if msg.get("type") == "error":
                self._check_alive()

    async def _gather(self, mtype: str, names: list[str],
                      timeout: float | None = None) -> dict[str, dict[str, Any]]:
        results = await asyncio.gather(*(self.expect(n, mtype, timeout) for n in names))
        return dict(zip(names, results))

    # ------------------------------------------------------------------- runs
    def plan_for(self, name: str, cfg: RunConfig) -> dict[str, Any]:
        assert self.session is not None
        s = self.session
        role, idx = s.roles[name]
        pl = placement(cfg.model)
        return {
            "model": cfg.model, "role": role, "index": idx,
            "stages": pl.stages, "polling": pl.polling, "hybrid": pl.hybrid,
            "local": sorted(pl.local(role)),
            "pool": s.pool, "sockets": s.sockets, "netisr": s.netisr, "rings": s.rings,
            "rundir": s.rundir,
            "netisr_endpoints": [s.endpoint(f"netisr{i}") for i in range(cfg.netisr)],
            "user_endpoints": [s.endpoint(f"user{i}") for i in range(cfg.users)],
            "irq_endpoints": [s.endpoint(f"irq{i}") for i in range(cfg.rxq)],
            "wire_endpoint": s.endpoint("wire"), "reply_endpoint": s.endpoint("reply"),
            "doorbell_endpoint": s.endpoint("doorbell"),
            "tx_queue": self.tx_queue_of(role, idx), "tx_queues": self.tx_queues(),
            "config": cfg.as_dict(),
        }

    async def run(self, cfg: RunConfig | None = None) -> dict[str, Any]:
        """One run of one model on the live roles; returns the result document."""
        from dispatch.runtime import result as R

        cfg = (cfg or self.cfg).validate()
        s = self.session
        assert s is not None and self.pool is not None and self.netisr is not None
        self.netisr.reset()
        R.setup_sockets(self.sockets, cfg)
        if self.rings is not None:
            self.rings.close()
            self.rings = None
        # the nic first: it creates its rings, which the others attach to by name
        await self.send("nic0", {"type": "plan", "plan": self.plan_for("nic0", cfg)})
        await self.expect("nic0", "ready")
        from nicemu.ring import RingSet

        self.rings = RingSet.attach(s.rings)
        others = [n for n in s.roles if n != "nic0"]
        for name in others:
            await self.send(name, {"type": "plan", "plan": self.plan_for(name, cfg)})
        await self._gather("ready", others)
        before = {n: procstat.sample(self.pids[n]) for n in s.roles}
        # consumers first, the source last
        start_order = [n for n in s.roles if s.roles[n][0] in ("user", "netisr", "ithread")] + \
            ["nic0"] + [n for n in s.roles if s.roles[n][0] == "trafgen"]
        t0 = time.monotonic_ns()
        for name in start_order:
            await self.send(name, {"type": "start", "t0": t0})
        source = "trafgen0" if cfg.source == "trafgen" else "nic0"
        limit = (cfg.duration or 0) + self.timeout_s if cfg.duration else self.timeout_s * 4
        self.peak_in_use = 0
        sampler = asyncio.create_task(self._sample_pool())
        try:
            done = await self.expect(source, "source_done", timeout=limit)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        t1 = time.monotonic_ns()
        await self._quiesce()
        drained: dict[str, dict[str, Any]] = {}
        for group in (["trafgen"], ["nic"], ["ithread"], ["netisr"], ["user"]):
            names = [n for n in s.roles if s.roles[n][0] in group]
            for n in names:
                await self.send(n, {"type": "drain"})
            drained.update(await self._gather("drained", names))
            await self._quiesce()
        drained["controller"] = {"data": self._end_of_run(cfg)}
        after = {n: procstat.sample(self.pids[n]) for n in s.roles}
        resources = {n: (after[n].minus(before[n]).as_dict() if after[n] and before[n] else {})
                     for n in s.roles}
        for n, child in self.launcher.children.items():  # what pinning and priority it got
            resources.setdefault(n, {}).update(child.placement())
        return R.build(cfg, controller=self, source_report=done.get("data", {}),
                       snapshots={n: m.get("data", {}) for n, m in drained.items()},
                       resources=resources, t0=t0, t1=t1)

    def _end_of_run(self, cfg: RunConfig) -> dict[str, Any]:
        """Flush what TCP reassembly still holds once everything has drained: those
        segments wait for data that never came, so they count as dropped."""
        from dispatch.runtime.inline import end_of_run
        from dispatch.stages.base import Ctx, StackConfig

        assert self.pool is not None
        ctx = Ctx(self.pool, config=StackConfig(auto_sockets=cfg.sockets_auto),
                  sockets=self.sockets, role="controller")
        end_of_run(ctx)
        return ctx.stats.snapshot()

    async def _sample_pool(self) -> None:
        """Track the peak of mbufs in use while traffic runs (netstat -m is a snapshot)."""
        assert self.pool is not None
        while True:
            self.peak_in_use = max(self.peak_in_use, self.pool.in_use())
            await asyncio.sleep(0.01)

    def rings_in_flight(self) -> int:
        """Packets in the NIC's rx rings (not yet taken by an ithread) and tx rings."""
        if self.rings is None:
            return 0
        return sum(len(r) for r in self.rings.rx) + sum(r.pending() for r in self.rings.tx)

    async def _quiesce(self, settle_s: float = 0.3, timeout_s: float = 10.0) -> None:
        """Wait until nothing moves: the pool's in-use count and queue lengths settle."""
        assert self.pool is not None and self.netisr is not None
        deadline = time.monotonic() + timeout_s
        last = None
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            self._check_alive()
            state = (self.pool.in_use(), self.netisr.in_flight(), self.rings_in_flight())
            if state != last:
                last, stable_since = state, time.monotonic()
            elif time.monotonic() - stable_since >= settle_s:
                return
            await asyncio.sleep(0.02)


def run_sync(cfg: RunConfig) -> dict[str, Any]:
    """Run one model start to finish (spawn, run, tear down) from synchronous code."""

    async def go() -> dict[str, Any]:
        async with Controller(cfg) as ctl:
            return await ctl.run()

    return _asyncio_run(go())


def _asyncio_run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(coro)
