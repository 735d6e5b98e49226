"""tcp_reass: a byte stream cut into random segments, reordered, duplicated and
overlapping, reassembles to the original; overlaps keep what arrived first."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.mbuf import layout as L
from dispatch.stages import socket as so
from dispatch.stages import tcp_input as ti
from dispatch.stages import tcp_reass as tr
from dispatch.stages.base import Ctx, Runner, StackConfig
from dispatch.stages.socktab import SocketTable

ISN = 0xFFFFFF00  # close to the wrap: sequence arithmetic must be mod 2**32


class Host:
    """An auto-sockets host: no handshake to script, irs from the first segment."""

    def __init__(self, pool: MbufPool, **cfg: object) -> None:
        self.pool = pool
        self.tab = SocketTable.create(None, 16)
        self.ctx = Ctx(pool, config=StackConfig(auto_sockets=True, digest=True, **cfg),
                       sockets=self.tab)
        self.runner = Runner(self.ctx, {"tcp_input": ti.tcp_input, "soreceive": so.soreceive})
        self.now = 0

    def seg(self, off: int, data: bytes, *, syn: bool = False) -> int:
        p = IP(src="1.1.1.1", dst="2.2.2.2") / TCP(sport=1, dport=2, seq=(ISN + off) & 0xFFFFFFFF,
                                                  flags="S" if syn else "A")
        raw = bytes(p / Raw(data)) if data else bytes(p)
        m = self.pool.getcl(len(raw))
        assert self.pool.append(m, raw)
        self.pool.hset(m, L.W_HDRLENS, 20 << 8)
        return m

    def run(self, ms: list[int]) -> None:
        self.now += 1000
        out = self.runner.run("tcp_input", ms, self.now)
        assert out == {}

    def close(self) -> None:
        for i in self.tab.indices():
            tr.tcp_reass_flush(self.ctx, self.tab, i)
        self.tab.close()


@pytest.fixture
def pool(pool_name: str) -> Iterator[MbufPool]:
    p = MbufPool.create(pool_name, PoolConfig(nmbufs=4096, nclusters=2048, njumbop=0,
                                              njumbo9=0, njumbo16=0))
    yield p
    audit = p.audit()
    p.close()
    assert audit.whole, audit


def delivered(h: Host) -> tuple[int, str]:
    (s,) = h.tab.sockets()
    empty = hashlib.sha256().hexdigest()
    return s.bytes_delivered, so.socket_digests(h.ctx).get(s.index, empty)


@st.composite
def scrambled(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int]], int]:
    data = draw(st.binary(min_size=1, max_size=3000))
    n = len(data)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=25))) - {n})
    bounds = [0, *cuts, n]
    segs = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    # overlapping extras: random ranges of the same stream, and exact duplicates
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 400)), max_size=10))
    segs += [(a, min(n, a + k)) for a, k in extra]
    segs += draw(st.lists(st.sampled_from(segs), max_size=5))
    perm = draw(st.permutations(range(len(segs))))
    batch = draw(st.integers(1, 8))
    return data, [segs[j] for j in perm], batch


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=scrambled())
def test_scrambled_stream_reassembles(pool: MbufPool, case: tuple) -> None:
    data, segs, batch = case
    h = Host(pool)
    try:
        h.run([h.seg(0, b"", syn=True)])  # irs = ISN - 1: byte 0 is at ISN
        # the SYN said the stream starts at ISN + 1; shift so offset 0 is ISN + 1
        ms = [h.seg(a + 1, data[a:b]) for a, b in segs]
        for k in range(0, len(ms), batch):
            h.run(ms[k : k + batch])
        n, digest = delivered(h)
        assert n == len(data)
        assert digest == hashlib.sha256(data).hexdigest()
        (s,) = h.tab.sockets()
        assert s.reass_segments == 0
        # every packet is accounted for: delivered + dropped + consumed (+ splits)
        stats = h.ctx.stats
        got = stats.counters["socket.rcv_packets"] + stats.total_drops() + \
            stats.counters["absorbed.tcp_input"] - stats.counters.get("tcp.reass_splits", 0)
        assert got == len(ms) + 1
    finally:
        h.close()


def queue_of(h: Host) -> list[tuple[int, int]]:
    return [((s - ISN) & 0xFFFFFFFF, n) for s, n in tr.tcp_reass_queued(h.ctx, h.tab, 0)]


def test_overlaps_keep_what_arrived_first(pool: MbufPool) -> None:
    h = Host(pool)
    try:
        h.run([h.seg(0, b"", syn=True)])
        h.run([h.seg(11, b"A" * 10)])  # bytes 10..19
        h.run([h.seg(6, b"b" * 10)])  # bytes 5..14: its tail overlaps A
        h.run([h.seg(16, b"c" * 10)])  # bytes 15..24: its head overlaps A
        assert queue_of(h) == [(6, 5), (11, 10), (21, 5)]
        h.run([h.seg(3, b"d" * 30)])  # bytes 2..31: spans everything, differs: split
        assert h.ctx.stats.counters["tcp.reass_splits"] >= 1
        h.run([h.seg(1, b"e" * 4)])  # bytes 0..3: the hole at rcv_nxt
        n, digest = delivered(h)
        want = b"ee" + b"ddd" + b"b" * 5 + b"A" * 10 + b"c" * 5 + b"d" * 7
        assert n == len(want) and digest == hashlib.sha256(want).hexdigest()
    finally:
        h.close()


def test_same_bytes_spanning_replaces_without_split(pool: MbufPool) -> None:
    h = Host(pool)
    try:
        data = bytes(range(100))
        h.run([h.seg(0, b"", syn=True)])
        h.run([h.seg(41, data[40:50])])
        h.run([h.seg(31, data[30:70])])  # a retransmission that covers it
        assert queue_of(h) == [(31, 40)]
        assert h.ctx.stats.drops["tcp_input"]["reassdup"] == 1
        assert "tcp.reass_splits" not in h.ctx.stats.counters
        h.run([h.seg(1, data[:30])])
        assert delivered(h)[0] == 70
    finally:
        h.close()


def test_limit_and_flush(pool: MbufPool) -> None:
    h = Host(pool, tcp_reass_maxseg=4)
    try:
        h.run([h.seg(0, b"", syn=True)])
        h.run([h.seg(1 + 10 * k, b"x" * 5) for k in range(1, 7)])
        assert len(queue_of(h)) == 4
        assert h.ctx.stats.drops["tcp_input"]["memdrop"] == 2
        assert tr.reass_held(h.tab) == 4
        assert tr.tcp_reass_flush(h.ctx, h.tab, 0) == 4
        assert h.ctx.stats.drops["tcp_input"]["flushed"] == 4 and queue_of(h) == []
    finally:
        h.close()
