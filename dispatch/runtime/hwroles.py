"""The hardware side's roles: the traffic generator and the NIC.

The generator sits outside the host, on the wire: it sends frames to the
NIC's wire endpoint and reads what the NIC transmits back (ACKs, replies).
The NIC role drives `nicemu.nic.Nic`: it receives wire batches (or makes
frames itself with the internal template source, an ideal line for peak
rates), DMAs them into the pool, raises interrupts to the ithreads with
moderation, and transmits what the host posts on its tx rings. In the toe
model it also runs the host's ether, ip and tcp stages itself.

Both report `source_done` with the number of frames offered, which is the
left-hand side of every run's conservation check.
"""

from __future__ import annotations

import time
from typing import Any

from dispatch.runtime.agent import Agent, role_factory
from dispatch.runtime.config import RunConfig
from dispatch.runtime.workload import HOST_MAC, PEER_MAC, flows

MAX_HOLD_NS = 100_000
DOORBELL_FALLBACK_US = 2000.0  # re-arm polling only as a backstop to the doorbell


def _run_config(plan: dict[str, Any]) -> RunConfig:
    c = dict(plan["config"])
    rate = c.pop("rate")
    from dispatch.mbuf import PoolConfig

    c["pool"] = PoolConfig(**c["pool"])
    c["cpus"] = tuple((r, tuple(v)) for r, v in c.get("cpus", {}).items())
    return RunConfig(rate=float("inf") if rate == "max" else float(rate), **c)


@role_factory("trafgen")
class TrafgenRole:
    """The bundled traffic generator as a role: offered load, replies read back."""

    def __init__(self, agent: Agent, plan: dict[str, Any]) -> None:
        from dispatch.packet.ether import mac_bytes
        from dispatch.packet.ipv4 import ip_bytes
        from nicemu.trafgen.flows import Flow, FlowSpec
        from nicemu.trafgen.generator import Generator, GeneratorConfig
        from nicemu.trafgen.tcpstream import TcpConfig

        self.agent = agent
        self.plan = plan
        self.cfg = cfg = _run_config(plan)
        self.report: dict[str, Any] = {}
        self.wire_ep = plan["wire_endpoint"]
        self.reply_ep = plan["reply_endpoint"]
        explicit = tuple(Flow(ip_bytes(f.src), ip_bytes(f.dst), f.sport, f.dport,
                              mac_bytes(PEER_MAC), mac_bytes(HOST_MAC)) for f in flows(cfg))
        self.replayer = None
        if cfg.replay:
            from nicemu.trafgen.dist import Rate
            from nicemu.trafgen.replay import ReplayConfig, Replayer

            paced = cfg.rate != float("inf")
            self.replayer = Replayer(ReplayConfig(cfg.replay, timing="rate" if paced else "max",
                                                  rate=Rate(cfg.rate, "pps") if paced else None,
                                                  fixcsum=cfg.fixcsum))
            self.gen = None
        else:
            from nicemu.trafgen.dist import Rate

            rate: Any = "max" if cfg.rate == float("inf") else Rate(cfg.rate, "pps")
            self.gen = Generator(GeneratorConfig(
                proto=cfg.proto, rate=rate, count=cfg.count, duration_s=cfg.duration,
                size=cfg.size, flows=FlowSpec(explicit=explicit), seed=cfg.seed,
                tcp=TcpConfig(handshake="await"), wire_stamps=True))

    def run(self, agent: Agent) -> None:
        from nicemu.wire import WireRx, WireTx

        tx = WireTx(self.wire_ep)
        reply = WireRx(self.reply_ep, bind=True)
        stopped = False

        def stop() -> bool:
            nonlocal stopped
            stopped = stopped or agent.poll_control()
            return stopped

        try:
            src = self.replayer or self.gen
            assert src is not None
            stats = src.run(tx, reply=reply, stop=stop)
            confirmed = tx.close(confirm=True, timeout_ms=10000)
            self.report = {"offered": int(stats.frames), "confirmed": bool(confirmed),
                           **{k: v for k, v in stats.to_dict().items()
                              if isinstance(v, (int, float, str, bool))}}
            agent.send({"type": "source_done", "role": agent.name, "data": self.report})
            while not stopped:  # keep reading what the host sends back until told
                reply.recv_batch(timeout_ms=20)
                stopped = agent.poll_control()
        finally:
            reply.close()

    def snapshot(self) -> dict[str, Any]:
        return {"role": {"offered": self.report.get("offered", 0)}}

    def close(self) -> None:
        pass


