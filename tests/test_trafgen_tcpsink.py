"""TcpSink: scapy-built segments in, ACK numbers, windows and options out (checked by scapy)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from nicemu.trafgen.tcpsink import SinkConfig, TcpSink

HOST, PEER = "10.0.0.1", "192.0.2.9"
HOST6, PEER6 = "fd00::1", "2001:db8::9"
ISN = 1000
MS = 1_000_000
FLOW = f"{HOST}:40000>{PEER}:5001"


def seg(flags: str = "A", seq: int = ISN + 1, ack: int = 0, data: bytes = b"",
        options: list | None = None, v6: bool = False, window: int = 65535) -> bytes:
    ip = IPv6(src=HOST6, dst=PEER6) if v6 else IP(src=HOST, dst=PEER)
    p = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / ip / \
        TCP(sport=40000, dport=5001, flags=flags, seq=seq, ack=ack, window=window,
            options=options or [])
    if data:
        p = p / Raw(data)
    return bytes(p)


def parse(frames: list[bytes]) -> list:
    """Each reply, checked: scapy recomputes IP and TCP checksums and they agree."""
    out = []
    for fr in frames:
        p = Ether(fr)
        again = p.copy()
        if IP in again:
            del again[IP].chksum
        del again[TCP].chksum
        q = Ether(bytes(again))
        assert q[TCP].chksum == p[TCP].chksum
        if IP in p:
            assert q[IP].chksum == p[IP].chksum and p[IP].src == PEER and p[IP].dst == HOST
        assert p[TCP].sport == 5001 and p[TCP].dport == 40000
        assert p.src == "02:00:00:00:00:01" and p.dst == "02:00:00:00:00:02"
        out.append(p[TCP])
    return out


def opened(cfg: SinkConfig | None = None, *, options: list | None = None,
           v6: bool = False) -> tuple[TcpSink, int]:
    """A sink with one established flow; returns it and our ISS."""
    sink = TcpSink(cfg or SinkConfig(ack_every=1))
    (sa,) = parse(sink.on_frame(seg("S", seq=ISN, options=options or [("MSS", 1460)], v6=v6),
                                1 * MS))
    assert sink.on_frame(seg("A", ack=sa.seq + 1, v6=v6), 2 * MS) == []
    return sink, sa.seq


def test_syn_ack_answers_the_offered_options() -> None:
    sink = TcpSink(SinkConfig(rcvbuf=1 << 20))
    opts = [("MSS", 1460), ("WScale", 7), ("SAckOK", b""), ("Timestamp", (555, 0))]
    (sa,) = parse(sink.on_frame(seg("S", seq=ISN, options=opts), 3 * MS))
    assert sa.flags == "SA" and sa.ack == ISN + 1
    o = dict(sa.options)
    assert o["MSS"] == 1460 and o["WScale"] == 5 and "SAckOK" in o  # 65535 << 5 >= 1 MiB
    assert o["Timestamp"] == (3, 555)
    assert sa.window == 65535  # a SYN's window is never scaled
    # the same SYN again (our SYN-ACK was lost): the same answer
    (sa2,) = parse(sink.on_frame(seg("S", seq=ISN, options=opts), 4 * MS))
    assert sa2.seq == sa.seq and sa2.ack == ISN + 1


def test_syn_without_options_gets_only_mss() -> None:
    sink = TcpSink()
    (sa,) = parse(sink.on_frame(seg("S", seq=ISN, options=[]), 0))
    assert [k for k, _ in sa.options] == ["MSS"]


def test_in_order_data_acked_every_segment() -> None:
    sink, iss = opened()
    seq = ISN + 1
    for k in range(5):
        data = bytes([k]) * 1000
        (a,) = parse(sink.on_frame(seg("PA", seq=seq, ack=iss + 1, data=data), (10 + k) * MS,
                                   (9 + k) * MS))
        seq += 1000
        assert a.flags == "A" and a.ack == seq and a.seq == iss + 1
    s = sink.stats()["flows"][FLOW]
    assert s["bytes"] == 5000 and s["segments"] == 5 and s["ooo_segments"] == 0
    assert s["latency_ns"]["count"] == 5 and s["latency_ns"]["p50"] == pytest.approx(MS, rel=0.01)
    assert sink.digest(FLOW) == hashlib.sha256(b"".join(bytes([k]) * 1000
                                                        for k in range(5))).hexdigest()


def test_delayed_ack_every_second_segment_and_by_timer() -> None:
    sink, iss = opened(SinkConfig(ack_every=2, delack_ns=40 * MS))
    seq = ISN + 1
    assert sink.on_frame(seg("A", seq=seq, ack=iss + 1, data=b"a" * 100), 10 * MS) == []
    (a,) = parse(sink.on_frame(seg("A", seq=seq + 100, ack=iss + 1, data=b"b" * 100), 11 * MS))
    assert a.ack == seq + 200
    assert sink.on_frame(seg("A", seq=seq + 200, ack=iss + 1, data=b"c" * 100), 12 * MS) == []
    assert sink.poll(30 * MS) == []
    (a,) = parse(sink.poll(53 * MS))
    assert a.ack == seq + 300


def test_reassembly_out_of_order_duplicates_and_overlap() -> None:
    sink, iss = opened()
    base = ISN + 1
    stream = bytes(range(256)) * 20  # 5120 bytes, cut in 512-byte segments
    order = [0, 2, 3, 1, 5, 4, 9, 7, 8, 6]
    acks = []
    for k in order:
        d = stream[512 * k : 512 * (k + 1)]
        acks += [a.ack for a in parse(sink.on_frame(seg("A", seq=base + 512 * k, ack=iss + 1,
                                                        data=d), 10 * MS))]
    # out-of-order segments draw immediate duplicate ACKs at rcv_nxt; filling jumps ahead
    assert acks == [base + 512, base + 512, base + 512, base + 2048, base + 2048, base + 3072,
                    base + 3072, base + 3072, base + 3072, base + 5120]
    s = sink.stats()["flows"][FLOW]
    assert s["ooo_segments"] == 6 and s["bytes"] == 5120
    assert sink.digest(FLOW) == hashlib.sha256(stream).hexdigest()
    # a complete duplicate is counted and ACKed at once
    (a,) = parse(sink.on_frame(seg("A", seq=base + 512, ack=iss + 1, data=stream[512:1024]),
                               11 * MS))
    assert a.ack == base + 5120 and sink.stats()["flows"][FLOW]["dup_segments"] == 1


def test_overlapping_held_data_keeps_what_arrived_first() -> None:
    sink, iss = opened()
    base = ISN + 1
    sink.on_frame(seg("A", seq=base + 100, ack=iss + 1, data=b"A" * 100), 10 * MS)
    sink.on_frame(seg("A", seq=base + 150, ack=iss + 1, data=b"B" * 100), 10 * MS)
    (a,) = parse(sink.on_frame(seg("A", seq=base, ack=iss + 1, data=b"C" * 120), 10 * MS))
    assert a.ack == base + 250
    assert sink.digest(FLOW) == hashlib.sha256(b"C" * 100 + b"A" * 100 + b"B" * 50).hexdigest()


def test_window_closes_and_reopens_as_the_reader_drains() -> None:
    # 8 segments of buffer (no window scale: 11584 < 65535), read at 1448 bytes per ms
    sink, iss = opened(SinkConfig(rcvbuf=8 * 1448, read_rate=1_448_000.0, ack_every=1),
                       options=[("MSS", 1448)])
    base = ISN + 1
    wins = []
    for k in range(8):
        (a,) = parse(sink.on_frame(seg("A", seq=base + 1448 * k, ack=iss + 1,
                                       data=b"x" * 1448), 10 * MS))
        wins.append(a.window)
    assert wins == [1448 * (7 - k) for k in range(8)]  # whole segments, down to zero
    s = sink.stats()["flows"][FLOW]
    assert s["zero_windows"] == 1
    # beyond the window: dropped, counted, ACKed with the (zero) window
    (a,) = parse(sink.on_frame(seg("A", seq=base + 8 * 1448, ack=iss + 1, data=b"y" * 10),
                               10 * MS))
    assert a.ack == base + 8 * 1448 and a.window == 0
    assert sink.stats()["flows"][FLOW]["afterwin_bytes"] == 10
    # a window probe (an old byte) is answered with the current window
    (a,) = parse(sink.on_frame(seg("A", seq=base + 8 * 1448 - 1, ack=iss + 1), 10 * MS))
    assert a.window == 0 and sink.stats()["flows"][FLOW]["probes"] == 1
    (u,) = parse(sink.poll(12 * MS))  # two segments read: a window update
    assert u.ack == base + 8 * 1448 and u.window == 2 * 1448
    assert sink.stats()["flows"][FLOW]["window_updates"] == 1


def test_fin_is_answered_with_our_fin_and_retransmitted_until_acked() -> None:
    sink, iss = opened()
    base = ISN + 1
    (a,) = parse(sink.on_frame(seg("FA", seq=base, ack=iss + 1, data=b"bye"), 10 * MS))
    assert a.flags == "FA" and a.ack == base + 4 and a.seq == iss + 1
    assert sink.state(FLOW) == "LAST_ACK"
    (r,) = parse(sink.poll(10 * MS + 200 * MS))  # our FIN unacknowledged: again
    assert r.flags == "FA" and r.seq == iss + 1
    # their FIN again: our FIN|ACK again
    (r2,) = parse(sink.on_frame(seg("FA", seq=base + 3, ack=iss + 1), 300 * MS))
    assert r2.flags == "FA" and r2.ack == base + 4
    assert sink.on_frame(seg("A", seq=base + 4, ack=iss + 2), 301 * MS) == []
    assert sink.state(FLOW) == "CLOSED"
    assert sink.stats()["flows"][FLOW]["fin_rexmits"] == 1


def test_fin_before_missing_data_waits_for_it() -> None:
    sink, iss = opened()
    base = ISN + 1
    (a,) = parse(sink.on_frame(seg("FA", seq=base + 10, ack=iss + 1, data=b"z" * 5), 10 * MS))
    assert a.flags == "A" and a.ack == base
    (b,) = parse(sink.on_frame(seg("A", seq=base, ack=iss + 1, data=b"y" * 10), 11 * MS))
    assert b.flags == "FA" and b.ack == base + 16
    assert sink.received(FLOW) == 15


def test_bad_checksums_unknown_flows_and_resets() -> None:
    sink, iss = opened()
    fr = bytearray(seg("A", seq=ISN + 1, ack=iss + 1, data=b"q" * 50))
    fr[-1] ^= 0xFF
    assert sink.on_frame(bytes(fr), 10 * MS) == []
    assert sink.counters["bad_tcp_csum"] == 1 and sink.received(FLOW) == 0
    other = bytes(Ether() / IP(src=HOST, dst=PEER) / TCP(sport=1, dport=2, flags="A", seq=5,
                                                         ack=77))
    (r,) = parse_any(sink.on_frame(other, 11 * MS))
    assert r.flags == "R" and r.seq == 77 and sink.counters["no_flow"] == 1
    assert sink.on_frame(seg("R", seq=ISN + 1), 12 * MS) == []
    assert sink.state(FLOW) == "CLOSED"


def parse_any(frames: list[bytes]) -> list:
    return [Ether(f)[TCP] for f in frames]


def test_ipv6_flow() -> None:
    sink, iss = opened(v6=True)
    (a,) = [Ether(f) for f in sink.on_frame(seg("A", seq=ISN + 1, ack=iss + 1, data=b"6" * 700,
                                                 v6=True), 10 * MS)]
    again = a.copy()
    del again[TCP].chksum
    assert Ether(bytes(again))[TCP].chksum == a[TCP].chksum
    assert a[IPv6].src == PEER6 and a[TCP].ack == ISN + 701
    assert sink.flows() == [f"[{HOST6}]:40000>[{PEER6}]:5001"]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="ack_every"):
        SinkConfig(ack_every=3)
    with pytest.raises(ValueError, match="rcvbuf"):
        SinkConfig(rcvbuf=0)
    with pytest.raises(ValueError, match="read_rate"):
        SinkConfig(read_rate=0)
    sink = TcpSink()
    with pytest.raises(KeyError, match="no flow"):
        sink.digest("nope")


@settings(max_examples=30, deadline=None)
@given(data=st.binary(min_size=1, max_size=6000), cuts=st.lists(st.integers(1, 5999),
                                                               max_size=12),
       order=st.randoms(use_true_random=False), dups=st.integers(0, 4))
def test_any_cut_order_and_duplication_reassembles(data: bytes, cuts: list[int], order: object,
                                                   dups: int) -> None:
    sink, iss = opened(SinkConfig(ack_every=2))
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    pieces = [(a, data[a:z]) for a, z in zip(bounds, bounds[1:])]
    pieces += [order.choice(pieces) for _ in range(dups)]  # type: ignore[attr-defined]
    order.shuffle(pieces)  # type: ignore[attr-defined]
    last = None
    for a, d in pieces:
        for r in parse(sink.on_frame(seg("A", seq=ISN + 1 + a, ack=iss + 1, data=d), 10 * MS)):
            assert r.ack <= ISN + 1 + len(data)
            last = r
    last = ([*parse(sink.poll(100 * MS))] or [last])[-1]
    assert sink.received(FLOW) == len(data)
    assert sink.digest(FLOW) == hashlib.sha256(data).hexdigest()
    assert last is not None and last.ack == ISN + 1 + len(data)
