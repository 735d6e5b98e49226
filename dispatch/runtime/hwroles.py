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

import zmq

from dispatch.runtime.agent import Agent, role_factory
from dispatch.runtime.config import RunConfig, parse_impair
from dispatch.runtime.transport import bind
from dispatch.runtime.workload import HOST_MAC, PEER_MAC, flows, generator_of

MAX_HOLD_NS = 100_000
WIRE_BUDGET = 256  # frames the NIC takes off its wire per turn, at most
#: at max rate, the NIC's pause when every rx ring is full: adapted between these bounds
#: so that a pause frees between an eighth and half of the smallest ring (each pause
#: and wakeup costs the NIC process ~15 us of the CPU the host's roles share with it;
#: a fixed 100 us made about 10 k of them a second at 350 kpps)
FULL_RING_WAIT_MIN_S = 0.00005
FULL_RING_WAIT_MAX_S = 0.001
DOORBELL_FALLBACK_US = 2000.0  # re-arm polling only as a backstop to the doorbell
# plain ints for the per-turn socket calls (pyzmq's flags are enum members, and
# an & or | through them costs ~1 us)
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
CONTROL_POLL_NS = 1_000_000  # an idle NIC looks at its control channel this often
GEN_CONTROL_POLL_NS = 10_000_000  # the generator, while it sends, this often
WIRE_CONTROL_POLL_NS = 5_000_000  # a NIC fed by a wire, this often


def _run_config(plan: dict[str, Any]) -> RunConfig:
    return RunConfig.from_dict(plan["config"])


