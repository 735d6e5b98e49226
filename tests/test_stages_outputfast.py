"""The fused udp -> ip -> ether output path against the stages run one by one.

Two identical setups (pool, socket table, interfaces, offloads) send the same
random batches of datagrams (copied in by `sosend_copyin`, accounted by
`sosend_stage`): one through a Runner holding the registered output stages
(so it takes the fused path whenever a batch allows), the other through a
Runner that never fuses. Batches mix the common case (IPv4 connected
sockets, payloads in the packet-header mbuf or in a cluster) with what the
fused path must refuse: IPv6 sockets, unconnected or unknown sockets,
payloads that need a chain or exceed the MTU, read-only mbufs, a routing
table, a VLAN, txcsum off or checksums the interface does not do, missing
neighbours. Everything observable must be identical: routed lists, drops,
counters, the socket table, every mbuf header word, and the bytes of every
frame handed to the driver; scapy checks the headers of what the fused
path builds.
"""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import IP, UDP, Ether

import dispatch.stages.all  # noqa: F401  (registers every stage)
from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.mbuf import layout as L
from dispatch.stages import base as S
from dispatch.stages import outputfast
from dispatch.stages import socket as so
from dispatch.stages.base import Ctx, Runner, StackConfig, as_list
from dispatch.stages.route import (
    Interface,
    NeighborTable,
    RouteTable,
    driver_hwassist,
    with_hwassist,
)
from dispatch.stages.socktab import SocketTable

HOST = "10.0.0.1"
PEER = "192.0.2.9"
HOST_MAC = b"\x02\x00\x00\x00\x00\x01"
PEER_MAC = b"\x02\x00\x00\x00\x00\x09"
_names = itertools.count()
FULL = driver_hwassist(txcsum=True, tso=False)

packet = st.fixed_dictionaries({
    "size": st.sampled_from([0, 1, 18, 64, 72, 73, 300, 1400, 1472, 1473, 1999, 2100]),
    "sock": st.sampled_from(["v4", "v4", "v4", "any", "v6", "unconnected", "none"]),
    "rdonly": st.sampled_from([False] * 9 + [True]),
})
env = st.fixed_dictionaries({
    "txcsum": st.sampled_from([True, True, False]),
    "hwassist": st.sampled_from([FULL, FULL, 0, L.CSUM_IP]),
    "routes": st.sampled_from([False, False, False, True]),
    "neighbors": st.sampled_from(["none", "none", "known", "unknown"]),
    "vlan": st.sampled_from([None, None, None, 7]),
})


class Setup:
    def __init__(self, e: dict, fused: bool) -> None:
        self.pool = MbufPool.create(f"fp-out-{os.getpid()}-{next(_names)}",
                                    PoolConfig(nmbufs=1024, nclusters=512, njumbop=8,
                                               njumbo9=4, njumbo16=0))
        self.tab = SocketTable.create(None, 64)
        routes = None
        if e["routes"]:
            routes = RouteTable()
            routes.add("192.0.2.0/24", ifindex=0)
            routes.add("fd00::/64", ifindex=0)
        neighbors = None
        if e["neighbors"] != "none":
            neighbors = NeighborTable()
            neighbors.add("fd00::9", PEER_MAC)
            if e["neighbors"] == "known":
                neighbors.add(PEER, PEER_MAC)
        self.ctx = Ctx(self.pool, config=StackConfig(local_v4=(HOST,)), sockets=self.tab,
                       routes=routes, neighbors=neighbors)
        ifs = (Interface(0, HOST_MAC, (HOST, "fd00::1"), vlan=e["vlan"]),)
        self.ctx.extra["interfaces"] = with_hwassist(ifs, e["hwassist"])
        self.ctx.extra["txcsum"] = e["txcsum"]
        self.socks = {
            "v4": self.tab.connect_udp(HOST, 53, PEER, 1001),
            "any": self.tab.connect_udp("0.0.0.0", 54, PEER, 1002),
            "v6": self.tab.connect_udp("fd00::1", 55, "fd00::9", 1003),
            "unconnected": self.tab.bind_udp(HOST, 56),
        }
        reg = S.registry()
        stages = {s: reg[s] for s in (S.UDP_OUTPUT, S.IP_OUTPUT, S.IP6_OUTPUT,
                                      S.ETHER_OUTPUT)}
        self.runner = Runner(self.ctx, stages, fuse=fused)

    def load(self, p: dict, k: int) -> int:
        payload = bytes((k + j) & 0xFF for j in range(p["size"]))
        sid = self.socks.get(p["sock"], 0)
        m = so.sosend_copyin(self.ctx, sid, payload)
        assert m
        if p["sock"] == "none":
            self.pool.hset(m, L.W_SOCKID, 0)
        if p["rdonly"]:
            self.pool.hset(m, L.W_FLAGS, self.pool.hget(m, L.W_FLAGS) | L.M_RDONLY)
        return m

    def close(self) -> None:
        self.tab.close()
        audit = self.pool.audit()
        self.pool.close()
        assert audit.whole, audit


