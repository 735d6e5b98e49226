"""ether_input / ether_output against frames built by scapy."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from stage_helpers import SMALL, drops, free_all, load  # noqa: F401

from dispatch.mbuf import MbufPool
from dispatch.mbuf import layout as L
from dispatch.stages.base import Ctx, Runner, StackConfig
from dispatch.stages.ether import ether_input, ether_output
from dispatch.stages.route import Interface, NeighborTable, RouteTable


def run_in(pool: MbufPool, frames: list[int], **cfg: object) -> tuple[Ctx, dict[str, list[int]]]:
    ctx = Ctx(pool, StackConfig(**cfg))  # type: ignore[arg-type]
    out = Runner(ctx, {"ether_input": ether_input}).run("ether_input", frames, 0)
    return ctx, out


V4 = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
           / IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=1, dport=2) / (b"a" * 20))
V6 = bytes(Ether(dst="02:00:00:00:00:02") / IPv6(src="fd00::2", dst="fd00::1") / UDP() / b"b")


def test_demux_v4_v6_and_strip(pool: MbufPool) -> None:
    a, b = load(pool, V4), load(pool, V6)
    ctx, out = run_in(pool, [a, b])
    assert out == {"ip_input": [a], "ip6_input": [b]}
    for m, f in ((a, V4), (b, V6)):
        assert pool.chain_bytes(m) == f[14:]
        assert pool.pkt_len(m) == len(f) - 14
        assert pool.hget(m, L.W_HDRLENS) == 14
        assert not pool.flags(m) & (L.M_VLANTAG | L.M_BCAST | L.M_MCAST)
    assert ctx.stats.counters["ether.if_ipackets"] == 2
    assert ctx.stats.counters["ether.if_ibytes"] == len(V4) + len(V6)
    assert drops(ctx) == {}
    free_all(pool, out)


def test_vlan_tag_recorded(pool: MbufPool) -> None:
    f = bytes(Ether() / Dot1Q(vlan=42, prio=5) / IP(dst="10.0.0.1") / UDP())
    m = load(pool, f)
    ctx, out = run_in(pool, [m])
    assert out == {"ip_input": [m]}
    assert pool.flags(m) & L.M_VLANTAG
    assert pool.hget(m, L.W_VTAG) & 0xFFFF == (5 << 13) | 42
    assert pool.hget(m, L.W_HDRLENS) == 18
    assert pool.chain_bytes(m) == f[18:]
    free_all(pool, out)


def test_group_addresses_flagged(pool: MbufPool) -> None:
    bc = load(pool, bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / IP() / UDP()))
    mc = load(pool, bytes(Ether(dst="01:00:5e:00:00:01") / IP() / UDP()))
    ctx, out = run_in(pool, [bc, mc])
    assert pool.flags(bc) & L.M_BCAST and not pool.flags(bc) & L.M_MCAST
    assert pool.flags(mc) & L.M_MCAST and not pool.flags(mc) & L.M_BCAST
    free_all(pool, out)


def test_drops_are_counted(pool: MbufPool) -> None:
    frames = [
        V4[:10],  # shorter than an Ethernet header
        bytes(Ether() / ARP()),
        bytes(Ether(type=0x88CC) / (b"\0" * 40)),  # LLDP
        bytes(Ether() / Dot1Q(vlan=1) / Dot1Q(vlan=2) / IP() / UDP()),  # Q-in-Q
        bytes(Ether() / Dot1Q(vlan=1))[:16],  # tag cut off
        bytes(Ether() / IP() / UDP() / (b"x" * 1600)),  # over the MTU
    ]
    hs = [load(pool, f) for f in frames]
    ctx, out = run_in(pool, hs)
    assert out == {}
    assert drops(ctx) == {"ether_input": {"tooshort": 2, "arp": 1, "noproto": 2, "toolong": 1}}
    free_all(pool, out)


def test_coalesced_frames_may_exceed_the_mtu(pool: MbufPool) -> None:
    f = bytes(Ether() / IP(dst="10.0.0.1") / UDP() / (b"x" * 1600))
    m = load(pool, f, csum_flags=L.CSUM_COALESCED)
    ctx, out = run_in(pool, [m])
    assert out == {"ip_input": [m]}
    free_all(pool, out)


@pytest.mark.parametrize("cuts", [(6,), (3, 9, 15), (13,), (14,), (16,)])
def test_header_split_over_a_chain_is_pulled_up(pool: MbufPool, cuts: tuple[int, ...]) -> None:
    f = bytes(Ether() / Dot1Q(vlan=7) / IP(dst="10.0.0.1") / UDP() / b"payload")
    m = load(pool, f, cuts=cuts)
    ctx, out = run_in(pool, [m])
    (h,) = out["ip_input"]
    assert pool.chain_bytes(h) == f[18:]
    assert pool.pkt_len(h) == len(f) - 18
    assert pool.hget(h, L.W_VTAG) & 0xFFF == 7
    free_all(pool, out)


# ------------------------------------------------------------------ output

IF0 = Interface(0, bytes.fromhex("020000000002"), ("10.0.0.1", "fd00::1"))
IF1 = Interface(1, bytes.fromhex("0200000000aa"), ("192.168.1.1",), vlan=9)


def out_ctx(pool: MbufPool, *, neighbors: bool = True) -> Ctx:
    rt = RouteTable()
    rt.add("10.0.0.0/24", ifindex=0)
    rt.add("0.0.0.0/0", ifindex=0, gateway="10.0.0.254")
    rt.add("192.168.1.0/24", ifindex=1)
    rt.add("fd00::/64", ifindex=0)
    nt = NeighborTable()
    nt.add("10.0.0.254", "02:00:00:00:00:fe")
    nt.add("10.0.0.7", "02:00:00:00:00:07")
    nt.add("192.168.1.5", "02:00:00:00:01:05")
    nt.add("fd00::7", "02:00:00:00:06:07")
    return Ctx(pool, routes=rt, neighbors=nt if neighbors else None,
               extra={"interfaces": [IF0, IF1]})


def send(ctx: Ctx, pkts: list[bytes], *, lead: int = 64) -> dict[str, list[int]]:
    hs = [load(ctx.pool, p, lead=lead) for p in pkts]
    return Runner(ctx, {"ether_output": ether_output}).run("ether_output", hs, 0)


@pytest.mark.parametrize("lead", [64, 0])  # leading space, or a new mbuf in front
def test_output_frames(pool: MbufPool, lead: int) -> None:
    ctx = out_ctx(pool)
    pkts = [bytes(IP(src="10.0.0.1", dst="10.0.0.7") / UDP()),  # on link
            bytes(IP(src="10.0.0.1", dst="8.8.8.8") / UDP()),  # via the gateway
            bytes(IP(src="192.168.1.1", dst="192.168.1.5") / UDP()),  # VLAN interface
            bytes(IPv6(src="fd00::1", dst="fd00::7") / UDP())]
    out = send(ctx, pkts, lead=lead)
    hs = out["if_transmit"]
    assert len(hs) == 4
    frames = [Ether(pool.chain_bytes(m)) for m in hs]
    assert frames[0].dst == "02:00:00:00:00:07" and frames[0].src == "02:00:00:00:00:02"
    assert frames[0].type == 0x0800 and bytes(frames[0].payload) == pkts[0]
    assert frames[1].dst == "02:00:00:00:00:fe"
    assert frames[2].dst == "02:00:00:00:01:05" and frames[2].src == "02:00:00:00:00:aa"
    assert frames[2][Dot1Q].vlan == 9 and bytes(frames[2][Dot1Q].payload) == pkts[2]
    assert frames[3].type == 0x86DD and frames[3].dst == "02:00:00:00:06:07"
    assert [pool.hget(m, L.W_AUX) for m in hs] == [0, 0, 1, 0]
    assert [pool.pkt_len(m) for m in hs] == [len(p) + 14 for p in pkts[:2]] + \
        [len(pkts[2]) + 18, len(pkts[3]) + 14]
    assert ctx.stats.counters["ether.if_opackets"] == 4
    free_all(pool, out)


def test_output_uses_the_route_in_w_aux(pool: MbufPool) -> None:
    ctx = out_ctx(pool)
    m = load(pool, bytes(IP(src="10.0.0.1", dst="10.0.0.9") / UDP()), lead=64)
    pool.hset(m, L.W_AUX, ctx.routes.lookup(bytes([8, 8, 8, 8])).id + 1)  # the default route
    out = Runner(ctx, {"ether_output": ether_output}).run("ether_output", [m], 0)
    assert Ether(pool.chain_bytes(out["if_transmit"][0])).dst == "02:00:00:00:00:fe"
    free_all(pool, out)


def test_output_drops(pool: MbufPool) -> None:
    ctx = out_ctx(pool)
    out = send(ctx, [bytes(IP(dst="10.0.0.99") / UDP()),  # no neighbour entry
                     bytes(IPv6(dst="fd00::99") / UDP()),
                     b"\x00" * 30])  # not IP
    assert out == {}
    assert drops(ctx) == {"ether_output": {"noneighbor": 2, "badpacket": 1}}
    free_all(pool, out)


def test_output_without_tables_goes_to_the_peer(pool: MbufPool) -> None:
    ctx = Ctx(pool, extra={"peer_mac": bytes.fromhex("02aabbccddee")})
    out = send(ctx, [bytes(IP(dst="1.2.3.4") / UDP())])
    f = Ether(pool.chain_bytes(out["if_transmit"][0]))
    assert f.dst == "02:aa:bb:cc:dd:ee" and f.src == "02:00:00:00:00:02"  # StackConfig.mac
    free_all(pool, out)
