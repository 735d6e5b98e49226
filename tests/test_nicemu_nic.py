"""Tests for nicemu.nic: rx DMA and rings, RSS, moderation, tx, jumbo frames, TOE hook."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.mbuf import layout as L
from dispatch.packet.ether import ETHERTYPE_IP, build_ether
from dispatch.packet.frames import (
    DEFAULT_DST_MAC,
    DEFAULT_SRC_MAC,
    build_icmp_echo_frame,
    build_tcp_frame,
    build_udp_frame,
)
from dispatch.packet.ipv4 import IPPROTO_UDP, build_ipv4
from dispatch.packet.tcp import TH_ACK
from dispatch.packet.udp import build_udp
from nicemu import offload as off
from nicemu.moderation import ModerationConfig
from nicemu.nic import Nic, NicConfig, RxQueueHost, TxQueueHost
from nicemu.rss import Rss

SMALL = PoolConfig(nmbufs=1024, nclusters=512, njumbop=8, njumbo9=4, njumbo16=4, bucket=16)
US = 1000
NOMOD = ModerationConfig(rx_frames=10_000, rx_usecs=10_000, mode="delay")  # never raises


@pytest.fixture
def pool(pool_name):
    p = MbufPool.create(pool_name, SMALL, owner="nic")
    yield p
    p.close()


def udp(i: int, size: int = 60, *, v6: bool = False, **kw) -> bytes:
    src, dst = (f"fd00::{i % 250 + 1}", "fd00::ff") if v6 else (f"10.0.{i // 250}.{i % 250 + 1}",
                                                                  "10.9.9.9")
    return build_udp_frame(src_ip=src, dst_ip=dst, src_port=1024 + i, dst_port=9,
                           payload=b"p" * max(0, size - (62 if v6 else 42)), pad=True, **kw)


def tcp(i: int, size: int = 60, **kw) -> bytes:
    return build_tcp_frame(src_ip=f"10.1.0.{i % 250 + 1}", dst_ip="10.9.9.9",
                           src_port=2000 + i, dst_port=80, payload=b"t" * max(0, size - 54),
                           pad=True, **kw)


def drain(pool: MbufPool, hosts: list[RxQueueHost]) -> list[int]:
    out = []
    for h in hosts:
        out += h.harvest()
    return out


def test_receive_sets_pkthdr_and_counts_dma(pool):
    with Nic(pool, NicConfig(ring_size=64, ifindex=7, moderation=NOMOD)) as nic:
        host = RxQueueHost(nic.rings, 0, pool)
        frames = [udp(i, 60 + 10 * i) for i in range(8)]
        assert nic.receive(frames, 5000, wire_stamps=[100 + i for i in range(8)]) == []
        hs = host.harvest()
        assert len(hs) == 8
        rss = nic.rss
        for i, m in enumerate(hs):
            assert pool.chain_bytes(m) == frames[i]
            assert pool.pkt_len(m) == len(frames[i]) == pool.length(m)
            h, t = rss.hash_frame(frames[i])
            assert pool.hget(m, L.W_FLOWID) == h and pool.hget(m, L.W_RSSTYPE) == t
            assert pool.hget(m, L.W_RCVIF) == 7
            assert pool.hget(m, L.W_CSUM_FLAGS) == off.RX_L3_OK | off.RX_L4_OK
            assert pool.hget(m, L.W_CSUM_DATA) == 0xFFFF
            assert pool.tstamp(m, L.TS_DMA) == 5000 and pool.tstamp(m, L.TS_WIRE) == 100 + i
            assert pool.storage(m)[1] == L.MCLBYTES
        c = nic.counters
        total = sum(map(len, frames))
        assert (c.ipackets, c.ibytes, c.rx_dma_bytes, c.rxq_packets) == (8, total, total, [8])
        pool.freem_batch(hs)
    assert pool.audit().whole


def test_rxcsum_off_reports_nothing(pool):
    with Nic(pool, NicConfig(ring_size=64, rxcsum=False)) as nic:
        host = RxQueueHost(nic.rings, 0, pool)
        nic.receive([udp(i) for i in range(5)], 1)
        hs = host.harvest()
        assert all(pool.hget(m, L.W_CSUM_FLAGS) == 0 for m in hs)
        pool.freem_batch(hs)


def test_ring_overflow_counts_missed_and_loses_no_buffer(pool):
    with Nic(pool, NicConfig(ring_size=8, moderation=NOMOD)) as nic:
        host = RxQueueHost(nic.rings, 0, pool)
        assert nic.posted(0) == 8
        nic.receive([udp(i) for i in range(5)], 1)
        nic.receive([udp(i) for i in range(15)], 2)
        c = nic.counters
        assert (c.ipackets, c.imissed, c.rx_ring_full, c.rxq_missed) == (8, 12, 12, [12])
        hs = host.harvest()
        assert len(hs) == 8 and nic.posted(0) == 0
        pool.freem_batch(hs)
        nic.receive([udp(i) for i in range(3)], 3)  # refills and goes on
        assert c.ipackets == 11
        pool.freem_batch(host.harvest())
    assert pool.audit().whole


def test_pool_exhaustion_is_counted_not_raised(pool_name):
    cfg = PoolConfig(nmbufs=64, nclusters=24, njumbop=1, njumbo9=1, njumbo16=1, bucket=4)
    with MbufPool.create(pool_name, cfg, owner="nic") as pool:
        with Nic(pool, NicConfig(ring_size=64, moderation=NOMOD)) as nic:
            host = RxQueueHost(nic.rings, 0, pool)
            assert nic.posted(0) < 64 and nic.counters.denied > 0
            nic.receive([udp(i) for i in range(40)], 1)
            c = nic.counters
            assert c.ipackets + c.rx_nobuf == 40 and c.rx_nobuf > 0 and c.imissed == c.rx_nobuf
            assert pool.stats().getcl_denied > 0
            pool.freem_batch(host.harvest())
        assert pool.audit().whole


def test_rss_spreads_flows_like_nicemu_rss(pool):
    key = bytes(range(40))
    with Nic(pool, NicConfig(rx_queues=4, rss_key=key, moderation=NOMOD, ring_size=128)) as nic:
        hosts = [RxQueueHost(nic.rings, q, pool) for q in range(4)]
        ref = Rss(key, 4, udp=True)
        frames = [udp(i) for i in range(100)] + [tcp(i) for i in range(100)] + \
            [udp(i, v6=True) for i in range(50)]
        nic.receive(frames, 1)
        want = [ref.queue_of(ref.hash_frame(f)[0]) for f in frames]
        assert nic.counters.rxq_packets == [want.count(q) for q in range(4)]
        for q, h in enumerate(hosts):
            hs = h.harvest()
            for m in hs:
                assert ref.queue_of(pool.hget(m, L.W_FLOWID)) == q
            assert sorted(pool.chain_bytes(m) for m in hs) == \
                sorted(f for f, w in zip(frames, want) if w == q)
            pool.freem_batch(hs)
        assert min(nic.counters.rxq_packets) > 30


frame_kinds = st.sampled_from(["udp", "tcp", "udp6", "tcp6", "vlan", "icmp", "short", "junk",
                               "badcs", "opts", "frag", "tfrag", "udp0", "big"])


def _frame(kind: str, i: int) -> bytes:
    if kind == "udp":
        return udp(i)
    if kind == "tcp":
        return tcp(i, 100)
    if kind == "udp6":
        return udp(i, 90, v6=True)
    if kind == "tcp6":
        return build_tcp_frame(src_ip="fd00::1", dst_ip=f"fd00::{i + 2:x}", src_port=5,
                               dst_port=6, payload=b"z" * 30)
    if kind == "vlan":
        return udp(i, vlan=7)
    if kind == "icmp":
        return build_icmp_echo_frame(src_ip="10.0.0.1", dst_ip="10.0.0.2", ident=i, seq=1)
    if kind == "short":
        return udp(i)[:38]
    if kind == "junk":
        return bytes(range(64))
    if kind == "badcs":
        return tcp(i, tcp_checksum=0x4242)
    if kind in ("opts", "frag", "tfrag"):
        l4 = build_udp(src_port=7, dst_port=8, payload=b"q" * 30, src_ip="10.0.0.1",
                       dst_ip="10.0.0.2")
        ip = build_ipv4(src="10.0.0.1", dst="10.0.0.2", proto=IPPROTO_UDP, payload=l4,
                        options=b"\x94\x04\x00\x00" if kind == "opts" else b"",
                        more_fragments=kind != "opts", frag_offset=8 * (kind == "tfrag"))
        return build_ether(dst=DEFAULT_DST_MAC, src=DEFAULT_SRC_MAC, ethertype=ETHERTYPE_IP,
                           payload=ip)
    if kind == "udp0":
        return udp(i, udp_checksum=0)
    return udp(i, 3000)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(frame_kinds, min_size=1, max_size=40), udp_rss=st.booleans())
def test_batch_classification_equals_per_frame(pool, kinds, udp_rss):
    frames = [_frame(k, i) for i, k in enumerate(kinds)]
    with Nic(pool, NicConfig(ring_size=64, rx_queues=3, rss_udp=udp_rss), rings_name=pool.name + ".c") as nic:
        batch = nic.classify(frames)
        ref = Rss(queues=3, udp=udp_rss)
        for i, f in enumerate(frames):
            h, t = ref.hash_frame(f)
            assert (batch.hashes[i], batch.htypes[i], batch.queues[i]) == (h, t, ref.queue_of(h))
            assert (batch.csum_flags[i], batch.csum_data[i]) == off.rx_csum_frame(f), kinds[i]


def _common(kind: str, i: int, size: int) -> bytes:
    """A frame of the kind the compiled classifier takes (untagged IPv4, 20-byte
    header, TCP or UDP), sized `size`, with its checksums right or one wrong."""
    if kind == "udp":
        return udp(i, size)
    if kind == "tcp":
        return tcp(i, size)
    if kind == "badcs":
        return tcp(i, size, tcp_checksum=0x4242)
    f = bytearray(udp(i, size))  # "badip": the IP header checksum wrong
    f[24] ^= 0x5A
    return bytes(f)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.tuples(st.sampled_from(["udp", "tcp", "badcs", "badip"]),
                                 st.integers(60, 1514)), min_size=1, max_size=40),
       udp_rss=st.booleans(), rxcsum=st.booleans())
def test_compiled_classification_of_the_common_kind_equals_per_frame(pool, frames, udp_rss,
                                                                     rxcsum):
    """One frame or a batch of the common kind is classified in one compiled pass
    (nicemu.kernels.classify_v4): the same hashes, queues and checksum verdicts as
    the per-frame references (odd lengths, Ethernet padding and both checksums
    wrong included); none at all without rxcsum."""
    fr = [_common(k, i, n) for i, (k, n) in enumerate(frames)]
    with Nic(pool, NicConfig(ring_size=64, rx_queues=3, rss_udp=udp_rss, rxcsum=rxcsum),
             rings_name=pool.name + ".k") as nic:
        batch = nic.classify(fr)
        assert batch.flat is not None  # (the compiled pass took them)
        ref = Rss(queues=3, udp=udp_rss)
        for i, f in enumerate(fr):
            h, t = ref.hash_frame(f)
            assert (batch.hashes[i], batch.htypes[i], batch.queues[i]) == (h, t, ref.queue_of(h))
            want = off.rx_csum_frame(f) if rxcsum else (0, 0)
            assert (batch.csum_flags[i], batch.csum_data[i]) == want, frames[i]


_TXFL = st.sampled_from([L.CSUM_IP, L.CSUM_UDP, L.CSUM_TCP, L.CSUM_IP | L.CSUM_UDP,
                         L.CSUM_IP | L.CSUM_TCP, L.CSUM_IP6_UDP])


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(["udp", "tcp", "frag", "opts", "v6", "vlan", "short", "icmp",
                             "trunc"]),
       size=st.integers(42, 1514), flags=_TXFL, garbage=st.binary(min_size=4, max_size=4))
def test_compiled_txcsum_equals_the_per_frame_path(kind, size, flags, garbage):
    """txcsum of the common kind (nicemu.kernels.tx_csum_v4) writes the bytes
    offload.tx_csum_frames writes, whatever the checksum fields held before
    (odd lengths and Ethernet padding included); any other frame it refuses,
    untouched; and scapy agrees with the checksums it fills."""
    from nicemu import kernels as nk

    base = {"udp": "udp", "tcp": "tcp", "icmp": "udp"}.get(kind, "udp")
    f = bytearray(_common(base, 3, max(size, 60)))
    if kind == "tcp" and size < 54:
        f = bytearray(_common("tcp", 3, 60))
    f[24:26] = garbage[:2]
    f[40:42] = garbage[2:]  # (UDP's checksum field; inside TCP's ack number)
    if kind == "frag":
        f[20] |= 0x20
    elif kind == "opts":
        f[14] = 0x46
    elif kind == "v6":
        f[12:14] = b"\x86\xdd"
    elif kind == "vlan":
        f[12:14] = b"\x81\x00"
    elif kind == "short":
        f = f[:33]
    elif kind == "icmp":
        f[23] = 1
    elif kind == "trunc":
        f[16:18] = (len(f) - 13).to_bytes(2, "big")
    ref = bytearray(f)
    want = off.tx_csum_frames([ref], [flags])
    got = bytearray(f)
    k = nk.tx_csum_v4(np.frombuffer(got, np.uint8), flags)
    if kind in ("udp", "tcp"):
        assert k == want and got == ref
        p = Ether(bytes(got))
        if flags & L.CSUM_IP:
            again = p.copy()
            del again[IP].chksum
            assert Ether(bytes(again))[IP].chksum == p[IP].chksum
    else:
        assert k == -1 and got == f


def test_interrupt_by_count_masking_and_rearm(pool):
    cfg = NicConfig(ring_size=64, moderation=ModerationConfig(rx_frames=4, rx_usecs=1000,
                                                              mode="delay"))
    with Nic(pool, cfg) as nic:
        host = RxQueueHost(nic.rings.name, 0, pool)  # attach by name, as an ithread does
        try:
            assert nic.receive([udp(i) for i in range(3)], 0) == []
            assert nic.receive([udp(3)], 1) == [0]
            assert host.masked and nic.counters.interrupts == 1
            assert nic.receive([udp(i) for i in range(10)], 2) == []  # masked
            assert nic.poll_timers(10**9) == []
            pool.freem_batch(host.harvest(5))
            host.rearm()  # re-armed with packets still waiting: an interrupt follows
            assert nic.next_deadline() is not None
            assert nic.poll_timers(3) == [0]
            assert nic.counters.rxq_interrupts == [2]
            pool.freem_batch(host.harvest())
            host.rearm()
            assert nic.poll_timers(4) == []  # nothing waiting: just re-armed
            assert not host.masked and nic.next_deadline() is None
        finally:
            host.close()


def test_interrupt_by_time(pool):
    cfg = NicConfig(ring_size=64, moderation=ModerationConfig(rx_frames=64, rx_usecs=50,
                                                              mode="delay"))
    with Nic(pool, cfg) as nic:
        host = RxQueueHost(nic.rings, 0, pool)
        assert nic.receive([udp(0)], 1000) == []
        assert nic.next_deadline() == 1000 + 50 * US
        assert nic.poll_timers(1000 + 49 * US) == []
        assert nic.poll_timers(1000 + 50 * US) == [0]
        assert nic.moderation.reasons["timer"] == 1
        pool.freem_batch(host.harvest())


def test_interrupt_throttle_itr(pool):
    """The default (itr): a frame on a quiet queue interrupts at once; frames within
    the interval after that interrupt wait for it to run out."""
    cfg = NicConfig(ring_size=64, moderation=ModerationConfig(rx_frames=64, rx_usecs=50))
    with Nic(pool, cfg) as nic:
        host = RxQueueHost(nic.rings, 0, pool)
        try:
            assert nic.receive([udp(0)], 1000) == [0]
            pool.freem_batch(host.harvest())
            host.rearm()
            assert nic.poll_timers(2000) == [] and not host.masked
            assert nic.receive([udp(1)], 20 * US) == []  # 19 us after the interrupt
            assert nic.next_deadline() == 1000 + 50 * US
            assert nic.poll_timers(1000 + 50 * US) == [0]
            assert nic.counters.rxq_interrupts == [2]
            pool.freem_batch(host.harvest())
        finally:
            host.close()


def test_polling_mode_keeps_interrupts_off(pool):
    cfg = NicConfig(ring_size=64, moderation=ModerationConfig(rx_frames=1, rx_usecs=0))
    with Nic(pool, cfg) as nic:
        host = RxQueueHost(nic.rings, 0, pool)
        host.set_polling(True)
        assert nic.receive([udp(i) for i in range(6)], 1) == []
        got = host.harvest(4)  # a quota per round
        assert len(got) == 4 and host.pending() == 2
        pool.freem_batch(got + host.harvest(4))
        host.set_polling(False)
        host.rearm()
        assert nic.poll_timers(2) == []
        assert nic.receive([udp(0)], 3) == [0]
        pool.freem_batch(host.harvest())


def test_jumbo_frames_land_in_big_clusters(pool):
    with Nic(pool, NicConfig(ring_size=64, moderation=NOMOD)) as nic:
        host = RxQueueHost(nic.rings, 0, pool)
        sizes = [60, 2048, 2049, 4096, 5000, 9216, 9217, 16384, 16385, 0]
        frames = [udp(i, s) if s > 60 else udp(i) for i, s in enumerate(sizes[:-2])]
        frames += [b"\0" * 16385, b""]
        nic.receive(frames, 1)
        hs = host.harvest()
        caps = [pool.storage(m)[1] for m in hs]
        assert caps == [2048, 2048, 4096, 4096, 9216, 9216, 16384, 16384]
        assert [pool.chain_bytes(m) for m in hs] == frames[:8]
        assert nic.counters.ierrors == 2
        assert nic.counters.rx_dma_bytes == sum(map(len, frames[:8]))
        pool.freem_batch(hs)
    assert pool.audit().whole


def test_rx_buf_size_config(pool):
    with pytest.raises(ValueError, match="2048, 4096, 9216, 16384"):
        NicConfig(rx_buf_size=3000)
    with Nic(pool, NicConfig(rx_buf_size=4096, ring_size=8)) as nic:
        host = RxQueueHost(nic.rings, 0, pool)
        nic.receive([udp(0, 3000)], 1)
        hs = host.harvest()
        assert pool.storage(hs[0])[1] == 4096
        pool.freem_batch(hs)


@pytest.mark.parametrize("kw, msg", [
    ({"rx_queues": 0}, "1..64"), ({"ring_size": 100}, "powers of two"),
    ({"rss_key": b"x"}, "40 bytes"), ({"indirection": (5,) * 128}, "queue numbers"),
])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        NicConfig(**kw)


def _chain(pool: MbufPool, frame: bytes, pieces: int = 1) -> int:
    """A packet as the stack would post it: a pkthdr mbuf chain holding `frame`."""
    m = pool.gethdr()
    step = -(-len(frame) // pieces)
    first = frame[:step]
    assert pool.append(m, first)
    assert pool.append(m, frame[step:])
    return m


def test_tx_copies_out_and_the_driver_frees(pool):
    with Nic(pool, NicConfig(tx_ring_size=8, ring_size=64)) as nic:
        drv = TxQueueHost(nic.rings, 0, pool)
        frames = [udp(i, 60 + 300 * i) for i in range(10)]
        ms = [_chain(pool, f, pieces=2) for f in frames]
        assert drv.post(ms) == 8  # the ring holds 8; the caller keeps the rest
        assert drv.space() == 0
        out = nic.transmit(10, max_frames=5)
        assert [bytes(f) for f in out] == frames[:5]
        assert drv.reclaim_completed() == 5
        out += nic.transmit(11)
        assert [bytes(f) for f in out] == frames[:8]
        assert drv.post(ms[8:]) == 2
        out += nic.transmit(12)
        assert drv.reclaim_completed() == 5
        c = nic.counters
        assert c.opackets == 10 and c.obytes == c.tx_copy_bytes == sum(map(len, frames))
        assert pool.in_use() > 0
        assert drv.reclaim_completed() == 0
        assert [bytes(f) for f in out] == frames
    assert pool.audit().whole


def test_txcsum_and_tso_through_the_nic(pool):
    with Nic(pool, NicConfig(ring_size=64)) as nic:
        assert nic.hwassist & L.CSUM_TSO and nic.hwassist & L.CSUM_UDP
        drv = TxQueueHost(nic.rings, 0, pool)
        plain = udp(1, 200, udp_checksum=0x1111)
        m1 = _chain(pool, plain)
        pool.hset(m1, L.W_CSUM_FLAGS, L.CSUM_UDP)
        big = build_tcp_frame(src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1, dst_port=2,
                              flags=TH_ACK, payload=bytes(range(256)) * 20, tcp_checksum=0)
        m2 = _chain(pool, big, pieces=3)
        pool.hset(m2, L.W_CSUM_FLAGS, L.CSUM_TSO | L.CSUM_TCP | L.CSUM_IP)
        pool.hset(m2, L.W_VTAG, 1000 << 16)
        m3 = _chain(pool, big)
        pool.hset(m3, L.W_CSUM_FLAGS, L.CSUM_TSO)  # no tso_segsz: refused, counted
        assert drv.post([m1, m2, m3]) == 3
        out = nic.transmit(1)
        assert out[0] == udp(1, 200)
        assert len(out) == 1 + 6 and nic.counters.tso_segments == 6
        assert nic.counters.oerrors == 1
        assert all(len(f) <= 14 + 40 + 1000 for f in out[1:])
        assert all(Ether(bytes(f))[IP].len == len(f) - 14 for f in out[1:])
        assert drv.reclaim_completed() == 3
    assert pool.audit().whole


def test_lro_through_the_nic_merges_a_stream(pool):
    segs = [build_tcp_frame(src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1, dst_port=2,
                            seq=100 + 100 * i, ack=1, flags=TH_ACK, payload=bytes([i]) * 100)
            for i in range(10)]
    with Nic(pool, NicConfig(ring_size=64, lro=True, moderation=NOMOD)) as nic:
        host = RxQueueHost(nic.rings, 0, pool)
        nic.receive(segs[:4] + segs[5:], 1)  # a gap after the 4th
        hs = host.harvest()
        assert len(hs) == 2 and nic.counters.lro_queued == 7
        raw = pool.chain_bytes(hs[0])
        p = Ether(raw)
        assert p[IP].len == 20 + 20 + 400 and len(raw) == 14 + 440
        q = p.copy()
        del q[IP].chksum
        assert Ether(bytes(q))[IP].chksum == p[IP].chksum  # IP header checksum fixed
        flags = pool.hget(hs[0], L.W_CSUM_FLAGS)
        assert flags & L.CSUM_COALESCED and flags & off.RX_L4_OK == off.RX_L4_OK
        assert raw[54:] == b"".join(bytes([i]) * 100 for i in range(4))
        pool.freem_batch(hs)
    assert pool.audit().whole


def test_toe_hook_decides_what_is_delivered(pool):
    seen = []

    def toe_input(handles, queue, now_ns):
        seen.append((len(handles), queue, now_ns))
        keep = [m for m in handles.tolist() if pool.pkt_len(m) == 60]
        for m in handles.tolist():
            if m not in keep:
                pool.freem(m)
        for m in keep:
            pool.hset(m, L.W_SOCKID, 1)
        return np.array(keep)

    with pytest.raises(RuntimeError, match="toe_input"):
        with Nic(pool, NicConfig(ring_size=64, toe=True)) as nic:
            nic.receive([udp(0)], 1)
    with Nic(pool, NicConfig(ring_size=64, toe=True, moderation=NOMOD), toe_input=toe_input) as nic:
        host = RxQueueHost(nic.rings, 0, pool)
        nic.receive([udp(0), udp(1, 100), udp(2)], 7)
        hs = host.harvest()
        assert seen == [(3, 0, 7)] and len(hs) == 2
        assert all(pool.hget(m, L.W_SOCKID) == 1 for m in hs)
        pool.freem_batch(hs)
    assert pool.audit().whole


_ITHREAD = textwrap.dedent("""
    import sys, time
    from dispatch.mbuf import MbufPool
    from nicemu.nic import RxQueueHost
    pool = MbufPool.attach(sys.argv[1], owner="ithread")
    host = RxQueueHost(sys.argv[2], 0, pool)
    total, n, nbytes = int(sys.argv[3]), 0, 0
    deadline = time.monotonic() + 30
    while n < total and time.monotonic() < deadline:
        hs = host.harvest_array(64)
        if len(hs):
            nbytes += sum(pool.pkt_len(m) for m in hs.tolist())
            n += len(hs)
            pool.freem_batch(hs)
        elif host.masked:
            host.rearm()
    host.close()
    pool.close()
    print(n, nbytes)
