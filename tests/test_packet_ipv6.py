"""Tests for dispatch.packet.ipv6 (extension-header chains), with scapy as the oracle."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import (
    UDP,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    Raw,
)
from scapy.layers.inet6 import RouterAlert

from dispatch.packet import PacketError
from dispatch.packet.ipv4 import IPPROTO_TCP, IPPROTO_UDP, ip_bytes
from dispatch.packet.ipv6 import (
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_NONE,
    IPPROTO_ROUTING,
    IPV6_HDR,
    DestOpts,
    Fragment,
    HopByHop,
    Routing,
    build_ipv6,
    pad_ext_options,
    parse_ipv6,
)

SETTINGS = settings(max_examples=200, deadline=None)
A = "2001:db8::1"
B = "2001:db8::2"
addr6 = st.one_of(st.binary(min_size=16, max_size=16), st.ip_addresses(v=6).map(str))


def test_struct() -> None:
    assert IPV6_HDR.size == 40


def test_parse_scapy_plain() -> None:
    raw = bytes(IPv6(src=A, dst=B, hlim=9, tc=0xAB, fl=0x12345) / UDP(sport=1, dport=2) / b"hi")
    h = parse_ipv6(raw)
    assert (h.version, h.traffic_class, h.flow_label, h.hop_limit) == (6, 0xAB, 0x12345, 9)
    assert (h.src, h.dst) == (ip_bytes(A), ip_bytes(B))
    assert h.next_header == h.upper_proto == IPPROTO_UDP
    assert h.payload_length == 10 and h.l4_offset == 40 and h.end == len(raw)
    assert h.ext_headers == () and h.fragment is None and h.hdr_len == 40 and h.l4_length == 10


def test_parse_scapy_chain() -> None:
    udp = UDP(sport=5, dport=6) / b"payload"
    pkt = (
        IPv6(src=A, dst=B)
        / IPv6ExtHdrHopByHop(options=[RouterAlert()])
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting(addresses=["2001:db8::3", "2001:db8::4"], segleft=2)
        / IPv6ExtHdrFragment(offset=0, m=1, id=0xCAFEBABE)
        / IPv6ExtHdrDestOpt()
        / udp
    )
    raw = bytes(pkt)
    h = parse_ipv6(b"\0" * 6 + raw, 6)
    assert h.next_header == IPPROTO_HOPOPTS
    assert [e.proto for e in h.ext_headers] == [
        IPPROTO_HOPOPTS, IPPROTO_DSTOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS,
    ]  # fmt: skip
    assert h.upper_proto == IPPROTO_UDP
    assert h.l4_offset == 6 + len(raw) - len(bytes(pkt[UDP]))
    assert h.ext_headers[2].length == 8 + 32
    assert h.fragment is not None
    assert (h.fragment.offset, h.fragment.more, h.fragment.ident) == (0, True, 0xCAFEBABE)
    assert h.fragment.hdr_offset == h.ext_headers[3].offset
    assert h.hdr_len == len(raw) - len(bytes(pkt[UDP]))


def test_parse_scapy_nonfirst_fragment() -> None:
    raw = bytes(IPv6(src=A, dst=B) / IPv6ExtHdrFragment(offset=100, m=0, id=3, nh=60)
                / Raw(bytes(16)))  # fmt: skip
    h = parse_ipv6(raw)
    # the walk stops after a non-first fragment header: what follows is data
    assert h.upper_proto == IPPROTO_DSTOPTS
    assert h.fragment is not None and h.fragment.offset == 800 and not h.fragment.more
    assert h.l4_offset == 48


def test_build_checked_by_scapy() -> None:
    ours = build_ipv6(
        src=A, dst=B, next_header=IPPROTO_UDP, payload=b"x" * 8, hop_limit=7, flow_label=0xFFFFF,
        traffic_class=3,
        ext_headers=[HopByHop(), Routing(addresses=("2001:db8::3",), segments_left=1),
                     DestOpts(b"\x05\x02ab"), Fragment(offset=16, more=True, ident=7)],
    )  # fmt: skip
    p = IPv6(ours)
    assert (p.src, p.dst, p.hlim, p.fl, p.tc, p.plen) == (A, B, 7, 0xFFFFF, 3, len(ours) - 40)
    assert p[IPv6ExtHdrRouting].addresses == ["2001:db8::3"] and p[IPv6ExtHdrRouting].segleft == 1
    assert p[IPv6ExtHdrDestOpt].options[0].value == 0x6162
    f = p[IPv6ExtHdrFragment]
    assert (f.offset, f.m, f.id, f.nh) == (2, 1, 7, IPPROTO_UDP)
    # scapy recomputes every length and next-header field (but the last) to the same bytes
    for layer in (IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrDestOpt):
        del p[layer].nh
        del p[layer].len
    del p[IPv6].nh
    del p[IPv6].plen
    assert bytes(p) == ours


def test_build_equals_scapy_bytes() -> None:
    s = (IPv6(src=A, dst=B, nh=IPPROTO_FRAGMENT)
         / IPv6ExtHdrFragment(offset=3, m=1, id=99, nh=IPPROTO_TCP) / Raw(b"abcdefgh"))  # fmt: skip
    ours = build_ipv6(src=A, dst=B, next_header=IPPROTO_TCP, payload=b"abcdefgh",
                      ext_headers=[Fragment(offset=24, more=True, ident=99)])  # fmt: skip
    assert ours == bytes(s)


def test_pad_ext_options() -> None:
    assert pad_ext_options(b"") == b"\x01\x04\0\0\0\0"
    assert pad_ext_options(b"\x05\x02ab\x00") == b"\x05\x02ab\x00\x00"  # Pad1
    assert len(pad_ext_options(b"\x05\x02ab")) == 6
    assert len(pad_ext_options(bytes(6))) == 6


ext_strategy = st.one_of(
    st.builds(DestOpts, st.binary(max_size=30)),
    st.builds(Routing, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=40)),
    st.builds(Fragment, st.integers(0, 0x1FFF).map(lambda x: x * 8), st.booleans(),
              st.integers(0, 0xFFFFFFFF)),  # fmt: skip
)


@SETTINGS
@given(
    src=addr6,
    dst=addr6,
    nh=st.integers(0, 255).filter(lambda n: n not in (0, 43, 44, 60)),
    hbh=st.one_of(st.none(), st.binary(max_size=20)),
    exts=st.lists(ext_strategy, max_size=4),
    payload=st.binary(max_size=64),
    hlim=st.integers(0, 255),
    tc=st.integers(0, 255),
    fl=st.integers(0, 0xFFFFF),
    pad=st.binary(max_size=8),
)
def test_round_trip(
    src: bytes | str, dst: bytes | str, nh: int, hbh: bytes | None, exts: list, payload: bytes,
    hlim: int, tc: int, fl: int, pad: bytes,
) -> None:  # fmt: skip
    chain = ([HopByHop(hbh)] if hbh is not None else []) + exts
    pkt = build_ipv6(src=src, dst=dst, next_header=nh, payload=payload, hop_limit=hlim,
                     traffic_class=tc, flow_label=fl, ext_headers=chain)  # fmt: skip
    h = parse_ipv6(memoryview(pkt + pad))
    assert (h.src, h.dst) == (ip_bytes(src), ip_bytes(dst))
    assert (h.hop_limit, h.traffic_class, h.flow_label) == (hlim, tc, fl)
    assert h.payload_length == len(pkt) - 40 and h.end == len(pkt)
    # the walk stops after the first non-first fragment
    stop = next((i for i, e in enumerate(chain) if isinstance(e, Fragment) and e.offset), None)
    walked = chain if stop is None else chain[: stop + 1]
    assert [e.proto for e in h.ext_headers] == [e.proto for e in walked]
    if stop is None:
        assert h.upper_proto == nh
        assert pkt[h.l4_offset :] == payload
    frags = [e for e in walked if isinstance(e, Fragment)]
    if frags:
        assert h.fragment is not None
        assert (h.fragment.offset, h.fragment.more, h.fragment.ident) == (
            frags[-1].offset, frags[-1].more, frags[-1].ident,
        )  # fmt: skip
    else:
        assert h.fragment is None
    for e in h.ext_headers:
        assert e.length % 8 == 0


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (bytes(IPv6())[:39], "too_short"),
        (b"\x40" + bytes(IPv6())[1:], "bad_version"),
        (bytes(IPv6(plen=10)), "too_short"),
        # chain runs past the payload
        (bytes(IPv6(nh=0, plen=6) / Raw(b"\x3b\x00\0\0\0\0")), "bad_ext"),
        (bytes(IPv6() / IPv6ExtHdrHopByHop(len=3, nh=59) / Raw(bytes(8))), "bad_ext"),
        # hop-by-hop after another extension header
        (bytes(IPv6() / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP()), "bad_ext"),
        (bytes(IPv6(plen=6) / IPv6ExtHdrFragment(nh=17))[:-2], "bad_ext"),
    ],
)
def test_errors(raw: bytes, reason: str) -> None:
    with pytest.raises(PacketError) as ei:
        parse_ipv6(raw)
    assert ei.value.reason == reason


def test_no_next_header() -> None:
    h = parse_ipv6(build_ipv6(src=A, dst=B, next_header=IPPROTO_NONE, ext_headers=[DestOpts()]))
    assert h.upper_proto == IPPROTO_NONE and h.l4_offset == 48 and h.l4_length == 0


def test_build_bad_args() -> None:
    with pytest.raises(ValueError):
        build_ipv6(src="10.0.0.1", dst=B, next_header=17)
    with pytest.raises(ValueError):
        build_ipv6(src=A, dst=B, next_header=17, flow_label=1 << 20)
    with pytest.raises(ValueError):
        build_ipv6(src=A, dst=B, next_header=17, ext_headers=[Fragment(offset=5)])


@SETTINGS
@given(st.binary(max_size=120), st.integers(0, 10))
def test_fuzz_random(data: bytes, offset: int) -> None:
    try:
        parse_ipv6(data, offset)
    except PacketError:
        pass


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 95), st.integers(0, 255)), max_size=6),
       st.integers(0, 100))  # fmt: skip
def test_fuzz_mutated(flips: list[tuple[int, int]], cut: int) -> None:
    pkt = bytearray(build_ipv6(src=A, dst=B, next_header=IPPROTO_UDP, payload=bytes(8),
                               ext_headers=[HopByHop(), DestOpts(), Fragment(ident=1)]))  # fmt: skip
    # also point the fixed header's next header at random values sometimes
    for pos, val in flips:
        pkt[pos % len(pkt)] = val
    try:
        h = parse_ipv6(bytes(pkt[:cut]))
    except PacketError:
        return
    assert 40 <= h.l4_offset <= h.end <= cut
