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
thread counts them into latency bins (dispatch.runtime.latency: one compiled
pass per batch), turned into HDR histograms when the run drains.
"""

from __future__ import annotations

import contextlib
import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import zmq

from dispatch.mbuf import MbufPool
from dispatch.mbuf import layout as L
from dispatch.runtime.agent import Agent, role_factory
from dispatch.runtime.latency import LatencyBins
from dispatch.runtime.netisr import NetisrTable, choose_workstream
from dispatch.runtime.placement import NETISR_STAGES
from dispatch.runtime.result import LATENCY_STAGES, encode_histogram
from dispatch.runtime.transport import bind, connect
from dispatch.stages import base as S
from dispatch.stages.base import Ctx, Runner, StackConfig, as_list, declare_reasons

QUEUE_DROPS = declare_reasons(
    "netisr", ("qdrop", "nws_qdrops", "packets dropped on a full netisr queue (QDrops)"))
TX_DROPS = declare_reasons(
    "if_transmit", ("txring_full", "ifq_drops", "packets dropped on a full transmit ring"),
    ("ifq_full", "ifq_full_drops",
     "packets dropped on a full driver transmit queue (deferred tx dispatch)"))
#: the pkthdr timestamp slot that carries a sent packet's creation time to the NIC,
#: which puts it on the wire beside the frame (the generator measures from it)
TS_SENT = L.TS_USER
TIMER_NS = 10_000_000  # 10 ms: how often TCP and IP timers run in a role
#: a netisr or user thread's receive timeout: its wait for the queue ends this often
#: (timers, control), and a counted receive gives up on a message after it
QUEUE_WAIT_MS = 20
IRQ_WAIT_MS = 20  # an ithread's wait for its interrupt ends this often (timers, watchdog)
CONTROL_CHECK_NS = 5_000_000  # a busy ithread, netisr or user thread looks at control this often
DRAIN_WAIT_S = 10.0  # a drain waits this long at most for counted handoffs to arrive
#: handoff messages held, at most, within one round of work (holding_handoffs)
HOLD_MAX = 4


class Reentrant:
    """A lock a process may take again while holding it (inner takes are free)."""

    __slots__ = ("lock", "depth")

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.depth = 0

    def __enter__(self) -> Reentrant:
        if not self.depth:
            self.lock.__enter__()
        self.depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if not self.depth:
            self.lock.__exit__(*exc)


def _stack_config(plan: dict[str, Any]) -> StackConfig:
    c = plan["config"]
    return StackConfig(auto_sockets=bool(c["sockets_auto"]), digest=bool(c["digest"]),
                       forwarding=c.get("workload") == "forward")


def _stack_ctx(pool: MbufPool, plan: dict[str, Any], sockets: Any, role: str) -> Ctx:
    """The Ctx every host role (and the toe NIC) runs its stages with: the stack's
    configuration, the workload's routes and interfaces, the offload switches."""
    from dispatch.runtime.config import RunConfig
    from dispatch.runtime.workload import stack_tables
    from dispatch.stages.route import driver_hwassist, interfaces, with_hwassist

    cfg = RunConfig.from_dict(plan["config"])
    t = stack_tables(cfg)
    ctx = Ctx(pool, config=_stack_config(plan), sockets=sockets, role=role,
              routes=t.get("routes"), neighbors=t.get("neighbors"))
    # the driver's if_hwassist: what the NIC's txcsum / tso do, the output path
    # leaves to it (without this every checksum was computed in software, txcsum
    # on or off)
    ctx.extra["interfaces"] = with_hwassist(t.get("interfaces") or interfaces(ctx),
                                            driver_hwassist(txcsum=cfg.txcsum, tso=cfg.tso))
    ctx.extra["txcsum"] = cfg.txcsum
    ctx.extra["tso"] = cfg.tso
    return ctx