@role_factory("nic")
class NicRole:
    """The NIC: wire (or internal source) in, DMA, interrupts out, tx to the wire."""

    def __init__(self, agent: Agent, plan: dict[str, Any]) -> None:
        import zmq

        from dispatch.mbuf import MbufPool
        from nicemu.moderation import ModerationConfig
        from nicemu.nic import Nic, NicConfig

        self.agent = agent
        self.plan = plan
        self.cfg = cfg = _run_config(plan)
        self.pool = MbufPool.attach(plan["pool"], owner=agent.name)
        self.toe = plan["model"] == "toe"
        self.nic = Nic(self.pool, NicConfig(
            rx_queues=cfg.rxq, tx_queues=int(plan["tx_queues"]), ring_size=cfg.ring_size,
            tx_ring_size=cfg.ring_size, rxcsum=cfg.rxcsum, txcsum=cfg.txcsum, tso=cfg.tso,
            lro=cfg.lro, toe=self.toe,
            moderation=ModerationConfig(rx_frames=cfg.irq_frames, rx_usecs=cfg.irq_usecs),
            rearm_check_us=DOORBELL_FALLBACK_US),
            rings_name=plan["rings"])
        # the ithreads ring this after re-arming (a driver's doorbell write); the NIC
        # then looks at the control blocks at once instead of polling them
        self.doorbell = zmq.Context.instance().socket(zmq.PULL)
        self.doorbell.setsockopt(zmq.LINGER, 0)
        self.doorbell.bind(plan["doorbell_endpoint"])
        self.zctx = zmq.Context.instance()
        from dispatch.runtime.roles import push_socket

        self.irqs = [push_socket(self.zctx, ep) for ep in plan["irq_endpoints"]]
        self.toe_ctx = None
        if self.toe:
            self._setup_toe(plan)
        self.src = None
        self.wire = self.reply = None
        if cfg.source == "internal":
            from dispatch.runtime.workload import template_frames
            from nicemu.internal import InternalSource

            self.src = InternalSource(self.nic, template_frames(cfg), batch=cfg.batch)
        else:
            from nicemu.wire import WireRx, WireTx

            self.wire = WireRx(plan["wire_endpoint"], bind=True)
            self.reply = WireTx(plan["reply_endpoint"])
        self.offered = 0
        self.done_sent = False

    def _setup_toe(self, plan: dict[str, Any]) -> None:
        from dispatch.runtime.roles import _runner, _stack_config
        from dispatch.stages import base as S
        from dispatch.stages.base import Ctx
        from dispatch.stages.socktab import SocketTable
        from nicemu.nic import TxQueueHost

        self.sockets = SocketTable.attach(plan["sockets"])
        self.toe_ctx = Ctx(self.pool, config=_stack_config(plan), sockets=self.sockets,
                           role=self.agent.name)
        self.toe_runner = _runner(self.toe_ctx, plan["local"])
        self.toe_tx = TxQueueHost(self.nic.rings, plan["tx_queue"], self.pool)
        self.toe_drops = 0

        def toe_input(handles: Any, q: int, now_ns: int) -> Any:
            routed = self.toe_runner.run(S.ETHER_INPUT, handles.tolist(), now_ns)
            out = routed.pop(S.SORECEIVE, [])
            tx = routed.pop(S.IF_TRANSMIT, [])
            if tx:
                self.toe_tx.reclaim_completed()
                k = self.toe_tx.post(tx)
                if k < len(tx):
                    from dispatch.runtime.roles import TX_DROPS

                    self.toe_ctx.drop_many(tx[k:], TX_DROPS.txring_full)
            if routed:
                raise RuntimeError(f"toe: stages routed to {sorted(routed)}")
            return out

        self.nic.set_toe_input(toe_input)

    def _interrupt(self, qs: list[int]) -> None:
        import zmq

        for q in set(qs):
            try:
                self.irqs[q].send(b"", zmq.NOBLOCK)
            except zmq.Again:
                pass  # an interrupt is already pending for that ithread

    def _transmit(self, now: int) -> None:
        if not self.nic.tx_pending():
            return
        frames = self.nic.transmit(now)
        if frames and self.reply is not None:
            self.reply.send_batch(frames)
        if self.toe_ctx is not None:
            self.toe_tx.reclaim_completed()

    def run(self, agent: Agent) -> None:
        """The NIC's loop: produce or receive, interrupt, transmit; sleep when idle.

        At a set rate the internal source offers frames as they fall due (in
        batches of at most `batch`), sleeping in between, so that the NIC role
        does not spin a core the host's roles need; at `max` it offers a batch
        every turn, like a line at full speed.
        """
        import zmq

        from dispatch.runtime.roles import wait_connected

        wait_connected(self.irqs)
        cfg = self.cfg
        nic = self.nic
        t0 = time.monotonic_ns()
        end = t0 + int(cfg.duration * 1e9) if cfg.duration else None
        remaining = cfg.count
        rate = cfg.rate
        paced = rate != float("inf")
        poller = zmq.Poller()
        poller.register(agent.ctl, zmq.POLLIN)
        poller.register(self.doorbell, zmq.POLLIN)
        if self.wire is not None:
            poller.register(self.wire.socket, zmq.POLLIN)
        producing = self.src is not None
        turns = 0
        while True:
            now = time.monotonic_ns()
            did = False
            next_due: int | None = None
            if producing:
                src = self.src
                assert src is not None
                n = cfg.batch if remaining is None else min(cfg.batch, remaining)
                if paced:
                    # release a batch when it is due, but hold no frame more than
                    # MAX_HOLD_NS (as the generator's Pacer does): small batches
                    # cost the same per call as full ones
                    due = int((now - t0) * rate / 1e9) + 1 - src.offered
                    first_due = t0 + int(src.offered * 1e9 / rate)
                    if due < n and now - first_due < MAX_HOLD_NS:
                        due = 0
                    n = max(0, min(n, due))
                    if n == 0:
                        next_due = min(t0 + int((src.offered + cfg.batch) * 1e9 / rate),
                                       first_due + MAX_HOLD_NS)
                if n:
                    self._interrupt(src.produce(now, n))
                    did = True
                    if remaining is not None:
                        remaining -= n
                if (remaining is not None and remaining <= 0) or (end and now >= end):
                    producing = False
                    self.offered = src.offered
                    self._source_done()
            elif self.wire is not None:
                got = self.wire.recv_batch(timeout_ms=0)
                if got is not None:
                    frames, stamps = got
                    self._interrupt(nic.receive(frames, now, stamps))
                    did = True
            while True:  # doorbells since the last turn: one check covers them all
                try:
                    self.doorbell.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
            self._interrupt(nic.poll_timers(now))
            self._transmit(now)
            turns += 1
            if did and turns % 64:
                continue
            if not did:
                nic.refill_all()
                wake = [t for t in (next_due, nic.next_deadline()) if t is not None]
                wait_ns = (min(wake) - time.monotonic_ns()) if wake else 5_000_000
                if producing and not paced:
                    wait_ns = 0
                if wait_ns >= 1_000_000:
                    poller.poll(min(wait_ns // 1_000_000, 5))
                elif wait_ns > 0:
                    time.sleep(wait_ns / 1e9)
            if agent.poll_control():
                if agent.draining:
                    self._transmit(time.monotonic_ns())
                    nic.release_posted()
                return

    def _source_done(self) -> None:
        if not self.done_sent:
            self.done_sent = True
            self.agent.send({"type": "source_done", "role": self.agent.name,
                             "data": {"offered": self.offered, "source": "internal"}})

    def snapshot(self) -> dict[str, Any]:
        c = self.nic.counters
        snap: dict[str, Any] = {"counters": {f"nic.{k}": v for k, v in c.as_dict().items()
                                             if isinstance(v, int)},
                                "drops": {}}
        if c.rx_ring_full:
            snap["drops"].setdefault("nic", {})["ring_full"] = c.rx_ring_full
        if c.rx_nobuf:
            snap["drops"].setdefault("nic", {})["nobuf"] = c.rx_nobuf
        if c.ierrors:
            snap["drops"].setdefault("nic", {})["ierrors"] = c.ierrors
        snap["counters"]["nic.lro_coalesced"] = c.lro_queued
        snap["counters"]["copies.dma_bytes"] = c.rx_dma_bytes
        snap["counters"]["copies.tx_wire_bytes"] = c.tx_copy_bytes
        if self.toe_ctx is not None:
            s = self.toe_ctx.stats.snapshot()
            for k, v in s["counters"].items():
                snap["counters"][k] = snap["counters"].get(k, 0) + v
            for stage, rs in s["drops"].items():
                snap["drops"].setdefault(stage, {}).update(rs)
        snap["role"] = {"offered": self.offered, "interrupts": c.interrupts,
                        "rxq_packets": c.rxq_packets}
        return snap

    def close(self) -> None:
        for s in self.irqs:
            s.close(linger=0)
        self.doorbell.close(linger=0)
        if self.wire is not None:
            self.wire.close()
        if self.reply is not None:
            self.reply.close(confirm=False)
        if self.toe_ctx is not None:
            self.toe_tx.close()
            self.sockets.close()
        self.nic.close()
        self.pool.close()
