"""The role processes' data planes: nic, ithread, netisr worker, user thread.

Each role attaches to the host's shared state by name, runs the stages its
placement makes local with the one `Runner`, and moves handles at the cuts:
plain blocking ZeroMQ PUSH/PULL carrying packed u32 handle arrays, one
message per batch (``[stage name, handles]``), draining whatever is queued
up to the batch size rather than waiting for a full batch. Per-packet
metadata stays in the mbuf header in shared memory.

Timestamps are stamped here, at the handoffs: TS_ITHREAD when the ithread
takes a packet off its ring, TS_NETISR_ENQ when it queues it, TS_NETISR_START
when a worker picks it up; the stages stamp TS_SOCKET and TS_USER. The user
thread turns them into latencies (kept raw during the run, turned into HDR
histograms when the run drains, so the hot path does no histogram work).
"""

from __future__ import annotations

import time
from array import array
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from dispatch.mbuf import MbufPool
from dispatch.mbuf import layout as L
from dispatch.runtime.agent import Agent, role_factory
from dispatch.runtime.netisr import NetisrTable, choose_workstream
from dispatch.runtime.placement import NETISR_STAGES
from dispatch.runtime.result import LATENCY_STAGES, encode_histogram, new_histogram
from dispatch.stages import base as S
from dispatch.stages.base import Ctx, Runner, StackConfig, declare_reasons

QUEUE_DROPS = declare_reasons(
    "netisr", ("qdrop", "nws_qdrops", "packets dropped on a full netisr queue (QDrops)"))
TX_DROPS = declare_reasons(
    "if_transmit", ("txring_full", "ifq_drops", "packets dropped on a full transmit ring"))
TIMER_NS = 10_000_000  # 10 ms: how often TCP and IP timers run in a role
MAX_SAMPLES = 2_000_000  # latency samples kept per user process (then every k-th)


def _stack_config(plan: dict[str, Any]) -> StackConfig:
    c = plan["config"]
    return StackConfig(auto_sockets=bool(c["sockets_auto"]), digest=bool(c["digest"]))


def _runner(ctx: Ctx, local: list[str]) -> Runner:
    import dispatch.stages.all  # noqa: F401  (registers every stage)

    reg = S.registry()
    return Runner(ctx, {s: reg[s] for s in local if s in reg}, clock=time.monotonic_ns)


def push_socket(zctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """A connecting PUSH socket that finds its peer fast (10 ms reconnect, not 100)."""
    s = zctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RECONNECT_IVL, 10)
    s.connect(endpoint)
    return s


def wait_connected(socks: list[zmq.Socket], timeout_s: float = 5.0) -> None:
    """Block until every PUSH socket has a peer (POLLOUT), so that nothing sent at
    the start of a run is refused for want of a connection."""
    deadline = time.monotonic() + timeout_s
    for s in socks:
        while not s.poll(10, zmq.POLLOUT):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no peer on {s.getsockopt_string(zmq.LAST_ENDPOINT)}")


def _pack(hs: Any) -> bytes:
    if isinstance(hs, np.ndarray):
        return hs.astype(np.uint32).tobytes()
    return array("I", hs).tobytes()


def _unpack(raw: bytes) -> list[int]:
    return memoryview(raw).cast("I").tolist()


