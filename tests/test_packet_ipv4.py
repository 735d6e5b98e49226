"""Tests for dispatch.packet.ipv4, with scapy as the independent oracle."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, UDP, IPOption_Router_Alert, IPOption_RR, Raw

from dispatch.packet import PacketError
from dispatch.packet.ipv4 import (
    IP_DF,
    IP_MF,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_HDR,
    build_ipv4,
    dec_ttl_inplace,
    ip_bytes,
    ip_str,
    ipv4_checksum_ok,
    parse_ipv4,
)

SETTINGS = settings(max_examples=200, deadline=None)
addr4 = st.one_of(st.binary(min_size=4, max_size=4), st.ip_addresses(v=4).map(str))


def scapy_rebuilt(ours: bytes) -> bytes:
    p = IP(ours)
    del p.chksum
    del p.len
    del p.ihl
    return bytes(p)


def test_struct() -> None:
    assert IPV4_HDR.size == 20
    assert IPV4_HDR.format == "!BBHHHBBH4s4s"


def test_addresses() -> None:
    assert ip_bytes("10.0.0.1") == b"\n\0\0\1"
    assert ip_bytes("2001:db8::1") == bytes.fromhex("20010db8" + "0" * 22 + "01")
    assert ip_bytes(ipaddress.ip_address("1.2.3.4")) == b"\1\2\3\4"
    assert ip_bytes(b"\1\2\3\4") == b"\1\2\3\4"
    assert ip_str(b"\1\2\3\4") == "1.2.3.4"
    assert ip_str(ip_bytes("2001:db8::1")) == "2001:db8::1"
    with pytest.raises(ValueError):
        ip_bytes(b"12345")
    with pytest.raises(ValueError):
        build_ipv4(src="2001:db8::1", dst="10.0.0.1", proto=6)


def test_parse_scapy() -> None:
    pkt = IP(src="192.0.2.1", dst="198.51.100.7", ttl=17, id=0xBEEF, tos=0xB8, flags="DF",
             proto=IPPROTO_UDP, options=[IPOption_Router_Alert()]) / UDP() / Raw(b"hello")  # fmt: skip
    raw = bytes(pkt)
    h = parse_ipv4(raw)
    assert h.version == 4
    assert h.hdr_len == 24
    assert h.options == raw[20:24]
    assert (h.src, h.dst) == (ip_bytes("192.0.2.1"), ip_bytes("198.51.100.7"))
    assert (h.ttl, h.ident, h.tos, h.proto) == (17, 0xBEEF, 0xB8, IPPROTO_UDP)
    assert h.df and not h.mf and not h.is_fragment
    assert h.total_length == len(raw) and h.payload_length == 8 + 5
    assert h.checksum == IP(raw).chksum
    assert h.checksum_ok and ipv4_checksum_ok(raw)


def test_parse_scapy_fragment() -> None:
    raw = bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="MF", frag=185, proto=6) / Raw(b"x" * 24))
    h = parse_ipv4(raw)
    assert h.mf and not h.df and h.frag_offset == 185 * 8 and h.is_fragment
    assert h.flags == 1


def test_bad_checksum_reported() -> None:
    raw = bytearray(bytes(IP(dst="10.0.0.9") / Raw(b"abc")))
    raw[10] ^= 0x40
    h = parse_ipv4(raw)
    assert not h.checksum_ok
    assert not ipv4_checksum_ok(raw)
    bad = build_ipv4(src="1.1.1.1", dst="2.2.2.2", proto=6, checksum=0x1234)
    assert parse_ipv4(bad).checksum == 0x1234 and not parse_ipv4(bad).checksum_ok


def test_build_checked_by_scapy() -> None:
    ours = build_ipv4(src="10.1.2.3", dst="10.3.2.1", proto=IPPROTO_TCP, payload=b"z" * 11,
                      ttl=3, ident=77, tos=4, df=True, options=bytes(IPOption_RR(routers=["1.2.3.4"])))  # fmt: skip
    p = IP(ours)
    assert (p.src, p.dst, p.proto, p.ttl, p.id, p.tos) == ("10.1.2.3", "10.3.2.1", 6, 3, 77, 4)
    assert p.flags == "DF" and p.len == len(ours) and p.ihl * 4 == 28
    assert scapy_rebuilt(ours) == ours
    frag = build_ipv4(src="1.2.3.4", dst="5.6.7.8", proto=17, frag_offset=1480,
                      more_fragments=True, payload=b"q" * 8)  # fmt: skip
    p = IP(frag)
    assert p.frag == 185 and p.flags == "MF"
    assert scapy_rebuilt(frag) == frag


def test_options_padded() -> None:
    ours = build_ipv4(src="1.2.3.4", dst="5.6.7.8", proto=17, options=b"\x01\x01\x01")
    h = parse_ipv4(ours)
    assert h.hdr_len == 24 and h.options == b"\x01\x01\x01\x00"
    with pytest.raises(ValueError):
        build_ipv4(src="1.2.3.4", dst="5.6.7.8", proto=17, options=bytes(44))
    with pytest.raises(ValueError):
        build_ipv4(src="1.2.3.4", dst="5.6.7.8", proto=17, frag_offset=3)


@SETTINGS
@given(
    src=addr4,
    dst=addr4,
    proto=st.integers(0, 255),
    ttl=st.integers(0, 255),
    ident=st.integers(0, 0xFFFF),
    tos=st.integers(0, 255),
    df=st.booleans(),
    mf=st.booleans(),
    frag=st.integers(0, 0x1FFF),
    opts=st.binary(max_size=40),
    payload=st.binary(max_size=100),
    pad=st.binary(max_size=10),
)
def test_round_trip(
    src: bytes | str, dst: bytes | str, proto: int, ttl: int, ident: int, tos: int, df: bool,
    mf: bool, frag: int, opts: bytes, payload: bytes, pad: bytes,
) -> None:  # fmt: skip
    pkt = build_ipv4(src=src, dst=dst, proto=proto, payload=payload, ttl=ttl, ident=ident,
                     tos=tos, df=df, more_fragments=mf, frag_offset=frag * 8, options=opts)  # fmt: skip
    h = parse_ipv4(memoryview(pkt + pad))  # trailing Ethernet padding is allowed
    optlen = (len(opts) + 3) & ~3
    assert (h.src, h.dst) == (ip_bytes(src), ip_bytes(dst))
    assert (h.proto, h.ttl, h.ident, h.tos) == (proto, ttl, ident, tos)
    assert (h.df, h.mf, h.frag_offset) == (df, mf, frag * 8)
    assert h.flags == ((IP_DF if df else 0) | (IP_MF if mf else 0)) >> 13
    assert h.hdr_len == 20 + optlen and h.options == opts + b"\0" * (optlen - len(opts))
    assert h.total_length == len(pkt) and pkt[h.hdr_len :] == payload
    assert h.checksum_ok
    assert scapy_rebuilt(pkt) == pkt


def test_dec_ttl_against_scapy() -> None:
    raw = bytes(IP(src="10.0.0.1", dst="10.0.0.2", ttl=64, proto=6) / Raw(b"abcd"))
    buf = bytearray(raw)
    assert dec_ttl_inplace(buf) == 63
    assert bytes(buf) == bytes(IP(src="10.0.0.1", dst="10.0.0.2", ttl=63, proto=6) / Raw(b"abcd"))
    with pytest.raises(ValueError):
        dec_ttl_inplace(bytearray(build_ipv4(src="1.1.1.1", dst="2.2.2.2", proto=6, ttl=0)))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b[:19], "too_short"),
        (lambda b: bytes([0x65]) + b[1:], "bad_version"),
        (lambda b: bytes([0x44]) + b[1:], "bad_hlen"),
        (lambda b: bytes([0x4F]) + b[1:], "bad_hlen"),  # 60-byte header in a 30-byte packet
        (lambda b: b[:2] + (19).to_bytes(2, "big") + b[4:], "bad_len"),
        (lambda b: b[:2] + (31).to_bytes(2, "big") + b[4:], "too_short"),
        (lambda b: b[:25], "too_short"),
    ],
)
def test_errors(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    pkt = build_ipv4(src="10.0.0.1", dst="10.0.0.2", proto=17, payload=b"0123456789")
    with pytest.raises(PacketError) as ei:
        parse_ipv4(mutate(pkt))
    assert ei.value.reason == reason


@SETTINGS
@given(st.binary(max_size=80), st.integers(0, 10))
def test_fuzz_random(data: bytes, offset: int) -> None:
    try:
        parse_ipv4(data, offset)
    except PacketError:
        pass


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 59), st.integers(0, 255)), max_size=6),
       st.integers(0, 80))  # fmt: skip
def test_fuzz_mutated(flips: list[tuple[int, int]], cut: int) -> None:
    pkt = bytearray(build_ipv4(src="10.0.0.1", dst="10.0.0.2", proto=6, options=b"\x94\x04\0\0",
                               payload=b"p" * 36))  # fmt: skip
    for pos, val in flips:
        pkt[pos] = val
    try:
        h = parse_ipv4(bytes(pkt[:cut]))
    except PacketError:
        return
    assert h.hdr_len <= h.total_length <= cut
