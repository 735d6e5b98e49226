"""ip6_input / ip6_output against packets built by scapy, extension headers included."""

from __future__ import annotations

from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import Ether
from stage_helpers import SMALL, drops, free_all, load  # noqa: F401

from dispatch.mbuf import MbufPool
from dispatch.mbuf import layout as L
from dispatch.stages.base import Ctx, Runner, StackConfig
from dispatch.stages.ether import ether_output
from dispatch.stages.ip6 import ip6_input, ip6_output
from dispatch.stages.route import Interface, NeighborTable, RouteTable


def run6(pool: MbufPool, pkts: list[bytes | int], **cfg: object) -> tuple[Ctx, dict]:
    ctx = Ctx(pool, StackConfig(**cfg))  # type: ignore[arg-type]
    hs = [p if isinstance(p, int) else load(pool, p) for p in pkts]
    return ctx, Runner(ctx, {"ip6_input": ip6_input}).run("ip6_input", hs, 0)


def ip6(**kw: object) -> IPv6:
    kw.setdefault("src", "fd00::2")
    kw.setdefault("dst", "fd00::1")
    return IPv6(**kw)


def l3hlen(pool: MbufPool, m: int) -> int:
    return (pool.hget(m, L.W_HDRLENS) >> 8) & 0xFFFF


def test_delivery_and_extension_headers(pool: MbufPool) -> None:
    pkts = [
        bytes(ip6() / UDP() / b"u"),
        bytes(ip6() / TCP()),
        bytes(ip6() / ICMPv6EchoRequest()),
        bytes(ip6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP() / b"x"),
        bytes(ip6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=["fd00::9"],
                                                               segleft=0) / TCP()),
    ]
    ctx, out = run6(pool, pkts)
    assert {k: len(v) for k, v in out.items()} == {"udp_input": 2, "tcp_input": 2,
                                                     "icmp_input": 1}
    got = {pool.chain_bytes(m): l3hlen(pool, m) for hs in out.values() for m in hs}
    for p in pkts:
        parsed = IPv6(p)
        l4 = parsed.getlayer(UDP) or parsed.getlayer(TCP) or parsed.getlayer(ICMPv6EchoRequest)
        assert got[p] == len(p) - len(bytes(l4))
    assert ctx.stats.counters["ip6.ip6s_delivered"] == 5
    free_all(pool, out)


def test_padding_trim_and_chain(pool: MbufPool) -> None:
    p = bytes(ip6() / IPv6ExtHdrDestOpt() / UDP() / b"abc")
    m = load(pool, p + b"\0" * 9, cuts=(30, 45))
    ctx, out = run6(pool, [m])
    (h,) = out["udp_input"]
    assert pool.chain_bytes(h) == p and pool.pkt_len(h) == len(p)
    assert l3hlen(pool, h) == 48
    free_all(pool, out)


def test_every_validation_is_a_counted_drop(pool: MbufPool) -> None:
    good = bytes(ip6() / UDP() / b"0123")
    pkts: list[bytes | int] = [
        good[:39],  # toosmall
        bytes(IPv6(version=4, dst="fd00::1") / UDP()),  # badvers
        bytes(ip6(src="ff02::1") / UDP()),  # badscope: multicast source
        bytes(ip6(src="::1") / UDP()),  # badscope: loopback on the wire
        bytes(ip6(dst="::") / UDP()),  # badscope: unspecified destination
        bytes(ip6(plen=100) / UDP()),  # tooshort
        bytes(ip6(plen=0, nh=0) / IPv6ExtHdrHopByHop() / UDP()),  # a jumbogram
        bytes(ip6() / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP()),  # hbh not first
        bytes(ip6() / IPv6ExtHdrRouting(addresses=["fd00::9"], segleft=1) / UDP()),
        bytes(ip6(plen=8) / IPv6ExtHdrDestOpt(len=3) / (b"\0" * 40)),  # ext hdr past end
        bytes(ip6(dst="ff02::5") / UDP()),  # notmember
        bytes(ip6(dst="2001:db8::1") / UDP()),  # cantforward
        bytes(ip6(nh=47) / b"gre!"),  # noproto
        bytes(ip6(nh=59)),  # no next header: nothing to deliver
    ]
    ctx, out = run6(pool, pkts)
    assert out == {}
    assert drops(ctx) == {"ip6_input": {"toosmall": 1, "badvers": 1, "badscope": 3,
                                        "tooshort": 2, "badoptions": 3, "notmember": 1,
                                        "cantforward": 1, "noproto": 2}}
    assert ctx.stats.counters["ip6.ip6s_total"] == len(pkts)
    free_all(pool, out)


def test_all_nodes_forwarding_auto_and_atomic_fragment(pool: MbufPool) -> None:
    ctx, out = run6(pool, [bytes(ip6(dst="ff02::1") / UDP()),
                           bytes(ip6(dst="2001:db8::1") / UDP())], forwarding=True)
    assert {k: len(v) for k, v in out.items()} == {"udp_input": 1, "ip_forward": 1}
    assert pool.flags(out["udp_input"][0]) & L.M_MCAST
    free_all(pool, out)
    ctx, out = run6(pool, [bytes(ip6(dst="2001:db8::1") / UDP())], auto_sockets=True)
    assert list(out) == ["udp_input"]
    free_all(pool, out)
    p = bytes(ip6() / IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(offset=0, m=0, id=7)
              / UDP(sport=1, dport=2) / b"atomic")
    ctx, out = run6(pool, [p])
    (h,) = out["udp_input"]
    want = bytearray(p[:48] + p[56:])  # the fragment header is gone
    want[5] -= 8
    want[40] = 17
    assert pool.chain_bytes(h) == bytes(want)
    assert l3hlen(pool, h) == 48
    assert ctx.stats.counters["ip6.ip6s_atomicfrags"] == 1
    free_all(pool, out)


def test_output(pool: MbufPool) -> None:
    rt = RouteTable()
    rt.add("fd00::/64", ifindex=0)
    nt = NeighborTable()
    nt.add("fd00::2", "02:00:00:00:00:01")
    ctx = Ctx(pool, routes=rt, neighbors=nt,
              extra={"interfaces": [Interface(0, bytes.fromhex("020000000002"),
                                              ("10.0.0.1", "fd00::1"), mtu=200)]})
    udp = bytes(UDP(sport=7, dport=8, len=12, chksum=0) / b"abcd")
    hdr = bytearray(40)
    hdr[6] = 17
    hdr[24:40] = bytes.fromhex("fd00" + "0" * 27 + "2")
    pkts = [bytes(hdr) + udp, bytes(hdr) + udp + b"x" * 200]
    far = bytearray(hdr)
    far[24] = 0x20
    pkts.append(bytes(far) + udp)
    hs = [load(pool, p, lead=64, csum_flags=L.CSUM_UDP_IPV6) for p in pkts]
    out = Runner(ctx, {"ip6_output": ip6_output, "ether_output": ether_output}).run(
        "ip6_output", hs, 0)
    (m,) = out["if_transmit"]
    f = Ether(pool.chain_bytes(m))
    p = f[IPv6]
    assert p.version == 6 and p.plen == 12 and p.hlim == 64 and p.src == "fd00::1"
    got = p[UDP].chksum
    del p[UDP].chksum
    assert IPv6(bytes(p))[UDP].chksum == got
    assert f.dst == "02:00:00:00:00:01"
    assert drops(ctx) == {"ip6_output": {"cantfrag": 1, "noroute": 1}}
    free_all(pool, out)
