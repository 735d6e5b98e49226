"""Tests for dispatch.packet.tcp (headers, options, checksums), with scapy as the oracle."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, IPv6, Raw

from dispatch.packet import PacketError
from dispatch.packet.tcp import (
    TCP_HDR,
    TH_ACK,
    TH_AE,
    TH_CWR,
    TH_ECE,
    TH_FIN,
    TH_PUSH,
    TH_RST,
    TH_SYN,
    TH_URG,
    TCPOptions,
    build_tcp,
    build_tcp_options,
    flags_str,
    opt_mss,
    opt_nop,
    opt_sack,
    opt_sack_permitted,
    opt_timestamp,
    opt_wscale,
    pad_options,
    parse_tcp,
    parse_tcp_options,
    tcp_checksum_ok,
)

SETTINGS = settings(max_examples=200, deadline=None)
V4 = ("10.0.0.1", "10.0.0.2")
V6 = ("2001:db8::1", "2001:db8::2")


def test_constants() -> None:
    assert [TH_FIN, TH_SYN, TH_RST, TH_PUSH, TH_ACK, TH_URG, TH_ECE, TH_CWR, TH_AE] == [
        1 << i for i in range(9)
    ]
    assert TCP_HDR.size == 20
    assert flags_str(TH_SYN | TH_ACK) == "SA"


def test_parse_scapy_options() -> None:
    opts = [("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b""),
            ("Timestamp", (123456, 654321)), ("NOP", None), ("NOP", None),
            ("SAck", (1000, 2000, 3000, 4000))]  # fmt: skip
    raw = bytes(IP(src=V4[0], dst=V4[1]) / TCP(sport=1234, dport=80, seq=7, ack=9, flags="SAE",
                                               window=1000, urgptr=3, options=opts) / b"data")  # fmt: skip
    seg = raw[20:]
    h = parse_tcp(seg)
    assert (h.src_port, h.dst_port, h.seq, h.ack, h.window, h.urgent) == (1234, 80, 7, 9, 1000, 3)
    assert h.flags == TH_SYN | TH_ACK | TH_ECE
    assert h.hdr_len == len(seg) - 4 and h.data_offset == h.hdr_len // 4
    assert h.options == TCPOptions(mss=1460, wscale=7, sack_permitted=True,
                                   sack_blocks=((1000, 2000), (3000, 4000)),
                                   timestamp=(123456, 654321))  # fmt: skip
    assert h.checksum == TCP(seg).chksum
    assert tcp_checksum_ok(seg, *V4)
    assert not tcp_checksum_ok(seg[:-1] + b"b", *V4)


def test_parse_scapy_v6_and_ae() -> None:
    raw = bytes(IPv6(src=V6[0], dst=V6[1]) / TCP(flags="NF", dataofs=5) / b"x")
    seg = raw[40:]
    h = parse_tcp(seg)
    assert h.flags == TH_AE | TH_FIN
    assert h.options == TCPOptions() and h.options_raw == b""
    assert tcp_checksum_ok(seg, *V6)


def scapy_rebuilt(ours: bytes, v6: bool) -> bytes:
    p = IPv6(ours) if v6 else IP(ours)
    del p[TCP].chksum
    return bytes(p)


@pytest.mark.parametrize("addrs", [V4, V6])
def test_build_checked_by_scapy(addrs: tuple[str, str]) -> None:
    v6 = ":" in addrs[0]
    opts = build_tcp_options(mss=1460, wscale=14, sack_permitted=True, timestamp=(1, 2),
                             sack_blocks=[(5, 6)])  # fmt: skip
    seg = build_tcp(src_port=40000, dst_port=443, seq=0xFFFFFFFF, ack=12, flags=TH_SYN | TH_AE,
                    window=29200, payload=b"hello", options=opts, urgent=0, src_ip=addrs[0],
                    dst_ip=addrs[1])  # fmt: skip
    ip = IPv6(src=addrs[0], dst=addrs[1], nh=6) if v6 else IP(src=addrs[0], dst=addrs[1], proto=6)
    pkt = bytes(ip / Raw(seg))
    p = IPv6(pkt) if v6 else IP(pkt)
    t = p[TCP]
    assert (t.sport, t.dport, t.seq, t.ack, t.window) == (40000, 443, 0xFFFFFFFF, 12, 29200)
    assert t.flags == "SN"
    o = dict((k, v) for k, v in t.options if k != "NOP")
    assert o["MSS"] == 1460 and o["WScale"] == 14 and o["Timestamp"] == (1, 2)
    assert o["SAck"] == (5, 6) and "SAckOK" in o
    assert bytes(t.payload) == b"hello"
    assert scapy_rebuilt(pkt, v6) == pkt
    assert tcp_checksum_ok(seg, *addrs)


def test_option_builders() -> None:
    assert opt_mss(1460) == b"\x02\x04\x05\xb4"
    assert opt_wscale(7) == b"\x03\x03\x07"
    assert opt_sack_permitted() == b"\x04\x02"
    assert opt_timestamp(1, 2) == b"\x08\x0a" + (1).to_bytes(4, "big") + (2).to_bytes(4, "big")
    assert opt_sack([(1, 2)]) == b"\x05\x0a" + bytes([0, 0, 0, 1, 0, 0, 0, 2])
    assert pad_options(opt_wscale(7)) == b"\x03\x03\x07\x00"
    assert pad_options(b"") == b""
    assert len(build_tcp_options(mss=1, wscale=1, sack_permitted=True, timestamp=(1, 1))) == 24
    with pytest.raises(ValueError):
        opt_sack([])
    with pytest.raises(ValueError):
        build_tcp_options(mss=1, timestamp=(1, 1), sack_blocks=[(1, 2)] * 4)
    with pytest.raises(ValueError):
        build_tcp(src_port=1, dst_port=2)  # no addresses, no explicit checksum
    assert build_tcp(src_port=1, dst_port=2, checksum=0xABCD)[16:18] == b"\xab\xcd"


def test_unknown_option_skipped_and_eol() -> None:
    raw = bytes([30, 6, 1, 2, 3, 4]) + opt_nop() + opt_wscale(3) + b"\0" + bytes([2, 0, 0])
    o = parse_tcp_options(raw)
    assert o.unknown == (30,) and o.wscale == 3 and o.mss is None  # after EOL: ignored


@pytest.mark.parametrize(
    "raw",
    [
        b"\x02",  # no length byte
        b"\x02\x01\x00\x00",  # length < 2
        b"\x1e\x09\x00",  # past the end
        b"\x02\x03\x05",  # MSS of length 3
        b"\x03\x04\x07\x00",  # window scale of length 4
        b"\x04\x03\x00\x00",  # SACK-permitted of length 3
        b"\x08\x08" + bytes(6),  # timestamp of length 8
        b"\x05\x06" + bytes(4),  # SACK not 2 + 8n
        b"\x05\x02\x00\x00",  # SACK with no block
    ],
)
def test_bad_options(raw: bytes) -> None:
    with pytest.raises(PacketError) as ei:
        parse_tcp_options(raw)
    assert ei.value.reason == "bad_option"
    seg = build_tcp(src_port=1, dst_port=2, options=raw, checksum=0)
    with pytest.raises(PacketError) as ei:
        parse_tcp(seg)
    assert ei.value.reason == "bad_option"


def test_header_errors() -> None:
    seg = build_tcp(src_port=1, dst_port=2, options=opt_mss(1000), checksum=0)
    for cut, reason in ((19, "too_short"), (23, "too_short")):
        with pytest.raises(PacketError) as ei:
            parse_tcp(seg[:cut])
        assert ei.value.reason == reason
    with pytest.raises(PacketError) as ei:
        parse_tcp(build_tcp(src_port=1, dst_port=2, data_offset=4, checksum=0))
    assert ei.value.reason == "bad_hlen"


addr_pair = st.one_of(
    st.tuples(st.ip_addresses(v=4).map(str), st.ip_addresses(v=4).map(str)),
    st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16)),
)


@SETTINGS
@given(
    addrs=addr_pair,
    sport=st.integers(0, 0xFFFF),
    dport=st.integers(0, 0xFFFF),
    seq=st.integers(0, 0xFFFFFFFF),
    ack=st.integers(0, 0xFFFFFFFF),
    flags=st.integers(0, 0x1FF),
    window=st.integers(0, 0xFFFF),
    urgent=st.integers(0, 0xFFFF),
    mss=st.one_of(st.none(), st.integers(0, 0xFFFF)),
    wscale=st.one_of(st.none(), st.integers(0, 14)),
    sackp=st.booleans(),
    ts=st.one_of(st.none(), st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))),
    blocks=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=1),
    payload=st.binary(max_size=100),
)
def test_round_trip(
    addrs: tuple, sport: int, dport: int, seq: int, ack: int, flags: int, window: int,
    urgent: int, mss: int | None, wscale: int | None, sackp: bool,
    ts: tuple[int, int] | None, blocks: list[tuple[int, int]], payload: bytes,
) -> None:  # fmt: skip
    opts = build_tcp_options(mss=mss, wscale=wscale, sack_permitted=sackp, timestamp=ts,
                             sack_blocks=blocks)  # fmt: skip
    seg = build_tcp(src_port=sport, dst_port=dport, seq=seq, ack=ack, flags=flags,
                    window=window, urgent=urgent, options=opts, payload=payload,
                    src_ip=addrs[0], dst_ip=addrs[1])  # fmt: skip
    h = parse_tcp(memoryview(seg))
    assert (h.src_port, h.dst_port, h.seq, h.ack, h.flags, h.window, h.urgent) == (
        sport, dport, seq, ack, flags, window, urgent,
    )  # fmt: skip
    assert h.options == TCPOptions(mss, wscale, sackp, tuple(blocks), ts)
    assert seg[h.hdr_len :] == payload
    assert tcp_checksum_ok(seg, *addrs)
    # scapy computes the same checksum
    from dispatch.packet.ipv4 import ip_bytes, ip_str

    s, d = ip_str(ip_bytes(addrs[0])), ip_str(ip_bytes(addrs[1]))
    ip = IPv6(src=s, dst=d) if ":" in s else IP(src=s, dst=d)
    # keep the payload raw: scapy would dissect it by port (135 as DCE/RPC) and
    # re-serialise it differently, which would test scapy, not us
    t = TCP(seg[: h.hdr_len]) / Raw(seg[h.hdr_len :])
    del t.chksum
    assert bytes((ip / t)[TCP]) == seg


@SETTINGS
@given(st.binary(max_size=80), st.integers(0, 10))
def test_fuzz_random(data: bytes, offset: int) -> None:
    try:
        parse_tcp(data, offset)
    except PacketError:
        pass


@SETTINGS
@given(st.binary(max_size=44))
def test_fuzz_options(data: bytes) -> None:
    try:
        parse_tcp_options(data)
    except PacketError:
        pass


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), max_size=6),
       st.integers(0, 70))  # fmt: skip
def test_fuzz_mutated(flips: list[tuple[int, int]], cut: int) -> None:
    opts = build_tcp_options(mss=1460, wscale=7, sack_permitted=True, timestamp=(1, 2))
    seg = bytearray(build_tcp(src_port=1, dst_port=2, options=opts, payload=b"abcdef",
                              checksum=0))  # fmt: skip
    for pos, val in flips:
        seg[pos % len(seg)] = val
    try:
        h = parse_tcp(bytes(seg[:cut]))
    except PacketError:
        return
    assert 20 <= h.hdr_len <= min(cut, len(seg))