def _runner(ctx: Ctx, local: list[str]) -> Runner:
    import dispatch.stages.all  # noqa: F401  (registers every stage)

    reg = S.registry()
    return Runner(ctx, {s: reg[s] for s in local if s in reg}, clock=time.monotonic_ns)


def push_socket(zctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """A connecting PUSH socket that finds its peer fast (10 ms reconnect, not 100)."""
    s = zctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RECONNECT_IVL, 10)
    connect(s, endpoint)  # tcp://: CURVE keys, and no plain tcp off loopback
    return s


def wait_connected(socks: list[zmq.Socket], timeout_s: float = 5.0) -> None:
    """Block until every PUSH socket has a peer (POLLOUT), so that nothing sent at
    the start of a run is refused for want of a connection."""
    deadline = time.monotonic() + timeout_s
    for s in socks:
        while not s.poll(10, zmq.POLLOUT):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no peer on {s.getsockopt_string(zmq.LAST_ENDPOINT)}")


# plain ints: pyzmq's flags are enum.Flag members, and an | of two costs ~1 us
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def receive_counted(sock: zmq.Socket, pending: int, most: int, *,
                    staged: bool = False, first: bytes | None = None) -> Any:
    """Receive up to `most` packets' worth of handle messages from a queue whose exact
    count of packets sent and not yet taken is `pending` (the netisr table's
    counters: a sender counts a batch, then sends it).

    Those messages are on their way, so a blocking receive takes them: no asking
    the socket whether more is there, which costs a ZeroMQ poll, a system call
    (~4 us on this machine), per message and once more at the end. (A message
    still crossing ZeroMQ's I/O threads is waited for; one that never comes, its
    sender dead, ends the wait after the socket's receive timeout, QUEUE_WAIT_MS; a
    late one is taken by a later receive.) With `pending` 0 (an
    uncounted message woke the caller), whatever is there is taken instead.
    Returns the handles as one u32 array, or with `staged` (two-part messages:
    stage, handles) a list of (stage, u32 array). `first`: the first message's (first
    part), already received by the caller's wait."""
    raws: list[bytes] = []
    out: list[tuple[str, np.ndarray]] = []
    got = 0
    want = min(pending, most)
    try:
        while first is not None or got < want or \
                (got == 0 and sock.get(_EVENTS) & _POLLIN):
            if first is not None:
                raw, first = first, None
            else:
                raw = sock.recv(0 if got < want else _NOBLOCK)
            if staged:  # [stage, handles]: the second part comes with the first
                stage = raw.decode()
                raw = sock.recv(0)
                out.append((stage, _unpack_array([raw])))
            else:
                raws.append(raw)
            got += len(raw) >> 2  # (u32 handles)
    except zmq.Again:  # (the receive timeout: see QUEUE_WAIT_MS)
        pass
    return out if staged else _unpack_array(raws)


def _pack(hs: Any) -> bytes:
    if isinstance(hs, np.ndarray):
        return (hs if hs.dtype == np.uint32 else hs.astype(np.uint32)).tobytes()
    return array("I", hs).tobytes()


