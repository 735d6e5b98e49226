"""Tests for nicemu.trafgen.tcpstream: handshake, in-order segments, host-less streams."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from dispatch.packet.frames import build_tcp_frame
from dispatch.packet.tcp import TH_ACK, TH_SYN
from nicemu.pcap import PcapWriter
from nicemu.trafgen.flows import make_flows, parse_stamp
from nicemu.trafgen.tcpstream import TcpConfig, TcpStream, hostless_segments

FLOW = make_flows(1, src="10.0.0.1", dst="10.0.0.2", sport="40000", dport="80")[0]


def _valid(frame: bytes) -> TCP:
    p = Ether(frame)
    c, ipc = p[TCP].chksum, p[IP].chksum
    del p[TCP].chksum, p[IP].chksum
    q = Ether(bytes(p))
    assert q[TCP].chksum == c and q[IP].chksum == ipc
    return p[TCP]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="one of"):
        TcpConfig(handshake="maybe")
    with pytest.raises(ValueError):
        TcpConfig(mss=4)


def test_await_handshake_then_data_and_fin() -> None:
    st = TcpStream(FLOW, isn=0xFFFFFF00, mss=1000)
    syn = _valid(st.syn())
    assert syn.flags == "S" and syn.seq == 0xFFFFFF00 and st.state == "syn_sent"
    assert (2, 1000) in [(k, v) for k, v in [(o[0], o[1]) for o in syn.options] if k == "MSS"] or \
        syn.options[0] == ("MSS", 1000)  # fmt: skip
    r = FLOW.reversed()
    synack = build_tcp_frame(src_ip=r.src_ip, dst_ip=r.dst_ip, src_port=r.src_port,
                             dst_port=r.dst_port, seq=5000, ack=0xFFFFFF01,
                             flags=TH_SYN | TH_ACK)  # fmt: skip
    assert st.matches(synack)
    ack = st.on_reply(synack)
    assert ack is not None and st.state == "established"
    a = _valid(ack)
    assert a.flags == "A" and a.seq == 0xFFFFFF01 and a.ack == 5001
    seq = 0xFFFFFF01
    for i, n in enumerate((100, 1000, 16, 500)):
        seg = st.data(n, now_ns=1234)
        t = _valid(seg)
        assert t.seq == seq and t.ack == 5001 and len(t.payload) == n
        assert parse_stamp(seg) == (i, 1234)
        seq = (seq + n) & 0xFFFFFFFF  # wraps past 2**32
    fin = _valid(st.fin())
    assert fin.flags == "FA" and fin.seq == seq and st.state == "fin_sent"
    with pytest.raises(ValueError):
        st.data(1001, now_ns=0)
    hostack = build_tcp_frame(src_ip=r.src_ip, dst_ip=r.dst_ip, src_port=r.src_port,
                              dst_port=r.dst_port, seq=5001, ack=seq + 1, flags=TH_ACK)  # fmt: skip
    assert st.on_reply(hostack) is None and st.acks_received == 2 and st.snd_una == seq + 1


def test_assume_established_uses_peer_isn() -> None:
    st = TcpStream(FLOW, isn=10, peer_isn=77)
    st.syn()
    st.assume_established()
    t = _valid(st.data(20, now_ns=0))
    assert t.seq == 11 and t.ack == 78 and t.flags == "PA"


def test_hostless_stream_valid(tmp_path: Path) -> None:
    segs = hostless_segments(FLOW, [1460] * 5 + [7, 300], isn=1, peer_isn=99, now_ns=5)
    tcps = [_valid(s) for s in segs]
    assert tcps[0].flags == "S" and tcps[-1].flags == "FA"
    expect = 2
    for t in tcps[1:-1]:
        assert t.seq == expect and t.ack == 100
        expect += len(t.payload)
    assert tcps[-1].seq == expect
    if shutil.which("tshark") is None:
        return
    cap = tmp_path / "s.pcap"
    with PcapWriter(cap) as w:
        for s in segs:
            w.write(s, timestamp_ns=1)
    r = subprocess.run(["tshark", "-r", str(cap), "-o", "tcp.check_checksum:TRUE", "-o",
                        "tcp.relative_sequence_numbers:TRUE", "-Y",
                        "tcp.checksum.status == 0 || tcp.analysis.flags || _ws.malformed"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout
