"""Tests for dispatch.packet.ether, with scapy as the independent oracle."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, UDP, Dot1AD, Dot1Q, Ether, Raw

from dispatch.packet import PacketError
from dispatch.packet.ether import (
    ETHER_HDR,
    ETHER_HDR_LEN,
    ETHERTYPE_ARP,
    ETHERTYPE_IP,
    ETHERTYPE_IPV6,
    ETHERTYPE_QINQ,
    ETHERTYPE_VLAN,
    VLAN_TAG,
    build_ether,
    mac_bytes,
    mac_str,
    parse_ether,
)

SETTINGS = settings(max_examples=200, deadline=None)
macs = st.binary(min_size=6, max_size=6)


def test_constants() -> None:
    assert (ETHERTYPE_IP, ETHERTYPE_IPV6, ETHERTYPE_VLAN, ETHERTYPE_ARP) == (
        0x0800, 0x86DD, 0x8100, 0x0806,
    )  # fmt: skip
    assert ETHER_HDR.size == ETHER_HDR_LEN == 14
    assert VLAN_TAG.size == 4


def test_mac_conversions() -> None:
    assert mac_bytes("aa:bb:cc:dd:ee:0f") == bytes.fromhex("aabbccddee0f")
    assert mac_bytes("AA-BB-CC-DD-EE-0F") == bytes.fromhex("aabbccddee0f")
    assert mac_bytes(bytes(6)) == bytes(6)
    assert mac_str(bytes.fromhex("aabbccddee0f")) == "aa:bb:cc:dd:ee:0f"
    for bad in ("aa:bb", "zz:bb:cc:dd:ee:ff", b"12345"):
        with pytest.raises(ValueError):
            mac_bytes(bad)


def test_parse_scapy_untagged() -> None:
    f = bytes(Ether(dst="01:02:03:04:05:06", src="0a:0b:0c:0d:0e:0f") / IP() / UDP())
    h = parse_ether(f)
    assert h.dst == bytes.fromhex("010203040506")
    assert h.src == bytes.fromhex("0a0b0c0d0e0f")
    assert h.ethertype == ETHERTYPE_IP
    assert h.hdr_len == 14
    assert h.vlan is None and h.vlans == ()


def test_parse_scapy_vlan() -> None:
    f = bytes(Ether() / Dot1Q(vlan=100, prio=5, dei=1) / IP() / UDP())
    h = parse_ether(f)
    assert (h.vlan, h.pcp, h.dei, h.vlans) == (100, 5, True, (100,))
    assert h.ethertype == ETHERTYPE_IP
    assert h.hdr_len == 18
    assert f[h.hdr_len] >> 4 == 4


def test_parse_scapy_qinq() -> None:
    f = bytes(Ether() / Dot1AD(vlan=7, prio=3) / Dot1Q(vlan=4094) / Raw(b"\x60" + bytes(39)))
    h = parse_ether(f)
    assert h.vlans == (7, 4094)
    assert (h.vlan, h.pcp) == (7, 3)
    assert h.hdr_len == 22
    f2 = bytes(Ether(type=0x8100) / Dot1Q(vlan=1, type=0x8100) / Dot1Q(vlan=2, type=0x86DD))
    h2 = parse_ether(f2)
    assert h2.vlans == (1, 2) and h2.ethertype == ETHERTYPE_IPV6


def test_build_checked_by_scapy() -> None:
    ours = build_ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01", ethertype=0x0806,
                       payload=b"abc")  # fmt: skip
    p = Ether(ours)
    assert p.dst == "ff:ff:ff:ff:ff:ff" and p.src == "02:00:00:00:00:01" and p.type == 0x0806
    assert ours == bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01", type=0x806)
                         / Raw(b"abc"))  # fmt: skip
    ours = build_ether(dst=bytes(6), src=bytes(6), ethertype=0x0800, payload=b"xy", vlan=42, pcp=6)
    p = Ether(ours)
    assert p[Dot1Q].vlan == 42 and p[Dot1Q].prio == 6 and p[Dot1Q].type == 0x0800
    ours = build_ether(dst=bytes(6), src=bytes(6), ethertype=0x86DD, vlan=[10, 20],
                       outer_tpid=ETHERTYPE_QINQ)  # fmt: skip
    assert ours == bytes(Ether(dst="00:00:00:00:00:00", src="00:00:00:00:00:00")
                         / Dot1AD(vlan=10) / Dot1Q(vlan=20, type=0x86DD))  # fmt: skip


def test_build_bad_args() -> None:
    with pytest.raises(ValueError):
        build_ether(dst=bytes(6), src=bytes(6), ethertype=0x800, vlan=4096)
    with pytest.raises(ValueError):
        build_ether(dst=bytes(6), src=bytes(6), ethertype=0x800, vlan=1, pcp=8)
    with pytest.raises(ValueError):
        build_ether(dst=bytes(6), src=bytes(6), ethertype=0x10000)


@SETTINGS
@given(
    dst=macs,
    src=macs,
    ethertype=st.integers(0, 0xFFFF).filter(lambda t: t not in (0x8100, 0x88A8)),
    vlans=st.lists(st.integers(0, 4095), max_size=3),
    pcp=st.integers(0, 7),
    dei=st.booleans(),
    payload=st.binary(max_size=64),
)
def test_round_trip(
    dst: bytes, src: bytes, ethertype: int, vlans: list[int], pcp: int, dei: bool, payload: bytes
) -> None:
    f = build_ether(dst=dst, src=src, ethertype=ethertype, payload=payload, vlan=vlans or None,
                    pcp=pcp, dei=dei)  # fmt: skip
    h = parse_ether(f)
    assert (h.dst, h.src, h.ethertype, h.vlans) == (dst, src, ethertype, tuple(vlans))
    assert h.hdr_len == 14 + 4 * len(vlans)
    assert f[h.hdr_len :] == payload
    if vlans:
        assert (h.vlan, h.pcp, h.dei) == (vlans[0], pcp, dei)
    # scapy agrees on the layering
    p = Ether(f)
    assert p.dst == mac_str(dst) and p.src == mac_str(src)
    if vlans:
        assert p[Dot1Q].vlan == vlans[0]
    # parse at an offset inside a larger buffer, through a memoryview
    h2 = parse_ether(memoryview(b"\xee" * 3 + f), 3)
    assert h2 == h


def test_errors() -> None:
    with pytest.raises(PacketError) as ei:
        parse_ether(bytes(13))
    assert ei.value.reason == "too_short"
    tagged = build_ether(dst=bytes(6), src=bytes(6), ethertype=0x800, vlan=5)
    with pytest.raises(PacketError) as ei:
        parse_ether(tagged[:16])
    assert ei.value.reason == "too_short"
    with pytest.raises(PacketError):
        parse_ether(bytes(20), 10)
    with pytest.raises(ValueError):
        parse_ether(bytes(20), -1)


@SETTINGS
@given(st.binary(max_size=40), st.integers(0, 45))
def test_fuzz_only_packet_error(data: bytes, offset: int) -> None:
    try:
        parse_ether(data, offset)
    except PacketError:
        pass
