"""Tests for dispatch.packet.frames: whole frames checked by scapy, and frame_summary."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import (
    ICMP,
    IP,
    TCP,
    UDP,
    Dot1Q,
    Ether,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    Raw,
)
from scapy.layers.inet6 import ICMPv6EchoRequest

from dispatch.packet import PacketError
from dispatch.packet.ether import ETHERTYPE_ARP, ETHERTYPE_IP, ETHERTYPE_IPV6
from dispatch.packet.frames import (
    DEFAULT_DST_MAC,
    build_icmp_echo_frame,
    build_tcp_frame,
    build_udp_frame,
    frame_summary,
    pad_to_min,
)
from dispatch.packet.ipv4 import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, ip_bytes
from dispatch.packet.ipv6 import DestOpts, Fragment, HopByHop, Routing
from dispatch.packet.tcp import TH_ACK, TH_PUSH, TH_SYN, build_tcp_options

SETTINGS = settings(max_examples=200, deadline=None)
V4 = ("10.0.0.1", "10.0.0.2")
V6 = ("2001:db8::1", "2001:db8::2")


def rebuilt(ours: bytes) -> bytes:
    """Scapy re-serialisation of our frame with every length and checksum recomputed."""
    p = Ether(ours)
    if IP in p:
        del p[IP].chksum
        del p[IP].len
        del p[IP].ihl
    if IPv6 in p:
        del p[IPv6].plen
    for layer in (TCP, UDP, ICMP):
        if layer in p:
            del p[layer].chksum
    if ICMPv6EchoRequest in p:
        del p[ICMPv6EchoRequest].cksum
    if UDP in p:
        del p[UDP].len
    return bytes(Ether(bytes(p)))


@pytest.mark.parametrize("addrs", [V4, V6])
@pytest.mark.parametrize("vlan", [None, 7])
def test_udp_frame_checked_by_scapy(addrs: tuple[str, str], vlan: int | None) -> None:
    f = build_udp_frame(src_ip=addrs[0], dst_ip=addrs[1], src_port=1000, dst_port=2000,
                        payload=b"u" * 21, vlan=vlan, ttl=5)  # fmt: skip
    p = Ether(f)
    assert p.src == "02:00:00:00:00:01" and p.dst == "02:00:00:00:00:02"
    if vlan is not None:
        assert p[Dot1Q].vlan == vlan
    assert p[UDP].sport == 1000 and p[UDP].dport == 2000 and bytes(p[UDP].payload) == b"u" * 21
    assert rebuilt(f) == f


@pytest.mark.parametrize("addrs", [V4, V6])
@pytest.mark.parametrize("vlan", [None, 4094])
def test_tcp_frame_checked_by_scapy(addrs: tuple[str, str], vlan: int | None) -> None:
    opts = build_tcp_options(mss=1460, wscale=7, sack_permitted=True, timestamp=(10, 0))
    f = build_tcp_frame(src_ip=addrs[0], dst_ip=addrs[1], src_port=5555, dst_port=80, seq=1,
                        ack=0, flags=TH_SYN, options=opts, vlan=vlan, pcp=3)  # fmt: skip
    p = Ether(f)
    assert p[TCP].flags == "S" and p[TCP].dport == 80
    assert rebuilt(f) == f


@pytest.mark.parametrize("addrs", [V4, V6])
def test_icmp_frame_checked_by_scapy(addrs: tuple[str, str]) -> None:
    f = build_icmp_echo_frame(src_ip=addrs[0], dst_ip=addrs[1], ident=3, seq=4, payload=b"p" * 8)
    p = Ether(f)
    if ":" in addrs[0]:
        assert p[ICMPv6EchoRequest].id == 3 and p[ICMPv6EchoRequest].seq == 4
    else:
        assert p[ICMP].type == 8 and p[ICMP].id == 3 and p[ICMP].seq == 4
    assert rebuilt(f) == f


def test_v6_ext_headers_checked_by_scapy() -> None:
    # routing header with segments left: the pseudo-header uses the final destination
    f = build_udp_frame(
        src_ip=V6[0], dst_ip=V6[1], src_port=1, dst_port=2, payload=b"rt",
        ext_headers=[HopByHop(), Routing(addresses=("2001:db8::99",), segments_left=1), DestOpts()],
    )  # fmt: skip
    p = Ether(f)
    assert p[IPv6ExtHdrRouting].addresses == ["2001:db8::99"]
    assert rebuilt(f) == f
    info = frame_summary(f)
    assert info.proto == IPPROTO_UDP and info.src_port == 1 and info.payload_length == 2


def test_bad_checksum_overrides() -> None:
    f = build_tcp_frame(src_ip=V4[0], dst_ip=V4[1], src_port=1, dst_port=2, tcp_checksum=0xBAD,
                        ip_checksum=0xF00D)  # fmt: skip
    p = Ether(f)
    assert p[IP].chksum == 0xF00D and p[TCP].chksum == 0x0BAD
    assert rebuilt(f) != f
    with pytest.raises(ValueError):
        build_udp_frame(src_ip=V6[0], dst_ip=V6[1], src_port=1, dst_port=2, ip_checksum=1)
    with pytest.raises(ValueError):
        build_udp_frame(src_ip=V4[0], dst_ip=V6[1], src_port=1, dst_port=2)
    with pytest.raises(ValueError):
        build_udp_frame(src_ip=V4[0], dst_ip=V4[1], src_port=1, dst_port=2, flow_label=1)


def test_pad_to_min() -> None:
    f = build_udp_frame(src_ip=V4[0], dst_ip=V4[1], src_port=1, dst_port=2)
    assert len(f) == 42
    padded = pad_to_min(f)
    assert len(padded) == 60 and padded[:42] == f and padded[42:] == bytes(18)
    assert pad_to_min(padded + b"x") == padded + b"x"
    assert build_udp_frame(src_ip=V4[0], dst_ip=V4[1], src_port=1, dst_port=2, pad=True) == padded
    # frame_summary ignores the Ethernet padding
    info = frame_summary(padded)
    assert info.payload_offset == 42 and info.payload_length == 0


def test_summary_of_scapy_frames() -> None:
    f = bytes(Ether() / Dot1Q(vlan=12) / IP(src=V4[0], dst=V4[1]) / TCP(sport=9, dport=10)
              / b"hello")  # fmt: skip
    i = frame_summary(f)
    assert (i.vlan, i.ethertype, i.ip_version, i.proto) == (12, ETHERTYPE_IP, 4, IPPROTO_TCP)
    assert (i.src, i.dst, i.src_port, i.dst_port) == (ip_bytes(V4[0]), ip_bytes(V4[1]), 9, 10)
    assert (i.l3_offset, i.l4_offset, i.payload_offset, i.payload_length) == (18, 38, 58, 5)
    assert not i.is_fragment

    f = bytes(Ether() / IPv6(src=V6[0], dst=V6[1]) / IPv6ExtHdrHopByHop()
              / IPv6ExtHdrFragment(m=1, id=5) / UDP(sport=3, dport=4) / b"abc")  # fmt: skip
    i = frame_summary(f)
    assert (i.ethertype, i.ip_version, i.proto, i.src_port) == (ETHERTYPE_IPV6, 6, 17, 3)
    assert (i.l3_offset, i.l4_offset, i.payload_offset, i.payload_length) == (14, 70, 78, 3)
    assert i.is_fragment

    f = bytes(Ether() / IP(src=V4[0], dst=V4[1], frag=10, proto=17) / Raw(b"q" * 16))
    i = frame_summary(f)
    assert i.is_fragment and i.src_port is None and i.payload_offset == 34
    assert i.payload_length == 16

    f = bytes(Ether() / IPv6(src=V6[0], dst=V6[1]) / ICMPv6EchoRequest(data=b"zz"))
    i = frame_summary(f)
    assert i.proto == IPPROTO_ICMPV6 and i.payload_offset == 62 and i.payload_length == 2

    f = bytes(Ether(type=ETHERTYPE_ARP) / Raw(bytes(28)))
    i = frame_summary(f)
    assert i.ip_version is None and i.proto is None and i.l4_offset is None
    assert i.payload_offset == 14 and i.payload_length == 28

    f = bytes(Ether() / IP(proto=47) / Raw(b"gre!"))
    i = frame_summary(f)
    assert i.proto == 47 and i.src_port is None and i.payload_offset == 34


addr_pair = st.one_of(
    st.tuples(st.ip_addresses(v=4).map(str), st.ip_addresses(v=4).map(str)),
    st.tuples(st.ip_addresses(v=6).map(str), st.ip_addresses(v=6).map(str)),
)
ext6 = st.lists(st.sampled_from([DestOpts(), DestOpts(b"\x05\x02ab"), Fragment(more=True, ident=9)]),
                max_size=2)  # fmt: skip


@SETTINGS
@given(
    kind=st.sampled_from(["udp", "tcp", "icmp"]),
    addrs=addr_pair,
    sport=st.integers(0, 0xFFFF),
    dport=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=64),
    vlan=st.one_of(st.none(), st.integers(0, 4095), st.lists(st.integers(0, 4095), max_size=2)),
    src_mac=st.binary(min_size=6, max_size=6),
    exts=ext6,
    pad=st.booleans(),
)
def test_round_trip(
    kind: str, addrs: tuple[str, str], sport: int, dport: int, payload: bytes,
    vlan: int | list[int] | None, src_mac: bytes, exts: list, pad: bool,
) -> None:  # fmt: skip
    v6 = ":" in addrs[0]
    common = dict(src_ip=addrs[0], dst_ip=addrs[1], payload=payload, vlan=None if vlan == [] else vlan,
                  src_mac=src_mac, pad=pad, ext_headers=exts if v6 else ())  # fmt: skip
    if kind == "udp":
        f = build_udp_frame(src_port=sport, dst_port=dport, **common)
        proto, hl = IPPROTO_UDP, 8
    elif kind == "tcp":
        f = build_tcp_frame(src_port=sport, dst_port=dport, flags=TH_PUSH | TH_ACK,
                            options=build_tcp_options(timestamp=(sport, dport)), **common)  # fmt: skip
        proto, hl = IPPROTO_TCP, 32
    else:
        f = build_icmp_echo_frame(ident=sport, seq=dport, **common)
        proto, hl = (IPPROTO_ICMPV6 if v6 else IPPROTO_ICMP), 8
    if pad:
        assert len(f) >= 60
    i = frame_summary(f)
    vids = [vlan] if isinstance(vlan, int) else (vlan or [])
    assert i.vlans == tuple(vids) and i.vlan == (vids[0] if vids else None)
    assert i.ip_version == (6 if v6 else 4) and i.proto == proto
    assert (i.src, i.dst) == (ip_bytes(addrs[0]), ip_bytes(addrs[1]))
    if kind != "icmp":
        assert (i.src_port, i.dst_port) == (sport, dport)
    assert i.l3_offset == 14 + 4 * len(vids)
    assert i.payload_offset == i.l4_offset + hl
    assert f[i.payload_offset : i.payload_offset + i.payload_length] == payload
    assert rebuilt(f) == f or any(isinstance(e, Fragment) for e in exts)
    assert Ether(f).src == ":".join(f"{b:02x}" for b in src_mac)
    assert Ether(f).dst == ":".join(f"{b:02x}" for b in DEFAULT_DST_MAC)


@SETTINGS
@given(st.binary(max_size=120))
def test_fuzz_random(data: bytes) -> None:
    try:
        frame_summary(data)
    except PacketError:
        pass


@SETTINGS
@given(
    st.sampled_from(["udp4", "tcp6", "icmp4", "udp6vlan"]),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    st.integers(0, 200),
)
def test_fuzz_mutated(kind: str, flips: list[tuple[int, int]], cut: int) -> None:
    opts = build_tcp_options(mss=1460, sack_permitted=True)
    f = bytearray({
        "udp4": lambda: build_udp_frame(src_ip=V4[0], dst_ip=V4[1], src_port=1, dst_port=2,
                                        payload=b"a" * 30),
        "tcp6": lambda: build_tcp_frame(src_ip=V6[0], dst_ip=V6[1], src_port=1, dst_port=2,
                                        options=opts, ext_headers=[HopByHop(), Fragment()]),
        "icmp4": lambda: build_icmp_echo_frame(src_ip=V4[0], dst_ip=V4[1], ident=1, seq=2),
        "udp6vlan": lambda: build_udp_frame(src_ip=V6[0], dst_ip=V6[1], src_port=1, dst_port=2,
                                            vlan=[1, 2]),
    }[kind]())  # fmt: skip
    for pos, val in flips:
        f[pos % len(f)] = val
    try:
        i = frame_summary(bytes(f[:cut]))
    except PacketError:
        return
    assert 0 <= i.payload_offset and i.payload_offset + i.payload_length <= cut
