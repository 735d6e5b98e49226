"""The whole L2/L3 input path under random and mutated bytes (hypothesis).

Whatever arrives, ether_input -> ip_input / ip6_input (with reassembly and
icmp_input) never raises, every packet ends routed onwards, dropped with a
declared reason, absorbed into a reassembled datagram, or held for
reassembly, the counters add up, and the pool is whole once everything is
freed.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.l2 import Dot1Q, Ether
from stage_helpers import SMALL, drops, free_all, load  # noqa: F401

from dispatch.mbuf import MbufPool
from dispatch.mbuf import layout as L
from dispatch.stages.base import REASONS, Ctx, Runner, StackConfig
from dispatch.stages.ether import ether_input
from dispatch.stages.frag import frag_flush, frag_held
from dispatch.stages.icmp import icmp_input
from dispatch.stages.ip import ip_input
from dispatch.stages.ip6 import ip6_input

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
A4 = {"src": "10.0.0.2", "dst": "10.0.0.1"}
A6 = {"src": "fd00::2", "dst": "fd00::1"}
SEEDS = [bytes(E / IP(**A4) / UDP() / (b"u" * 18)),
         bytes(E / IP(**A4) / TCP(flags="S")),
         bytes(E / IP(**A4, options=[IPOption_RR()]) / ICMP() / b"ping"),
         bytes(E / Dot1Q(vlan=3) / IP(**A4) / UDP()),
         bytes(E / IP(src="10.0.0.2", dst="10.7.7.7") / UDP()),
         bytes(E / IPv6(**A6) / UDP() / b"six"),
         bytes(E / IPv6(**A6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt()
               / TCP()),
         bytes(E / IPv6(**A6) / ICMPv6EchoRequest()),
         *[bytes(E / f) for f in fragment(IP(**A4, id=7) / UDP() / (b"f" * 100), fragsize=48)],
         *[bytes(E / f) for f in fragment6(IPv6(**A6) / IPv6ExtHdrFragment(id=9) / UDP()
                                           / (b"g" * 1400), 1280)]]
STAGES = {"ether_input": ether_input, "ip_input": ip_input, "ip6_input": ip6_input,
          "icmp_input": icmp_input}
CSUMS = [0, L.CSUM_L3_CALC, L.CSUM_L3_CALC | L.CSUM_L3_VALID,
         L.CSUM_L3_CALC | L.CSUM_L3_VALID | L.CSUM_L4_CALC | L.CSUM_L4_VALID]


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, int, list[int]]:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        f = draw(st.binary(max_size=200))
    else:
        f = bytearray(draw(st.sampled_from(SEEDS)))
        for _ in range(draw(st.integers(0, 6))):
            if f:
                f[draw(st.integers(0, len(f) - 1))] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            f = f[: draw(st.integers(0, len(f)))]
        if kind == 3:
            f += b"\0" * draw(st.integers(0, 30))  # link padding
        f = bytes(f)
    cuts = draw(st.lists(st.integers(1, 150), max_size=3)) if draw(st.booleans()) else []
    return f, draw(st.sampled_from(CSUMS)), cuts


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=st.lists(frames(), min_size=1, max_size=12), forwarding=st.booleans(),
       auto=st.booleans())
def test_input_path_never_raises_and_conserves(pool: MbufPool, batch: list, forwarding: bool,
                                               auto: bool) -> None:
    ctx = Ctx(pool, StackConfig(forwarding=forwarding, auto_sockets=auto))
    hs = []
    for f, csf, cuts in batch:
        if f:
            hs.append(load(pool, f, csum_flags=csf, csum_data=0xFFFF if csf else 0, cuts=cuts))
    offered = len(hs)
    out = Runner(ctx, STAGES).run("ether_input", hs, 0)
    assert set(out) <= {"tcp_input", "udp_input", "ip_forward", "ip_output", "ip6_output"}
    routed = [m for v in out.values() for m in v]
    assert len(set(routed)) == len(routed)
    for stage_name, d in ctx.stats.drops.items():
        for r in d:
            assert f"{stage_name}.{r}" in REASONS  # every drop under a declared reason
    c = ctx.stats.counters
    absorbed = c["absorbed.ip_input"] + c["absorbed.ip6_input"]
    held = frag_held(ctx)
    assert len(routed) + ctx.stats.total_drops() + absorbed + held == offered
    for m in routed:  # what leaves is a well-formed packet of the length it says
        assert pool.chain_len(m) == pool.pkt_len(m)
    assert frag_flush(ctx) == held
    free_all(pool, out)
