"""Tests for nicemu.rss: Microsoft's RSS verification suite, batching, spread."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from shared_paths import CAPTURES  # noqa: E402

from nicemu import rss
from nicemu.rss import (
    INDIRECTION_SIZE,
    IPPROTO_TCP,
    IPPROTO_UDP,
    M_HASHTYPE_NONE,
    M_HASHTYPE_RSS_IPV4,
    M_HASHTYPE_RSS_IPV6,
    M_HASHTYPE_RSS_TCP_IPV4,
    M_HASHTYPE_RSS_TCP_IPV6,
    M_HASHTYPE_RSS_UDP_IPV4,
    M_HASHTYPE_RSS_UDP_IPV6,
    MS_KEY,
    Rss,
    hash_input,
    pack_inputs,
    toeplitz_hash,
)

# Microsoft, "Verifying the RSS Hash Calculation" (Windows driver docs):
# (destination, dst port, source, src port, hash of addresses only, hash with TCP)
# Secret key 6d5a56da...01fa.  The input is src addr, dst addr[, src port, dst port].
MS_IPV4 = [
    ("161.142.100.80", 1766, "66.9.149.187", 2794, 0x323E8FC2, 0x51CCC178),
    ("65.69.140.83", 4739, "199.92.111.2", 14230, 0xD718262A, 0xC626B0EA),
    ("12.22.207.184", 38024, "24.19.198.95", 12898, 0xD2D0A5DE, 0x5C2B394A),
    ("209.142.163.6", 2217, "38.27.205.30", 48228, 0x82989176, 0xAFC7327F),
    ("202.188.127.2", 1303, "153.39.163.191", 44251, 0x5D1809C5, 0x10E828A2),
]
MS_IPV6 = [
    ("3ffe:2501:200:3::1", 1766, "3ffe:2501:200:1fff::7", 2794, 0x2CC18CD5, 0x40207D3D),
    ("ff02::1", 4739, "3ffe:501:8::260:97ff:fe40:efab", 14230, 0x0F0C461C, 0xDDE51BBF),
    (
        "fe80::200:f8ff:fe21:67cf",
        38024,
        "3ffe:1900:4545:3:200:f8ff:fe21:67cf",
        44251,
        0x4B61E985,
        0x02D1FEEF,
    ),
]
MS_ALL = MS_IPV4 + MS_IPV6


def test_ms_key_and_freebsd_hashtype_values() -> None:
    assert MS_KEY.hex() == (
        "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
    )
    # sys/sys/mbuf.h: M_HASHTYPE_HASH(t) = 0x80 | t
    assert (M_HASHTYPE_RSS_IPV4, M_HASHTYPE_RSS_TCP_IPV4) == (0x81, 0x82)
    assert (M_HASHTYPE_RSS_IPV6, M_HASHTYPE_RSS_TCP_IPV6) == (0x83, 0x84)
    assert (M_HASHTYPE_RSS_UDP_IPV4, M_HASHTYPE_RSS_UDP_IPV6) == (0x87, 0x89)
    assert M_HASHTYPE_NONE == 0


@pytest.mark.parametrize(("dst", "dport", "src", "sport", "h2", "h4"), MS_IPV4)
def test_ms_vectors_ipv4(dst: str, dport: int, src: str, sport: int, h2: int, h4: int) -> None:
    r = Rss()
    assert r.hash_tuple(src, dst) == (h2, M_HASHTYPE_RSS_IPV4)
    assert r.hash_tuple(src, dst, sport, dport) == (h4, M_HASHTYPE_RSS_TCP_IPV4)
    assert r.hash_tuple(src, dst, sport, dport, proto="tcp") == (h4, M_HASHTYPE_RSS_TCP_IPV4)


@pytest.mark.parametrize(("dst", "dport", "src", "sport", "h2", "h6"), MS_IPV6)
def test_ms_vectors_ipv6(dst: str, dport: int, src: str, sport: int, h2: int, h6: int) -> None:
    r = Rss()
    assert r.hash_tuple(src, dst) == (h2, M_HASHTYPE_RSS_IPV6)
    assert r.hash_tuple(src, dst, sport, dport) == (h6, M_HASHTYPE_RSS_TCP_IPV6)


@pytest.mark.parametrize(("dst", "dport", "src", "sport", "h2", "h4"), MS_ALL)
def test_ms_vectors_reference_bitwise(
    dst: str, dport: int, src: str, sport: int, h2: int, h4: int
) -> None:
    """The bit-by-bit pseudocode and the table agree on the published values."""
    assert toeplitz_hash(hash_input(src, dst)) == h2
    assert toeplitz_hash(hash_input(src, dst, sport, dport)) == h4
    r = Rss()
    assert r.toeplitz(hash_input(src, dst, sport, dport)) == h4


@pytest.mark.parametrize(("dst", "dport", "src", "sport", "h2", "h4"), MS_ALL)
def test_ms_vectors_udp_when_enabled(
    dst: str, dport: int, src: str, sport: int, h2: int, h4: int
) -> None:
    v6 = ":" in dst
    on, off = Rss(udp=True), Rss(udp=False)
    # UDP uses the TCP input layout when UDP hashing is on ...
    assert on.hash_tuple(src, dst, sport, dport, proto=IPPROTO_UDP) == (
        h4,
        M_HASHTYPE_RSS_UDP_IPV6 if v6 else M_HASHTYPE_RSS_UDP_IPV4,
    )
    # ... and falls back to the 2-tuple when it is off.
    assert off.hash_tuple(src, dst, sport, dport, proto="udp") == (
        h2,
        M_HASHTYPE_RSS_IPV6 if v6 else M_HASHTYPE_RSS_IPV4,
    )
    # Other protocols: 2-tuple.
    assert on.hash_tuple(src, dst, sport, dport, proto=132)[0] == h2


def test_ms_vectors_batched() -> None:
    r = Rss()
    src4 = np.array([int(ipaddress.IPv4Address(row[2])) for row in MS_IPV4], dtype=np.uint32)
    dst4 = np.array([int(ipaddress.IPv4Address(row[0])) for row in MS_IPV4], dtype=np.uint32)
    sp = [row[3] for row in MS_IPV4]
    dp = [row[1] for row in MS_IPV4]
    assert r.hash_batch(pack_inputs(src4, dst4)).tolist() == [row[4] for row in MS_IPV4]
    assert r.hash_batch(pack_inputs(src4, dst4, sp, dp)).tolist() == [row[5] for row in MS_IPV4]
    src6 = np.array([list(ipaddress.IPv6Address(row[2]).packed) for row in MS_IPV6], np.uint8)
    dst6 = np.array([list(ipaddress.IPv6Address(row[0]).packed) for row in MS_IPV6], np.uint8)
    sp6 = [row[3] for row in MS_IPV6]
    dp6 = [row[1] for row in MS_IPV6]
    assert r.hash_batch(pack_inputs(src6, dst6)).tolist() == [row[4] for row in MS_IPV6]
    assert r.hash_batch(pack_inputs(src6, dst6, sp6, dp6)).tolist() == [row[5] for row in MS_IPV6]


def test_address_forms_agree() -> None:
    r = Rss()
    dst, dport, src, sport, _h2, h4 = MS_IPV4[0]
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    assert r.hash_tuple(a, b, sport, dport)[0] == h4
    assert r.hash_tuple(a.packed, b.packed, sport, dport)[0] == h4
    assert r.hash_tuple(bytearray(a.packed), memoryview(b.packed), sport, dport)[0] == h4


def test_table_matches_bitwise_on_random_inputs() -> None:
    rng = np.random.default_rng(7)
    key = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
    r = Rss(key)
    data = rng.integers(0, 256, (200, 36), dtype=np.uint8)
    batch = r.hash_batch(data)
    for row, hb in zip(data[:50], batch[:50]):
        assert toeplitz_hash(row.tobytes(), key) == r.toeplitz(row.tobytes()) == int(hb)
    # shorter inputs are prefixes of the same computation
    assert r.hash_batch(data[:, :12]).tolist() == [r.toeplitz(x.tobytes()[:12]) for x in data]


def test_bad_inputs() -> None:
    r = Rss()
    with pytest.raises(ValueError, match="40 bytes"):
        Rss(b"\x00" * 39)
    with pytest.raises(ValueError, match="queues"):
        Rss(queues=0)
    with pytest.raises(ValueError, match="not a valid IPv4 or IPv6"):
        r.hash_tuple("1.2.3", "1.2.3.4")
    with pytest.raises(ValueError, match="both be IPv4 or both be IPv6"):
        r.hash_tuple("1.2.3.4", "::1")
    with pytest.raises(ValueError, match="0..65535"):
        r.hash_tuple("1.2.3.4", "1.2.3.5", 70000, 1)
    with pytest.raises(ValueError, match="both ports"):
        r.hash_tuple("1.2.3.4", "1.2.3.5", 1, None)
    with pytest.raises(ValueError, match="at most 36"):
        r.toeplitz(bytes(37))
    with pytest.raises(ValueError, match="unknown protocol"):
        r.hash_tuple("1.2.3.4", "1.2.3.5", 1, 2, proto="sctp")


def test_indirection_default_and_set() -> None:
    r = Rss(queues=3)
    assert r.indirection == tuple(i % 3 for i in range(INDIRECTION_SIZE))
    assert r.queue_of(0x51CCC178) == (0x51CCC178 & 127) % 3
    r.set_indirection([2] * INDIRECTION_SIZE)
    assert r.queue_of(12345) == 2
    assert r.queues_of(np.array([1, 2, 3], dtype=np.uint32)).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="128 entries"):
        r.set_indirection([0] * 64)
    with pytest.raises(ValueError, match=r"valid queues are 0\.\.2"):
        r.set_indirection([3] * INDIRECTION_SIZE)


# Chi-square critical values at p = 0.001 (df = queues - 1): 3 -> 16.266, 7 -> 24.322.
CHI2_CRIT = {4: 16.266, 8: 24.322}


@pytest.mark.parametrize("queues", [4, 8])
def test_random_flows_spread_evenly(queues: int) -> None:
    rng = np.random.default_rng(20240601 + queues)
    n = 40_000
    src = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    dst = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    sp = rng.integers(1024, 65536, n)
    dp = rng.integers(1, 65536, n)
    r = Rss(queues=queues)
    hashes = r.hash_batch(pack_inputs(src, dst, sp, dp))
    counts = np.bincount(r.queues_of(hashes), minlength=queues)
    expected = n / queues
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_CRIT[queues], (counts.tolist(), chi2)
    # The scalar path lands the same flows in the same queues.
    for i in range(0, 200):
        h, _ = r.hash_tuple(
            ipaddress.IPv4Address(int(src[i])), ipaddress.IPv4Address(int(dst[i])),
            int(sp[i]), int(dp[i]),
        )
        assert h == int(hashes[i])
        assert r.queue_of(h) == int(r.queues_of(hashes[i : i + 1])[0])


def test_hash_frame_matches_tuple() -> None:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Dot1Q, Ether

    r = Rss(udp=True)
    r2 = Rss(udp=False)
    dst, dport, src, sport, h2, h4 = MS_IPV4[0]
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    assert r.hash_frame(bytes(eth / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport))) == (
        h4, M_HASHTYPE_RSS_TCP_IPV4)
    assert r.hash_frame(
        bytes(eth / Dot1Q(vlan=5) / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport))
    ) == (h4, M_HASHTYPE_RSS_UDP_IPV4)
    assert r2.hash_frame(
        bytes(eth / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport))
    ) == (h2, M_HASHTYPE_RSS_IPV4)
    # IP options move the TCP header; fragments hash on addresses only.
    opt = IP(src=src, dst=dst, options=b"\x01\x01\x01\x00")
    assert r.hash_frame(bytes(eth / opt / TCP(sport=sport, dport=dport)))[0] == h4
    frag = IP(src=src, dst=dst, flags="MF") / TCP(sport=sport, dport=dport)
    assert r.hash_frame(bytes(eth / frag)) == (h2, M_HASHTYPE_RSS_IPV4)
    d6, dp6, s6, sp6, h62, h64 = MS_IPV6[0]
    assert r.hash_frame(bytes(eth / IPv6(src=s6, dst=d6) / TCP(sport=sp6, dport=dp6))) == (
        h64, M_HASHTYPE_RSS_TCP_IPV6)
    assert r.hash_frame(bytes(eth / IPv6(src=s6, dst=d6, nh=59))) == (h62, M_HASHTYPE_RSS_IPV6)
    assert r.hash_frame(bytes(eth / ARP())) == (0, M_HASHTYPE_NONE)
    assert r.hash_frame(b"\x00" * 10) == (0, M_HASHTYPE_NONE)


def test_hash_frame_on_real_captures() -> None:
    """Every frame of the captures hashes like its tuple as scapy dissects it."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    from nicemu.pcap import read_packets

    r = Rss(udp=True)
    seen = 0
    for path in sorted(CAPTURES.glob("*.pcap*")):
        for rec in read_packets(path):
            pkt = Ether(rec.data)
            ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
            if ip is None:
                assert r.hash_frame(rec.data)[1] == M_HASHTYPE_NONE
                continue
            l4 = ip.payload
            is_frag = isinstance(ip, IP) and (ip.flags.MF or ip.frag)
            if isinstance(l4, TCP | UDP) and not is_frag:
                proto = IPPROTO_TCP if isinstance(l4, TCP) else IPPROTO_UDP
                want = r.hash_tuple(ip.src, ip.dst, l4.sport, l4.dport, proto=proto)
            else:
                want = r.hash_tuple(ip.src, ip.dst)
            assert r.hash_frame(rec.data) == want
            seen += 1
    assert seen > 900


def test_repr_and_names() -> None:
    assert "MS key" in repr(Rss())
    assert rss.hashtype_name(M_HASHTYPE_RSS_TCP_IPV6) == "M_HASHTYPE_RSS_TCP_IPV6"
    assert rss.hashtype_name(0x3F) == "0x3f"
