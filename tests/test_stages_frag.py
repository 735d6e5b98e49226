"""IPv4 and IPv6 reassembly (frag.py) through ip_input / ip6_input, checked by scapy."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, fragment6
from stage_helpers import SMALL, drops, free_all, load  # noqa: F401

from dispatch.mbuf import MbufPool
from dispatch.mbuf import layout as L
from dispatch.packet.ipv4 import build_ipv4
from dispatch.packet.ipv6 import Fragment, build_ipv6
from dispatch.stages.base import Ctx, Runner
from dispatch.stages.frag import FragTable, frag_flush, frag_held, frag_timeout
from dispatch.stages.ip import ip_input
from dispatch.stages.ip6 import ip6_input


def runner(pool: MbufPool, **extra: object) -> Runner:
    ctx = Ctx(pool, extra=dict(extra))
    return Runner(ctx, {"ip_input": ip_input, "ip6_input": ip6_input})


def run(r: Runner, entry: str, pkts: list[bytes], now: int = 0) -> dict[str, list[int]]:
    return r.run(entry, [load(r.ctx.pool, p) for p in pkts], now)


DGRAM = IP(src="10.0.0.2", dst="10.0.0.1", id=77) / UDP(sport=9, dport=10) / \
    (bytes(range(256)) * 12)


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffled"])
def test_v4_reassembly(pool: MbufPool, order: str) -> None:
    frags = [bytes(f) for f in fragment(DGRAM, fragsize=1000)]
    assert len(frags) == 4
    if order == "reverse":
        frags.reverse()
    elif order == "shuffled":
        random.Random(3).shuffle(frags)
    r = runner(pool)
    out = run(r, "ip_input", frags)
    (m,) = out["udp_input"]
    got = IP(pool.chain_bytes(m))
    want = IP(bytes(DGRAM))
    assert got.len == want.len and got.flags == 0 and got.frag == 0
    assert bytes(got.payload) == bytes(want.payload)
    del got.chksum
    assert IP(bytes(got)).chksum == want.chksum  # header checksum recomputed correctly
    assert got[UDP].chksum == want[UDP].chksum
    assert pool.pkt_len(m) == pool.chain_len(m) == len(bytes(DGRAM))
    c = r.ctx.stats.counters
    assert (c["ip.ips_fragments"], c["ip.ips_reassembled"], c["absorbed.ip_input"]) == (4, 1, 3)
    assert c["ip.ips_delivered"] == 1 and drops(r.ctx) == {}
    free_all(pool, out)


def test_v4_fragments_across_batches_and_flush(pool: MbufPool) -> None:
    frags = [bytes(f) for f in fragment(DGRAM, fragsize=1000)]
    r = runner(pool)
    assert run(r, "ip_input", frags[:2]) == {}
    assert frag_held(r.ctx) == 2
    other = IP(src="10.0.0.3", dst="10.0.0.1", id=5, flags="MF") / UDP() / (b"z" * 16)
    assert run(r, "ip_input", [bytes(other)]) == {}
    assert frag_held(r.ctx) == 3
    out = run(r, "ip_input", frags[2:])
    assert list(out) == ["udp_input"] and frag_held(r.ctx) == 1
    assert frag_flush(r.ctx) == 1 and frag_held(r.ctx) == 0
    assert drops(r.ctx) == {"ip_input": {"fragflush": 1}}
    free_all(pool, out)


def test_v4_timeout(pool: MbufPool) -> None:
    frags = [bytes(f) for f in fragment(DGRAM, fragsize=1000)]
    r = runner(pool)
    run(r, "ip_input", frags[:2], now=0)
    run(r, "ip_input", frags[2:3], now=10 * 10**9)
    out = run(r, "ip_input", [bytes(IP(dst="10.0.0.1") / UDP())], now=31 * 10**9)
    assert drops(r.ctx) == {"ip_input": {"fragtimeout": 3}}
    assert r.ctx.stats.counters["ip.ips_fragtimeout"] == 3
    run(r, "ip_input", frags[3:], now=32 * 10**9)
    assert frag_timeout(r.ctx) == 0
    r.ctx.now = 70 * 10**9
    assert frag_timeout(r.ctx) == 1
    free_all(pool, out)


def _frag4(payload: bytes, a: int, b: int, *, total: int, ident: int = 1) -> bytes:
    return build_ipv4(src="10.0.0.2", dst="10.0.0.1", proto=17, payload=payload[a:b],
                      ident=ident, more_fragments=b < total, frag_offset=a)


def test_v4_bad_fragments_and_limits(pool: MbufPool) -> None:
    p = bytes(range(256)) * 2
    pkts = [
        build_ipv4(src="10.0.0.2", dst="10.0.0.1", proto=17, payload=b"x" * 13,
                   more_fragments=True),  # not a multiple of 8
        build_ipv4(src="10.0.0.2", dst="10.0.0.1", proto=17, frag_offset=8),  # empty
        build_ipv4(src="10.0.0.2", dst="10.0.0.1", proto=17, payload=b"x" * 100,
                   frag_offset=65528 - 8),  # past IP_MAXPACKET
    ]
    pkts += [_frag4(p, 8 * i, 8 * i + 8, total=512, ident=9) for i in range(17)]  # 17 > 16
    r = runner(pool)
    assert run(r, "ip_input", pkts) == {}
    assert drops(r.ctx) == {"ip_input": {"badfrag": 2, "fragtoolong": 1, "fragdropped": 17}}
    assert frag_held(r.ctx) == 0
    assert pool.audit().whole


def test_v4_overlaps_first_data_wins_against_the_front(pool: MbufPool) -> None:
    a = b"A" * 16
    bb = b"B" * 16
    pkts = [build_ipv4(src="10.0.0.2", dst="10.0.0.1", proto=17, payload=a, ident=3,
                       more_fragments=True),
            build_ipv4(src="10.0.0.2", dst="10.0.0.1", proto=17, payload=bb, ident=3,
                       frag_offset=8),
            ]
    r = runner(pool)
    out = run(r, "ip_input", pkts + [pkts[0]])  # and a duplicate later: held anew
    (m,) = out["udp_input"]
    assert pool.chain_bytes(m)[20:] == a + b"B" * 8
    assert frag_held(r.ctx) == 1
    frag_flush(r.ctx)
    free_all(pool, out)
    # a fragment wholly covered by an earlier one is dropped
    r = runner(pool)
    out = run(r, "ip_input", [pkts[0], pkts[0], pkts[1]])
    assert pool.chain_bytes(out["udp_input"][0])[20:] == a + b"B" * 8
    assert drops(r.ctx) == {"ip_input": {"fragdropped": 1}}
    free_all(pool, out)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n8=st.integers(2, 60), tail=st.integers(1, 8), data=st.data())
def test_v4_overlapping_consistent_fragments_reassemble(pool: MbufPool, n8: int, tail: int,
                                                        data: st.DataObject) -> None:
    total = 8 * n8 + tail
    payload = bytes(random.Random(n8).randbytes(total))
    # a cover of [0, total) cut at multiples of 8, plus extra overlapping pieces
    cuts = sorted(data.draw(st.sets(st.integers(1, n8), max_size=6)))
    bounds = [0, *[8 * c for c in cuts], total]
    pieces = list(zip(bounds, bounds[1:]))
    for _ in range(data.draw(st.integers(0, 5))):
        a = 8 * data.draw(st.integers(0, n8))
        b = data.draw(st.sampled_from([total, *range(a + 8, total, 8)]))
        pieces.append((a, b))
    order = data.draw(st.permutations(pieces))
    r = runner(pool, ipq=FragTable(maxfrags=64))
    out = run(r, "ip_input", [_frag4(payload, a, b, total=total) for a, b in order])
    got = out.get("udp_input", [])
    assert got, "a full cover must reassemble"
    for m in got:
        assert pool.chain_bytes(m)[20:] == payload
    c = r.ctx.stats.counters
    offered = len(order)
    held = frag_held(r.ctx)
    assert len(got) + r.ctx.stats.total_drops() + c["absorbed.ip_input"] + held == offered
    frag_flush(r.ctx)
    free_all(pool, out)


# ---------------------------------------------------------------------- IPv6

D6 = IPv6(src="fd00::2", dst="fd00::1") / IPv6ExtHdrFragment(id=0x1234) / \
    UDP(sport=9, dport=10) / (bytes(range(256)) * 12)


@pytest.mark.parametrize("hbh", [False, True])
def test_v6_reassembly(pool: MbufPool, hbh: bool) -> None:
    pkt = D6
    if hbh:
        pkt = IPv6(src="fd00::2", dst="fd00::1") / IPv6ExtHdrHopByHop() / D6[IPv6ExtHdrFragment]
    frags = [bytes(f) for f in fragment6(pkt, 1280)]
    assert len(frags) == 3
    random.Random(1).shuffle(frags)
    r = runner(pool)
    out = run(r, "ip6_input", frags)
    (m,) = out["udp_input"]
    got = IPv6(pool.chain_bytes(m))
    assert IPv6ExtHdrFragment not in got
    u = got[UDP]
    assert bytes(u.payload) == bytes(range(256)) * 12
    ck = u.chksum
    del u.chksum
    assert IPv6(bytes(got))[UDP].chksum == ck
    assert got.plen == len(bytes(got.payload))
    assert (pool.hget(m, L.W_HDRLENS) >> 8) & 0xFFFF == (48 if hbh else 40)
    c = r.ctx.stats.counters
    assert (c["ip6.ip6s_fragments"], c["ip6.ip6s_reassembled"], c["absorbed.ip6_input"]) == \
        (3, 1, 2)
    free_all(pool, out)


def _frag6(payload: bytes, a: int, b: int, *, total: int, ident: int = 5) -> bytes:
    return build_ipv6(src="fd00::2", dst="fd00::1", next_header=17, payload=payload[a:b],
                      ext_headers=[Fragment(offset=a, more=b < total, ident=ident)])


def test_v6_overlap_drops_the_datagram(pool: MbufPool) -> None:
    p = bytes(64)
    pkts = [_frag6(p, 0, 32, total=64), _frag6(p, 24, 48, total=64), _frag6(p, 48, 64, total=64)]
    r = runner(pool)
    assert run(r, "ip6_input", pkts) == {}
    assert drops(r.ctx) == {"ip6_input": {"fragdropped": 2}}
    assert frag_held(r.ctx) == 1  # the last one starts a new queue
    assert frag_flush(r.ctx) == 1
    assert pool.audit().whole


def test_v6_bad_fragments_and_timeout(pool: MbufPool) -> None:
    p = bytes(64)
    pkts = [_frag6(p, 0, 13, total=64),  # not a multiple of 8 with M set
            _frag6(p, 0, 16, total=64, ident=6)]
    r = runner(pool)
    run(r, "ip6_input", pkts, now=0)
    run(r, "ip6_input", [_frag6(p, 0, 8, total=64, ident=7)], now=31 * 10**9)
    assert drops(r.ctx) == {"ip6_input": {"badfrag": 1, "fragtimeout": 1}}
    assert frag_flush(r.ctx) == 1
    assert pool.audit().whole