class HostRole:
    """What every host-side role shares: pool, tables, ctx, output to users and tx."""

    def __init__(self, agent: Agent, plan: dict[str, Any]) -> None:
        from dispatch.stages.socktab import SocketTable
        from nicemu.ring import RingSet

        self.agent = agent
        self.plan = plan
        self.cfg = plan["config"]
        self.batch = int(self.cfg["batch"])
        self.pool = MbufPool.attach(plan["pool"], owner=agent.name)
        self.sockets = SocketTable.attach(plan["sockets"])
        self.rings = RingSet.attach(plan["rings"])
        self.tx = self.rings.tx[plan["tx_queue"]]
        self.ctx = Ctx(self.pool, config=_stack_config(plan), sockets=self.sockets,
                       role=agent.name)
        self.runner = _runner(self.ctx, plan["local"])
        self.zctx = zmq.Context.instance()
        self.users = [push_socket(self.zctx, ep) for ep in plan["user_endpoints"]]
        self.nusers = len(self.users)
        self.counts: defaultdict[str, int] = defaultdict(int)
        self._last_timer = 0

    # ------------------------------------------------------------- outputs
    def dispatch_out(self, routed: dict[str, list[int]], now: int) -> None:
        for stage, hs in routed.items():
            if not hs:
                continue
            if stage == S.SORECEIVE:
                self.to_users(hs)
            elif stage == S.IF_TRANSMIT:
                self.transmit(hs)
            else:
                self.other_stage(stage, hs, now)

    def other_stage(self, stage: str, hs: list[int], now: int) -> None:
        raise RuntimeError(f"{self.agent.name} cannot route to stage {stage!r}")

    def to_users(self, hs: list[int]) -> None:
        if self.nusers == 1:
            self.users[0].send_multipart([b"soreceive", _pack(hs)])
            return
        w = self.pool.w
        groups: dict[int, list[int]] = defaultdict(list)
        for m in hs:
            groups[self.sockets.user_of(w[(m << 6) + L.W_SOCKID] - 1)].append(m)
        for u, g in groups.items():
            self.users[u].send_multipart([b"soreceive", _pack(g)])

    def transmit(self, hs: list[int]) -> None:
        self.reclaim_tx()
        k = self.tx.push_many(hs)
        if k < len(hs):
            self.ctx.drop_many(hs[k:], TX_DROPS.txring_full)

    def reclaim_tx(self) -> None:
        done = self.tx.reclaim()
        if len(done):
            self.pool.freem_batch(done)

    def timers(self, now: int) -> None:
        """TCP's delayed-ACK timer and IP reassembly timeouts, every TIMER_NS."""
        if now - self._last_timer < TIMER_NS:
            return
        self._last_timer = now
        from dispatch.stages.frag import frag_timeout
        from dispatch.stages.tcp_input import tcp_timers

        self.ctx.now = now
        frag_timeout(self.ctx)
        self.dispatch_out(tcp_timers(self.ctx), now)

    def serve_queue(self, agent: Agent, sock: zmq.Socket, work: Callable[[], bool], *,
                    timers: bool) -> None:
        """The loop of a role fed by one queue: block on it (and on control), run
        `work` (which takes what is queued, up to a batch) when it is readable; on
        drain, run `work` until the queue is empty, then flush what is held."""
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(agent.ctl, zmq.POLLIN)
        while True:
            ev = dict(poller.poll(100))
            if agent.ctl in ev and agent.poll_control():
                if agent.draining:
                    while work():
                        pass
                    self.end_of_run()
                    self.reclaim_tx()
                return
            if sock in ev:
                work()
            if timers:
                self.timers(time.monotonic_ns())
            self.reclaim_tx()

    def end_of_run(self) -> None:
        """Drain: fragments this process still holds will never complete."""
        from dispatch.stages.frag import frag_flush

        frag_flush(self.ctx)

    # --------------------------------------------------------------- stats
    def snapshot(self) -> dict[str, Any]:
        snap = self.ctx.stats.snapshot()
        snap["role"] = dict(self.counts)
        return snap

    def close(self) -> None:
        for s in self.users:
            s.close(linger=0)
        self.rings.close()
        self.sockets.close()
        self.pool.close()


