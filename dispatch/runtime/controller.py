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
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio

from dispatch.mbuf import MbufPool
from dispatch.runtime import procstat
from dispatch.runtime.agent import pack, unpack
from dispatch.runtime.config import RunConfig
from dispatch.runtime.launcher import (
    ATTACH_TIMEOUT_ENV,
    HEARTBEAT_TIMEOUT_ENV,
    AttachedLauncher,
    LocalLauncher,
    attached_roles,
    env_seconds,
)
from dispatch.runtime.netisr import NetisrTable
from dispatch.runtime.placement import placement
from dispatch.runtime.sampler import Sampler
from dispatch.runtime.transport import (
    TransportConfig,
    binder_of,
    heartbeat_endpoint,
    make_endpoint,
    zap_counts,
)

if TYPE_CHECKING:
    from dispatch.live import LivePublisher

#: how often the peak of mbufs in use is sampled during a run: each sample reads
#: every mbuf's owner word (2 MB of cache lines for 32 k mbufs, lines the roles are
#: writing), so every 10 ms cost the roles a few per cent of their throughput
PEAK_SAMPLE_S = 0.05


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
    transport: TransportConfig = field(default_factory=TransportConfig)
    addrs: dict[str, str] = field(default_factory=dict)  # tcp: role -> address it said

    def endpoint(self, what: str) -> str:
        """ipc:// in the run directory, or tcp:// at the address of the role that binds it."""
        t = self.transport
        host = self.addrs.get(binder_of(what), t.advertise or "127.0.0.1")
        return make_endpoint(what, kind=t.kind, rundir=self.rundir, host=host,
                             port_base=t.port_base)


