"""Tests for dispatch.packet.udp, with scapy as the oracle."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, UDP, IPv6

from dispatch.packet import PacketError
from dispatch.packet.checksum import ones_sum, pseudo_header_sum
from dispatch.packet.ipv4 import IPPROTO_UDP, ip_bytes, ip_str
from dispatch.packet.udp import UDP_HDR, UDP_HDR_LEN, build_udp, parse_udp, udp_checksum_ok

SETTINGS = settings(max_examples=200, deadline=None)
V4 = ("192.0.2.1", "192.0.2.2")
V6 = ("2001:db8::1", "2001:db8::2")


def test_struct() -> None:
    assert UDP_HDR.size == UDP_HDR_LEN == 8


@pytest.mark.parametrize("addrs", [V4, V6])
def test_parse_scapy(addrs: tuple[str, str]) -> None:
    ip = IPv6(src=addrs[0], dst=addrs[1]) if ":" in addrs[0] else IP(src=addrs[0], dst=addrs[1])
    raw = bytes(ip / UDP(sport=53, dport=5353) / b"query")
    dg = raw[-13:]  # the UDP datagram: 8-byte header + 5-byte payload
    h = parse_udp(dg)
    assert (h.src_port, h.dst_port, h.length, h.payload_length) == (53, 5353, 13, 5)
    assert h.checksum == UDP(dg).chksum
    assert udp_checksum_ok(dg, *addrs)
    assert not udp_checksum_ok(dg[:-1] + b"?", *addrs)


@pytest.mark.parametrize("addrs", [V4, V6])
def test_build_checked_by_scapy(addrs: tuple[str, str]) -> None:
    v6 = ":" in addrs[0]
    dg = build_udp(src_port=1, dst_port=65535, payload=b"abc", src_ip=addrs[0], dst_ip=addrs[1])
    ip = IPv6(src=addrs[0], dst=addrs[1], nh=17) if v6 else IP(src=addrs[0], dst=addrs[1], proto=17)
    pkt = ip / UDP(dg)
    assert pkt[UDP].len == 11 and pkt[UDP].sport == 1 and pkt[UDP].dport == 65535
    del pkt[UDP].chksum
    del pkt[UDP].len
    assert bytes((IPv6 if v6 else IP)(bytes(pkt))[UDP]) == dg


def _zero_sum_payload(src: bytes, dst: bytes) -> bytes:
    """A 2-byte payload that makes the computed UDP checksum come out as 0."""
    hdr = struct.pack("!HHHH", 7, 9, 10, 0)
    s = ones_sum(hdr, pseudo_header_sum(src, dst, IPPROTO_UDP, 10))
    return struct.pack("!H", 0xFFFF - s)


@pytest.mark.parametrize("addrs", [V4, V6])
def test_zero_checksum_sent_as_ffff(addrs: tuple[str, str]) -> None:
    s, d = ip_bytes(addrs[0]), ip_bytes(addrs[1])
    payload = _zero_sum_payload(s, d)
    dg = build_udp(src_port=7, dst_port=9, payload=payload, src_ip=s, dst_ip=d)
    assert parse_udp(dg).checksum == 0xFFFF
    assert udp_checksum_ok(dg, s, d)
    ip = IPv6(src=addrs[0], dst=addrs[1]) if len(s) == 16 else IP(src=addrs[0], dst=addrs[1])
    assert bytes((ip / UDP(sport=7, dport=9) / payload)[UDP]) == dg  # scapy agrees


def test_no_checksum() -> None:
    dg = build_udp(src_port=7, dst_port=9, payload=b"x", checksum=0)
    assert udp_checksum_ok(dg, *V4)  # IPv4: 0 means "no checksum"
    assert not udp_checksum_ok(dg, *V6)  # IPv6: a zero checksum is invalid
    with pytest.raises(ValueError):
        build_udp(src_port=7, dst_port=9)


def test_errors() -> None:
    dg = build_udp(src_port=7, dst_port=9, payload=b"abcd", checksum=0)
    with pytest.raises(PacketError) as ei:
        parse_udp(dg[:7])
    assert ei.value.reason == "too_short"
    with pytest.raises(PacketError) as ei:
        parse_udp(dg[:11])
    assert ei.value.reason == "too_short"
    with pytest.raises(PacketError) as ei:
        parse_udp(build_udp(src_port=7, dst_port=9, length=7, checksum=0))
    assert ei.value.reason == "bad_len"
    assert parse_udp(dg + b"pad").length == 12


@SETTINGS
@given(
    addrs=st.one_of(
        st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
        st.tuples(st.ip_addresses(v=6).map(str), st.ip_addresses(v=6).map(str)),
    ),
    sport=st.integers(0, 0xFFFF),
    dport=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=200),
)
def test_round_trip(addrs: tuple, sport: int, dport: int, payload: bytes) -> None:
    dg = build_udp(src_port=sport, dst_port=dport, payload=payload, src_ip=addrs[0],
                   dst_ip=addrs[1])  # fmt: skip
    h = parse_udp(memoryview(dg))
    assert (h.src_port, h.dst_port, h.length) == (sport, dport, len(payload) + 8)
    assert h.checksum != 0
    assert udp_checksum_ok(dg, *addrs)
    s, d = ip_str(ip_bytes(addrs[0])), ip_str(ip_bytes(addrs[1]))
    ip = IPv6(src=s, dst=d) if ":" in s else IP(src=s, dst=d)
    assert bytes((ip / UDP(sport=sport, dport=dport) / payload)[UDP]) == dg


@SETTINGS
@given(st.binary(max_size=40), st.integers(0, 10))
def test_fuzz_random(data: bytes, offset: int) -> None:
    try:
        parse_udp(data, offset)
    except PacketError:
        pass
