"""icmp_input (echo reply, v4 and v6) and icmp_error, checked by scapy."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    IPv6,
    IPv6ExtHdrDestOpt,
)
from scapy.layers.l2 import Ether
from stage_helpers import SMALL, drops, free_all, load  # noqa: F401

from dispatch.mbuf import MbufPool
from dispatch.mbuf import layout as L
from dispatch.packet.checksum import in_cksum
from dispatch.stages.base import Ctx, Runner
from dispatch.stages.ether import ether_input, ether_output
from dispatch.stages.icmp import icmp_error, icmp_input
from dispatch.stages.ip import ip_input, ip_output
from dispatch.stages.ip6 import ip6_input, ip6_output

STAGES = {"ether_input": ether_input, "ip_input": ip_input, "ip6_input": ip6_input,
          "icmp_input": icmp_input, "ip_output": ip_output, "ip6_output": ip6_output,
          "ether_output": ether_output}
HOST_MAC = "02:00:00:00:00:02"
PEER_MAC = "02:00:00:00:00:01"


def run(pool: MbufPool, frames: list[bytes], *, csum_flags: int = 0,
        csum_data: int = 0) -> tuple[Ctx, dict[str, list[int]]]:
    ctx = Ctx(pool)
    hs = [load(pool, f, csum_flags=csum_flags, csum_data=csum_data) for f in frames]
    return ctx, Runner(ctx, STAGES).run("ether_input", hs, 0)


def eth() -> Ether:
    return Ether(src=PEER_MAC, dst=HOST_MAC)


def test_echo_reply_v4(pool: MbufPool) -> None:
    req = eth() / IP(src="10.0.0.2", dst="10.0.0.1", ttl=7) / ICMP(id=5, seq=9) / b"ping!"
    opt = eth() / IP(src="10.0.0.2", dst="10.0.0.1", options=[IPOption_RR()]) / \
        ICMP(id=6, seq=1) / b"with options"
    ctx, out = run(pool, [bytes(req), bytes(opt)])
    assert list(out) == ["if_transmit"]
    for m, q in zip(out["if_transmit"], (req, opt)):
        f = Ether(pool.chain_bytes(m))
        assert f.dst == PEER_MAC and f.src == HOST_MAC
        p = f[IP]
        assert (p.src, p.dst, p.ttl, p.ihl) == ("10.0.0.1", "10.0.0.2", 64, 5)
        assert in_cksum(bytes(p)[:20]) == 0
        assert p.len == 20 + len(bytes(q[ICMP]))
        assert p[ICMP].type == 0 and (p[ICMP].id, p[ICMP].seq) == (q[ICMP].id, q[ICMP].seq)
        assert in_cksum(bytes(p[ICMP])) == 0
        assert bytes(p[ICMP].payload) == bytes(q[ICMP].payload)
    assert ctx.stats.counters["icmp.icps_reflect"] == 2
    free_all(pool, out)


def test_echo_reply_v6(pool: MbufPool) -> None:
    req = eth() / IPv6(src="fd00::2", dst="fd00::1") / IPv6ExtHdrDestOpt() / \
        ICMPv6EchoRequest(id=3, seq=4, data=b"ping6")
    ctx, out = run(pool, [bytes(req)])
    (m,) = out["if_transmit"]
    f = Ether(pool.chain_bytes(m))
    p = f[IPv6]
    assert (p.src, p.dst, p.hlim, p.nh) == ("fd00::1", "fd00::2", 64, 58)
    rep = p[ICMPv6EchoReply]
    assert (rep.id, rep.seq, rep.data) == (3, 4, b"ping6")
    ck = rep.cksum
    del rep.cksum
    assert IPv6(bytes(p))[ICMPv6EchoReply].cksum == ck
    free_all(pool, out)


def test_drops(pool: MbufPool) -> None:
    good = IP(src="10.0.0.2", dst="10.0.0.1") / ICMP() / b"abc"
    bad = bytearray(bytes(eth() / good))
    bad[14 + 20 + 2] ^= 1
    frames = [bytes(bad),
              bytes(eth() / IP(src="10.0.0.2", dst="10.0.0.1", proto=1) / b"abc"),  # short
              bytes(eth() / IP(src="10.0.0.2", dst="10.0.0.1") / ICMP(type=0)),  # reply
              bytes(eth() / IP(src="10.0.0.2", dst="255.255.255.255") / ICMP()),
              bytes(eth() / IPv6(src="fd00::2", dst="fd00::1") / ICMPv6ND_NS(tgt="fd00::1")),
              bytes(eth() / IPv6(src="fd00::2", dst="fd00::1", nh=58) / b"\x80\0")]
    ctx, out = run(pool, frames)
    assert out == {}
    assert drops(ctx) == {"icmp_input": {"badsum": 1, "tooshort": 1, "noraw": 1,
                                         "bmcastecho": 1, "noraw6": 1, "tooshort6": 1}}
    free_all(pool, out)


def test_verified_checksum_is_trusted(pool: MbufPool) -> None:
    bad = bytearray(bytes(eth() / IP(src="10.0.0.2", dst="10.0.0.1") / ICMP()))
    bad[14 + 20 + 2] ^= 1
    ctx, out = run(pool, [bytes(bad)], csum_flags=L.CSUM_L4_CALC | L.CSUM_L4_VALID,
                   csum_data=0xFFFF)
    assert list(out) == ["if_transmit"]
    free_all(pool, out)


def test_icmp_error_rules(pool: MbufPool) -> None:
    ctx = Ctx(pool)
    orig = bytes(IP(src="10.0.0.2", dst="192.0.2.1", ttl=1, options=[IPOption_RR()]) / ICMP()
                 / (b"q" * 40))
    m = load(pool, orig, lead=64)
    e = icmp_error(ctx, m, type=11, code=0)
    assert e
    got = IP(pool.chain_bytes(e))  # ip_output fills len/id/checksum later
    assert got.src == "10.0.0.1" and got.dst == "10.0.0.2" and got.proto == 1
    icmp = bytes(got)[20:]
    assert icmp[:2] == b"\x0b\x00" and in_cksum(icmp) == 0
    assert icmp[8:] == orig[: 24 + 8]  # the header and 8 bytes of data
    pool.freem(e)
    pool.freem(m)
    for o in (bytes(IP(src="10.0.0.2", dst="192.0.2.1") / ICMP(type=3)),  # an error
              bytes(IP(src="10.0.0.2", dst="192.0.2.1", frag=4) / (b"x" * 8)),  # not first
              bytes(IP(src="224.0.0.1", dst="192.0.2.1") / ICMP())):  # multicast source
        m = load(pool, o, lead=64)
        assert icmp_error(ctx, m, type=11, code=0) == 0
        pool.freem(m)
    assert ctx.stats.counters["icmp.icps_oldicmp"] == 1
    assert pool.audit().whole
