"""Tests for nicemu.offload: rxcsum flags, txcsum, TSO and LRO (checked against scapy)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.mbuf import layout as L
from dispatch.packet.frames import build_icmp_echo_frame, build_tcp_frame, build_udp_frame
from dispatch.packet.ipv4 import IP_MF
from dispatch.packet.tcp import TH_ACK, TH_CWR, TH_FIN, TH_PUSH, TH_SYN, opt_timestamp
from nicemu import offload as off
from nicemu.nic import Nic, NicConfig, RxQueueHost

V4 = ("10.0.0.1", "10.0.0.2")
V6 = ("fd00::1", "fd00::2")
OK = (off.RX_L3_OK | off.RX_L4_OK, 0xFFFF)
OK6 = (off.RX_L4_OK, 0xFFFF)


def scapy_csums_ok(frame: bytes) -> bool:
    """Recompute every checksum with scapy and compare with what the frame carries."""
    p = Ether(frame)
    q = p.copy()
    for layer in (IP, TCP, UDP):
        if layer in q:
            del q[layer].chksum
    q = Ether(bytes(q))
    for layer in (IP, TCP, UDP):
        if layer in p and p[layer].chksum != q[layer].chksum:
            return False
    return True


def _udp(src_dst=V4, **kw):
    return build_udp_frame(src_ip=src_dst[0], dst_ip=src_dst[1], src_port=1000, dst_port=53,
                           payload=kw.pop("payload", b"hello world"), **kw)


def _tcp(src_dst=V4, **kw):
    return build_tcp_frame(src_ip=src_dst[0], dst_ip=src_dst[1], src_port=40000, dst_port=80,
                           seq=kw.pop("seq", 1000), payload=kw.pop("payload", b"x" * 100), **kw)


# ------------------------------------------------------------------------------- rxcsum
@pytest.mark.parametrize("frame, want", [
    (_udp(), OK),
    (_tcp(), OK),
    (_udp(V6), OK6),
    (_tcp(V6), OK6),
    (_udp(pad=True, payload=b"ab"), OK),  # Ethernet padding is not part of the datagram
    (_udp(udp_checksum=0x1234), (off.RX_L3_OK | off.RX_L4_BAD, 0)),
    (_tcp(tcp_checksum=0x1234), (off.RX_L3_OK | off.RX_L4_BAD, 0)),
    (_tcp(V6, tcp_checksum=0x1234), (off.RX_L4_BAD, 0)),
    (_udp(ip_checksum=0x1234), (off.RX_L3_BAD | off.RX_L4_OK, 0xFFFF)),
    (_udp(udp_checksum=0), (off.RX_L3_OK, 0)),  # UDP/IPv4 without a checksum
    (_udp(vlan=5), OK),
    (build_icmp_echo_frame(src_ip=V4[0], dst_ip=V4[1], ident=1, seq=1), (off.RX_L3_OK, 0)),
    (b"\x00" * 60, (0, 0)),  # not IP
    (_tcp()[:40], (0, 0)),  # truncated
])
def test_rx_csum_flags(frame, want):
    assert off.rx_csum_frame(frame) == want
    good = want[0] & off.RX_L4_OK == off.RX_L4_OK and (
        want[0] & off.RX_L3_OK != off.RX_L3_BAD)
    if good:
        assert scapy_csums_ok(frame)


def test_rx_csum_fragment_gets_only_l3():
    f = bytearray(_udp())
    f[14 + 6] |= IP_MF >> 8
    f[14 + 10 : 14 + 12] = b"\0\0"
    from dispatch.packet.checksum import in_cksum
    f[14 + 10 : 14 + 12] = in_cksum(f[14:34]).to_bytes(2, "big")
    assert off.rx_csum_frame(bytes(f)) == (off.RX_L3_OK, 0)


# ------------------------------------------------------------------------------- txcsum
@pytest.mark.parametrize("family", [V4, V6])
@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_tx_csum_fills_checksums_scapy_agrees(family, kind):
    build = _tcp if kind == "tcp" else _udp
    good = build(family)
    bad = bytearray(build(family, **({"tcp_checksum": 0} if kind == "tcp"
                                     else {"udp_checksum": 0xBEEF})))
    flags = (L.CSUM_IP6_TCP if kind == "tcp" else L.CSUM_IP6_UDP) if family is V6 else \
        (L.CSUM_IP | (L.CSUM_TCP if kind == "tcp" else L.CSUM_UDP))
    if family is V4:
        bad[24:26] = b"\0\0"  # IP header checksum too
    n = off.tx_csum_frames([bad], [flags])
    assert n == (2 if family is V4 else 1)
    assert bytes(bad) == good
    assert scapy_csums_ok(bytes(bad))


def test_tx_csum_leaves_unflagged_frames_alone():
    f = bytearray(_udp(udp_checksum=0x1111))
    assert off.tx_csum_frames([f], [0]) == 0 and f == _udp(udp_checksum=0x1111)


# ---------------------------------------------------------------------------------- tso
@pytest.mark.parametrize("family", [V4, V6])
@pytest.mark.parametrize("mss, size", [(1448, 10000), (536, 537), (1000, 1000), (100, 50)])
def test_tso_segments_scapy_valid_and_concatenate(family, mss, size):
    payload = bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))
    opts = opt_timestamp(1, 2) + b"\x01\x01"
    big = build_tcp_frame(src_ip=family[0], dst_ip=family[1], src_port=1, dst_port=2,
                          seq=0xFFFFFF00, ack=77, flags=TH_ACK | TH_PUSH | TH_FIN | TH_CWR,
                          options=opts, payload=payload, ident=0xFFFE if family is V4 else 0,
                          tcp_checksum=0)
    segs = off.tso_segment(big, mss)
    assert len(segs) == max(1, -(-size // mss))
    data = b""
    for i, s in enumerate(segs):
        p = Ether(bytes(s))
        assert scapy_csums_ok(bytes(s))
        t = p[TCP]
        assert t.seq == (0xFFFFFF00 + i * mss) & 0xFFFFFFFF and t.ack == 77
        chunk = bytes(t.payload)
        assert len(chunk) <= mss
        data += chunk
        last = i == len(segs) - 1
        assert bool(t.flags & TH_FIN) == last and bool(t.flags & TH_PUSH) == last
        assert bool(t.flags & TH_CWR) == (i == 0)
        assert t.options == Ether(big)[TCP].options
        if family is V4:
            assert p[IP].id == (0xFFFE + i) & 0xFFFF and p[IP].len == len(s) - 14
        else:
            assert p[IPv6].plen == len(s) - 54
    assert data == payload


def test_tso_rejects_non_tcp():
    with pytest.raises(ValueError, match="TCP"):
        off.tso_segment(_udp(), 100)
    with pytest.raises(ValueError, match="tso_segsz"):
        off.tso_segment(_tcp(), 0)


# ---------------------------------------------------------------------------------- LRO
def _seg(seq, payload, *, flags=TH_ACK, family=V4, options=b"", sport=40000, ack=5,
         tcp_checksum=None):
    return build_tcp_frame(src_ip=family[0], dst_ip=family[1], src_port=sport, dst_port=80,
                           seq=seq, ack=ack, flags=flags, payload=payload, options=options,
                           tcp_checksum=tcp_checksum, pad=True)


def _plan(frames):
    segs = []
    for f in frames:
        ok = off.rx_csum_frame(f)[0] & off.RX_L4_OK == off.RX_L4_OK
        segs.append(off.lro_seg_std(f, v6=f[12] == 0x86, csum_ok=ok))
    return off.lro_plan(segs)


def test_lro_plan_rules():
    a, b, c = _seg(0, b"a" * 10), _seg(10, b"b" * 10), _seg(20, b"c" * 10)
    assert _plan([a, b, c]) == [[0, 1, 2]]
    assert _plan([a, c]) == []  # a gap
    assert _plan([a, _seg(10, b"b" * 10, flags=TH_ACK | TH_SYN), c]) == []
    assert _plan([a, b, _seg(20, b"c", flags=TH_ACK | TH_FIN)]) == [[0, 1]]
    assert _plan([a, _seg(10, b"b" * 10, options=opt_timestamp(1, 1))]) == []
    assert _plan([a, _seg(10, b"b" * 10, ack=6)]) == []
    assert _plan([a, _seg(10, b"b" * 10, tcp_checksum=1)]) == []  # bad checksum
    other = _seg(0, b"z" * 5, sport=1)
    assert _plan([a, other, b, _seg(5, b"y", sport=1)]) == [[0, 2], [1, 3]]
    assert _plan([a, _seg(10, b"")]) == []  # a pure ACK ends the run
    v6 = [_seg(0, b"a" * 10, family=V6), _seg(10, b"b" * 10, family=V6)]
    assert _plan(v6) == [[0, 1]]
    assert off.lro_plan([off.lro_seg_std(a, v6=False, csum_ok=True), True,
                         off.lro_seg_std(b, v6=False, csum_ok=True)]) == []


def _stream_bytes(pool, handles):
    """The TCP payload bytes of delivered packets, in order (per flow there is one)."""
    out = b""
    for m in handles:
        raw = pool.chain_bytes(m)
        p = Ether(raw)
        if IP in p:
            end = 14 + p[IP].len
            start = 14 + 4 * p[IP].ihl + 4 * p[TCP].dataofs
        else:
            end = 54 + p[IPv6].plen
            start = 54 + 4 * p[TCP].dataofs
        out += raw[start:end]
        assert pool.pkt_len(m) == len(raw)
        if pool.hget(m, L.W_CSUM_FLAGS) & L.CSUM_COALESCED:
            assert end == len(raw)  # padding trimmed, IP length covers the merged payload
        else:
            assert end <= len(raw) and scapy_csums_ok(raw)
    return out


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_lro_never_changes_the_delivered_bytes(pool_name, data):
    stream = data.draw(st.binary(min_size=1, max_size=6000))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=12)))
    bounds = [0, *[c for c in cuts if c < len(stream)], len(stream)]
    chunks = [(bounds[i], stream[bounds[i] : bounds[i + 1]]) for i in range(len(bounds) - 1)]
    drop = data.draw(st.sampled_from([None, *range(len(chunks))])) if len(chunks) > 2 else None
    frames = [_seg(1000 + s, c) for i, (s, c) in enumerate(chunks) if i != drop]
    expect = b"".join(c for i, (_, c) in enumerate(chunks) if i != drop)
    pool = MbufPool.create(pool_name, PoolConfig(nmbufs=256, nclusters=128, njumbop=4,
                                                 njumbo9=2, njumbo16=2, bucket=8))
    try:
        results = {}
        for lro in (False, True):
            nic = Nic(pool, NicConfig(lro=lro, ring_size=64, batch_min=1),
                      rings_name=pool_name + ".r")
            try:
                host = RxQueueHost(nic.rings, 0, pool)
                nic.receive(frames, 1)
                hs = host.harvest()
                results[lro] = _stream_bytes(pool, hs)
                if lro:
                    merged = [m for m in hs if pool.hget(m, L.W_CSUM_FLAGS) & L.CSUM_COALESCED]
                    # never across the gap: each merged packet's bytes are one contiguous run
                    if drop is not None and 0 < drop < len(chunks) - 1:
                        assert len(hs) >= 2
                    assert nic.counters.lro_queued == len(frames) - len(hs)
                    assert len(merged) == nic.counters.lro_flushed
                pool.freem_batch(hs)
            finally:
                nic.close()
        assert results[False] == results[True] == expect
        assert pool.audit().whole
    finally:
        pool.close()
