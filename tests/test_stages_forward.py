"""ip_forward: LPM route, TTL / hop limit with incremental checksum, ICMP errors, out."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, IPerror
from scapy.layers.inet6 import ICMPv6TimeExceeded, IPv6
from scapy.layers.l2 import Ether
from stage_helpers import SMALL, drops, free_all, load  # noqa: F401

from dispatch.mbuf import MbufPool
from dispatch.mbuf import layout as L
from dispatch.packet.checksum import in_cksum
from dispatch.stages.base import Ctx, Runner, StackConfig
from dispatch.stages.ether import ether_input, ether_output
from dispatch.stages.forward import ip_forward
from dispatch.stages.ip import ip_input, ip_output
from dispatch.stages.ip6 import ip6_input, ip6_output
from dispatch.stages.route import Interface, NeighborTable, RouteTable

IF0 = Interface(0, bytes.fromhex("020000000002"), ("10.0.0.1", "fd00::1"))
IF1 = Interface(1, bytes.fromhex("0200000000b1"), ("10.1.0.1", "fd01::1"), mtu=600)
STAGES = {"ether_input": ether_input, "ip_input": ip_input, "ip6_input": ip6_input,
          "ip_forward": ip_forward, "ip_output": ip_output, "ip6_output": ip6_output,
          "ether_output": ether_output}


def fwd_ctx(pool: MbufPool, **cfg: object) -> Ctx:
    rt = RouteTable()
    rt.add("10.0.0.0/24", ifindex=0)
    rt.add("10.1.0.0/16", ifindex=1)
    rt.add("172.16.0.0/12", ifindex=1, gateway="10.1.0.254")
    rt.add("fd00::/64", ifindex=0)
    rt.add("fd01::/64", ifindex=1)
    rt.add("2001:db8::/32", ifindex=1, gateway="fd01::fe")
    nt = NeighborTable()
    nt.add("10.0.0.2", "02:00:00:00:00:01")
    nt.add("10.1.0.254", "02:00:00:00:01:fe")
    nt.add("10.1.2.3", "02:00:00:00:01:23")
    nt.add("fd00::2", "02:00:00:00:00:01")
    nt.add("fd01::fe", "02:00:00:00:06:fe")
    return Ctx(pool, StackConfig(forwarding=True, **cfg),  # type: ignore[arg-type]
               routes=rt, neighbors=nt, extra={"interfaces": [IF0, IF1]})


def run(ctx: Ctx, frames: list[bytes]) -> dict[str, list[int]]:
    hs = [load(ctx.pool, f) for f in frames]
    return Runner(ctx, STAGES).run("ether_input", hs, 0)


def eth() -> Ether:
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def test_forward_v4_and_v6(pool: MbufPool) -> None:
    ctx = fwd_ctx(pool)
    ins = [eth() / IP(src="10.0.0.2", dst="10.1.2.3", ttl=64, id=99) / UDP() / b"direct",
           eth() / IP(src="10.0.0.2", dst="172.20.1.1", ttl=2) / UDP() / b"via gw",
           eth() / IPv6(src="fd00::2", dst="2001:db8::9", hlim=9) / UDP() / b"six"]
    out = run(ctx, [bytes(f) for f in ins])
    hs = out["if_transmit"]
    assert len(hs) == 3
    f0, f1, f2 = (Ether(pool.chain_bytes(m)) for m in hs)
    assert (f0.dst, f0.src) == ("02:00:00:00:01:23", "02:00:00:00:00:b1")
    assert f1.dst == "02:00:00:00:01:fe" and f2.dst == "02:00:00:00:06:fe"
    for f, i in ((f0, ins[0]), (f1, ins[1])):
        assert f[IP].ttl == i[IP].ttl - 1
        assert in_cksum(bytes(f[IP])[:20]) == 0  # still valid after the RFC 1624 update
        assert f[IP].id == i[IP].id and bytes(f[IP].payload) == bytes(i[IP].payload)
    assert f2[IPv6].hlim == 8 and bytes(f2[IPv6].payload) == bytes(ins[2][IPv6].payload)
    assert [pool.hget(m, L.W_AUX) for m in hs] == [1, 1, 1]  # interface index for if_transmit
    c = ctx.stats.counters
    assert c["ip.ips_forward"] == 2 and c["ip6.ip6s_forward"] == 1
    assert drops(ctx) == {}
    free_all(pool, out)


def test_forward_drops(pool: MbufPool) -> None:
    ctx = fwd_ctx(pool)
    frames = [
        eth() / IP(src="10.0.0.2", dst="192.0.2.1") / UDP(),  # no route
        eth() / IP(src="10.0.0.2", dst="10.1.2.3", ttl=1) / UDP(),  # TTL exceeded
        eth() / IP(src="10.0.0.2", dst="10.1.2.3") / UDP() / (b"x" * 700),  # > MTU 600
        eth() / IP(src="10.0.0.2", dst="10.1.9.9") / UDP(),  # no neighbour
        Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / IP(dst="10.1.2.3") / UDP(),
        eth() / IP(src="10.0.0.2", dst="0.1.2.3") / UDP(),  # "this network"
        eth() / IPv6(src="fd00::2", dst="2001:db9::1") / UDP(),  # no route
        eth() / IPv6(src="fd00::2", dst="2001:db8::1", hlim=1) / UDP(),
        eth() / IPv6(src="fe80::2", dst="2001:db8::1") / UDP(),  # link-local source
        eth() / IPv6(src="fd00::2", dst="2001:db8::1") / UDP() / (b"x" * 700),
    ]
    out = run(ctx, [bytes(f) for f in frames])
    assert out == {}
    assert drops(ctx) == {
        "ip_forward": {"noroute": 1, "timxceed": 1, "cantfrag": 1, "cantforward": 2,
                       "noroute6": 1, "timxceed6": 1, "cantforward6": 1, "cantfrag6": 1},
        "ether_output": {"noneighbor": 1}}
    free_all(pool, out)


def test_time_exceeded_is_sent_when_configured(pool: MbufPool) -> None:
    ctx = fwd_ctx(pool, icmp_time_exceeded=True)
    v4 = eth() / IP(src="10.0.0.2", dst="10.1.2.3", ttl=1, id=4242) / UDP(dport=33434) / b"tr"
    v6 = eth() / IPv6(src="fd00::2", dst="2001:db8::1", hlim=1) / UDP(dport=33434) / b"tr6"
    out = run(ctx, [bytes(v4), bytes(v6)])
    e4, e6 = (Ether(pool.chain_bytes(m)) for m in out["if_transmit"])
    assert e4.dst == "02:00:00:00:00:01"
    p = e4[IP]
    assert (p.src, p.dst, p.proto) == ("10.0.0.1", "10.0.0.2", 1)
    assert in_cksum(bytes(p)[:20]) == 0 and p.len == len(bytes(p))
    assert (p[ICMP].type, p[ICMP].code) == (11, 0) and in_cksum(bytes(p[ICMP])) == 0
    assert p[IPerror].id == 4242 and p[IPerror].dst == "10.1.2.3"
    q = e6[IPv6]
    assert (q.src, q.dst) == ("fd00::1", "fd00::2")
    te = q[ICMPv6TimeExceeded]
    ck = te.cksum
    del te.cksum
    assert IPv6(bytes(q))[ICMPv6TimeExceeded].cksum == ck
    assert drops(ctx) == {"ip_forward": {"timxceed": 1, "timxceed6": 1}}
    assert ctx.stats.counters["icmp.icps_error"] == 1
    free_all(pool, out)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ttl=st.integers(2, 255), ident=st.integers(0, 0xFFFF), tos=st.integers(0, 255),
       proto=st.integers(0, 255), src=st.integers(0, 2**32 - 1))
def test_ttl_decrement_keeps_the_checksum_valid(pool: MbufPool, ttl: int, ident: int, tos: int,
                                                proto: int, src: int) -> None:
    ctx = fwd_ctx(pool)
    pkt = IP(src=str(ipaddress_v4(src)), dst="10.1.2.3", ttl=ttl, id=ident, tos=tos,
             proto=proto) / b"data"
    m = load(pool, bytes(pkt))
    out = Runner(ctx, {"ip_forward": ip_forward}).run("ip_forward", [m], 0)
    (h,) = out["ether_output"]
    got = pool.chain_bytes(h)
    assert got[8] == ttl - 1 and in_cksum(got[:20]) == 0
    del pkt.chksum
    pkt.ttl = ttl - 1
    assert got == bytes(IP(bytes(pkt)))  # the same as a full recomputation
    free_all(pool, out)


def ipaddress_v4(x: int) -> str:
    return ".".join(str((x >> s) & 255) for s in (24, 16, 8, 0))
