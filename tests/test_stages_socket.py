"""The socket layer: sbappend accounting, soreceive's copyout and digests, sosend's copyin."""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Iterator

import pytest

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.mbuf import layout as L
from dispatch.stages import socket as so
from dispatch.stages.base import Ctx, Runner, StackConfig
from dispatch.stages.socktab import IPPROTO_TCP, P_STATE, Q_SND_APPENDED, SocketTable
from dispatch.stages.tcp_var import TCPS_ESTABLISHED


@pytest.fixture
def ctx(pool_name: str) -> Iterator[Ctx]:
    pool = MbufPool.create(pool_name, PoolConfig(nmbufs=512, nclusters=256, njumbop=32,
                                                 njumbo9=0, njumbo16=0))
    tab = SocketTable.create(None, 16)
    c = Ctx(pool, config=StackConfig(digest=True), sockets=tab)
    yield c
    tab.close()
    audit = pool.audit()
    pool.close()
    assert audit.whole, audit


def payload_packet(ctx: Ctx, data: bytes, *, chain: bool = False) -> int:
    pool = ctx.pool
    if chain:  # a small first mbuf, then a cluster: a two-mbuf chain
        m = pool.gethdr()
        assert pool.append(m, data)
        assert pool.next(m) or len(data) <= L.MHLEN
    else:
        m = pool.getcl(len(data))
        assert pool.append(m, data)
    return m


def test_sbappend_and_soreceive(ctx: Ctx) -> None:
    tab = ctx.sockets
    a = tab.bind_udp("0.0.0.0", 1)
    b = tab.bind_udp("0.0.0.0", 2, user=1)
    blobs = [bytes([k]) * (50 + k) for k in range(6)]
    ms = []
    ctx.now = 111
    for k, blob in enumerate(blobs):
        m = payload_packet(ctx, blob, chain=k == 5)
        so.sbappend(ctx, tab, a if k % 2 else b, m, len(blob))
        ms.append(m)
    assert ctx.pool.tstamp(ms[0], L.TS_SOCKET) == 111
    assert tab.sb_cc(a) == sum(len(x) for x in blobs[1::2])
    out = Runner(ctx, {"soreceive": so.soreceive}).run("soreceive", ms, now=222)
    assert out == {}
    assert tab.sb_cc(a) == tab.sb_cc(b) == 0
    ia, ib = tab.info(a), tab.info(b)
    assert ia.bytes_delivered == sum(len(x) for x in blobs[1::2]) and ia.packets_delivered == 3
    assert ib.user == 1
    dig = so.socket_digests(ctx)
    assert dig[a] == hashlib.sha256(b"".join(blobs[1::2])).hexdigest()
    assert dig[b] == hashlib.sha256(b"".join(blobs[0::2])).hexdigest()
    c = ctx.stats.counters
    assert c["copies.copyout_bytes"] == sum(map(len, blobs)) == c["socket.rcv_bytes"]
    assert c["socket.rcv_packets"] == 6


def test_soreceive_larger_than_the_user_buffer(ctx: Ctx) -> None:
    tab = ctx.sockets
    i = tab.bind_udp("0.0.0.0", 1)
    ctx.extra["uio"] = memoryview(bytearray(1000))
    data = bytes(range(256)) * 14
    m = payload_packet(ctx, data)
    so.sbappend(ctx, tab, i, m, len(data))
    so.soreceive(ctx, [m])
    assert so.socket_digests(ctx)[i] == hashlib.sha256(data).hexdigest()


def test_soreceive_without_socket_is_a_counted_drop(ctx: Ctx) -> None:
    m = payload_packet(ctx, b"x")
    so.soreceive(ctx, [m])
    assert ctx.stats.drops["soreceive"]["nosock"] == 1


def test_sosend_copyin_and_send_buffer(ctx: Ctx) -> None:
    tab = ctx.sockets
    u = tab.connect_udp("10.0.0.1", 5, "10.0.0.2", 6)
    out = so.sosend(ctx, u, b"abc")
    (m,) = out["udp_output"]
    assert ctx.pool.chain_bytes(m) == b"abc" and ctx.pool.hget(m, L.W_SOCKID) == u + 1
    assert ctx.pool.leadingspace(m) >= 48  # room for the headers
    assert ctx.stats.counters["copies.copyin_bytes"] == 3
    assert tab.qget(u, Q_SND_APPENDED) == 3
    ctx.pool.freem(m)
    ctx.config = StackConfig(so_snd_hiwat=10)
    with pytest.raises(BlockingIOError) as ei:
        so.sosend(ctx, u, b"x" * 8)
    assert ei.value.errno == errno.EWOULDBLOCK
    m2 = so.sosend_copyin(ctx, u, b"y" * 8)
    so.sosend_stage(ctx, [m2])
    assert ctx.stats.drops["sosend"]["sbfull"] == 1
    t = tab.listen(IPPROTO_TCP, "0.0.0.0", 80)
    with pytest.raises(OSError) as e2:
        so.sosend(ctx, t, b"z")
    assert e2.value.errno == errno.ENOTCONN


def test_tcp_copyin_uses_clusters_only(ctx: Ctx) -> None:
    tab = ctx.sockets
    k = (IPPROTO_TCP | 4 << 8, 1, 1, 2, 2)
    i, _ = tab.insert_key(k)
    tab.set(i, P_STATE, TCPS_ESTABLISHED)
    data = bytes(range(256)) * 40
    out = so.sosend(ctx, i, data)
    (m,) = out["tcp_output"]
    x = m
    while x:
        assert ctx.pool.flags(x) & L.M_EXT
        x = ctx.pool.next(x)
    assert ctx.pool.chain_bytes(m) == data
    ctx.pool.freem(m)
