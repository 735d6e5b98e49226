"""Tests for nicemu.trafgen.flows: flow sets from specs, and the latency stamp."""

from __future__ import annotations

import ipaddress

import pytest

from dispatch.packet.frames import build_tcp_frame, build_udp_frame
from nicemu.trafgen.flows import (
    STAMP,
    STAMP_MAGIC,
    Flow,
    FlowSpec,
    make_flows,
    parse_addr_spec,
    parse_port_spec,
    parse_stamp,
)


def test_specs() -> None:
    a = parse_addr_spec("10.0.0.1-10.0.0.3,10.0.1.9")
    assert len(a) == 4 and a.version == 4
    assert str(ipaddress.ip_address(a[3])) == "10.0.1.9"
    p = parse_port_spec("80,1000-1002")
    assert [p[i] for i in range(len(p))] == [80, 1000, 1001, 1002]
    assert parse_addr_spec("2001:db8::1-2001:db8::ff").version == 6


@pytest.mark.parametrize(
    "bad", ["", "10.0.0.300", "10.0.0.5-10.0.0.1", "10.0.0.1,2001:db8::1", "10.0.0.1,"]
)
def test_bad_addr_specs(bad: str) -> None:
    with pytest.raises(ValueError, match="valid forms"):
        parse_addr_spec(bad)


@pytest.mark.parametrize("bad", ["", "x", "70000", "5-1", "1-2-3"])
def test_bad_port_specs(bad: str) -> None:
    with pytest.raises(ValueError, match="valid forms"):
        parse_port_spec(bad)


def test_enumeration_mixed_radix() -> None:
    flows = make_flows(12, src="10.0.0.1-10.0.0.2", dst="10.0.1.1", sport="100-102",
                       dport="7,8")  # fmt: skip
    assert len(set(f.key for f in flows)) == 12
    assert [f.src_port for f in flows[:4]] == [100, 101, 102, 100]
    assert flows[3].dst_port == 8 and flows[6].src_ip == bytes([10, 0, 0, 2])
    with pytest.raises(ValueError, match="distinct"):
        make_flows(13, src="10.0.0.1-10.0.0.2", dst="10.0.1.1", sport="100-102", dport="7,8")
    with pytest.raises(ValueError, match="family"):
        make_flows(1, src="10.0.0.1", dst="2001:db8::1")
    with pytest.raises(ValueError):
        make_flows(0)


def test_flowspec_explicit_and_reverse() -> None:
    f = Flow(bytes(16), bytes(15) + b"\1", 1, 2)
    assert FlowSpec(explicit=(f,)).flows() == (f,)
    assert f.reversed().reversed() == f and f.reversed().src_port == 2
    assert "]:1 -> [" in str(f)
    with pytest.raises(ValueError):
        FlowSpec(explicit=(f, Flow(bytes(4), bytes(4), 1, 2))).flows()


def test_parse_stamp() -> None:
    stamp = STAMP.pack(STAMP_MAGIC, 7, 123456789)
    u4 = build_udp_frame(src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1, dst_port=2,
                         payload=stamp)  # fmt: skip
    assert parse_stamp(u4) == (7, 123456789)
    u6 = build_udp_frame(src_ip="2001:db8::1", dst_ip="2001:db8::2", src_port=1, dst_port=2,
                         payload=stamp + b"x", vlan=5)  # fmt: skip
    assert parse_stamp(u6) == (7, 123456789)
    t4 = build_tcp_frame(src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1, dst_port=2,
                         options=b"\x02\x04\x05\xb4", payload=stamp)  # fmt: skip
    assert parse_stamp(t4) == (7, 123456789)
    assert parse_stamp(u4[:-1]) is None
    assert parse_stamp(b"\0" * 10) is None
    other = build_udp_frame(src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1, dst_port=2,
                            payload=b"\0" * 16)  # fmt: skip
    assert parse_stamp(other) is None