@role_factory("ithread")
class IthreadRole(HostRole):
    """One per rx queue: takes packets off its ring on interrupt (or by polling)."""

    def __init__(self, agent: Agent, plan: dict[str, Any]) -> None:
        super().__init__(agent, plan)
        self.q = plan["index"]
        self.rx = self.rings.rx[self.q]
        self.irq = self.rings.irq[self.q]
        self.isr = NetisrTable.attach(plan["netisr"])
        self.polling = bool(plan["polling"])
        self.hybrid = bool(plan["hybrid"])
        self.toe = plan["model"] == "toe"
        self.quota = int(self.cfg["quota"])
        self.policy = self.cfg["policy"]
        self.qlimit = int(self.cfg["qlimit"])
        self.nworkers = self.isr.nws
        self.direct = all(plan["stages"][s] == "ithread" for s in NETISR_STAGES)
        self.irq_sock = self.zctx.socket(zmq.PULL)
        self.irq_sock.setsockopt(zmq.LINGER, 0)
        self.irq_sock.bind(plan["irq_endpoints"][self.q])
        self.workers = [push_socket(self.zctx, ep) for ep in plan["netisr_endpoints"]]
        if self.hybrid:
            # two runners: the ithread's own stages, and (inline, when the workstream
            # is idle) the netisr stages too; which one runs is decided per batch
            own = [s for s in plan["local"] if s not in NETISR_STAGES]
            self.isr_runner = self.runner
            self.runner = _runner(self.ctx, own)
        self.doorbell = push_socket(self.zctx, plan["doorbell_endpoint"])
        self.irq.set_disabled(False)
        self.irq.rearm()

    def rearm(self, *, doorbell: bool) -> None:
        """Re-enable the queue's interrupt; ring the NIC's doorbell if asked.

        The ithread looks at its ring once more after re-arming, so the doorbell
        only matters when the NIC may be holding packets back for a masked queue,
        which happens under load; at light load it would cost a ZeroMQ send and a
        NIC wakeup per interrupt for nothing (the NIC sees the re-arm on its next
        receive, or on its fallback timer)."""
        self.irq.set_disabled(False)
        self.irq.rearm()
        if doorbell:
            try:
                self.doorbell.send(b"", zmq.NOBLOCK)
            except zmq.Again:
                pass  # doorbells already pending: the NIC will look anyway

    def run(self, agent: Agent) -> None:
        wait_connected(self.workers + self.users + [self.doorbell])
        poller = zmq.Poller()
        poller.register(self.irq_sock, zmq.POLLIN)
        poller.register(agent.ctl, zmq.POLLIN)
        while True:
            ev = dict(poller.poll(20))
            if agent.ctl in ev and agent.poll_control():
                if agent.draining:
                    self.service()
                    self.end_of_run()
                    self.reclaim_tx()
                return
            if self.irq_sock in ev:
                while True:
                    try:
                        self.irq_sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                self.counts["interrupts"] += 1
                self.service()
            elif len(self.rx) and not self.polling:
                # a lost interrupt: packets wait and nothing told us (drivers have
                # the same watchdog); count it, since it should be rare
                self.counts["irq_watchdog"] += 1
                self.service()
            self.timers(time.monotonic_ns())
            self.reclaim_tx()

    def service(self) -> None:
        """Interrupt service: take the ring until empty, then re-arm (NAPI shape)."""
        if self.polling:
            self.irq.set_disabled(True)
        rounds = 0
        taken = 0
        while True:
            hs = self.rx.pop_array(self.quota if self.polling else self.batch)
            if not len(hs):
                self.rearm(doorbell=taken >= self.batch)
                if len(self.rx):  # arrived between the last pop and the re-arm
                    continue
                return
            self.process(hs)
            taken += len(hs)
            rounds += 1
            if self.polling:
                self.counts["poll_rounds"] += 1
                time.sleep(0.00005)  # end of a quota round: let the rest of the host run

    def process(self, hs: np.ndarray) -> None:
        now = time.monotonic_ns()
        pool = self.pool
        pool.adopt(hs)
        pool.stamp_batch(hs, L.TS_ITHREAD, now)
        self.counts["packets"] += len(hs)
        lst = hs.tolist()
        if self.toe:  # the NIC already ran ether, ip and tcp: deliver to the sockets
            self.to_users(lst)
            return
        if self.direct:
            self.count_direct(lst)
        self.dispatch_out(self.runner.run(S.ETHER_INPUT, lst, now), now)

    def count_direct(self, hs: list[int]) -> None:
        w = self.pool.w
        n = self.nworkers
        if n == 1 or self.policy != "flow":
            ws = choose_workstream(self.policy, flowid=0, source=self.q, cpu=self.q, workers=n)
            self.isr.count_dispatch(self.q, ws, len(hs))
            return
        per: dict[int, int] = defaultdict(int)
        for m in hs:
            per[w[(m << 6) + L.W_FLOWID] % n] += 1
        for ws, k in per.items():
            self.isr.count_dispatch(self.q, ws, k)

    def other_stage(self, stage: str, hs: list[int], now: int) -> None:
        if stage not in NETISR_STAGES:
            raise RuntimeError(f"ithread cannot route to stage {stage!r}")
        w = self.pool.w
        n = self.nworkers
        groups: dict[int, list[int]] = defaultdict(list)
        for m in hs:
            groups[choose_workstream(self.policy, flowid=w[(m << 6) + L.W_FLOWID],
                                     source=self.q, cpu=self.q, workers=n)].append(m)
        for ws, g in groups.items():
            if self.hybrid and self.isr.try_inline(ws):
                try:
                    self.isr.count_dispatch(self.q, ws, len(g), hybrid=True)
                    self.dispatch_out(self.isr_runner.run(stage, g, now), now)
                finally:
                    self.isr.end_inline(ws)
                continue
            fit = self.isr.try_enqueue(self.q, ws, len(g), self.qlimit)
            if fit < len(g):
                self.ctx.drop_many(g[fit:], QUEUE_DROPS.qdrop)
            if fit:
                sent = g[:fit]
                self.pool.stamp_batch(sent, L.TS_NETISR_ENQ, time.monotonic_ns())
                self.workers[ws].send_multipart([stage.encode(), _pack(sent)])

    def close(self) -> None:
        self.irq_sock.close(linger=0)
        self.doorbell.close(linger=0)
        for s in self.workers:
            s.close(linger=0)
        self.isr.close()
        super().close()