""")


def test_ithread_in_another_process_harvests_and_frees(pool):
    total = 3000
    with Nic(pool, NicConfig(ring_size=256, moderation=ModerationConfig(rx_frames=32))) as nic:
        proc = subprocess.Popen([sys.executable, "-c", _ITHREAD, pool.name, nic.rings.name,
                                 str(total)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            sent = 0
            now = 0
            frames = [udp(i, 100) for i in range(32)]
            deadline = time.monotonic() + 30
            while sent < total and time.monotonic() < deadline and proc.poll() is None:
                now += 1000
                before = nic.counters.ipackets
                nic.receive(frames[: min(32, total - sent)], now)
                nic.poll_timers(now)
                sent += nic.counters.ipackets - before
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert out.split() == [str(total), str(total * 100)]
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, 9)
                proc.wait()
    assert pool.audit().whole


@pytest.mark.parametrize("rxcsum", [False, True])
def test_small_and_large_batches_write_the_same_pkthdr(pool, rxcsum):
    frames = [udp(i, 60 + i) for i in range(12)] + [udp(i, 80, udp_checksum=0x77) for i in range(3)]
    words = {}
    for per in (1, 3, 15):
        with Nic(pool, NicConfig(ring_size=64, rxcsum=rxcsum, moderation=NOMOD)) as nic:
            host = RxQueueHost(nic.rings, 0, pool)
            for i in range(0, len(frames), per):
                nic.receive(frames[i : i + per], 42, wire_stamps=list(range(i, i + per)))
            hs = host.harvest()
            words[per] = [(pool.w[(m << 6) + L.W_LEN], list(pool.w[(m << 6) + 8 : (m << 6) + 14]),
                           pool.tstamp(m, L.TS_WIRE), pool.tstamp(m, L.TS_DMA),
                           pool.chain_bytes(m)) for m in hs]
            assert nic.counters.rx_csum_l4_bad == (3 if rxcsum else 0)
            pool.freem_batch(hs)
    assert words[1] == words[3] == words[15]


@pytest.mark.parametrize("txcsum", [True, False])
@pytest.mark.parametrize("tso", [True, False])
def test_hwassist_is_what_the_hosts_driver_sets(pool, txcsum, tso):
    # the host's output path reads if_hwassist from its interfaces (dispatch side),
    # the NIC states its own: the two must agree, or work is done twice or never
    from dispatch.stages.route import driver_hwassist

    with Nic(pool, NicConfig(ring_size=8, txcsum=txcsum, tso=tso)) as nic:
        assert nic.hwassist == driver_hwassist(txcsum=txcsum, tso=tso)
