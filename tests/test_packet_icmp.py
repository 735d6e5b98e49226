"""Tests for dispatch.packet.icmp (ICMP and ICMPv6 echo), with scapy as the oracle."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import ICMP, IP, IPv6
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest

from dispatch.packet import PacketError
from dispatch.packet.icmp import (
    ICMP6_ECHO_REPLY,
    ICMP6_ECHO_REQUEST,
    ICMP_ECHO,
    ICMP_ECHOREPLY,
    ICMP_HDR,
    ICMP_UNREACH,
    build_icmp,
    build_icmp6_echo,
    build_icmp_echo,
    icmp6_checksum_ok,
    icmp_checksum_ok,
    parse_icmp,
)

SETTINGS = settings(max_examples=200, deadline=None)
V6 = ("2001:db8::1", "2001:db8::2")


def test_struct() -> None:
    assert ICMP_HDR.size == 8


def test_parse_scapy_echo() -> None:
    msg = bytes(ICMP(type=8, id=0x1234, seq=7) / b"ping")
    h = parse_icmp(msg)
    assert (h.type, h.code, h.ident, h.seq) == (ICMP_ECHO, 0, 0x1234, 7)
    assert h.rest == 0x12340007
    assert h.checksum == ICMP(msg).chksum and icmp_checksum_ok(msg)
    assert not icmp_checksum_ok(msg[:-1] + b"!")


def test_parse_scapy_echo6() -> None:
    raw = bytes(IPv6(src=V6[0], dst=V6[1]) / ICMPv6EchoRequest(id=5, seq=6, data=b"abc"))
    msg = raw[40:]
    h = parse_icmp(msg)
    assert (h.type, h.ident, h.seq) == (ICMP6_ECHO_REQUEST, 5, 6)
    assert icmp6_checksum_ok(msg, *V6)
    assert not icmp6_checksum_ok(msg, V6[1], "2001:db8::3")


@pytest.mark.parametrize("reply", [False, True])
def test_build_echo_equals_scapy(reply: bool) -> None:
    ours = build_icmp_echo(ident=99, seq=65535, payload=b"x" * 33, reply=reply)
    assert ours == bytes(ICMP(type=0 if reply else 8, id=99, seq=65535) / (b"x" * 33))
    assert parse_icmp(ours).type == (ICMP_ECHOREPLY if reply else ICMP_ECHO)
    ours6 = build_icmp6_echo(ident=1, seq=2, payload=b"y" * 9, reply=reply, src_ip=V6[0],
                             dst_ip=V6[1])  # fmt: skip
    cls = ICMPv6EchoReply if reply else ICMPv6EchoRequest
    assert ours6 == bytes(IPv6(src=V6[0], dst=V6[1]) / cls(id=1, seq=2, data=b"y" * 9))[40:]
    assert parse_icmp(ours6).type == (ICMP6_ECHO_REPLY if reply else ICMP6_ECHO_REQUEST)


def test_build_generic_and_bad_checksum() -> None:
    quoted = bytes(IP(dst="10.0.0.1"))[:28]
    msg = build_icmp(type=ICMP_UNREACH, code=3, payload=quoted)
    assert msg == bytes(ICMP(type=3, code=3) / quoted)
    bad = build_icmp_echo(ident=1, seq=1, checksum=0xDEAD)
    assert parse_icmp(bad).checksum == 0xDEAD and not icmp_checksum_ok(bad)


def test_errors() -> None:
    with pytest.raises(PacketError) as ei:
        parse_icmp(bytes(7))
    assert ei.value.reason == "too_short"


@SETTINGS
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=100), st.booleans())
def test_round_trip(ident: int, seq: int, payload: bytes, reply: bool) -> None:
    msg = build_icmp_echo(ident=ident, seq=seq, payload=payload, reply=reply)
    h = parse_icmp(memoryview(msg))
    assert (h.ident, h.seq, h.code) == (ident, seq, 0) and icmp_checksum_ok(msg)
    assert msg == bytes(ICMP(type=h.type, id=ident, seq=seq) / payload)
    msg6 = build_icmp6_echo(ident=ident, seq=seq, payload=payload, reply=reply, src_ip=V6[0],
                            dst_ip=V6[1])  # fmt: skip
    assert icmp6_checksum_ok(msg6, *V6)


@SETTINGS
@given(st.binary(max_size=30), st.integers(0, 10))
def test_fuzz_random(data: bytes, offset: int) -> None:
    try:
        parse_icmp(data, offset)
    except PacketError:
        pass
