"""Tests for dispatch.packet.checksum: RFC 1071/1624 worked examples and property tests
against a naive reference implementation."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dispatch.packet.checksum import (
    cksum_batch,
    fold,
    in_cksum,
    incr_update16,
    incr_update32,
    incr_update_ttl,
    l4_checksum,
    ones_sum,
    ones_sum_batch,
    pseudo_header_sum,
    pseudo_header_sum_v4,
    pseudo_header_sum_v6,
    verify_batch,
)
from dispatch.packet.ipv4 import IPV4_HDR, build_ipv4, dec_ttl_inplace

SETTINGS = settings(max_examples=200, deadline=None)


def naive_ones_sum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 section 4.1, literally: 32-bit accumulator, end-around carry."""
    if len(data) % 2:
        data += b"\0"
    s = initial
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def naive_cksum(data: bytes, initial: int = 0) -> int:
    return ~naive_ones_sum(data, initial) & 0xFFFF


def rfc1141_update(hc: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 2 (RFC 1141): HC' = HC - ~m - m' = HC + m + ~m' (one's complement)."""
    s = hc + old + (~new & 0xFFFF)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


# --- worked examples -------------------------------------------------------------------


def test_rfc1071_example() -> None:
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_sum(data) == 0xDDF2
    assert in_cksum(data) == 0x220D
    assert in_cksum(data + b"\x22\x0d") == 0
    assert ones_sum(memoryview(data)) == 0xDDF2
    assert cksum_batch([data])[0] == 0x220D


def test_rfc1624_example() -> None:
    # "the one's complement sum of all other header octets is 0xCD7A", m = 0x5555
    other = struct.pack("!H", 0xCD7A)
    assert in_cksum(other + struct.pack("!H", 0x5555)) == 0xDD2F
    # full recomputation after m' = 0x3285 gives 0x0000 ...
    assert in_cksum(other + struct.pack("!H", 0x3285)) == 0x0000
    # ... and so does eqn. 3, while eqn. 2 (RFC 1141) gives the wrong 0xFFFF
    assert incr_update16(0xDD2F, 0x5555, 0x3285) == 0x0000
    assert rfc1141_update(0xDD2F, 0x5555, 0x3285) == 0xFFFF


def test_zero_and_ffff_equivalence() -> None:
    assert ones_sum(b"") == 0
    assert ones_sum(b"\0\0\0") == 0
    assert ones_sum(b"\xff\xff") == 0xFFFF
    assert ones_sum(b"\xff\xff\xff\xff") == 0xFFFF
    assert ones_sum(b"\0\0", 0xFFFF) == 0xFFFF
    assert ones_sum(b"\x80\x00\x7f\xff") == 0xFFFF
    assert fold(0) == 0 and fold(0xFFFF) == 0xFFFF and fold(0x1FFFE) == 0xFFFF
    assert fold(0x10000) == 1
    assert in_cksum(b"") == 0xFFFF


def test_odd_length() -> None:
    assert ones_sum(b"\x01") == 0x0100
    assert ones_sum(b"\x01\x02\x03") == 0x0102 + 0x0300


# --- properties ------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=2000), st.integers(0, 0xFFFF))
def test_in_cksum_matches_naive(data: bytes, initial: int) -> None:
    assert ones_sum(data, initial) == naive_ones_sum(data, initial)
    assert in_cksum(data, initial) == naive_cksum(data, initial)
    assert in_cksum(memoryview(data), initial) == naive_cksum(data, initial)
    assert in_cksum(bytearray(data)) == naive_cksum(data)


@SETTINGS
@given(st.binary(max_size=300).filter(lambda b: len(b) % 2 == 0 and any(b)))
def test_verify_after_insert(data: bytes) -> None:
    c = in_cksum(data)
    assert in_cksum(data + struct.pack("!H", c)) == 0


@SETTINGS
@given(
    st.lists(st.binary(max_size=1600), min_size=0, max_size=40),
    st.data(),
)
def test_batch_equals_per_packet(bufs: list[bytes], data: st.DataObject) -> None:
    want = [in_cksum(b) for b in bufs]
    got = cksum_batch(bufs)
    assert got.dtype == np.uint16
    assert got.tolist() == want
    assert ones_sum_batch([memoryview(b) for b in bufs]).tolist() == [ones_sum(b) for b in bufs]
    initials = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=len(bufs), max_size=len(bufs)))
    assert cksum_batch(bufs, initials).tolist() == [
        in_cksum(b, i) for b, i in zip(bufs, initials)
    ]
    assert cksum_batch(bufs, np.array(initials, dtype=np.uint32)).tolist() == [
        in_cksum(b, i) for b, i in zip(bufs, initials)
    ]


def test_batch_all_zero_and_empty() -> None:
    bufs = [b"", b"\0", b"\0" * 7, b"\xff\xff", b"", b"\x00\x01"]
    assert cksum_batch(bufs).tolist() == [in_cksum(b) for b in bufs]
    assert cksum_batch(bufs, [0xFFFF, 0, 1, 0, 0, 0]).tolist() == [
        in_cksum(b, i) for b, i in zip(bufs, [0xFFFF, 0, 1, 0, 0, 0])
    ]
    assert cksum_batch([]).shape == (0,)
    with pytest.raises(ValueError):
        cksum_batch([b"ab"], [1, 2])


def test_verify_batch() -> None:
    good = [build_ipv4(src="10.0.0.1", dst="10.0.0.2", proto=17, ident=i)[:20] for i in range(8)]
    bad = bytearray(good[3])
    bad[10] ^= 1
    res = verify_batch([*good, bytes(bad)])
    assert res.dtype == np.bool_
    assert res.tolist() == [True] * 8 + [False]


@SETTINGS
@given(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4),
       st.integers(0, 255), st.integers(0, 0xFFFF))  # fmt: skip
def test_pseudo_header_v4(src: bytes, dst: bytes, proto: int, length: int) -> None:
    ph = src + dst + bytes([0, proto]) + struct.pack("!H", length)
    assert pseudo_header_sum_v4(src, dst, proto, length) == naive_ones_sum(ph)
    assert pseudo_header_sum(src, dst, proto, length) == naive_ones_sum(ph)


@SETTINGS
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16),
       st.integers(0, 255), st.integers(0, 0xFFFFFFFF))  # fmt: skip
def test_pseudo_header_v6(src: bytes, dst: bytes, nh: int, length: int) -> None:
    ph = src + dst + struct.pack("!I", length) + bytes([0, 0, 0, nh])
    assert pseudo_header_sum_v6(src, dst, nh, length) == naive_ones_sum(ph)


@SETTINGS
@given(st.binary(max_size=100), st.sampled_from([4, 16]), st.data())
def test_l4_checksum(seg: bytes, alen: int, data: st.DataObject) -> None:
    src = data.draw(st.binary(min_size=alen, max_size=alen))
    dst = data.draw(st.binary(min_size=alen, max_size=alen))
    ph = pseudo_header_sum(src, dst, 6, len(seg))
    assert l4_checksum(src, dst, 6, seg) == naive_cksum(seg, ph)


def test_pseudo_header_bad_lengths() -> None:
    with pytest.raises(ValueError):
        pseudo_header_sum(b"\0" * 4, b"\0" * 16, 6, 0)


def _header_strategy() -> st.SearchStrategy[tuple[bytes, int, int, int]]:
    """(header with a valid checksum at word ck, changed word index, new value, ck)"""

    @st.composite
    def build(draw: st.DrawFn) -> tuple[bytes, int, int, int]:
        nwords = draw(st.integers(2, 40))
        words = draw(st.lists(st.integers(0, 0xFFFF), min_size=nwords, max_size=nwords))
        ck = draw(st.integers(0, nwords - 1))
        idx = draw(st.integers(0, nwords - 1).filter(lambda i: i != ck))
        new = draw(st.integers(0, 0xFFFF))
        words[ck] = 0
        hdr = struct.pack(f"!{nwords}H", *words)
        c = in_cksum(hdr)
        words[ck] = c
        return struct.pack(f"!{nwords}H", *words), idx, new, ck

    return build()


@SETTINGS
@given(_header_strategy())
def test_incr_update16_equals_recompute(case: tuple[bytes, int, int, int]) -> None:
    hdr, idx, new, ck = case
    words = list(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    # the one degenerate case: every other word zero (then eqn. 3 gives 0x0000 for an
    # all-zero header, whose recomputed checksum is 0xFFFF; no real header is all zero)
    assume(any(w for i, w in enumerate(words) if i not in (idx, ck)) or new)
    old = words[idx]
    hc = words[ck]
    words[idx] = new
    words[ck] = 0
    want = in_cksum(struct.pack(f"!{len(words)}H", *words))
    assert incr_update16(hc, old, new) == want


@SETTINGS
@given(_header_strategy(), st.integers(0, 0xFFFFFFFF))
def test_incr_update32_equals_recompute(case: tuple[bytes, int, int, int], new32: int) -> None:
    hdr, _idx, _new, ck = case
    words = list(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    free = [i for i in range(len(words) - 1) if i != ck and i + 1 != ck]
    assume(free)
    i = free[0]
    assume(any(w for j, w in enumerate(words) if j not in (i, i + 1, ck)))
    old32 = (words[i] << 16) | words[i + 1]
    hc = words[ck]
    words[i], words[i + 1] = new32 >> 16, new32 & 0xFFFF
    words[ck] = 0
    want = in_cksum(struct.pack(f"!{len(words)}H", *words))
    assert incr_update32(hc, old32, new32) == want
    assert incr_update32(hc, old32.to_bytes(4, "big"), new32.to_bytes(4, "big")) == want


@SETTINGS
@given(
    src=st.binary(min_size=4, max_size=4),
    dst=st.binary(min_size=4, max_size=4),
    proto=st.integers(0, 255),
    ttl=st.integers(1, 255),
    ident=st.integers(0, 0xFFFF),
    tos=st.integers(0, 255),
    df=st.booleans(),
    opts=st.binary(max_size=40),
    plen=st.integers(0, 1480),
)
def test_ttl_decrement(
    src: bytes, dst: bytes, proto: int, ttl: int, ident: int, tos: int, df: bool, opts: bytes,
    plen: int,
) -> None:  # fmt: skip
    kw = dict(src=src, dst=dst, proto=proto, ident=ident, tos=tos, df=df, options=opts)
    pkt = build_ipv4(ttl=ttl, payload=b"\0" * plen, **kw)
    want = build_ipv4(ttl=ttl - 1, payload=b"\0" * plen, **kw)
    hc = IPV4_HDR.unpack_from(pkt)[7]
    assert incr_update_ttl(hc, ttl, proto) == IPV4_HDR.unpack_from(want)[7]
    buf = bytearray(pkt)
    assert dec_ttl_inplace(buf) == ttl - 1
    assert bytes(buf) == want
    mv = memoryview(bytearray(b"xx" + pkt))
    dec_ttl_inplace(mv, 2)
    assert bytes(mv[2:]) == want


def test_ttl_underflow() -> None:
    with pytest.raises(ValueError):
        incr_update_ttl(0x1234, 0, 6)


def test_pseudo_header_all_ones_address_is_negative_zero_not_zero() -> None:
    """0.0.0.0 -> 255.255.255.255, protocol 0, length 0 sums to 0xFFFF (RFC 1071's
    end-around carry), which a `% 0xFFFF` per address once turned into 0."""
    ph = b"\0" * 4 + b"\xff" * 4 + b"\0\0\0\0"
    assert pseudo_header_sum_v4(b"\0" * 4, b"\xff" * 4, 0, 0) == naive_ones_sum(ph) == 0xFFFF
    ph6 = b"\0" * 16 + b"\xff" * 16 + b"\0" * 8
    assert pseudo_header_sum_v6(b"\0" * 16, b"\xff" * 16, 0, 0) == naive_ones_sum(ph6)
