"""The host's TCP sender against the generator's TcpSink, through a simulated wire.

The host side is the real stage code (tcp_connect / tcp_send / tcp_shutdown,
then ip_output and ether_output through the inline Runner; the sink's frames
come back through ether_input, ip_input and tcp_input); the far end is
nicemu.trafgen.tcpsink. Between them a wire with a one-way delay and seeded
loss, reordering (extra delay) and duplication, and a virtual clock that the
loop advances, calling tcp_timers and the sink's poll. Checked: every byte
arrives in order (sha256 equal), retransmissions are counted, cwnd follows
slow start / fast recovery / RTO, a zero window is respected and reopened,
and the pool is back where it started (acknowledged data freed, nothing
leaked).
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dispatch.stages.all  # noqa: F401  (registers every stage)
from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.stages.base import IF_TRANSMIT, Ctx, Routed, StackConfig, inline_runner
from dispatch.stages.sndbuf import sb_snd_flush
from dispatch.stages.socktab import (
    P_SND_CWND,
    P_SND_SSTHRESH,
    Q_RTO,
    Q_RXTSHIFT,
    Q_SRTT,
    SocketTable,
)
from dispatch.stages.tcp_input import tcp_timers
from dispatch.stages.tcp_output import (
    tcp_attach,
    tcp_connect,
    tcp_send,
    tcp_send_done,
    tcp_send_info,
    tcp_shutdown,
)
from dispatch.stages.tcp_timer import next_deadline
from nicemu.trafgen.tcpsink import SinkConfig, TcpSink

MS = 1_000_000
HOST, PEER = "10.0.0.1", "192.0.2.9"
PCFG = PoolConfig(nmbufs=8192, nclusters=2048, njumbop=1024, njumbo9=0, njumbo16=0)


class Wire:
    """Both directions of a link: delay, and seeded loss / reordering / duplication."""

    def __init__(self, *, delay: int = 5 * MS, loss: float = 0.0, reorder: float = 0.0,
                 dup: float = 0.0, seed: int = 1) -> None:
        self.delay, self.loss, self.reorder, self.dup = delay, loss, reorder, dup
        self.rng = random.Random(seed)
        self.q: list[tuple[int, int, str, bytes, int]] = []
        self.n = 0
        self.dropped = {"to_sink": 0, "to_host": 0}
        self.drop_next: dict[str, int] = {"to_sink": 0, "to_host": 0}  # forced losses

    def send(self, now: int, way: str, frame: bytes) -> None:
        if self.drop_next[way]:
            self.drop_next[way] -= 1
            self.dropped[way] += 1
            return
        if self.rng.random() < self.loss:
            self.dropped[way] += 1
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            t = now + self.delay
            if self.rng.random() < self.reorder:
                t += self.delay // 2 + self.rng.randrange(self.delay)
            self.n += 1
            heapq.heappush(self.q, (t, self.n, way, frame, now))

    def due(self, now: int) -> list[tuple[str, bytes, int]]:
        out = []
        while self.q and self.q[0][0] <= now:
            _, _, way, frame, sent = heapq.heappop(self.q)
            out.append((way, frame, sent))
        return out

    def next_time(self) -> int:
        return self.q[0][0] if self.q else 0


class Loop:
    """The host's stages, a TcpSink and a Wire, on one virtual clock."""

    def __init__(self, pool: MbufPool, tab: SocketTable, *, sink: SinkConfig | None = None,
                 wire: Wire | None = None, snd_hiwat: int = 256 * 1024, **extra: object
                 ) -> None:
        self.pool, self.tab = pool, tab
        self.ctx = Ctx(pool, config=StackConfig(so_snd_hiwat=snd_hiwat), sockets=tab)
        self.ctx.extra.update({"tcp_msl_ns": 200 * MS, **extra})
        self.runner = inline_runner(self.ctx)
        self.sink = TcpSink(sink or SinkConfig())
        self.wire = wire or Wire()
        self.now = 1_000 * MS
        self.sid = -1
        self.sent = hashlib.sha256()
        self.nsent = 0
        self.host_frames: list[bytes] = []  # every frame the host sent (for inspection)
        self.lose_window_updates = False

    # ---------------------------------------------------------------- plumbing
    def host_out(self, routed: Routed) -> None:
        for name, hs in routed.items():
            if not hs:
                continue
            out = self.runner.run(name, hs, self.now)
            for k, v in out.items():
                assert k == IF_TRANSMIT, (k, out)
                for m in v:
                    fr = self.pool.chain_bytes(m)
                    self.pool.freem(m)
                    self.host_frames.append(fr)
                    self.wire.send(self.now, "to_sink", fr)

    def host_in(self, frame: bytes) -> None:
        m = self.pool.getcl(len(frame))
        assert m and self.pool.append(m, frame)
        self.host_out(self.runner.run("ether_input", [m], self.now))

    def step(self, tick: int = 2 * MS) -> None:
        """Deliver what is due, fire timers, then advance the clock."""
        for way, fr, sent in self.wire.due(self.now):
            if way == "to_sink":
                for r in self.sink.on_frame(fr, self.now, sent):
                    self.wire.send(self.now, "to_host", r)
            else:
                self.host_in(fr)
        self.ctx.now = self.now
        self.host_out(tcp_timers(self.ctx))
        for r in self.sink.poll(self.now):
            if not self.lose_window_updates:
                self.wire.send(self.now, "to_host", r)
        nxt = [t for t in (self.wire.next_time(), next_deadline(self.ctx)) if t]
        # jump to the next arrival or host timer, but let the sink's clock tick too
        self.now = max(self.now + 1, min([*nxt, self.now + tick]))

    def connect(self, host: str = HOST, peer: str = PEER) -> int:
        self.ctx.now = self.now
        self.sid = tcp_attach(self.ctx, host, 40000, peer, 5001)
        self.host_out(tcp_connect(self.ctx, self.sid))
        self.run_until(lambda: self.state() == "ESTABLISHED", limit=30_000 * MS)
        return self.sid

    def state(self) -> str:
        return tcp_send_info(self.tab, self.sid)["state"]  # type: ignore[return-value]

    def run_until(self, cond: object, *, limit: int = 120_000 * MS) -> None:
        end = self.now + limit
        while not cond():  # type: ignore[operator]
            assert self.now < end, f"not done by the time limit: {tcp_send_info(self.tab, self.sid)}"
            self.step()

    def send_all(self, data: bytes, *, chunk: int = 16384, limit: int = 120_000 * MS) -> None:
        """The application writes `data` as fast as the send buffer takes it."""
        pos = 0
        end = self.now + limit
        while pos < len(data):
            assert self.now < end, "sender stalled"
            self.ctx.now = self.now
            piece = data[pos : pos + chunk]
            try:
                self.host_out(tcp_send(self.ctx, self.sid, piece))
            except BlockingIOError:
                self.step()
                continue
            self.sent.update(piece)
            self.nsent += len(piece)
            pos += len(piece)

    def close(self) -> None:
        self.ctx.now = self.now
        self.host_out(tcp_shutdown(self.ctx, self.sid))

    def flow(self) -> str:
        (f,) = self.sink.flows()
        return f

    def stat(self, name: str) -> int:
        return self.ctx.stats.counters.get("tcp." + name, 0)