def run_batch(s: Setup, spec: list[dict]) -> dict:
    hs = [s.load(p, k) for k, p in enumerate(spec)]
    routed = so.sosend_stage(s.ctx, hs)
    out: dict[str, list[int]] = {}
    for stage, b in routed.items():
        for k, v in s.runner.run(stage, b, 1000).items():
            out.setdefault(k, []).extend(as_list(v))
    tx = out.pop(S.IF_TRANSMIT, [])
    frames = [s.pool.copydata(m, 0, s.pool.pkt_len(m)) for m in tx]
    got = {"tx": tx, "rest": out, "frames": frames,
           "counters": dict(s.ctx.stats.counters),
           "drops": {k: dict(v) for k, v in s.ctx.stats.drops.items() if v},
           "table": bytes(s.tab.buf), "headers": s.pool.headers.tobytes(),
           "ip_id": s.ctx.extra.get("ip_id")}
    for m in tx:
        s.pool.freem(m)
    for hs2 in out.values():
        for m in hs2:
            s.pool.freem(m)
    return got


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(e=env, batches=st.lists(st.one_of(
    st.lists(packet, min_size=1, max_size=10),
    st.lists(st.fixed_dictionaries({"size": st.sampled_from([18, 64, 1400]),
                                    "sock": st.sampled_from(["v4", "any"]),
                                    "rdonly": st.just(False)}), min_size=1, max_size=32)),
    min_size=1, max_size=3))
def test_fused_matches_stage_by_stage(e: dict, batches: list[list[dict]]) -> None:
    a, b = Setup(e, True), Setup(e, False)
    assert a.runner.fused and not b.runner.fused
    try:
        for spec in batches:
            fa, fb = run_batch(a, spec), run_batch(b, spec)
            for key in fa:
                assert fa[key] == fb[key], key
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("size", [18, 64, 1400])
def test_fused_path_is_taken_and_scapy_reads_what_it_built(size: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Ordinary datagrams go through the fused code (no fallback); the frames
    parse, with the header fields the stages write and the checksums left to
    the NIC (the IP one zero, the UDP one the pseudo-header sum)."""
    e = {"txcsum": True, "hwassist": FULL, "routes": False, "neighbors": "none", "vlan": None}
    s = Setup(e, True)
    taken: list[int] = []
    real = outputfast.udp4_output_fused

    def spy(ctx: Ctx, batch: list[int], entry: str):  # type: ignore[no-untyped-def]
        r = real(ctx, batch, entry)
        taken.append(r is not None)
        return r

    s.runner.fused[S.UDP_OUTPUT] = spy
    try:
        got = run_batch(s, [{"size": size, "sock": "v4", "rdonly": False}] * 4)
        assert taken == [True] and len(got["frames"]) == 4
        for k, f in enumerate(got["frames"]):
            p = Ether(f)
            assert p[Ether].src == "02:00:00:00:00:01" and p[IP].src == HOST
            assert p[IP].dst == PEER and p[IP].ttl == 64 and p[IP].len == 28 + size
            assert p[IP].id == k and p[IP].chksum == 0
            assert p[UDP].sport == 53 and p[UDP].dport == 1001 and p[UDP].len == 8 + size
            assert len(p[UDP].payload) == size
    finally:
        s.close()