def make_tcp_sink(cfg: RunConfig) -> Any:
    """The generator's TCP receiver for the tx workload (a real one: it ACKs and
    advertises a window; see nicemu.trafgen.tcpsink)."""
    from nicemu.trafgen.tcpsink import SinkConfig, TcpSink

    return TcpSink(SinkConfig(isn_seed=cfg.seed))


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
        # generator g of G drives flows g, g + G, ... at 1/G of the rate and count
        g, ngen = int(plan["index"]), cfg.trafgens
        explicit = tuple(Flow(ip_bytes(f.src), ip_bytes(f.dst), f.sport, f.dport,
                              mac_bytes(PEER_MAC), mac_bytes(HOST_MAC))
                         for k, f in enumerate(flows(cfg)) if generator_of(k, cfg) == g)
        if ngen > 1:
            count = None if cfg.count is None else cfg.count // ngen + (g < cfg.count % ngen)
            cfg = cfg.replace(rate=cfg.rate / ngen, count=count, seed=cfg.seed + g)
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
            self.gen = None if cfg.workload in ("tx", "rr") else Generator(GeneratorConfig(
                proto=cfg.proto, rate=rate, count=cfg.count, duration_s=cfg.duration,
                size=cfg.size, flows=FlowSpec(explicit=explicit), seed=cfg.seed,
                tcp=TcpConfig(handshake="await"), wire_stamps=True,
                **({"impair": parse_impair(cfg.impair)} if cfg.impair else {})))
        self.rr = None
        if cfg.workload == "rr":
            from nicemu.trafgen.rr import RequestResponse, RRConfig, parse_rr

            req, resp = parse_rr(cfg.rr)
            self.rr = RequestResponse(RRConfig(
                proto=cfg.proto, request=req, response=resp,
                flows=FlowSpec(explicit=explicit), count=cfg.count, duration_s=cfg.duration,
                tcp=TcpConfig(handshake="await"), seed=cfg.seed))
        # the receiving ends are bound now, at plan time, so that the NIC's wires
        # are connected before the first frame comes back
        from nicemu.wire import WireRx

        self.rx_ports = [WireRx(self.reply_ep, bind=True)]
        if cfg.workload == "forward":
            self.rx_ports.append(WireRx(plan["reply1_endpoint"], bind=True))
        self.tcp_sink = None
        if cfg.workload == "tx" and cfg.proto == "tcp":
            self.tcp_sink = make_tcp_sink(cfg)

    def run(self, agent: Agent) -> None:
        from nicemu.trafgen.sink import FrameSink
        from nicemu.wire import WireTx

        cfg = self.cfg
        tx = self.wire_tx = WireTx(self.wire_ep)
        self.sink = FrameSink()
        ports = _PortsRx(self.rx_ports[0], self.sink, cfg.capture)
        if cfg.workload == "forward":  # what the host routes out of its second port
            # latency from the generator's own stamp in the payload (its send time) to
            # the arrival stamp the wire carries (the host NIC's transmit time)
            ports.add_port(self.rx_ports[1], sink=True, arrival_stamps=True)
        elif cfg.workload == "tx":  # everything the host sends comes back on port 0
            ports.sink_port0 = True
            if cfg.impair:  # the wire from the host to the generator damages frames
                from nicemu.trafgen.impair import Impairer

                ports.impairer = Impairer(parse_impair(cfg.impair), seed=cfg.seed)
        stopped = False
        looked = 0

        def stop() -> bool:
            # asked per batch (rr: per transaction); control is looked at once per
            # GEN_CONTROL_POLL_NS: a look is a ZeroMQ poll (~20 us of CPU here, and
            # an rr transaction took ~1 ms: once a millisecond was once a transaction)
            nonlocal stopped, looked
            if not stopped:
                now = time.monotonic_ns()
                if now - looked >= GEN_CONTROL_POLL_NS:
                    looked = now
                    stopped = agent.poll_control()
            return stopped

        try:
            if cfg.workload == "tx":
                self.receive_only(agent, tx, ports)
                return
            if cfg.workload == "rr":
                stats = self.rr.run(tx, ports, stop=stop)  # type: ignore[arg-type]
                tx.flush()
                offered = int(tx.stats().frames)  # requests, and TCP's SYN, ACKs, FIN
            else:
                src = self.replayer or self.gen
                assert src is not None
                stats = src.run(tx, reply=ports, stop=stop)  # type: ignore[arg-type]
                offered = int(stats.frames)
            confirmed = tx.close(confirm=True, timeout_ms=10000)
            self.report = {"offered": offered, "confirmed": bool(confirmed),
                           **{k: v for k, v in stats.to_dict().items()
                              if isinstance(v, (int, float, str, bool))}}
            agent.send({"type": "source_done", "role": agent.name, "data": self.report})
            while not stopped:  # keep reading what the host sends back until told
                ports.recv_batch(timeout_ms=20)
                stopped = agent.poll_control()
            ports.drain()
        finally:
            ports.close()
            self.rx_ports = []

    def receive_only(self, agent: Agent, tx: Any, ports: _PortsRx) -> None:
        """tx: the generator is the receiver; it answers TCP (ACKs) until drained."""
        import time as _t

        tcp = self.tcp_sink
        while True:
            got = ports.recv_all(timeout_ms=5 if tcp is not None else 20)
            if tcp is not None:
                now = _t.monotonic_ns()
                out: list[bytes] = []
                for fr, st in got:
                    out.extend(tcp.on_frame(bytes(fr), now, st))
                out.extend(tcp.poll(now))  # delayed ACKs, window updates, our FIN again
                if out:
                    tx.send_batch(out)
            if agent.poll_control():
                last = ports.drain()
                if tcp is not None and last:
                    now = _t.monotonic_ns()
                    for fr in last:
                        tcp.on_frame(bytes(fr), now, None)
                self.wire_impairments = ports.impairments()
                tx.close(confirm=False)
                return

    def snapshot(self) -> dict[str, Any]:
        wire = getattr(self, "wire_tx", None)
        snap: dict[str, Any] = {"role": {"offered": self.report.get("offered", 0),
                                         "wire_sent": wire.stats().frames if wire else 0}}
        if self.rr is not None:
            snap["rr"] = {k: v for k, v in self.report.items() if not isinstance(v, list)}
        sink = getattr(self, "sink", None)
        if sink is not None:
            snap["sink"] = sink.stats()
            snap["sink_flows"] = sink.flow_table()
        if self.tcp_sink is not None:
            snap["tcp_sink"] = self.tcp_sink.stats()
        if getattr(self, "wire_impairments", None):
            snap["wire_impairments"] = self.wire_impairments
        return snap

    def close(self) -> None:
        for rx in self.rx_ports:  # planned but never run
            rx.close()
        self.rx_ports = []