@pytest.fixture
def env(pool_name: str) -> Iterator[tuple[MbufPool, SocketTable, int]]:
    pool = MbufPool.create(pool_name, PCFG)
    tab = SocketTable.create(None, 64)
    start = pool.in_use()
    yield pool, tab, start
    ctx = Ctx(pool, sockets=tab)
    for i in tab.indices():  # what a failed test left unacknowledged
        sb_snd_flush(ctx, tab, i)
    tab.close()
    audit = pool.audit()
    pool.close()
    assert audit.whole, audit


def transfer(loop: Loop, data: bytes) -> None:
    """Connect, send, close, and run until both ends are closed."""
    loop.connect()
    loop.send_all(data)
    loop.close()
    loop.run_until(lambda: tcp_send_done(loop.tab, loop.sid)
                   and loop.sink.received(loop.flow()) == len(data)
                   and loop.state() == "CLOSED")


def payload(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


# --------------------------------------------------------------------------- tests
def test_clean_transfer_delivers_every_byte_and_frees_everything(env) -> None:
    pool, tab, start = env
    loop = Loop(pool, tab)
    data = payload(600_000)
    transfer(loop, data)
    f = loop.flow()
    assert loop.sink.digest(f) == hashlib.sha256(data).hexdigest()
    info = tcp_send_info(tab, loop.sid)
    assert info["sndbyte"] == len(data) and info["acked"] == len(data)
    assert info["sndrexmitbyte"] == 0 and info["unacked"] == 0
    assert loop.stat("tcps_sndrexmitpack") == 0 and loop.stat("tcps_rexmttimeo") == 0
    assert loop.stat("tcps_connects") == 1 and loop.stat("tcps_timewait") == 1
    s = loop.sink.stats()["flows"][f]
    assert s["state"] == "CLOSED" and s["dup_segments"] == 0 and s["afterwin_bytes"] == 0
    assert s["latency_ns"]["count"] == s["segments"] and s["latency_ns"]["p50"] >= 5 * MS
    assert s["goodput_bps"] > 0
    # RTT estimate: 2 x 5 ms on the wire (plus the sink's delayed ACKs at most)
    srtt = tab.qget(loop.sid, Q_SRTT)
    assert 10 * MS <= srtt <= 60 * MS
    assert tab.qget(loop.sid, Q_RTO) >= 200 * MS
    assert pool.in_use() == start


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_loss_reordering_and_duplication_still_deliver_in_order(env, seed: int) -> None:
    pool, tab, start = env
    wire = Wire(loss=0.03, reorder=0.05, dup=0.03, seed=seed)
    loop = Loop(pool, tab, wire=wire)
    data = payload(400_000, seed)
    transfer(loop, data)
    f = loop.flow()
    assert loop.sink.digest(f) == hashlib.sha256(data).hexdigest()
    assert loop.sink.received(f) == len(data)
    assert wire.dropped["to_sink"] > 0
    info = tcp_send_info(tab, loop.sid)
    assert info["sndbyte"] == len(data) and info["sndrexmitbyte"] > 0
    assert loop.stat("tcps_sndrexmitpack") > 0
    assert loop.stat("tcps_fastrexmt") + loop.stat("tcps_rexmttimeo") > 0
    assert loop.sink.stats()["flows"][f]["dup_segments"] > 0
    assert pool.in_use() == start


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), loss=st.floats(0.0, 0.08), reorder=st.floats(0.0, 0.1),
       dup=st.floats(0.0, 0.05), size=st.integers(1, 120_000),
       ack_every=st.sampled_from([1, 2]))
