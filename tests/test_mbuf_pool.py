"""Tests for dispatch.mbuf.pool: operations, state machine, exhaustion, processes."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from dispatch.mbuf import MCLBYTES, MHLEN, MLEN, MbufPool, MbufQueue, PoolConfig, PoolError
from dispatch.mbuf import layout as L
from dispatch.mbuf.segment import segment_owner_alive

SMALL = PoolConfig(nmbufs=512, nclusters=128, njumbop=16, njumbo9=4, njumbo16=2, bucket=16)


@pytest.fixture
def pool(pool_name):
    p = MbufPool.create(pool_name, SMALL)
    yield p
    p.close()


def test_derived_sizes():
    assert (L.MSIZE, L.MLEN, L.MHLEN) == (256, 224, 120)
    assert MLEN == L.MSIZE - L.M_HDR_BYTES
    assert MHLEN == MLEN - L.PKTHDR_BYTES


def test_segment_is_owner_only_and_removed_on_close(pool_name):
    p = MbufPool.create(pool_name, SMALL)
    path = f"/dev/shm/{pool_name}"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    p.close()
    assert not os.path.exists(path)


def test_create_refuses_a_live_pool(pool):
    with pytest.raises(PoolError, match="creator is alive"):
        MbufPool.create(pool.name, SMALL)


def test_attach_unknown_name_is_a_clear_error():
    with pytest.raises(PoolError, match="no pool named"):
        MbufPool.attach("demu-no-such-pool", owner="x")


def test_get_and_free_basics(pool):
    m = pool.gethdr()
    assert pool.flags(m) & L.M_PKTHDR and pool.length(m) == 0
    assert pool.leadingspace(m) == 0 and pool.trailingspace(m) == MHLEN
    assert pool.append(m, b"abc")
    assert pool.chain_bytes(m) == b"abc" and pool.pkt_len(m) == 3
    assert pool.free(m) == 0
    with pytest.raises(PoolError, match="double free"):
        pool.free(m)
    assert pool.audit().whole


def test_getcl_sizes_pick_the_smallest_zone(pool):
    for size, cap in [(1, MCLBYTES), (2048, 2048), (2049, 4096), (9000, 9216), (16384, 16384)]:
        m = pool.getcl(size)
        assert pool.storage(m)[1] == cap
        pool.freem(m)
    with pytest.raises(PoolError, match="too large"):
        pool.getcl(16385)


def test_prepend_uses_leading_space_then_a_new_mbuf(pool):
    m = pool.getcl()
    pool.append(m, b"payload")
    pool.adj(m, 0)
    # a fresh cluster starts at offset 0: no leading space, so a new mbuf is prepended
    h = pool.prepend(m, 14)
    assert h != m and pool.flags(h) & L.M_PKTHDR and not pool.flags(m) & L.M_PKTHDR
    assert pool.pkt_len(h) == 21 and pool.chain_len(h) == 21
    # the new head was aligned to its end: prepending more fits in front
    h2 = pool.prepend(h, 4)
    assert h2 == h and pool.pkt_len(h) == 25
    pool.freem(h)
    assert pool.audit().whole


def test_adj_head_and_tail(pool):
    m = pool.gethdr()
    pool.append(m, bytes(range(200)))
    pool.adj(m, 10)
    pool.adj(m, -20)
    assert pool.chain_bytes(m) == bytes(range(10, 180)) and pool.pkt_len(m) == 170
    pool.freem(m)


def test_pullup_across_mbufs(pool):
    m = pool.gethdr()
    n = pool.get()
    pool.append(n, b"0123456789")
    pool.hset(m, L.W_NEXT, n)
    pool.hset(m, L.W_PKTLEN, 10)
    h = pool.pullup(m, 6)
    assert pool.length(h) >= 6 and pool.chain_bytes(h) == b"0123456789"
    assert pool.pullup(h, 100) == 0  # too short: chain freed, as m_pullup does
    assert pool.audit().whole


def test_copym_shares_clusters_and_is_read_only(pool):
    m = pool.getcl()
    pool.append(m, b"x" * 1000)
    c = pool.copym(m, 100, 500)
    assert pool.chain_bytes(c) == b"x" * 500
    e = pool.hget(m, L.W_EXT)
    assert pool.hget(c, L.W_EXT) == e and pool.cl_meta[e << 1] == 2
    assert not pool.writable(m) and pool.trailingspace(m) == 0
    pool.freem(m)
    assert pool.cl_meta[e << 1] == 1 and pool.writable(c)
    pool.freem(c)
    assert pool.audit().whole


def test_exhaustion_is_counted_never_raised(pool_name):
    p = MbufPool.create(pool_name, PoolConfig(nmbufs=16, nclusters=8, njumbop=0, njumbo9=0,
                                              njumbo16=0, bucket=4))
    try:
        got = [p.get() for _ in range(20)]
        assert got.count(0) == 4 and len(set(got) - {0}) == 16
        assert p.stats().zones[0].denied == 4
        for m in got:
            if m:
                p.free(m)
        cls = [p.getcl() for _ in range(10)]
        assert cls.count(0) == 2
        assert p.stats().zones[1].denied == 2 and p.stats().getcl_denied == 2
        assert p.getcl(4096) == 0  # an empty zone denies too
        p.freem_batch([m for m in cls if m])
        batch = p.getcl_batch(12)
        assert len(batch) == 8
        p.freem_batch(batch)
        assert p.audit().whole
    finally:
        p.close()


def test_stamp_batch_sets_one_slot_of_the_given_packets_only(pool):
    b = pool.getcl_batch(12)
    before = pool.stamps(b).copy()
    pool.stamp_batch(b[:4].astype(np.uint32), L.TS_SOCKET, 7)  # u32, as off a message
    pool.stamp_batch(b[4:8].tolist(), L.TS_SOCKET, 8)  # a list
    pool.stamp_batch(b[8:10], L.TS_NETISR_ENQ, 2**63)  # intp; the whole u64 range
    got = pool.stamps(b)
    assert got[:4, L.TS_SOCKET].tolist() == [7] * 4 and got[4:8, L.TS_SOCKET].tolist() == [8] * 4
    assert got[8:10, L.TS_NETISR_ENQ].tolist() == [2**63] * 2
    assert (got[10:] == before[10:]).all()
    other = [t for t in range(L.NTS) if t not in (L.TS_SOCKET, L.TS_NETISR_ENQ)]
    assert (got[:, other] == before[:, other]).all()
    with pytest.raises(ValueError, match="slot"):
        pool.stamp_batch(b, L.NTS, 1)
    pool.freem_batch(b)


def test_batches_match_single_operations(pool):
    b = pool.getcl_batch(32)
    assert len(set(b.tolist())) == 32
    for m in b.tolist():
        assert pool.flags(m) & L.M_EXT and pool.flags(m) & L.M_PKTHDR
        assert pool.length(m) == 0 and pool.trailingspace(m) == MCLBYTES
    pool.stamp_batch(b, L.TS_DMA, 123)
    assert (pool.stamps(b)[:, L.TS_DMA] == 123).all()
    assert pool.stats().zones[1].current == 32
    pool.freem_batch(b)
    plain = pool.get_batch(8)
    pool.freem_batch(plain)
    # a batch with a chain and a shared cluster goes through the slow path correctly
    a = pool.getcl()
    pool.append(a, b"z" * 3000)  # spills into a second cluster: a chain
    c = pool.copym(a, 0)
    pool.freem_batch(np.array([a, c]))
    assert pool.audit().whole


def test_mbufq_refuses_when_full(pool):
    q = MbufQueue(pool, 3)
    ms = [pool.gethdr() for _ in range(4)]
    assert [q.enqueue(m) for m in ms] == [True, True, True, False]
    assert q.dequeue() == ms[0] and len(q) == 2
    assert q.enqueue(ms[3])
    assert q.drain() == ms[1:]
    pool.freem(ms[0])
    q2 = MbufQueue(pool, 8)
    for m in ms[1:]:
        q2.enqueue(m)
    assert q2.flush() == 3
    assert pool.audit().whole


def test_split_shares_the_cut_cluster(pool):
    m = pool.getcl()
    data = bytes(range(256)) * 4
    pool.append(m, data)
    t = pool.split(m, 300)
    assert pool.chain_bytes(m) == data[:300] and pool.pkt_len(m) == 300
    assert pool.chain_bytes(t) == data[300:] and pool.pkt_len(t) == len(data) - 300
    pool.freem(m)
    pool.freem(t)
    assert pool.audit().whole


# --------------------------------------------------------------- state machine
class ChainMachine(RuleBasedStateMachine):
    """Random mbuf operations, each chain checked against a plain bytes model."""

    chains = Bundle("chains")

    def __init__(self) -> None:
        super().__init__()
        self.name = f"demu-sm-{os.getpid()}-{id(self)}"
        self.pool = MbufPool.create(self.name, PoolConfig(
            nmbufs=256, nclusters=48, njumbop=8, njumbo9=2, njumbo16=2, bucket=8))
        self.model: dict[int, bytes] = {}

    def _new(self, m: int, data: bytes) -> int:
        self.model[m] = data
        return m

    @rule(target=chains, data=st.binary(max_size=600), cluster=st.booleans())
    def make(self, data, cluster):
        p = self.pool
        m = p.getcl() if cluster else p.gethdr()
        if not m:
            return self._new(0, b"")
        if not p.append(m, data):
            p.freem(m)
            return self._new(0, b"")
        return self._new(m, data)

    @rule(m=chains, data=st.binary(max_size=3000))
    def append(self, m, data):
        if m in self.model and m and self.pool.append(m, data):
            self.model[m] += data

    @rule(target=chains, m=consumes(chains), n=st.integers(1, 64), fill=st.binary(max_size=1))
    def prepend(self, m, n, fill):
        if m not in self.model or not m:
            return self._new(0, b"")
        data = self.model.pop(m)
        h = self.pool.prepend(m, n)
        if not h:
            return self._new(0, b"")
        b = fill * n if fill else bytes(n)
        self.pool.mtod(h)[:n] = b
        return self._new(h, b + data)

    @rule(m=chains, req=st.integers(-700, 700))
    def adj(self, m, req):
        if m in self.model and m:
            self.pool.adj(m, req)
            d = self.model[m]
            self.model[m] = d[req:] if req >= 0 else d[: max(0, len(d) + req)]

    @rule(target=chains, m=consumes(chains), n=st.integers(1, MHLEN))
    def pullup(self, m, n):
        if m not in self.model or not m:
            return self._new(0, b"")
        data = self.model.pop(m)
        h = self.pool.pullup(m, n)
        if len(data) < n:
            assert h == 0
            return self._new(0, b"")
        if not h:
            return self._new(0, b"")
        assert self.pool.length(h) >= n
        return self._new(h, data)

    @rule(target=chains, m=chains, off=st.integers(0, 4000), ln=st.integers(1, 4000))
    def copym(self, m, off, ln):
        if m not in self.model or not m:
            return self._new(0, b"")
        d = self.model[m]
        if off + ln > len(d):
            return self._new(0, b"")
        c = self.pool.copym(m, off, ln)
        return self._new(c, d[off : off + ln]) if c else self._new(0, b"")

    @rule(target=chains, m=chains)
    def dup(self, m):
        if m not in self.model or not m:
            return self._new(0, b"")
        c = self.pool.dup(m)
        return self._new(c, self.model[m]) if c else self._new(0, b"")

    @rule(target=chains, m=consumes(chains), at=st.integers(0, 4000))
    def split(self, m, at):
        if m not in self.model or not m:
            return self._new(0, b"")
        d = self.model[m]
        if at > len(d):
            return self._new(0, b"")
        t = self.pool.split(m, at)
        if not t:
            return self._new(0, b"")
        self.model[m] = d[:at]
        return self._new(t, d[at:])

    @rule(m=chains, n=consumes(chains))
    def catpkt(self, m, n):
        if m == n or m not in self.model or n not in self.model or not m or not n:
            if n in self.model and n and n != m:
                self.pool.freem(n)
                del self.model[n]
            return
        self.pool.catpkt(m, n)
        self.model[m] += self.model.pop(n)

    @rule(m=consumes(chains))
    def freem(self, m):
        if m in self.model and m:
            self.pool.freem(m)
            del self.model[m]

    @rule(n=st.integers(0, 40), size=st.sampled_from([MCLBYTES, 4096, 9216]),
          data=st.binary(max_size=40), cluster=st.booleans(), pkthdr=st.booleans())
    def make_batch(self, n, size, data, cluster, pkthdr):
        """getcl_batch / get_batch: fresh buffers (possibly fewer: counted denials),
        each then written like a single allocation."""
        p = self.pool
        denied = sum(z.denied for z in p.stats().zones)
        hs = p.getcl_batch(n, size) if cluster else p.get_batch(n, pkthdr=pkthdr)
        assert hs.dtype == np.intp and len(hs) <= n and len(set(hs.tolist())) == len(hs)
        if len(hs) < n:
            assert sum(z.denied for z in p.stats().zones) > denied
        for m in hs.tolist():
            assert m not in self.model
            assert p.length(m) == 0 and p.next(m) == 0
            assert bool(p.flags(m) & L.M_EXT) == cluster
            if not (cluster or pkthdr):
                p.freem(m)  # plain mbufs are not packets: free them one by one
                continue
            assert p.append(m, data)
            self.model[m] = data

    @rule(k=st.integers(0, 40), data=st.data())
    def free_batch(self, k, data):
        """freem_batch over any mix of live chains (single buffers, chains, shared
        clusters, mixed zones): the same as freem on each."""
        live = [m for m in self.model if m]
        if not live:
            return
        pick = data.draw(st.lists(st.sampled_from(live), max_size=k, unique=True))
        self.pool.freem_batch(np.array(pick, dtype=np.intp))
        for m in pick:
            del self.model[m]

    @rule(m=chains, off=st.integers(0, 4000), ln=st.integers(0, 4000))
    def copydata(self, m, off, ln):
        if m in self.model and m and off + ln <= len(self.model[m]):
            assert self.pool.copydata(m, off, ln) == self.model[m][off : off + ln]

    @precondition(lambda self: True)
    @invariant()
    def bytes_and_books_agree(self):
        p = self.pool
        mbufs = 0
        refs: dict[int, int] = {}
        for m, data in self.model.items():
            if not m:
                continue
            assert p.chain_bytes(m) == data
            if p.flags(m) & L.M_PKTHDR:
                assert p.pkt_len(m) == len(data)
            x = m
            while x:
                mbufs += 1
                if p.flags(x) & L.M_EXT:
                    e = p.hget(x, L.W_EXT)
                    refs[e] = refs.get(e, 0) + 1
                x = p.next(x)
        assert p.in_use() == mbufs
        for e, n in refs.items():
            assert p.cl_meta[e << 1] == n
        assert sum(z.current for z in p.stats().zones[1:]) == len(refs)

    def teardown(self):
        try:
            for m in list(self.model):
                if m:
                    self.pool.freem(m)
            audit = self.pool.audit()
            assert audit.whole, audit
        finally:
            self.pool.close()


TestChainMachine = ChainMachine.TestCase
TestChainMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])


# -------------------------------------------------------------- across processes
def _run_child(code: str, *, wait: bool = True) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        proc.stdout_text = out  # type: ignore[attr-defined]
    return proc


def test_allocate_in_one_process_free_in_another(pool):
    child = _run_child(f"""
        from dispatch.mbuf import MbufPool
        p = MbufPool.attach({pool.name!r}, owner="writer")
        hs = []
        for i in range(100):
            m = p.getcl()
            p.append(m, bytes([i]) * 100)
            hs.append(m)
        print(",".join(map(str, hs)))
        p.close()
    """)
    handles = [int(x) for x in child.stdout_text.strip().split(",")]
    assert pool.in_use() == 100
    in_use = pool.audit().in_use
    assert sum(v["mbuf"] for k, v in in_use.items() if k.startswith("writer")) == 100
    freer = _run_child(f"""
        from dispatch.mbuf import MbufPool
        p = MbufPool.attach({pool.name!r}, owner="reader")
        hs = {handles!r}
        for i, m in enumerate(hs):
            assert p.chain_bytes(m) == bytes([i]) * 100
        p.freem_batch(hs)
        p.close()
    """)
    assert freer.returncode == 0
    audit = pool.audit()
    assert audit.whole, audit


def test_sigkilled_holder_is_reclaimed(pool):
    proc = _run_child(f"""
        import sys, time
        from dispatch.mbuf import MbufPool
        p = MbufPool.attach({pool.name!r}, owner="victim")
        held = [p.getcl() for _ in range(40)] + [p.get() for _ in range(10)]
        c = p.copym(held[0], 0)          # a shared cluster
        chain = p.gethdr(); p.append(chain, b"q" * 5000)   # a chain over clusters
        print(p.slot, flush=True)
        time.sleep(60)
    """, wait=False)
    slot = int(proc.stdout.readline())
    assert pool.in_use() > 0
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    assert not pool.audit().whole
    freed = pool.reap_dead()
    assert list(freed) == [f"victim[{slot}]"]
    audit = pool.audit()
    assert audit.whole, audit
    assert pool.stats().zones[1].current == 0


def test_reclaim_refuses_a_live_owner(pool):
    with pytest.raises(PoolError, match="alive"):
        pool.reclaim(pool.slot)


def test_stale_segment_of_a_sigkilled_creator_is_replaced(pool_name):
    proc = _run_child(f"""
        import time
        from dispatch.mbuf import MbufPool, PoolConfig
        p = MbufPool.create({pool_name!r}, PoolConfig(nmbufs=64, nclusters=8, njumbop=0,
                                                      njumbo9=0, njumbo16=0))
        print("up", flush=True)
        time.sleep(60)
    """, wait=False)
    assert proc.stdout.readline().strip() == "up"
    assert segment_owner_alive(pool_name) is True
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    assert os.path.exists(f"/dev/shm/{pool_name}")
    assert segment_owner_alive(pool_name) is False
    p = MbufPool.create(pool_name, SMALL)  # detects the stale one and replaces it
    assert p.nmbufs == SMALL.nmbufs
    p.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_creator_removes_segment_on_signal(pool_name, sig):
    # (the child as a process started from a terminal: a suite run in the background
    # of a non-interactive shell hands its children SIGINT ignored, and Python then
    # installs no KeyboardInterrupt for it, so SIGINT would not stop the creator)
    proc = _run_child(f"""
        import signal
        import time
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from dispatch.mbuf import MbufPool, PoolConfig
        p = MbufPool.create({pool_name!r}, PoolConfig(nmbufs=64, nclusters=8, njumbop=0,
                                                      njumbo9=0, njumbo16=0))
        print("up", flush=True)
        time.sleep(60)
    """, wait=False)
    assert proc.stdout.readline().strip() == "up"
    proc.send_signal(sig)
    proc.wait(timeout=10)
    proc.stdout.close()
    proc.stderr.close()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/dev/shm/{pool_name}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/dev/shm/{pool_name}")