def _unpack_array(raws: list[bytes]) -> np.ndarray:
    """Handle messages as one (writable) u32 array: one join, no per-handle objects."""
    return np.frombuffer(bytearray().join(raws), np.uint32)


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
        # one tx ring per port: the host's second port exists for forwarding
        self.port_rings = [self.rings] + [RingSet.attach(n) for n in plan.get("ports", [])[1:]]
        self.txs = [r.tx[plan["tx_queue"]] for r in self.port_rings]
        self.tx = self.txs[0]
        self.ctx = _stack_ctx(self.pool, plan, self.sockets, agent.name)
        self.runner = _runner(self.ctx, plan["local"])
        self.zctx = zmq.Context.instance()
        self.users = [push_socket(self.zctx, ep) for ep in plan["user_endpoints"]]
        self.nusers = len(self.users)
        self.uq = NetisrTable.attach(plan["uq"])  # handles in flight to each user thread
        self.uq_producer = int(plan["tx_queue"])
        self.counts: defaultdict[str, int] = defaultdict(int)
        self._last_timer = 0
        self._next_ctl = 0  # (control_ends_loop)
        self.holding = False  # (holding_handoffs)
        self.held: list[tuple[zmq.Socket, bytes | None, bytes, int, int]] = []
        # TCP's senders (tx, rr) change a connection's state from the thread that sends
        # and from the one that runs tcp_input (ACKs): one lock over the table's TCP
        # work, as FreeBSD's inpcb lock (receive-only workloads don't need it)
        self.tcp_lock: Any = contextlib.nullcontext()
        if self.cfg.get("proto") == "tcp" and self.cfg.get("workload") in ("tx", "rr"):
            self.tcp_lock = Reentrant(self.sockets.pcb_lock())
        # the NIC's doorbell: rung after re-arming an rx queue under load, and after
        # posting to an idle tx ring (a driver's write of the tail register)
        self.doorbell = push_socket(self.zctx, plan["doorbell_endpoint"])
        # deferred tx dispatch: a driver queue with an exact limit, drained by the
        # transmit thread (the limit is kept in a netisr-style shared table)
        self.txq = None
        self.txq_sock = None
        if plan.get("tx_dispatch") == "deferred" and agent.role != "txthread":
            self.txq = NetisrTable.attach(plan["txq"])
            self.txq_sock = push_socket(self.zctx, plan["txq_endpoint"])
            self.txq_limit = int(self.cfg["txq_limit"])
            self.txq_producer = int(plan["tx_queue"])

    # ------------------------------------------------------------- outputs
    def dispatch_out(self, routed: dict[str, list[int]], now: int) -> None:
        for stage, hs in routed.items():
            if not len(hs):
                continue
            if stage == S.SORECEIVE:
                self.to_users(hs)
            elif stage == S.IF_TRANSMIT:
                self.pool.stamp_batch(hs, TS_SENT, now)
                self.transmit(as_list(hs))
            else:
                self.other_stage(stage, hs, now)

    def other_stage(self, stage: str, hs: list[int], now: int) -> None:
        raise RuntimeError(f"{self.agent.name} cannot route to stage {stage!r}")

    def to_users(self, hs: list[int]) -> None:
        """Wake the user threads whose sockets got data (counted, so that a drain
        knows when nothing is left in the pipe to a user). Inside `holding_handoffs`
        the messages (one per batch, as ever) wait for the end of the round."""
        if self.nusers == 1:
            self._to_user(0, hs)
            return
        w = self.pool.w
        groups: dict[int, list[int]] = defaultdict(list)
        for m in as_list(hs):
            groups[self.sockets.user_of(w[(m << 6) + L.W_SOCKID] - 1)].append(m)
        for u, g in groups.items():
            self._to_user(u, g)

    def _to_user(self, u: int, hs: list[int]) -> None:
        self.handoff(self.users[u], None, _pack(hs), u, len(hs))

    def handoff(self, sock: zmq.Socket, stage: bytes | None, raw: bytes, user: int,
                n: int) -> None:
        """Send a handoff message: to user thread `user` (counted when sent), or (user
        -1) an already counted one with its `stage` part, to a netisr worker. Inside
        `holding_handoffs` it waits for `flush_handoffs` (up to HOLD_MAX of them)."""
        self.held.append((sock, stage, raw, user, n))
        if not self.holding or len(self.held) >= HOLD_MAX:
            self.flush_handoffs()

    def flush_handoffs(self) -> None:
        """Send the held messages back to back (those to user threads counted first,
        each), so that ZeroMQ's I/O threads move them in one write and the receiver
        takes them in one wakeup: a message alone costs each side's I/O thread a
        wakeup (~20 us of CPU here), a burst shares it."""
        held = self.held
        for sock, stage, raw, user, n in held:
            if user >= 0:
                self.uq.count_enqueue(self.uq_producer, user, n)
            if stage is not None:
                sock.send(stage, _SNDMORE)
            sock.send(raw)
        held.clear()

    @contextlib.contextmanager
    def holding_handoffs(self) -> Iterator[None]:
        """Hold handoff messages (to user threads, and an ithread's to netisr workers)
        for the duration of one round of work (an interrupt's ring drain), up to
        HOLD_MAX. A netisr queue's count is taken when a batch is queued, so its worker
        may wake for a held message and wait a round for it (it sleeps meanwhile)."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            self.flush_handoffs()

    def transmit(self, hs: list[int]) -> None:
        """if_transmit: post to this thread's tx ring (direct tx dispatch), or queue
        to the driver's transmit queue for the transmit thread (deferred)."""
        if self.txq is not None:
            assert self.txq_sock is not None
            fit = self.txq.try_enqueue(self.txq_producer, 0, len(hs), self.txq_limit)
            if fit < len(hs):
                self.ctx.drop_many(hs[fit:], TX_DROPS.ifq_full)
            if fit:
                self.txq_sock.send(_pack(hs[:fit]))
            return
        self.post(hs)

    def post(self, hs: list[int]) -> None:
        """Post to the tx ring of each packet's port (ether_output leaves the
        interface index in W_AUX); drop what a full ring refuses."""
        self.reclaim_tx()
        if len(self.txs) == 1:
            idle = not self.tx.pending()
            k = self.tx.push_many(hs)
            if k < len(hs):
                self.ctx.drop_many(hs[k:], TX_DROPS.txring_full)
            if idle and k:
                self.ring_doorbell()
            return
        w = self.pool.w
        by_port: dict[int, list[int]] = defaultdict(list)
        for m in hs:
            by_port[min(w[(m << 6) + L.W_AUX], len(self.txs) - 1)].append(m)
        ring = False
        for port, g in by_port.items():
            ring = ring or not self.txs[port].pending()
            k = self.txs[port].push_many(g)
            if k < len(g):
                self.ctx.drop_many(g[k:], TX_DROPS.txring_full)
        if ring:
            self.ring_doorbell()

    def ring_doorbell(self) -> None:
        """Tell the NIC to look at its rings now (it may be asleep until its timer)."""
        try:
            self.doorbell.send(b"", _NOBLOCK)
        except zmq.Again:
            pass  # doorbells already pending: the NIC will look anyway

    def reclaim_tx(self) -> None:
        for tx in self.txs:
            done = tx.reclaim()
            if len(done):
                self.pool.freem_batch(done)

    def timers(self, now: int, *, force: bool = False) -> None:
        """TCP's timers (delayed ACK, retransmission, persist) and IP reassembly
        timeouts, every TIMER_NS (`force`: every call, for a sending thread)."""
        if not force and now - self._last_timer < TIMER_NS:
            return
        self._last_timer = now
        from dispatch.stages.frag import frag_timeout
        from dispatch.stages.tcp_input import tcp_timers

        with self.tcp_lock:
            self.ctx.now = now
            frag_timeout(self.ctx)
            self.run_routed(tcp_timers(self.ctx), now)

    def run_routed(self, routed: dict[str, list[int]], now: int) -> None:
        """Run packets a socket call or a timer made (routed to an output stage)
        through this role's stages, and hand on what leaves them."""
        out: dict[str, list[int]] = {}
        for stage, hs in routed.items():
            if len(hs):
                for k, v in self.runner.run(stage, hs, now).items():
                    out.setdefault(k, []).extend(as_list(v))
        if out:
            self.dispatch_out(out, now)

    def serve_queue(self, agent: Agent, sock: zmq.Socket,
                    work: Callable[[bytes | None], bool], *,
                    timers: bool, pending: Callable[[], int] | None = None) -> None:
        """The loop of a role fed by one queue: wait for its next message, run `work`
        (which takes what is queued, up to a batch, beginning with the message the
        wait took) when one came; on drain, run `work` until the queue is empty (by
        its exact count `pending`: a message may still be crossing ZeroMQ's I/O
        threads when the socket looks empty), then flush what is held.

        The wait (`wait_message`) ends at the socket's receive timeout,
        QUEUE_WAIT_MS (also the counted receive's), for the timers."""
        while True:
            first = self.wait_message(sock)
            if self.control_ends_loop(agent, idle=first is None):
                if agent.draining:
                    if first is not None:
                        work(first)
                    deadline = time.monotonic() + DRAIN_WAIT_S
                    while True:
                        while work(None):
                            pass
                        if pending is None or pending() <= 0 or \
                                time.monotonic() > deadline:
                            break
                        sock.poll(10)
                    self.end_of_run()
                    self.reclaim_tx()
                return
            if first is not None:
                work(first)
            if timers:
                self.timers(time.monotonic_ns())
            self.reclaim_tx()

    @staticmethod
    def wait_message(sock: zmq.Socket) -> bytes | None:
        """A role's wait for its next message: a blocking receive on its queue alone,
        ended by the socket's receive timeout (None then), as a bare relay waits. A
        ZeroMQ poll over the queue and the control socket cost ~20 us more CPU per
        wakeup here (bench/bench_wait.py: ZMQ_EVENTS is a system call or two per
        socket, asked before and after the poll sleeps)."""
        try:
            return sock.recv()
        except zmq.Again:
            return None

    def control_ends_loop(self, agent: Agent, *, idle: bool) -> bool:
        """Look at control when a wait ended empty (`idle`) or CONTROL_CHECK_NS after
        the last look (at every wakeup it would cost a ZeroMQ poll); True if the data
        loop must end (`Agent.poll_control`)."""
        now = time.monotonic_ns()
        if not idle and now < self._next_ctl:
            return False
        self._next_ctl = now + CONTROL_CHECK_NS
        return agent.poll_control()

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
        self.doorbell.close(linger=0)
        if self.txq_sock is not None:
            self.txq_sock.close(linger=0)
        if self.txq is not None:
            self.txq.close()
        for r in self.port_rings[1:]:
            r.close()
        self.uq.close()
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
        #: the workstream of every packet, unless the policy is flow over several workers
        self.fixed_ws = None if self.nworkers > 1 and self.policy == "flow" else \
            choose_workstream(self.policy, flowid=0, source=self.q, cpu=self.q,
                              workers=self.nworkers)
        self.direct = all(plan["stages"][s] == "ithread" for s in NETISR_STAGES)
        self.irq_sock = self.zctx.socket(zmq.PULL)
        self.irq_sock.setsockopt(zmq.LINGER, 0)
        self.irq_sock.setsockopt(zmq.RCVTIMEO, IRQ_WAIT_MS)  # (wait_message)
        bind(self.irq_sock, plan["irq_endpoints"][self.q])
        self.workers = [push_socket(self.zctx, ep) for ep in plan["netisr_endpoints"]]
        if self.hybrid:
            # two runners: the ithread's own stages, and (inline, when the workstream
            # is idle) the netisr stages too; which one runs is decided per batch
            own = [s for s in plan["local"] if s not in NETISR_STAGES]
            self.isr_runner = self.runner
            self.runner = _runner(self.ctx, own)
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
                self.doorbell.send(b"", _NOBLOCK)
            except zmq.Again:
                pass  # doorbells already pending: the NIC will look anyway

    def run(self, agent: Agent) -> None:
        """Wait for the interrupt (`wait_message`: it ends at IRQ_WAIT_MS for the
        timers and the lost-interrupt watchdog) and service it."""
        wait_connected(self.workers + self.users + [self.doorbell])
        while True:
            # one interrupt message (the NIC raises no other until re-armed; a stray
            # second one ends the next wait at once)
            got = self.wait_message(self.irq_sock) is not None
            if got:
                self.counts["interrupts"] += 1
            if self.control_ends_loop(agent, idle=not got):
                if agent.draining:
                    self.service()
                    self.end_of_run()
                    self.reclaim_tx()
                return
            if got:
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
        with self.holding_handoffs():
            self._service()

    def _service(self) -> None:
        if self.polling:
            self.irq.set_disabled(True)
        rounds = 0
        taken = 0
        while True:
            hs = self.rx.pop_array(self.quota if self.polling else self.batch)
            if not len(hs):
                self.flush_handoffs()
                # (a lone packet is light load at any batch size: at batch 1 every
                # interrupt took one, and its doorbell woke the NIC for nothing while
                # the user thread it had just woken needed the CPU)
                self.rearm(doorbell=taken >= max(self.batch, 2))
                if len(self.rx):  # arrived between the last pop and the re-arm
                    continue
                return
            self.process(hs)
            taken += len(hs)
            rounds += 1
            if self.polling:
                self.counts["poll_rounds"] += 1
                self.flush_handoffs()
                time.sleep(0.00005)  # end of a quota round: let the rest of the host run

    def process(self, hs: np.ndarray) -> None:
        now = time.monotonic_ns()
        pool = self.pool
        pool.adopt(hs, stamp=L.TS_ITHREAD, now=now)
        self.counts["packets"] += len(hs)
        if self.toe:  # the NIC already ran ether, ip and tcp: deliver to the sockets
            self.to_users(hs)
            return
        if self.direct:
            self.count_direct(hs)
        with self.tcp_lock:
            self.dispatch_out(self.runner.run(S.ETHER_INPUT, hs, now), now)

    def count_direct(self, hs: np.ndarray) -> None:
        if self.fixed_ws is not None:
            self.isr.count_dispatch(self.q, self.fixed_ws, len(hs))
            return
        per = np.bincount(self.pool.headers[hs.astype(np.intp), L.W_FLOWID] % self.nworkers)
        for ws in np.flatnonzero(per).tolist():
            self.isr.count_dispatch(self.q, ws, int(per[ws]))

    def other_stage(self, stage: str, hs: list[int], now: int) -> None:
        if stage not in NETISR_STAGES:
            raise RuntimeError(f"ithread cannot route to stage {stage!r}")
        for ws, g in self.by_workstream(hs).items():
            if self.hybrid and self.isr.try_inline(ws):
                try:
                    self.isr.count_dispatch(self.q, ws, len(g), hybrid=True)
                    with self.tcp_lock:
                        self.dispatch_out(self.isr_runner.run(stage, g, now), now)
                finally:
                    self.isr.end_inline(ws)
                continue
            fit = self.isr.try_enqueue(self.q, ws, len(g), self.qlimit)
            if fit < len(g):
                self.ctx.drop_many(g[fit:], QUEUE_DROPS.qdrop)
            if fit:
                sent = g[:fit] if fit < len(g) else g
                self.pool.stamp_batch(sent, L.TS_NETISR_ENQ, time.monotonic_ns())
                self.handoff(self.workers[ws], stage.encode(), _pack(sent), -1, fit)

    def by_workstream(self, hs: Any) -> dict[int, Any]:
        """The placement policy over a batch: one workstream for all of it unless the
        policy is `flow` with several workers (then by flowid % workers, vectorised,
        each group in batch order)."""
        if self.fixed_ws is not None:
            return {self.fixed_ws: hs}
        arr = np.asarray(hs, dtype=np.intp)
        ws = self.pool.headers[arr, L.W_FLOWID] % self.nworkers
        return {int(k): arr[ws == k] for k in np.unique(ws)}

    def close(self) -> None:
        self.irq_sock.close(linger=0)
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
        self.sock.setsockopt(zmq.RCVTIMEO, QUEUE_WAIT_MS)  # (serve_queue, receive_counted)
        bind(self.sock, plan["netisr_endpoints"][self.ws])
        self.slow_ns = int(float(plan["config"].get("netisr_delay_us", 0) or 0) * 1000)

    def run(self, agent: Agent) -> None:
        wait_connected(self.users)
        self.serve_queue(agent, self.sock, self.drain_once, timers=True,
                         pending=lambda: self.isr.qlen(self.ws))

    def drain_once(self, first: bytes | None = None) -> bool:
        """Take what is queued, up to four batches (`first`: the first message's stage
        part, already received), and run it. False if nothing was.

        Draining up to four batches per wakeup (as a netisr thread drains its
        queue per run) spreads the loop's fixed cost (poll, timers, tx reclaim)
        over more packets: +27 % deferred pps at batch 32 on 2 cores."""
        parts: dict[str, list[np.ndarray]] = {}
        n = 0
        for stage, hs in receive_counted(self.sock, self.isr.qlen(self.ws), 4 * self.batch,
                                         staged=True, first=first):
            parts.setdefault(stage, []).append(hs)
            n += len(hs)
        if not n:
            return False
        now = time.monotonic_ns()
        self.isr.worker_begin(self.ws)
        try:
            for stage, arrs in parts.items():
                hs = arrs[0] if len(arrs) == 1 else np.concatenate(arrs)
                self.pool.adopt(hs, stamp=L.TS_NETISR_START, now=now)
                if self.slow_ns:  # a deliberately slowed worker (tests of qlimit)
                    time.sleep(self.slow_ns * len(hs) / 1e9)
                with self.tcp_lock:
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
        self.sock.setsockopt(zmq.RCVTIMEO, QUEUE_WAIT_MS)  # (serve_queue, receive_counted)
        bind(self.sock, plan["user_endpoints"][plan["index"]])
        self.latency = LatencyBins()  # every delivered packet's stage latencies
        from dispatch.runtime.app import App

        self.uq_me = int(plan["index"])
        self.workload = self.cfg.get("workload", "rx")
        self.rr = self.workload == "rr"
        self.app = App(self.ctx, self.run_routed, index=int(plan["index"]), cfg=self.cfg,
                       lock=self.tcp_lock)
        self.tx_streams: dict[str, Any] = {}

    def run(self, agent: Agent) -> None:
        if self.workload == "tx":
            from dispatch.runtime.txapp import send_loop

            send_loop(self, agent)
            return
        # rr over TCP: this thread's sends own retransmission timers too
        timers = self.rr and self.cfg.get("proto") == "tcp"
        me = int(self.plan["index"])
        self.serve_queue(agent, self.sock, self.receive_once, timers=timers,
                         pending=lambda: self.uq.qlen(me))

    def receive_once(self, first: bytes | None = None) -> bool:
        """Receive what is queued, up to four batches (a read drains the socket
        buffer up to the user's buffer), then copy it out with one soreceive:
        the loop's fixed cost per wakeup spread over more packets (+33 % direct
        pps at batch 32 on 2 cores). False if nothing was queued."""
        hs = receive_counted(self.sock, self.uq.qlen(self.uq_me), 4 * self.batch,
                             first=first)
        if not len(hs):
            return False
        self.uq.count_dequeue(self.uq_me, len(hs))
        stamps = self.pool.adopt(hs, stamps=True)  # a copy: the stage frees the mbufs
        if self.rr:  # the sockets that got requests (read before soreceive frees them)
            w = self.pool.w
            sids = {w[(m << 6) + L.W_SOCKID] - 1 for m in hs.tolist()}
        with self.tcp_lock:
            self.runner.run(S.SORECEIVE, hs, time.monotonic_ns())
        self.keep_samples(stamps, self.ctx.now)
        self.counts["packets"] += len(hs)
        if self.rr:
            self.counts["rr_answers"] += self.app.answer(sids, time.monotonic_ns())
        return True

    def keep_samples(self, stamps: np.ndarray, now: int) -> None:
        stamps[:, L.TS_USER] = now
        self.latency.add(stamps)

    def histograms(self) -> dict[str, str]:
        if not self.latency.count:
            return {k: "" for k in LATENCY_STAGES}
        return {k: encode_histogram(h) for k, h in self.latency.histograms().items()}

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        snap["role"].update(self.app.report())
        if self.tx_streams:
            snap["tx_streams"] = self.tx_streams
        snap["hist"] = self.histograms()
        digests = self.ctx.extra.get("digests", {})
        snap["digests"] = {int(k): (v.hexdigest() if hasattr(v, "hexdigest") else v)
                           for k, v in digests.items()}
        return snap

    def close(self) -> None:
        self.sock.close(linger=0)
        super().close()