class _PortsRx:
    """The generator's receiving ports as one `recv_batch` for the Generator and the
    request/response driver: port 0's frames are returned to them (replies, ACKs),
    while frames on sink ports (the forwarding port; port 0 too in tx) go to the
    `FrameSink`, optionally written to a pcap per port."""

    def __init__(self, port0: Any, sink: Any, capture_dir: str | None) -> None:
        self.ports = [port0]
        self.impairer: Any = None  # damages port 0's frames before anyone sees them
        self.held: list[Any] = []  # frames the impairer let through on a drain
        self.sinking = [False]
        self.arrival = [False]
        self.sink = sink
        self.capture_dir = capture_dir
        self.pcaps: list[Any] = []
        self._open_pcap(0)

    @property
    def sink_port0(self) -> bool:
        return self.sinking[0]

    @sink_port0.setter
    def sink_port0(self, on: bool) -> None:
        self.sinking[0] = on

    def _open_pcap(self, i: int) -> None:
        if self.capture_dir:
            import os

            from nicemu.pcap import PcapWriter

            os.makedirs(self.capture_dir, exist_ok=True)
            self.pcaps.append(PcapWriter(os.path.join(self.capture_dir,
                                                      f"trafgen-port{i}.pcap")))

    def add_port(self, rx: Any, *, sink: bool, arrival_stamps: bool = False) -> None:
        """Another port to read; `arrival_stamps`: the wire's stamps are arrival
        times (latency = arrival - payload stamp), not the sender's."""
        self.ports.append(rx)
        self.sinking.append(sink)
        self.arrival.append(arrival_stamps)
        self._open_pcap(len(self.ports) - 1)

    def _take(self, i: int, timeout_ms: int) -> tuple[list[Any], Any] | None:
        got = self.ports[i].recv_batch(timeout_ms)
        if i == 0 and self.impairer is not None:
            # the stamps no longer line up with lost, duplicated or reordered frames
            frames = self.impairer.apply([bytes(f) for f in got[0]]) if got else []
            frames += self.held
            self.held = []
            got = (frames, None) if frames else None
        if got is None:
            return None
        now = time.monotonic_ns()
        frames, stamps = got
        if self.pcaps:
            for fr in frames:
                self.pcaps[i].write(bytes(fr), timestamp_ns=time.time_ns())
        if self.sinking[i]:
            st = list(stamps) if stamps is not None else None
            if self.arrival[i]:
                self.sink.on_frames(frames, now, None, arrivals=st)
            else:
                self.sink.on_frames(frames, now, st)
        return got

    def recv_batch(self, timeout_ms: int | None = None) -> Any:
        """Port 0's next batch (as WireRx.recv_batch), after sinking what waits on the
        other ports."""
        for i in range(1, len(self.ports)):
            while self._take(i, 0) is not None:
                pass
        if self.sinking[0]:
            self.recv_all(timeout_ms or 0)
            return None
        return self._take(0, timeout_ms or 0)

    def recv_all(self, timeout_ms: int = 0) -> list[tuple[Any, int | None]]:
        """Everything waiting on every port (port 0 may wait `timeout_ms`), sunk;
        returns port 0's (frame, stamp) pairs."""
        out: list[tuple[Any, int | None]] = []
        wait = timeout_ms
        while True:
            got = self._take(0, wait)
            wait = 0
            if got is None:
                break
            frames, stamps = got
            out.extend(zip(frames, stamps if stamps is not None else [None] * len(frames)))
        for i in range(1, len(self.ports)):
            while self._take(i, 0) is not None:
                pass
        return out

    def drain(self) -> list[Any]:
        """Read what is still queued on every port (end of a run); frames an impairer
        held back for reordering come out last. Returns port 0's last frames."""
        out: list[Any] = []
        for i in range(len(self.ports)):
            while (got := self._take(i, 0)) is not None:
                if i == 0:
                    out.extend(got[0])
        if self.impairer is not None:
            self.held = self.impairer.flush()
            got = self._take(0, 0)
            if got is not None:
                out.extend(got[0])
        return out

    def impairments(self) -> dict[str, int]:
        return dict(self.impairer.counts) if self.impairer is not None else {}

    def close(self) -> None:
        for p in self.ports:
            p.close()
        for w in self.pcaps:
            w.close()


