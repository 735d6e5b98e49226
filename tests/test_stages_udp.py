"""udp_input and udp_output, against datagrams built and checked by scapy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
from scapy.packet import Raw

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.mbuf import layout as L
from dispatch.stages import socket as so
from dispatch.stages import udp
from dispatch.stages.base import Ctx, Runner, StackConfig
from dispatch.stages.socktab import SocketTable

HOST, PEER = "10.0.0.1", "192.0.2.9"
HOST6, PEER6 = "fd00::1", "2001:db8::9"


class Env:
    def __init__(self, pool: MbufPool, **cfg: object) -> None:
        self.pool = pool
        self.tab = SocketTable.create(None, 64)
        self.ctx = Ctx(pool, config=StackConfig(**cfg), sockets=self.tab)
        self.runner = Runner(self.ctx, {"udp_input": udp.udp_input, "soreceive": so.soreceive,
                                        "sosend": so.sosend_stage,
                                        "udp_output": udp.udp_output})

    def load(self, pkt: object, *, l3: int | None = None, csum_flags: int = 0,
             csum_data: int = 0) -> int:
        data = bytes(pkt)
        m = self.pool.getcl(len(data))
        assert self.pool.append(m, data)
        if l3 is None:
            l3 = 40 if data[0] >> 4 == 6 else (data[0] & 15) * 4
        self.pool.hset(m, L.W_HDRLENS, l3 << 8)
        self.pool.hset(m, L.W_CSUM_FLAGS, csum_flags)
        self.pool.hset(m, L.W_CSUM_DATA, csum_data)
        return m

    def run(self, *pkts: object, **kw: int) -> dict[str, list[int]]:
        return self.runner.run("udp_input", [self.load(p, **kw) for p in pkts], 1000)

    def drops(self) -> dict[str, int]:
        return dict(self.ctx.stats.drops.get("udp_input", {}))


@pytest.fixture
def env(pool_name: str) -> Iterator[Env]:
    pool = MbufPool.create(pool_name, PoolConfig(nmbufs=1024, nclusters=512, njumbop=8,
                                                 njumbo9=0, njumbo16=0))
    e = Env(pool, digest=True)
    yield e
    e.tab.close()
    audit = pool.audit()
    pool.close()
    assert audit.whole, audit


def dgram(payload: bytes, *, dport: int = 53, sport: int = 5000, v6: bool = False,
          **kw: object) -> object:
    ip = IPv6(src=PEER6, dst=HOST6) if v6 else IP(src=PEER, dst=HOST)
    return ip / UDP(sport=sport, dport=dport, **kw) / Raw(payload)


def test_delivery_v4_v6_and_counters(env: Env) -> None:
    i4 = env.tab.bind_udp("0.0.0.0", 53)
    i6 = env.tab.bind_udp("::", 53)
    out = env.run(*[dgram(bytes([k]) * (k + 1)) for k in range(10)], dgram(b"six", v6=True))
    assert out == {}
    assert env.tab.info(i4).bytes_delivered == sum(range(1, 11))
    assert env.tab.info(i6).bytes_delivered == 3 and env.tab.info(i4).packets_delivered == 10
    c = env.ctx.stats.counters
    assert c["udp.udps_ipackets"] == 11 and c["copies.copyout_bytes"] == 58
    assert env.tab.info(i4).sb_cc == 0


def test_exact_before_wildcard(env: Env) -> None:
    wild = env.tab.bind_udp("0.0.0.0", 53)
    exact = env.tab.connect_udp(HOST, 53, PEER, 7000)
    env.run(dgram(b"a", sport=7000), dgram(b"bb", sport=7001))
    assert env.tab.info(exact).bytes_delivered == 1 and env.tab.info(wild).bytes_delivered == 2


def test_noport_badsum_nosum_badlen_hdrops(env: Env) -> None:
    env.tab.bind_udp(HOST, 53)
    env.run(dgram(b"x", dport=54))
    assert env.drops() == {"noport": 1}
    env.run(*[dgram(b"y" * 10, chksum=0x1234 + k) for k in range(5)])  # batch (numpy) path
    env.run(dgram(b"y", chksum=0x1234))  # per-packet path
    assert env.drops()["badsum"] == 6
    env.run(dgram(b"z", chksum=0))  # no checksum over IPv4: fine, counted
    assert env.ctx.stats.counters["udp.udps_nosum"] == 1
    env.tab.bind_udp("::", 53)
    env.run(dgram(b"z", chksum=0, v6=True))  # invalid over IPv6
    assert env.drops()["badsum"] == 7
    env.run(dgram(b"long", len=400))
    env.run(dgram(b"short", len=4))
    assert env.drops()["badlen"] == 2
    env.run(IP(src=PEER, dst=HOST, proto=17) / Raw(b"abc"))
    assert env.drops()["hdrops"] == 1
    c = env.ctx.stats.counters
    assert c["udp.udps_badsum"] == 7 and c["udp.udps_noport"] == 1
    assert c["udp.udps_hdrops"] == 1 and c["udp.udps_badlen"] == 2


def test_offloaded_checksums(env: Env) -> None:
    i = env.tab.bind_udp(HOST, 53)
    ok = L.CSUM_DATA_VALID | L.CSUM_PSEUDO_HDR
    env.run(dgram(b"abc", chksum=0x1111), csum_flags=ok, csum_data=0xFFFF)
    assert env.tab.info(i).bytes_delivered == 3
    env.run(dgram(b"abc"), csum_flags=ok, csum_data=0x1234)
    assert env.drops() == {"badsum": 1}


def test_fullsock(pool_name: str) -> None:
    pool = MbufPool.create(pool_name, PoolConfig(nmbufs=256, nclusters=128, njumbop=0,
                                                 njumbo9=0, njumbo16=0))
    try:
        env = Env(pool, sb_hiwat=100)
        env.runner = Runner(env.ctx, {"udp_input": udp.udp_input})  # the user is not reading
        i = env.tab.bind_udp(HOST, 53)
        out = env.run(*[dgram(b"q" * 30) for _ in range(5)])
        assert len(out["soreceive"]) == 3 and env.drops() == {"fullsock": 2}
        assert env.tab.sb_cc(i) == 90 and env.ctx.stats.counters["udp.udps_fullsock"] == 2
        Runner(env.ctx, {"soreceive": so.soreceive}).run("soreceive", out["soreceive"], 2)
        assert env.tab.sb_cc(i) == 0
        out = env.run(dgram(b"q" * 30))
        assert len(out["soreceive"]) == 1
        pool.freem_batch(out["soreceive"])
        env.tab.close()
    finally:
        pool.close()


def test_ipv6_extension_headers_and_auto_sockets(env: Env) -> None:
    env.ctx.config = StackConfig(auto_sockets=True)
    p = IPv6(src=PEER6, dst=HOST6) / IPv6ExtHdrDestOpt() / UDP(sport=1, dport=2) / Raw(b"ext")
    env.run(p, l3=48)
    env.run(dgram(b"auto", dport=999))
    socks = {s.local: s for s in env.tab.sockets()}
    assert socks[f"[{HOST6}]:2"].bytes_delivered == 3 and socks[f"[{HOST6}]:2"].auto
    assert socks[f"{HOST}:999"].remote == f"{PEER}:5000"


def test_ip_padding_is_trimmed(env: Env) -> None:
    i = env.tab.bind_udp(HOST, 53)
    raw = bytes(dgram(b"pad")) + b"\0" * 20  # ethernet padding past the datagram
    env.run(IP(raw))
    assert env.tab.info(i).bytes_delivered == 3


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("txcsum", [False, True])
def test_udp_output(env: Env, v6: bool, txcsum: bool) -> None:
    env.ctx.extra["txcsum"] = txcsum
    i = env.tab.connect_udp(HOST6 if v6 else HOST, 53, PEER6 if v6 else PEER, 7777)
    out = so.sosend(env.ctx, i, b"hello, world" * 3)
    out = env.runner.run("udp_output", out["udp_output"], 5)
    (m,) = out["ip6_output" if v6 else "ip_output"]
    raw = env.pool.chain_bytes(m)
    flags = env.pool.hget(m, L.W_CSUM_FLAGS)
    env.pool.freem(m)
    pkt = IPv6(raw) if v6 else IP(raw)
    u = pkt[UDP]
    assert (u.sport, u.dport, u.len) == (53, 7777, 8 + 36) and bytes(u.payload) == b"hello, world" * 3
    again = pkt.copy()
    del again[UDP].chksum
    want = (IPv6(bytes(again)) if v6 else IP(bytes(again)))[UDP].chksum
    if txcsum:
        assert flags == (L.CSUM_UDP_IPV6 if v6 else L.CSUM_UDP) and u.chksum != want
    else:
        assert flags == 0 and u.chksum == want
    c = env.ctx.stats.counters
    assert c["copies.copyin_bytes"] == 36 and c["udp.udps_opackets"] == 1


def test_udp_output_needs_a_connected_socket(env: Env) -> None:
    i = env.tab.bind_udp(HOST, 53)
    m = so.sosend_copyin(env.ctx, i, b"x")
    env.runner.run("udp_output", [m], 1)
    assert env.ctx.stats.drops["udp_output"]["noaddr"] == 1