@role_factory("txthread")
class TxthreadRole(HostRole):
    """Deferred transmit dispatch: drains the driver's transmit queue onto its tx ring.

    FreeBSD's iflib lets a sender enqueue to the driver's mp_ring and return;
    whoever finds the ring idle (here: always this thread) drains it to the
    hardware descriptors. When the tx ring is full the transmit thread waits
    for completions instead of dropping: backpressure reaches the senders as a
    full driver queue, where the drop is counted (ifq_full), exactly once.
    """

    def __init__(self, agent: Agent, plan: dict[str, Any]) -> None:
        super().__init__(agent, plan)
        self.txq = NetisrTable.attach(plan["txq"])
        self.sock = self.zctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        bind(self.sock, plan["txq_endpoint"])
        self.held: list[int] = []  # taken from the queue, waiting for ring space

    def run(self, agent: Agent) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(agent.ctl, zmq.POLLIN)
        while True:
            ev = dict(poller.poll(1 if self.held else 100))
            if agent.ctl in ev and agent.poll_control():
                if agent.draining:  # until the queue's exact count says it is empty
                    deadline = time.monotonic() + DRAIN_WAIT_S
                    while (self.drain_once() or self.held or self.txq.qlen(0) > 0) \
                            and time.monotonic() < deadline:
                        if self.held or not self.sock.poll(0):
                            time.sleep(0.0002)
                    self.reclaim_tx()
                return
            if self.sock in ev or self.held:
                self.drain_once()
            self.reclaim_tx()

    def drain_once(self) -> bool:
        """Post what is held, then take up to a batch more off the queue."""
        took = False
        if not self.held:
            while len(self.held) < self.batch:
                try:
                    raw = self.sock.recv(_NOBLOCK)
                except zmq.Again:
                    break
                hs = _unpack(raw)
                self.pool.adopt(hs)
                self.held.extend(hs)
                took = True
        if not self.held:
            return took
        self.reclaim_tx()
        posted = self.post_all(self.held)
        if posted:
            self.txq.worker_begin(0)
            self.txq.worker_end(0, posted)
            self.counts["packets"] += posted
            del self.held[:posted]
        elif self.held:
            self.counts["ring_full_waits"] += 1
        return took or posted > 0

    def post_all(self, hs: list[int]) -> int:
        """Post a prefix of hs (in order) to the rings of their ports; returns its length."""
        idle = any(not tx.pending() for tx in self.txs)
        if len(self.txs) == 1:
            n = self.tx.push_many(hs)
        else:
            w = self.pool.w
            n = 0
            for m in hs:  # in order, one at a time: a full port stops the whole queue
                if not self.txs[min(w[(m << 6) + L.W_AUX], len(self.txs) - 1)].push_many([m]):
                    break
                n += 1
        if idle and n:
            self.ring_doorbell()
        return n

    def close(self) -> None:
        if self.held:  # never posted (the run was torn down): give them back
            self.pool.freem_batch(self.held)
            self.held = []
        self.sock.close(linger=0)
        super().close()