def test_any_impairment_delivers_the_stream(env, seed: int, loss: float, reorder: float,
                                            dup: float, size: int, ack_every: int) -> None:
    pool, tab, start = env
    loop = Loop(pool, tab, wire=Wire(loss=loss, reorder=reorder, dup=dup, seed=seed),
                sink=SinkConfig(ack_every=ack_every))
    data = payload(size, seed)
    transfer(loop, data)
    assert loop.sink.digest(loop.flow()) == hashlib.sha256(data).hexdigest()
    assert pool.in_use() == start


class Rounds:
    """Lock-step rounds: everything the host has in flight reaches the sink, every
    answer comes back, and we count what the host sends next (one RTT each)."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop

    def round(self, *, drop: frozenset[int] | set[int] = frozenset()) -> int:
        """Returns how many data segments the host sent in answer; `drop` names the
        data frames (by position) that the wire loses this round."""
        lp = self.loop
        frames = [fr for way, fr, _ in lp.wire.due(1 << 62) if way == "to_sink"]
        data = [fr for fr in frames if len(fr) > 100]
        replies = []
        for k, fr in enumerate(data):
            if k in drop:
                continue
            replies += lp.sink.on_frame(fr, lp.now, None)
        lp.now += 10 * MS
        before = len(lp.host_frames)
        for r in replies:
            lp.host_in(r)
        return sum(1 for fr in lp.host_frames[before:] if len(fr) > 100)


def bulk(loop: Loop, n: int) -> None:
    loop.ctx.now = loop.now
    loop.host_out(tcp_send(loop.ctx, loop.sid, payload(n)))


@pytest.mark.parametrize("ack_every", [1, 2])
def test_slow_start_doubles_per_round_trip(env, ack_every: int) -> None:
    pool, tab, _ = env
    loop = Loop(pool, tab, sink=SinkConfig(ack_every=ack_every, rcvbuf=4 << 20),
                snd_hiwat=4 << 20)
    loop.connect()
    mss = 1448  # 1460 less the timestamp option
    assert tab.get(loop.sid, P_SND_CWND) == 10 * mss  # RFC 6928: min(10 MSS, max(2 MSS, 14600))
    bulk(loop, 2_000_000)
    r = Rounds(loop)
    assert sum(1 for fr in loop.host_frames if len(fr) > 100) == 10
    sent = [r.round() for _ in range(4)]
    assert sent == [20, 40, 80, 160]
    assert tab.get(loop.sid, P_SND_CWND) == 160 * mss
    for _ in range(40):
        r.round()
    _finish(loop)


def _finish(loop: Loop) -> None:
    """Give back what a lock-step test left in the send buffer and on the wire."""
    sb_snd_flush(loop.ctx, loop.tab, loop.sid)
    loop.wire.due(1 << 62)


def test_fast_retransmit_halves_cwnd_and_recovers(env) -> None:
    pool, tab, _ = env
    loop = Loop(pool, tab, sink=SinkConfig(ack_every=1, rcvbuf=4 << 20), snd_hiwat=4 << 20)
    loop.connect()
    mss = 1448
    bulk(loop, 1_500_000)
    r = Rounds(loop)
    assert r.round() == 20 and r.round() == 40  # now 40 segments in flight
    # one segment lost: the 10 ACKs before it open cwnd to 50 segments (20 more sent),
    # then 29 + 20 duplicate ACKs: fast retransmit on the third, with 50 in flight
    flight = 50 * mss
    r.round(drop={10})
    assert loop.stat("tcps_fastrexmt") == 1 and loop.stat("tcps_rexmttimeo") == 0
    assert tab.get(loop.sid, P_SND_SSTHRESH) == flight // 2
    assert loop.stat("tcps_sndrexmitpack") == 1
    r.round()  # the retransmission fills the hole: a full ACK ends recovery
    assert tab.get(loop.sid, P_SND_CWND) <= flight // 2 + mss
    info = tcp_send_info(tab, loop.sid)
    assert info["fastrexmt"] == 1 and info["sndrexmitbyte"] == mss
    # congestion avoidance from here: about one MSS more per round trip
    c0 = tab.get(loop.sid, P_SND_CWND)
    r.round()
    r.round()
    assert c0 < tab.get(loop.sid, P_SND_CWND) <= c0 + 3 * mss
    _finish(loop)


def test_timeout_collapses_cwnd_to_one_segment_and_backs_off(env) -> None:
    pool, tab, _ = env
    loop = Loop(pool, tab, sink=SinkConfig(ack_every=1, rcvbuf=4 << 20), snd_hiwat=4 << 20)
    loop.connect()
    mss = 1448
    bulk(loop, 500_000)
    r = Rounds(loop)
    r.round()  # 20 in flight
    loop.wire.due(1 << 62)  # ... and all of them lost
    rto = tab.qget(loop.sid, Q_RTO)
    t0 = loop.now
    deadline = next_deadline(loop.ctx)
    assert 0 < deadline - t0 <= rto
    loop.now = deadline
    loop.ctx.now = deadline
    before = len(loop.host_frames)
    loop.host_out(tcp_timers(loop.ctx))
    assert loop.stat("tcps_rexmttimeo") == 1
    assert tab.get(loop.sid, P_SND_CWND) == mss
    assert tab.get(loop.sid, P_SND_SSTHRESH) == 20 * mss // 2
    assert len(loop.host_frames) - before == 1  # one segment: cwnd = 1 MSS
    loop.wire.due(1 << 62)  # lost again: the next timeout is twice as far
    d2 = next_deadline(loop.ctx) - loop.now
    assert d2 == 2 * rto
    loop.now += d2
    loop.ctx.now = loop.now
    loop.host_out(tcp_timers(loop.ctx))
    assert loop.stat("tcps_rexmttimeo") == 2
    # now let it through: slow start again from one segment, and no more timeouts
    srtt = tab.qget(loop.sid, Q_SRTT)
    n = r.round()
    assert n == 2 and tab.get(loop.sid, P_SND_CWND) == 2 * mss
    # Karn: the retransmission's ACK is no RTT sample, so the backoff stays
    assert tab.qget(loop.sid, Q_SRTT) == srtt and tab.qget(loop.sid, Q_RXTSHIFT) == 2
    _finish(loop)


def test_zero_window_is_respected_and_reopens(env) -> None:
    pool, tab, start = env
    sink = SinkConfig(rcvbuf=60_000, read_rate=50_000.0, ack_every=1)
    loop = Loop(pool, tab, sink=sink)
    data = payload(150_000)
    transfer(loop, data)
    f = loop.flow()
    s = loop.sink.stats()["flows"][f]
    assert loop.sink.digest(f) == hashlib.sha256(data).hexdigest()
    assert s["zero_windows"] > 0 and s["window_updates"] > 0
    assert s["afterwin_bytes"] == 0  # never a byte beyond what was advertised
    assert pool.in_use() == start


def test_lost_window_updates_are_found_by_persist_probes(env) -> None:
    pool, tab, start = env
    sink = SinkConfig(rcvbuf=32 * 1024, read_rate=50_000.0, ack_every=1)
    loop = Loop(pool, tab, sink=sink)
    loop.lose_window_updates = True
    data = payload(100_000)
    transfer(loop, data)
    f = loop.flow()
    assert loop.sink.digest(f) == hashlib.sha256(data).hexdigest()
    assert loop.stat("tcps_sndprobe") > 0 and loop.stat("tcps_persisttimeo") > 0
    assert loop.sink.stats()["flows"][f]["probes"] > 0
    assert loop.sink.stats()["flows"][f]["afterwin_bytes"] == 0
    assert pool.in_use() == start


def test_lost_syn_is_retransmitted_after_the_initial_rto(env) -> None:
    pool, tab, start = env
    wire = Wire()
    wire.drop_next["to_sink"] = 1
    loop = Loop(pool, tab, wire=wire)
    t0 = loop.now
    loop.connect()
    assert loop.stat("tcps_rexmttimeo") == 1
    assert loop.now - t0 >= 1_000 * MS  # RFC 6298: 1 s before any RTT sample
    transfer_rest = payload(5000)
    loop.send_all(transfer_rest)
    loop.close()
    loop.run_until(lambda: loop.state() == "CLOSED")
    assert loop.sink.digest(loop.flow()) == hashlib.sha256(transfer_rest).hexdigest()
    assert pool.in_use() == start


def test_send_buffer_high_water_mark_refuses_and_is_counted(env) -> None:
    pool, tab, start = env
    loop = Loop(pool, tab, snd_hiwat=64 * 1024)
    loop.connect()
    loop.ctx.now = loop.now
    loop.host_out(tcp_send(loop.ctx, loop.sid, payload(60_000)))
    with pytest.raises(BlockingIOError):
        tcp_send(loop.ctx, loop.sid, payload(10_000))
    assert loop.ctx.stats.counters["socket.snd_wouldblock"] == 1
    assert not tcp_send_done(tab, loop.sid)
    loop.run_until(lambda: tcp_send_done(tab, loop.sid))  # acknowledged: room again
    loop.host_out(tcp_send(loop.ctx, loop.sid, payload(10_000)))
    loop.close()
    with pytest.raises(OSError):
        tcp_send(loop.ctx, loop.sid, b"x")
    loop.run_until(lambda: loop.state() == "CLOSED")
    assert loop.sink.received(loop.flow()) == 70_000
    assert pool.in_use() == start


def test_connect_errors(env) -> None:
    pool, tab, _ = env
    loop = Loop(pool, tab)
    sid = tcp_attach(loop.ctx, HOST, 1, PEER, 2)
    with pytest.raises(OSError):
        tcp_attach(loop.ctx, HOST, 1, PEER, 2)
    with pytest.raises(OSError):
        tcp_send(loop.ctx, sid, b"early")
    loop.host_out(tcp_connect(loop.ctx, sid))
    with pytest.raises(OSError):
        tcp_connect(loop.ctx, sid)
    loop.host_out(tcp_shutdown(loop.ctx, sid))  # a SYN_SENT socket just closes
    assert tcp_send_info(tab, sid)["state"] == "CLOSED"
    loop.wire.due(1 << 62)


def test_a_passively_opened_socket_sends_and_closes_after_its_data(env) -> None:
    """The rr workload's server side: a listener's child answers through the sender;
    the peer's FIN while data is unacknowledged puts our FIN after that data."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    from dispatch.stages.socktab import IPPROTO_TCP

    pool, tab, start = env
    loop = Loop(pool, tab)
    tab.listen(IPPROTO_TCP, HOST, 80)

    def peer(flags: str, seq: int, ack: int = 0, data: bytes = b"") -> list:
        fr = Ether(dst="02:00:00:00:00:02") / IP(src=PEER, dst=HOST) / \
            TCP(sport=3333, dport=80, flags=flags, seq=seq, ack=ack, window=65535,
                options=[("MSS", 1460)] if "S" in flags else [])
        n = len(loop.host_frames)
        loop.host_in(bytes(fr / Raw(data)) if data else bytes(fr))
        return [Ether(f)[TCP] for f in loop.host_frames[n:]]

    (sa,) = peer("S", 100)
    assert sa.flags == "SA"
    assert peer("A", 101, sa.seq + 1) == []
    sid = tab.lookup(IPPROTO_TCP, HOST, 80, PEER, 3333)
    loop.ctx.now = loop.now
    loop.host_out(tcp_send(loop.ctx, sid, b"r" * 3000))
    segs = [Ether(f)[TCP] for f in loop.host_frames[-3:]]
    assert [len(bytes(s.payload)) for s in segs] == [1460, 1460, 80]
    assert segs[0].seq == sa.seq + 1 and all(s.ack == 101 for s in segs)
    assert not tcp_send_done(tab, sid)
    assert peer("A", 101, sa.seq + 1 + 2920) == []  # two of three acknowledged
    assert tcp_send_info(tab, sid)["acked"] == 2920
    (fa,) = peer("FA", 101, sa.seq + 1 + 2920)  # the request side closes
    assert fa.flags == "FA" and fa.seq == sa.seq + 1 + 3000 and fa.ack == 102
    assert tcp_send_info(tab, sid)["state"] == "LAST_ACK"
    assert peer("A", 102, sa.seq + 1 + 3001) == []
    assert tcp_send_info(tab, sid)["state"] == "CLOSED" and tcp_send_done(tab, sid)
    loop.wire.due(1 << 62)
    assert pool.in_use() == start


def test_ipv6_transfer_with_loss(env) -> None:
    pool, tab, start = env
    loop = Loop(pool, tab, wire=Wire(loss=0.03, reorder=0.03, seed=9))
    data = payload(150_000)
    loop.connect("fd00::1", "2001:db8::9")
    loop.send_all(data)
    loop.close()
    loop.run_until(lambda: loop.state() == "CLOSED"
                   and loop.sink.received(loop.flow()) == len(data))
    assert loop.flow() == "[fd00::1]:40000>[2001:db8::9]:5001"
    assert loop.sink.digest(loop.flow()) == hashlib.sha256(data).hexdigest()
    assert tcp_send_info(tab, loop.sid)["sndrexmitbyte"] > 0
    assert pool.in_use() == start
