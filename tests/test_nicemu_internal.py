"""Tests for nicemu.internal: template frames through the NIC's own receive path."""

from __future__ import annotations

import pytest

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.mbuf import layout as L
from dispatch.packet.frames import build_udp_frame
from nicemu.internal import InternalSource
from nicemu.moderation import ModerationConfig
from nicemu.nic import Nic, NicConfig, RxQueueHost
from nicemu.rss import Rss


@pytest.fixture
def pool(pool_name):
    p = MbufPool.create(pool_name, PoolConfig(nmbufs=2048, nclusters=1024, njumbop=4,
                                              njumbo9=2, njumbo16=2, bucket=32), owner="nic")
    yield p
    p.close()


def templates(flows: int) -> list[bytes]:
    return [build_udp_frame(src_ip=f"10.0.{f // 200}.{f % 200 + 1}", dst_ip="10.9.0.1",
                            src_port=1000 + f, dst_port=9, payload=b"\0" * 18)
            for f in range(flows)]


def test_templates_cycle_through_the_same_path(pool):
    tm = templates(12)
    cfg = NicConfig(rx_queues=2, ring_size=128, moderation=ModerationConfig(rx_frames=16))
    with Nic(pool, cfg) as nic:
        src = InternalSource(nic, tm, batch=8)
        ref = Rss(queues=2, udp=True)
        assert src.hashes == [ref.hash_frame(f)[0] for f in tm]
        assert src.queues == [ref.queue_of(h) for h in src.hashes]
        hosts = [RxQueueHost(nic.rings, q, pool) for q in range(2)]
        irqs = []
        for t in range(10):
            irqs += src.produce(1000 * (t + 1))
        assert set(src.queues) == {0, 1}
        assert src.offered == 80 and nic.counters.ipackets == 80
        assert nic.counters.rx_dma_bytes == 80 * len(tm[0])
        irqs += nic.poll_timers(10**9)  # rx_usecs expired for a queue short of rx_frames
        assert set(irqs) == {0, 1}
        seen = []
        for q, h in enumerate(hosts):
            hs = h.harvest()
            for m in hs:
                assert src.queues[tm.index(pool.chain_bytes(m))] == q
                assert pool.tstamp(m, L.TS_WIRE) == pool.tstamp(m, L.TS_DMA) > 0
                assert pool.hget(m, L.W_CSUM_DATA) == 0xFFFF
            seen += [pool.chain_bytes(m) for m in hs]
            pool.freem_batch(hs)
        assert sorted(seen) == sorted(tm[i % 12] for i in range(80))
    assert pool.audit().whole


@pytest.mark.parametrize("sizes", [[3, 5, 8, 1, 7], [8, 2, 2, 2, 2, 8]])
def test_short_batches_continue_the_template_cycle(pool, sizes):
    # a burst cut short by ring room takes a prefix of the cached full batch: the
    # frames, their pkthdr words and their order are those of a one-by-one source
    tm = templates(5)
    with Nic(pool, NicConfig(ring_size=64)) as nic:
        src = InternalSource(nic, tm, batch=8)
        host = RxQueueHost(nic.rings, 0, pool)
        got = []
        for k, n in enumerate(sizes):
            src.produce(1000 + k, n)
            hs = host.harvest()
            assert len(hs) == n
            for m in hs:
                got.append(pool.chain_bytes(m))
                assert pool.hget(m, L.W_PKTLEN) == len(got[-1])
                assert pool.hget(m, L.W_FLOWID) == src.hashes[tm.index(got[-1])]
                assert pool.tstamp(m, L.TS_WIRE) == 1000 + k
            pool.freem_batch(hs)
        assert got == [tm[i % 5] for i in range(sum(sizes))]
        assert src.offered == sum(sizes) == nic.counters.ipackets
    assert pool.audit().whole


def test_full_ring_counts_missed(pool):
    with Nic(pool, NicConfig(ring_size=16)) as nic:
        src = InternalSource(nic, templates(3), batch=10, stamp_wire=False)
        src.produce(1)
        src.produce(2)
        assert nic.counters.ipackets == 16 and nic.counters.imissed == 4
        host = RxQueueHost(nic.rings, 0, pool)
        hs = host.harvest()
        assert all(pool.tstamp(m, L.TS_WIRE) == 0 for m in hs)
        pool.freem_batch(hs)
    assert pool.audit().whole


def test_bad_arguments(pool):
    with Nic(pool, NicConfig(ring_size=16)) as nic:
        with pytest.raises(ValueError, match="at least one"):
            InternalSource(nic, [])
        with pytest.raises(ValueError, match="batch"):
            InternalSource(nic, templates(1), batch=0)