class Controller:
    """Drives one host's roles through runs; use as an async context manager."""

    def __init__(self, cfg: RunConfig, *, timeout_s: float = 30.0,
                 transport: TransportConfig | None = None,
                 attach: frozenset[str] | None = None) -> None:
        self.cfg = cfg.validate()
        self.timeout_s = timeout_s
        # how endpoints are made (ipc, or tcp with CURVE) and which roles attach instead
        # of being spawned: from the environment unless given (README: DISPATCH_*)
        try:
            self.transport = (transport or TransportConfig.from_env()).validate()
            self.attach = attached_roles() if attach is None else attach
        except ValueError as e:  # TransportError too: a bad DISPATCH_* setting
            raise RunFailed(f"bad transport setting: {e}") from None
        self.zctx = zmq.asyncio.Context()
        self.router: zmq.asyncio.Socket | None = None
        self.launcher: LocalLauncher | None = None
        self.attached: AttachedLauncher | None = None
        self.pool: MbufPool | None = None
        self.netisr: NetisrTable | None = None
        self.sockets: Any = None
        self.rings: Any = None
        self.session: Session | None = None
        self._inbox: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._failure: RunFailed | None = None
        self.pids: dict[str, int | None] = {}  # None: not visible from here (ask the role)
        self.peak_in_use = self.peak_samples = 0
        self.txq: NetisrTable | None = None  # the driver's transmit queue (deferred tx)
        self.uq: NetisrTable | None = None  # handles on their way to each user thread
        self.extra_rings: list[Any] = []  # the rings of the NIC's other ports

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
        if c.tx_dispatch == "deferred":
            roles.append(("txthread", 0))
        if c.source == "trafgen":
            roles += [("trafgen", g) for g in range(c.trafgens)]
        return roles

    async def open(self) -> None:
        self._refused0 = zap_counts()["refused"]  # before anything is bound
        from dispatch.runtime import transport as T
        from dispatch.stages.socktab import SocketTable

        c = self.cfg
        t = self.transport
        rundir = tempfile.mkdtemp(prefix="dispatch-emu-")
        run_id = f"demu-{os.getpid()}-{os.path.basename(rundir)[-6:]}"
        # tcp: loopback when every role is a local child, else this host's address
        # (binders then bind every interface, or DISPATCH_BIND, with CURVE)
        host = t.advertise or (T.local_address() if self.attach else "127.0.0.1")
        ctl = make_endpoint("ctl", kind=t.kind, rundir=rundir, host=host,
                            port_base=t.port_base)
        s = self.session = Session(run_id, rundir, ctl, pool=run_id,
                                   sockets=f"{run_id}.sock", netisr=f"{run_id}.isr",
                                   rings=f"{run_id}.nic0", transport=t)
        self.pool = MbufPool.create(s.pool, c.pool, owner="controller")
        self.netisr = NetisrTable.create(s.netisr, workers=c.netisr, producers=c.rxq)
        self.sockets = SocketTable.create(s.sockets, capacity=max(1024, 4 * c.flows),
                                          nusers=c.users)
        self.router = self.zctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # an agent that restarted reconnects
        T.bind(self.router, s.ctl_endpoint, t)
        self._reader = asyncio.create_task(self._read_control())
        # the children get this controller's transport (and keys), whatever the environment
        self.launcher = LocalLauncher(s.ctl_endpoint, env={**os.environ, **t.to_env()})
        if self.attach:
            self.attached = AttachedLauncher(
                heartbeat_endpoint(s.ctl_endpoint), run_id,
                timeout_s=env_seconds(HEARTBEAT_TIMEOUT_ENV, 5.0), transport=t)
        for role, idx in self._role_list():
            if role in self.attach:
                assert self.attached is not None
                s.roles[self.attached.expect(f"{role}{idx}").name] = (role, idx)
                continue
            prio = c.ithread_prio and role == "ithread"
            child = self.launcher.spawn(role, idx, cpus=c.cpus_of(role, idx),
                                        fifo=10 if prio else None)
            s.roles[child.name] = (role, idx)
            self.pids[child.name] = child.pid
        await self._hellos(self.timeout_s, env_seconds(ATTACH_TIMEOUT_ENV, 60.0))

    async def _hellos(self, local_s: float, attached_s: float) -> None:
        """Wait for every role's hello; note where each can be reached and whether its
        PID is one this controller can read (/proc: same boot, same PID namespace).

        Roles this controller spawned have `local_s` (their start-up, numba's
        kernel loading included, can take seconds on a loaded machine); attached
        roles, which may simply not be running, have `attached_s`
        (DISPATCH_ATTACH_TIMEOUT), and are the ones named when it passes."""
        from dispatch.runtime.agent import identity

        assert self.session is not None
        s = self.session
        me = identity()
        refused0 = self._refused0  # this process's ZAP refusals since open() began
        pending = set(s.roles)
        t0 = time.monotonic()
        while pending:
            self._check_alive()
            for name in sorted(pending):
                q = self._inbox.setdefault(name, asyncio.Queue())
                while not q.empty():
                    msg = q.get_nowait()
                    if msg.get("type") != "hello":
                        continue
                    pending.discard(name)
                    if msg.get("addr"):
                        s.addrs[name] = str(msg["addr"])
                    if name not in self.pids:  # an attached role
                        same = (msg.get("boot"), msg.get("pidns")) == (me["boot"], me["pidns"])
                        self.pids[name] = int(msg["pid"]) if same and me["pidns"] else None
                        if self.attached is not None:
                            a = self.attached.roles[name]
                            a.pid = self.pids[name]
                            a.addr = s.addrs.get(name)
                            a.hello_at = time.monotonic()
                    break
            if not pending:
                break
            late_att = sorted(n for n in pending if n not in self.pids)  # attached: no PID yet
            late_loc = sorted(n for n in pending if n in self.pids)
            elapsed = time.monotonic() - t0
            late, timeout_s = ((late_att, attached_s) if late_att and elapsed > attached_s
                               else (late_loc, local_s) if late_loc and elapsed > local_s
                               else ([], 0.0))
            if late:
                refused = zap_counts()["refused"] - refused0
                how = (f"; {refused} connection(s) refused by CURVE authentication (wrong or "
                       "missing client key)") if refused else ""
                where = (f" (attached roles connect to this controller at {s.ctl_endpoint}: "
                         "is each one running, and do --rxq, --netisr and --users match "
                         "the instances started?)" if self.attach else "")
                raise RunFailed(f"role(s) {', '.join(late)} did not say hello "
                                f"within {timeout_s:.0f} s{where}{how}")
            await asyncio.sleep(0.02)

    async def _procstats(self) -> dict[str, procstat.ProcSample | None]:
        """CPU, context switches and RSS of every role: read from /proc where this
        controller sees the process, else asked of the role itself (rusage)."""
        assert self.session is not None
        out: dict[str, procstat.ProcSample | None] = {}
        for n in self.session.roles:
            pid = self.pids.get(n)
            if pid is not None:
                out[n] = procstat.sample(pid)
                continue
            await self.send(n, {"type": "rusage"})
            data = (await self.expect(n, "rusage")).get("data") or {}
            out[n] = procstat.ProcSample(**data) if data else None
        return out

    def tx_queues(self) -> int:
        c = self.cfg
        # ithreads, workers, users, the nic (toe), the transmit thread
        return c.rxq + c.netisr + c.users + 2

    def tx_queue_of(self, role: str, index: int) -> int:
        c = self.cfg
        base = {"ithread": 0, "netisr": c.rxq, "user": c.rxq + c.netisr,
                "nic": c.rxq + c.netisr + c.users, "txthread": c.rxq + c.netisr + c.users + 1}
        return base.get(role, 0) + (index if role not in ("nic", "txthread") else 0)

    def ports(self, cfg: RunConfig) -> list[str]:
        """The rings of each NIC port: the second port exists for forwarding."""
        assert self.session is not None
        rings = self.session.rings
        return [rings] + ([rings[:-1] + "1"] if cfg.workload == "forward" else [])

    async def close(self) -> None:
        if self.router is not None and self.session is not None:
            for name in self.session.roles:
                with contextlib.suppress(Exception):
                    await self.router.send_multipart([name.encode(), pack({"type": "stop"})])
        if self.launcher is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.launcher.wait_all, 3.0)
            self.launcher.stop_all()
        if self.attached is not None:  # attached roles were released by `stop` above
            await asyncio.sleep(0.2)  # let the stops leave before the router closes
            self.attached.close()
            self.attached = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self.router is not None:
            self.router.close(linger=0)
            self.router = None
        for obj in (*self.extra_rings, self.txq, self.uq, self.rings, self.sockets,
                    self.netisr, self.pool):
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()
        self.rings = self.sockets = self.netisr = self.pool = self.txq = self.uq = None
        self.extra_rings = []
        if self.session is not None:
            shutil.rmtree(self.session.rundir, ignore_errors=True)
        if getattr(self, "_live", None) is not None:
            self._live.remove()  # the live state (dispatch.live) ends with the controller
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
        gone = self.attached.dead() if self.attached is not None else []
        if gone:
            desc = ", ".join(f"{n} ({why})" for n, why in gone)
            raise RunFailed(f"attached role lost: {desc}")

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
            "wire_endpoint": s.endpoint("wire"),
            # each generator's receiving ends (port 0, and port 1 for forwarding); the
            # NIC gets all of them and sends each frame to the generator of its flow
            "reply_endpoint": s.endpoint(_gen_ep("reply", idx if role == "trafgen" else 0)),
            "reply1_endpoint": s.endpoint(_gen_ep("reply1", idx if role == "trafgen" else 0)),
            "reply_endpoints": [s.endpoint(_gen_ep("reply", g)) for g in range(cfg.trafgens)],
            "reply1_endpoints": [s.endpoint(_gen_ep("reply1", g))
                                 for g in range(cfg.trafgens)],
            "doorbell_endpoint": s.endpoint("doorbell"),
            "tx_queue": self.tx_queue_of(role, idx), "tx_queues": self.tx_queues(),
            "config": cfg.as_dict(),
            "workload": cfg.workload, "tx_dispatch": cfg.tx_dispatch, "ports": self.ports(cfg),
            "txq": f"{s.run_id}.txq", "txq_endpoint": s.endpoint("txq"),
            "uq": f"{s.run_id}.uq",
        }

    async def run(self, cfg: RunConfig | None = None) -> dict[str, Any]:
        """One run of one model on the live roles; returns the result document."""
        from dispatch.runtime import result as R

        cfg = (cfg or self.cfg).validate()
        s = self.session
        assert s is not None and self.pool is not None and self.netisr is not None
        for k in ("workload", "tx_dispatch", "source", "rxq", "netisr", "users", "trafgens"):
            if getattr(cfg, k) != getattr(self.cfg, k):
                raise RunFailed(f"--{k.replace('_', '-')} {getattr(cfg, k)} differs from this "
                                f"controller's ({getattr(self.cfg, k)}): it sets which roles "
                                f"run; start a new controller for it")
        self.netisr.reset()
        if self.txq is None:
            self.txq = NetisrTable.create(f"{s.run_id}.txq", workers=1,
                                          producers=self.tx_queues())
            # the socket wakeups to each user thread, counted (never dropped)
            self.uq = NetisrTable.create(f"{s.run_id}.uq", workers=cfg.users,
                                         producers=self.tx_queues())
        self.txq.reset()
        assert self.uq is not None
        self.uq.reset()
        R.setup_sockets(self.sockets, cfg)
        for r in [self.rings, *self.extra_rings]:
            if r is not None:
                r.close()
        self.rings = None
        self.extra_rings = []
        # the nic first: it creates its rings, which the others attach to by name
        await self.send("nic0", {"type": "plan", "plan": self.plan_for("nic0", cfg)})
        await self.expect("nic0", "ready")
        from nicemu.ring import RingSet

        self.rings = RingSet.attach(s.rings)
        self.extra_rings = [RingSet.attach(n) for n in self.ports(cfg)[1:]]
        others = [n for n in s.roles if n != "nic0"]
        for name in others:
            await self.send(name, {"type": "plan", "plan": self.plan_for(name, cfg)})
        await self._gather("ready", others)
        before = await self._procstats()
        # consumers first, the source last
        start_order = [n for n in s.roles if s.roles[n][0] in ("txthread", "netisr",
                                                              "ithread")] + \
            ["nic0"] + [n for n in s.roles if s.roles[n][0] == "trafgen"]
        # users last in tx (they are the source there, and need the generator up)
        users = [n for n in s.roles if s.roles[n][0] == "user"]
        start_order = (start_order + users) if cfg.workload == "tx" else (users + start_order)
        t0 = time.monotonic_ns()
        for name in start_order:
            await self.send(name, {"type": "start", "t0": t0})
        gens = [n for n in s.roles if s.roles[n][0] == "trafgen"]
        sources = users if cfg.workload == "tx" else (gens if cfg.source == "trafgen"
                                                      else ["nic0"])
        limit = (cfg.duration or 0) + self.timeout_s if cfg.duration else self.timeout_s * 4
        self.peak_in_use = self.peak_samples = 0
        live = self._live_publisher(cfg)
        sampler = Sampler(lambda: self._sample(live), PEAK_SAMPLE_S).start()
        try:
            dones = await self._gather("source_done", sources, timeout=limit)
            done = _merge_source_reports([dones[n] for n in sources])
        finally:
            sampler.stop()
            live.sample(self, phase="draining", force=True)
        t1 = time.monotonic_ns()
        await self._quiesce()
        drained: dict[str, dict[str, Any]] = {}
        # receive: from the source inwards. The other workloads end at the generator
        # (what it received is only final once everything before it has drained).
        order = (["trafgen"], ["nic"], ["ithread"], ["netisr"], ["user"], ["txthread"]) \
            if cfg.workload == "rx" else \
            (["user"], ["ithread"], ["netisr"], ["txthread"], ["nic"], ["trafgen"])
        for group in order:
            names = [n for n in s.roles if s.roles[n][0] in group]
            for n in names:
                await self.send(n, {"type": "drain"})
            drained.update(await self._gather("drained", names))
            await self._quiesce()
        drained["controller"] = {"data": self._end_of_run(cfg)}
        after = await self._procstats()
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

    def _live_publisher(self, cfg: RunConfig) -> LivePublisher:
        """This controller's live document (dispatch.live), begun for a run's traffic."""
        from dispatch.live import LivePublisher

        assert self.session is not None
        live: LivePublisher | None = getattr(self, "_live", None)
        if live is None:
            live = self._live = LivePublisher(self.session.run_id)
        live.begin(self, cfg)
        return live

    def _sample(self, live: LivePublisher) -> None:
        """One look while traffic runs (in the sampling thread, sampler.py): the peak
        of mbufs in use (netstat -m is a snapshot: sampled every PEAK_SAMPLE_S), and
        the live state for top, netstat --watch and progress about twice a second."""
        assert self.pool is not None
        self.peak_in_use = max(self.peak_in_use, self.pool.in_use())
        self.peak_samples += 1
        live.sample(self)

    def rings_in_flight(self) -> int:
        """Packets in the NIC's rx rings (not yet taken by an ithread), tx rings (every
        port), the driver's transmit queue (deferred tx dispatch) and on their way
        to the user threads."""
        n = sum(t.in_flight() for t in (self.txq, self.uq) if t is not None)
        for rings in (self.rings, *self.extra_rings):
            if rings is not None:
                n += sum(len(r) for r in rings.rx) + sum(r.pending() for r in rings.tx)
        return n

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
            elif time.monotonic() - stable_since >= settle_s * (1 if not any(state[1:])
                                                                 else 3):
                return  # settled; with counted packets still queued, settled longer
            await asyncio.sleep(0.02)


def _gen_ep(name: str, g: int) -> str:
    """Generator g's endpoint `name` (reply, reply1): g 0 keeps the plain names."""
    return name if g == 0 else f"{name}-g{g}"


def _merge_source_reports(msgs: list[dict[str, Any]]) -> dict[str, Any]:
    """One source report from several sources (the user threads in tx, several
    generators): counts and rates add; every source's own report is kept too."""
    if len(msgs) == 1:
        return msgs[0]
    data: dict[str, Any] = {}
    for m in msgs:
        for k, v in m.get("data", {}).items():
            if k in ("ratio", "elapsed_s"):  # not additive
                data[k] = max(data.get(k, 0), v or 0) if k == "elapsed_s" else None
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                data[k] = data.get(k, 0) + v
            else:
                data.setdefault(k, v)
    data["per_source"] = [m.get("data", {}) for m in msgs]
    return {"type": "source_done", "data": data}


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