@role_factory("netisr")
class NetisrRole(HostRole):
    """A netisr worker: drains its workstream's queue and runs the netisr stages."""

    def __init__(self, agent: Agent, plan: dict[str, Any]) -> None:
        super().__init__(agent, plan)
        self.ws = plan["index"]
        self.isr = NetisrTable.attach(plan["netisr"])
        self.sock = self.zctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(plan["netisr_endpoints"][self.ws])
        self.slow_ns = int(float(plan["config"].get("netisr_delay_us", 0) or 0) * 1000)

    def run(self, agent: Agent) -> None:
        wait_connected(self.users)
        self.serve_queue(agent, self.sock, self.drain_once, timers=True)

    def drain_once(self) -> bool:
        """Take what is queued, up to the batch size, and run it. False if nothing was."""
        work: dict[str, list[int]] = {}
        n = 0
        while n < self.batch:
            try:
                stage, raw = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            hs = _unpack(raw)
            work.setdefault(stage.decode(), []).extend(hs)
            n += len(hs)
        if not n:
            return False
        now = time.monotonic_ns()
        self.isr.worker_begin(self.ws)
        try:
            for stage, hs in work.items():
                self.pool.adopt(hs)
                self.pool.stamp_batch(hs, L.TS_NETISR_START, now)
                if self.slow_ns:  # a deliberately slowed worker (tests of qlimit)
                    time.sleep(self.slow_ns * len(hs) / 1e9)
                self.dispatch_out(self.runner.run(stage, hs, now), now)
        finally:
            self.isr.worker_end(self.ws, n)
        self.counts["packets"] += n
        return True

    def close(self) -> None:
        self.sock.close(linger=0)
        self.isr.close()
        super().close()


@role_factory("user")
class UserRole(HostRole):
    """A user thread: blocks receiving on its sockets and copies the data out."""

    def __init__(self, agent: Agent, plan: dict[str, Any]) -> None:
        super().__init__(agent, plan)
        self.sock = self.zctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(plan["user_endpoints"][plan["index"]])
        self.samples: list[np.ndarray] = []
        self.nsamples = 0
        self.stride = 1

    def run(self, agent: Agent) -> None:
        self.serve_queue(agent, self.sock, self.receive_once, timers=False)

    def receive_once(self) -> bool:
        hs: list[int] = []
        while len(hs) < self.batch:
            try:
                _, raw = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            hs.extend(_unpack(raw))
        if not hs:
            return False
        self.pool.adopt(hs)
        stamps = self.pool.stamps(hs)  # a copy: the stage frees the mbufs
        self.runner.run(S.SORECEIVE, hs, time.monotonic_ns())
        self.keep_samples(stamps, self.ctx.now)
        self.counts["packets"] += len(hs)
        return True

    def keep_samples(self, stamps: np.ndarray, now: int) -> None:
        stamps[:, L.TS_USER] = now
        if self.stride > 1:
            stamps = stamps[:: self.stride]
        self.samples.append(stamps)
        self.nsamples += len(stamps)
        if self.nsamples > MAX_SAMPLES:  # keep every other sample from now on
            self.stride *= 2
            self.samples = [np.concatenate(self.samples)[::2]]
            self.nsamples = len(self.samples[0])

    def histograms(self) -> dict[str, str]:
        hists = {k: new_histogram() for k in LATENCY_STAGES}
        if not self.samples:
            return {k: "" for k in hists}
        st = np.concatenate(self.samples).astype(np.int64)
        wire, dma, ith = st[:, L.TS_WIRE], st[:, L.TS_DMA], st[:, L.TS_ITHREAD]
        enq, nstart = st[:, L.TS_NETISR_ENQ], st[:, L.TS_NETISR_START]
        sock, user = st[:, L.TS_SOCKET], st[:, L.TS_USER]
        queued = enq > 0
        first = np.where(wire > 0, wire, dma)
        pairs = {
            "e2e": (first, user, np.ones(len(st), bool)),
            "wire_to_dma": (wire, dma, wire > 0),
            "dma_to_ithread": (dma, ith, (dma > 0) & (ith > 0)),
            "ithread": (ith, np.where(queued, enq, sock), ith > 0),
            "netisr_queue": (enq, nstart, queued),
            "netisr": (nstart, sock, queued),
            "socket_queue": (sock, user, sock > 0),
        }
        for k, (a, b, mask) in pairs.items():
            d = np.clip((b - a)[mask & (b >= a)], 1, None)
            if len(d):
                # keep 3 significant digits (the histogram's precision) before counting, so
                # a run of millions of packets costs thousands of record calls, not millions
                q = 10 ** np.maximum(np.floor(np.log10(d)).astype(np.int64) - 2, 0)
                vals, cnts = np.unique(d // q * q, return_counts=True)
                h = hists[k]
                for v, c in zip(vals.tolist(), cnts.tolist()):
                    h.record_value(v, c)
        return {k: encode_histogram(h) for k, h in hists.items()}

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        snap["hist"] = self.histograms()
        snap["latency_stride"] = self.stride
        digests = self.ctx.extra.get("digests", {})
        snap["digests"] = {int(k): (v.hexdigest() if hasattr(v, "hexdigest") else v)
                           for k, v in digests.items()}
        return snap

    def close(self) -> None:
        self.sock.close(linger=0)
        super().close()
