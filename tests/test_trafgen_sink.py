"""The generator's datagram sink: counts, per-flow digests, checksum verdicts, latency.

The checksum verdicts are what the runtime's tx tests lean on to say that the
host's output path (or its NIC's txcsum) filled every checksum right, so they
are held here to scapy's, on frames scapy builds."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, UDP, Ether, IPv6, Raw

from dispatch.packet.frames import build_udp_frame, pad_to_min
from nicemu.trafgen.flows import STAMP, STAMP_MAGIC
from nicemu.trafgen.sink import FrameSink


def _v4(payload: bytes, **kw: object) -> bytes:
    return pad_to_min(build_udp_frame(src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=7,
                                      dst_port=9, payload=payload, **kw))


def test_counts_flows_digests_and_stamps() -> None:
    s = FrameSink()
    stamped = STAMP.pack(STAMP_MAGIC, 1, 1_000) + b"x" * 10
    s.on_frame(_v4(stamped), now_ns=6_000)
    s.on_frame(_v4(b"abc"), now_ns=7_000, stamp_ns=5_000)
    st_ = s.stats()
    assert st_["frames"] == 2 and st_["flows"] == 1 and st_["stamped"] == 2
    assert st_["bad_ip_csum"] == 0 and st_["bad_udp_csum"] == 0
    assert st_["ttl"] == {"64": 2}
    key = (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 7, 9, 17)
    assert s.digest_of(key) == hashlib.sha256(stamped + b"abc").hexdigest()
    assert st_["latency_us"]["count"] == 2


def test_a_bad_udp_checksum_is_counted_and_a_missing_one_is_not() -> None:
    s = FrameSink()
    good = bytearray(_v4(b"hello world"))
    bad = bytearray(good)
    bad[14 + 20 + 6] ^= 0x55  # the UDP checksum field
    none = bytearray(good)
    none[14 + 20 + 6 : 14 + 20 + 8] = b"\0\0"  # IPv4: no checksum sent
    for f in (good, bad, none):
        s.on_frame(f, now_ns=1)
    assert s.stats()["bad_udp_csum"] == 1 and s.stats()["frames"] == 3


def test_a_bad_ip_header_checksum_is_counted() -> None:
    s = FrameSink()
    f = bytearray(_v4(b"x"))
    f[14 + 10] ^= 0xFF
    s.on_frame(f, now_ns=1)
    assert s.stats()["bad_ip_csum"] == 1


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=300), v6=st.booleans(), flip=st.integers(-1, 300))
def test_udp_checksum_verdict_agrees_with_scapy(payload: bytes, v6: bool, flip: int) -> None:
    """scapy builds the datagram (its own checksum code); one payload byte may be
    flipped afterwards; the sink must call it bad exactly when scapy's recomputed
    checksum differs from the one carried."""
    l3 = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2")
    # (both MACs given: a bare Ether() makes scapy resolve the destination's MAC,
    # ~0.5 s an example here)
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    f = bytearray(bytes(eth / l3 / UDP(sport=1000, dport=2000) / Raw(payload)))
    start = 14 + (40 if v6 else 20) + 8
    if 0 <= flip < len(payload):
        f[start + flip] ^= 0x01
    pkt = Ether(bytes(f))
    again = pkt.copy()
    del again[UDP].chksum
    ok = Ether(bytes(again))[UDP].chksum == pkt[UDP].chksum
    s = FrameSink()
    s.on_frame(f, now_ns=1)
    assert s.stats()["bad_udp_csum"] == (0 if ok else 1)
