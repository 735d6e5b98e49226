"""Tests for nicemu.trafgen.rr against an echo peer in another process."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.packet.frames import build_tcp_frame, build_udp_frame
from dispatch.packet.tcp import TH_ACK, TH_PUSH, TH_SYN
from nicemu.trafgen.flows import FlowSpec, l4_offsets
from nicemu.trafgen.rr import RequestResponse, RRConfig, parse_rr
from nicemu.trafgen.tcpstream import TcpConfig
from nicemu.wire import WireRx, WireTx


def _echo(req_ep: str, resp_ep: str, resp_size: int, q: mp.Queue) -> None:  # type: ignore[type-arg]
    """Receive request frames, answer each with addresses and ports swapped."""
    rx = WireRx(req_ep)
    tx = WireTx(resp_ep)
    q.put("ready")
    answered = 0
    while not rx.ended:
        got = rx.recv_batch(5000)
        if got is None:
            continue
        out = []
        for f in got[0]:
            l3, v, proto, l4 = l4_offsets(f)  # type: ignore[misc]
            alen = 4 if v == 4 else 16
            so = l3 + (12 if v == 4 else 8)
            src, dst = bytes(f[so : so + alen]), bytes(f[so + alen : so + 2 * alen])
            sport, dport = int.from_bytes(f[l4 : l4 + 2], "big"), int.from_bytes(f[l4 + 2 : l4 + 4], "big")
            common = dict(src_ip=dst, dst_ip=src, src_port=dport, dst_port=sport,
                          src_mac=bytes(f[0:6]), dst_mac=bytes(f[6:12]), pad=True)
            if proto == 17:
                payload = bytes(f[l4 + 8 : l4 + 24])[:resp_size].ljust(resp_size, b"\0")
                out.append(build_udp_frame(payload=payload, **common))  # type: ignore[arg-type]
                answered += 1
                continue
            seq = int.from_bytes(f[l4 + 4 : l4 + 8], "big")
            ack = int.from_bytes(f[l4 + 8 : l4 + 12], "big")
            flags = f[l4 + 13]
            if flags & TH_SYN:
                out.append(build_tcp_frame(seq=1000, ack=seq + 1, flags=TH_SYN | TH_ACK,
                                           **common))  # type: ignore[arg-type]
                continue
            end = l3 + (int.from_bytes(f[l3 + 2 : l3 + 4], "big") if v == 4
                        else 40 + int.from_bytes(f[l3 + 4 : l3 + 6], "big"))
            dlen = end - l4 - (f[l4 + 12] >> 4) * 4
            if dlen <= 0:
                continue
            out.append(build_tcp_frame(seq=ack, ack=seq + dlen, flags=TH_ACK | TH_PUSH,
                                       payload=b"r" * resp_size, **common))  # type: ignore[arg-type]
            answered += 1
        if out:
            tx.send_batch(out)
    tx.close(confirm=False)
    rx.close()
    q.put(answered)


def _run(tmp_path: Path, cfg: RRConfig):  # type: ignore[no-untyped-def]
    req, resp = f"ipc://{tmp_path}/req", f"ipc://{tmp_path}/resp"
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_echo, args=(req, resp, cfg.response, q))
    p.start()
    try:
        assert q.get(timeout=10) == "ready"
        rx = WireRx(resp)
        tx = WireTx(req)
        stats = RequestResponse(cfg).run(tx, rx)
        assert tx.close(confirm=True)
        rx.close()
        answered = q.get(timeout=10)
        p.join(10)
    finally:
        if p.is_alive():
            p.kill()
            p.join()
        q.close()
        q.join_thread()
    return stats, answered


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_rr_counts_one_for_one(tmp_path: Path, proto: str) -> None:
    cfg = RRConfig(proto=proto, request=64, response=200, count=600,
                   flows=FlowSpec(count=4), timeout_ms=2000,
                   tcp=TcpConfig(handshake="await"))  # fmt: skip
    stats, answered = _run(tmp_path, cfg)
    assert stats.transactions == answered == 600
    assert stats.requests == 600 and stats.timeouts == 0 and stats.stale == 0
    assert sum(stats.per_flow) == 600 and min(stats.per_flow) > 0
    assert 0 < stats.rtt_p50_ns <= stats.rtt_p90_ns <= stats.rtt_p99_ns <= stats.rtt_p999_ns
    assert stats.rtt_p999_ns <= stats.rtt_max_ns and stats.tps > 0


def test_rr_ipv6_duration(tmp_path: Path) -> None:
    cfg = RRConfig(request=1, response=1, duration_s=0.3,
                   flows=FlowSpec(count=2, src="2001:db8::1", dst="2001:db8::2"))  # fmt: skip
    stats, answered = _run(tmp_path, cfg)
    assert stats.transactions == answered > 10


def test_rr_timeouts_without_peer(tmp_path: Path) -> None:
    with WireRx(f"ipc://{tmp_path}/resp") as rx:
        tx = WireTx(f"ipc://{tmp_path}/req")
        stats = RequestResponse(RRConfig(count=3, timeout_ms=20)).run(tx, rx)
        tx.close(confirm=False)
    assert stats.transactions == 0 and stats.timeouts == 3


def test_parse_rr() -> None:
    assert parse_rr("1:1") == (1, 1) and parse_rr("64:1024") == (64, 1024)
    for bad in ("1", "a:b", "0:1", "1:70000"):
        with pytest.raises(ValueError, match="REQ:RESP"):
            parse_rr(bad)
    with pytest.raises(ValueError):
        RRConfig(request=1, response=1)


@settings(max_examples=60, deadline=None)
@given(request=st.integers(1, 1500), v6=st.booleans(), seqs=st.lists(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**63 - 1)), min_size=1, max_size=4))
def test_udp_requests_patched_from_a_template_equal_frames_built_anew(request, v6, seqs):
    """Each UDP request is its flow's template with the stamp written in and the
    checksum updated (RFC 1624): byte for byte what building the frame gives,
    checksum included (and scapy agrees the checksum is right)."""
    from scapy.layers.inet import UDP
    from scapy.layers.l2 import Ether

    from nicemu.trafgen.flows import STAMP, STAMP_LEN, STAMP_MAGIC

    spec = (FlowSpec(count=2, src="2001:db8::1", dst="2001:db8::2") if v6
            else FlowSpec(count=2))
    rr = RequestResponse(RRConfig(request=request, count=1, flows=spec))
    for i, (seq, now) in enumerate(seqs):
        flow = i % 2
        rr._seq[flow] = seq
        got = rr.request_frame(flow, now)
        f = rr.flows[flow]
        payload = bytearray(request)
        if request >= STAMP_LEN:
            STAMP.pack_into(payload, 0, STAMP_MAGIC, seq, now)
        want = build_udp_frame(src_ip=f.src_ip, dst_ip=f.dst_ip, src_port=f.src_port,
                               dst_port=f.dst_port, payload=payload, src_mac=f.src_mac,
                               dst_mac=f.dst_mac, pad=True)
        assert got == want
        pkt = Ether(got)
        udp = pkt[UDP]
        sent = udp.chksum
        del udp.chksum
        assert Ether(bytes(pkt))[UDP].chksum == sent