class HostQueues:
    """--flow-control: how many more packets the host's queues take without overflowing,
    read by the internal source at max rate (a lossless line: 802.3x PAUSE honoured all
    the way up). Without it, max overruns the netisr queues of deferred dispatch and
    shows receive livelock; with it, max finds the model's peak without overload, as
    the bare pipeline's blocking ZeroMQ hops do.

    The limits, from the queues' exact shared counters: with netisr queues in the
    path, whatever is on the rx rings, in an ithread's batch and on the fullest
    workstream stays within qlimit; and what waits for the user threads stays
    within USER_BACKLOG_BATCHES batches each."""

    USER_BACKLOG_BATCHES = 64

    def __init__(self, plan: dict[str, Any], cfg: RunConfig, rx: list[Any]) -> None:
        from dispatch.runtime.netisr import NetisrTable
        from dispatch.runtime.placement import NETISR_STAGES

        self.rx = rx  # the NIC's rx rings
        self.isr = None
        if any(plan["stages"][s] == "netisr" for s in NETISR_STAGES):
            self.isr = NetisrTable.attach(plan["netisr"])
        self.uq = NetisrTable.attach(plan["uq"])
        self.qlimit = max(cfg.qlimit - cfg.batch * cfg.rxq, 1)
        self.user_limit = self.USER_BACKLOG_BATCHES * cfg.batch * cfg.users
        #: the most room there can be
        self.cap = self.user_limit if self.isr is None else min(self.user_limit, self.qlimit)

    def room(self) -> int:
        room = self.user_limit - self.uq.in_flight()
        if self.isr is not None:
            ring = sum(len(r) for r in self.rx)
            fullest = max(self.isr.qlen(ws) for ws in range(self.isr.nws))
            room = min(room, self.qlimit - ring - fullest)
        return room

    def close(self) -> None:
        if self.isr is not None:
            self.isr.close()
        self.uq.close()


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
            moderation=ModerationConfig(rx_frames=cfg.irq_frames, rx_usecs=cfg.irq_usecs,
                                        mode=cfg.irq_mode),
            rearm_check_us=DOORBELL_FALLBACK_US),
            rings_name=plan["rings"])
        # the ithreads ring this after re-arming (a driver's doorbell write); the NIC
        # then looks at the control blocks at once instead of polling them
        self.doorbell = zmq.Context.instance().socket(zmq.PULL)
        self.doorbell.setsockopt(zmq.LINGER, 0)
        bind(self.doorbell, plan["doorbell_endpoint"])
        self.zctx = zmq.Context.instance()
        from dispatch.runtime.roles import push_socket

        self.irqs = [push_socket(self.zctx, ep) for ep in plan["irq_endpoints"]]
        self.toe_ctx = None
        if self.toe:
            self._setup_toe(plan)
        self.src = None
        self.wire = None
        self.flow = HostQueues(plan, cfg, self.nic.rings.rx) if cfg.flow_control else None
        if cfg.source == "internal":
            from dispatch.runtime.workload import template_frames
            from nicemu.internal import InternalSource

            self.src = InternalSource(self.nic, template_frames(cfg), batch=self._burst(cfg))
        else:
            from nicemu.wire import WireRx

            self.wire = WireRx(plan["wire_endpoint"], bind=True)
        # each port's wires back to the generators, one per generator: a frame goes
        # to the generator of its flow (by the peer address; unknown ones to the first)
        self.ports = [self.nic]
        self.port_wires: list[list[Any]] = [self._gen_wires(plan, "reply_endpoints")]
        from dispatch.runtime.workload import generator_by_peer

        self.gen_of = generator_by_peer(cfg) if cfg.trafgens > 1 else {}
        # forward: the second port, with its own rings; what it transmits goes to the
        # generators' second ports (it receives nothing: the traffic is one-way)
        for name in plan.get("ports", [])[1:]:
            self.ports.append(Nic(self.pool, NicConfig(
                rx_queues=1, tx_queues=int(plan["tx_queues"]), ring_size=cfg.ring_size,
                tx_ring_size=cfg.ring_size, rxcsum=cfg.rxcsum, txcsum=cfg.txcsum,
                tso=cfg.tso, lro=False), rings_name=name))
            self.port_wires.append(self._gen_wires(plan, "reply1_endpoints"))
        self.offered = 0
        self.done_sent = False

    def _gen_wires(self, plan: dict[str, Any], key: str) -> list[Any]:
        import zmq

        from nicemu.wire import WireTx

        if self.wire is None:  # the internal source: nobody on the other side
            return []
        return [WireTx(ep, sockopts={zmq.RECONNECT_IVL: 10}) for ep in plan[key]]

    def _send_back(self, wires: list[Any], frames: list[Any], stamps: list[int],
                   peer_off: int) -> None:
        """Send frames to their generators: with several, by the peer's IPv4 address
        at `peer_off` in the frame (destination on port 0, source on port 1)."""
        if not wires:
            return
        if len(wires) == 1:
            wires[0].send_batch(frames, stamps)
            return
        per: dict[int, tuple[list[Any], list[int]]] = {}
        gen_of = self.gen_of
        for f, t in zip(frames, stamps):
            g = gen_of.get(bytes(f[peer_off:peer_off + 4]), 0) \
                if f[12:14] == b"\x08\x00" else 0
            fs, ts = per.setdefault(g, ([], []))
            fs.append(f)
            ts.append(t)
        for g, (fs, ts) in per.items():
            wires[g].send_batch(fs, ts)

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
                self.irqs[q].send(b"", _NOBLOCK)
            except zmq.Again:
                pass  # an interrupt is already pending for that ithread

    def _transmit(self, now: int) -> None:
        """Every port: send what the drivers posted. Port 0's frames carry their
        sender's stamp (the time the host's stack handed them to the driver path);
        the forwarding port's carry the transmit time, as the generator's hardware
        timestamp of their arrival (the wire between them has no length)."""
        for port, (nic, wire) in enumerate(zip(self.ports, self.port_wires)):
            stamps: list[int] = []  # (transmit looks at each tx ring's count first)
            frames = nic.transmit(now, stamps=stamps if port == 0 else None)
            if frames:
                self._send_back(wire, frames, stamps if port == 0 else [now] * len(frames),
                                30 if port == 0 else 26)
        if self.toe_ctx is not None:
            self.toe_tx.reclaim_completed()

    def run(self, agent: Agent) -> None:
        """The NIC's loop: produce or receive, interrupt, transmit; sleep when idle.

        At a set rate the internal source offers frames as they fall due (in
        batches of at most `batch`), sleeping in between, so that the NIC role
        does not spin a core the host's roles need; at `max` it offers a burst
        (`_burst`) every turn, or what the rx rings have room for if that is at
        least a batch, pausing otherwise: a line as fast as the host's rings take
        frames (no ring_full drops). With --flow-control the host's queues bound
        it too (HostQueues): no queue overflows either.

        Fed by a wire (the generator), the loop is driven by one poll over the
        wire and the doorbells per turn (`_wait_wire`), and acts on what it saw
        readable; it looks at control every WIRE_CONTROL_POLL_NS.
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
        poller.register(self.doorbell, zmq.POLLIN)
        if self.wire is not None:
            # fed by a wire, the poll is over the wire and the doorbells only, and
            # control is looked at every WIRE_CONTROL_POLL_NS (the poll's waits end
            # within 5 ms): each socket in a ZeroMQ poll is asked for its events
            # (a system call or two) before and after the poll sleeps
            poller.register(self.wire.socket, zmq.POLLIN)
        else:
            poller.register(agent.ctl, zmq.POLLIN)
        producing = self.src is not None
        wire_sock = self.wire.socket if self.wire is not None else None
        ready: dict[Any, int] = {}  # what the wire mode's last poll saw readable
        turns = 0
        last_ctl = 0
        full_wait = FULL_RING_WAIT_MIN_S * 2
        while True:
            now = time.monotonic_ns()
            did = False
            ring_full = False
            next_due: int | None = None
            if producing:
                src = self.src
                assert src is not None
                n = cfg.batch if paced else src.batch
                if remaining is not None:
                    n = min(n, remaining)
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
                else:
                    # at max rate the line is as fast as the host takes frames (as the
                    # bare pipeline's source is bounded by its pool): offer what the
                    # rx rings have room for, and pause (FULL_RING_WAIT_*) while
                    # they are all full, instead of spinning a core on frames that would
                    # all be missed (on 2 cores that spin starved the host roles)
                    # (less than a batch of room: wait for more, rather than pay a
                    # turn's fixed cost for a few frames)
                    room, cap = self._line_room()
                    if room < n:
                        n = room if room >= min(cfg.batch, n, cap) else 0
                        ring_full = n == 0
                if n:
                    self._interrupt(src.produce(now, n))
                    did = True
                    if remaining is not None:
                        remaining -= n
                if (remaining is not None and remaining <= 0) or (end and now >= end):
                    producing = False
                    self.offered = src.offered
                    self._source_done()
            elif wire_sock in ready:
                did = self._from_wire(now)
            rang = self.doorbell in ready
            if rang:
                # a driver's doorbell: what it posted goes to the wire first, and the
                # doorbells are drained after (drain and timers: ~35 us of an rr
                # response's round trip here); a post whose doorbell the drain took
                # is sent by the transmit that follows the timers
                self._transmit(now)
                self._drain_doorbells(seen=True)
            # the timers as of now, not of the turn's start: a moderation timer that
            # fell due while frames were taken fires in this turn (it waited for the
            # next, a poll and a loop later: ~40 us of an rr request's round trip here)
            self._interrupt(nic.poll_timers(time.monotonic_ns() if did or rang else now))
            self._transmit(now)
            turns += 1
            if self.wire is not None:
                ready = self._wait_wire(poller, did)
                if time.monotonic_ns() - last_ctl < WIRE_CONTROL_POLL_NS:
                    continue
            elif did and turns % 64:
                continue
            elif not did:
                wake = [t for t in (next_due, nic.next_deadline()) if t is not None]
                wait_ns = (min(wake) - time.monotonic_ns()) if wake else 5_000_000
                if producing and not paced:
                    wait_ns = 0
                    if ring_full:  # let the host's roles run (as the bare source does)
                        time.sleep(full_wait)
                        room, cap = self._line_room()
                        if room > cap // 2:
                            full_wait = max(FULL_RING_WAIT_MIN_S, full_wait / 2)
                        elif room < cap // 8:
                            full_wait = min(FULL_RING_WAIT_MAX_S, full_wait * 2)
                if wait_ns >= 1_000_000:
                    # a wait that a doorbell ends: the doorbells since the last one
                    # drained first (re-arms and tx posts are seen in shared memory
                    # every turn; asking a ZeroMQ socket costs a system call, ~4 us
                    # here), and the rx rings' free slots reposted
                    self._drain_doorbells()
                    nic.refill_all()
                    poller.poll(min(wait_ns // 1_000_000, 5))
                elif wait_ns > 0:
                    time.sleep(wait_ns / 1e9)
                # control (drain, stop, stats) at most every CONTROL_POLL_NS when idle
                # (busy: every 64th turn): at a set rate the NIC wakes every ~100 us,
                # and each look is a ZeroMQ poll
                if time.monotonic_ns() - last_ctl < CONTROL_POLL_NS:
                    continue
            last_ctl = time.monotonic_ns()
            if agent.poll_control():
                if agent.draining:
                    self._transmit(time.monotonic_ns())
                    for port in self.ports:
                        port.release_posted()
                return

    def _line_room(self) -> tuple[int, int]:
        """(frames the line may offer now, the most it could): the room on the fullest
        rx ring, and with --flow-control in the host's queues (HostQueues)."""
        rx = self.nic.rings.rx
        room = min(r.space() for r in rx)
        cap = min(r.capacity for r in rx)
        if self.flow is not None:
            room = min(room, self.flow.room())
            cap = min(cap, self.flow.cap)
        return room, cap

    def _drain_doorbells(self, seen: bool = False) -> None:
        """Doorbells since the last turn: one check covers them all. (Asked of the
        socket's EVENTS first: a failed non-blocking recv raises, and an exception
        per loop turn cost ~12 % of the NIC role's time at full rate; `seen`: a poll
        just saw one, so the first is taken without asking.)"""
        import zmq

        sock = self.doorbell
        if seen:
            try:
                sock.recv(_NOBLOCK)
            except zmq.Again:
                return
        while sock.get(_EVENTS) & _POLLIN:
            sock.recv(_NOBLOCK)

    def _from_wire(self, now: int) -> bool:
        """Wire mode: what the wire holds, up to WIRE_BUDGET frames (a paced generator
        sends small batches, and one per turn would let the wire queue grow). The
        loop's poll saw the first message, so it is taken without asking again.
        True if any frame came."""
        assert self.wire is not None
        sock = self.wire.socket
        taken = 0
        while True:
            got = self.wire.recv_batch()
            if got is None:  # end of stream
                break
            frames, stamps = got
            self._interrupt(self.nic.receive(frames, now, stamps))
            taken += len(frames)
            # more only if one is queued: asking the socket's EVENTS costs less than a
            # receive that polls first (~3 against ~10 us after a wakeup)
            if taken >= WIRE_BUDGET or not sock.get(_EVENTS) & _POLLIN:
                break
        return taken > 0

    def _wait_wire(self, poller: Any, did: bool) -> dict[Any, int]:
        """Wire mode: wait for the next thing to do, as one poll over the wire and the
        doorbells (what it saw readable is returned, and the loop acts
        on exactly that: a turn asks no socket again). After a turn that took
        frames the poll does not wait; else it waits until the NIC's next timer
        (moderation, the re-arm fallback) or 5 ms, a timer under a millisecond
        being slept first (ZeroMQ's poll counts whole milliseconds). The rx rings'
        free slots are reposted before a wait of a millisecond or more. (The turn
        drains the doorbells the poll saw, after transmitting what they rang for.)"""
        timeout = 0
        if not did:
            dl = self.nic.next_deadline()
            wait_ns = dl - time.monotonic_ns() if dl is not None else 5_000_000
            if wait_ns >= 1_000_000:
                self.nic.refill_all()
                timeout = min(wait_ns // 1_000_000, 5)
            elif wait_ns > 0:
                time.sleep(wait_ns / 1e9)
        return dict(poller.poll(timeout))

    @staticmethod
    def _burst(cfg: RunConfig) -> int:
        """Frames the internal source offers per turn at max rate: a burst up to
        WIRE_BUDGET (as the NIC takes off its wire per turn), at most a quarter ring,
        at least a batch; paced, a batch at most (see `run`)."""
        if cfg.rate != float("inf"):
            return cfg.batch
        return max(cfg.batch, min(WIRE_BUDGET, cfg.ring_size // 4))

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
        for i, port in enumerate(self.ports[1:], start=1):
            pc = port.counters
            for k, v in pc.as_dict().items():
                if isinstance(v, int):
                    snap["counters"][f"nic{i}.{k}"] = v
            snap["counters"]["copies.tx_wire_bytes"] += pc.tx_copy_bytes
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
        if self.toe_ctx is not None:
            self.toe_tx.close()
            self.sockets.close()
        for wires in self.port_wires:
            for w in wires:
                w.close(confirm=False)
        for port in self.ports:
            port.close()
        if self.flow is not None:
            self.flow.close()
        self.pool.close()
