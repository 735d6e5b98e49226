"""Tests for dispatch.stages.kernels: the compiled socket lookup against the
table's own, and the compiled soreceive against the per-packet one.

(The fused input kernel is held to the stages run one by one on random mixed
batches in test_stages_inputfast.py.)
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from stage_helpers import SMALL, load

from dispatch.mbuf import MbufPool
from dispatch.mbuf import layout as L
from dispatch.stages import kernels as K
from dispatch.stages import socket as so
from dispatch.stages.base import Ctx, StackConfig
from dispatch.stages.socktab import AF_INET4, IPPROTO_TCP, IPPROTO_UDP, SocketTable, pf_of

ADDRS = [0, 0x0A000001, 0x0A000002, 0xC0000201, 0xFFFFFFFF, 0x7F000001]
PORTS = [0, 9, 53, 80, 65535]
key_st = st.tuples(st.sampled_from([IPPROTO_TCP, IPPROTO_UDP]), st.sampled_from(ADDRS),
                   st.sampled_from(PORTS), st.sampled_from(ADDRS), st.sampled_from(PORTS))


@settings(max_examples=60, deadline=None)
@given(st.lists(key_st, max_size=24), st.lists(st.integers(0, 23), max_size=6),
       st.lists(key_st, min_size=1, max_size=24), st.integers(1, 64))
def test_compiled_lookup_finds_what_lookup_key_finds(inserts, unlinks, probes, cap):
    """Exact 4-tuples, addr:port listeners and wildcard ones, some unlinked again,
    in tables small enough that chains form: lookup4 == SocketTable.lookup_key."""
    tab = SocketTable.create(None, cap)
    try:
        made = []
        for proto, la, lp, fa, fp in inserts:
            key = (pf_of(proto, AF_INET4), la, lp, fa if lp else 0, fp if lp else 0)
            i, _ = tab.insert_key(key)
            if i >= 0:
                made.append(i)
        for j in unlinks:
            if j < len(made):
                tab.unlink(made[j])
        for proto, la, lp, fa, fp in probes:
            pf = pf_of(proto, AF_INET4)
            want = tab.lookup_key((pf, la, lp, fa, fp))
            got = K.lookup4(tab.np_w, tab.np_buckets, tab.np_mask, pf, la, lp, fa, fp)
            assert got == want, (proto, hex(la), lp, hex(fa), fp)
    finally:
        tab.close()


def _delivered(pool: MbufPool, tab: SocketTable, socks: list[int], payloads: list[bytes]
               ) -> list[int]:
    """Packets as udp_input leaves them: payload only, with their socket."""
    hs = []
    for s, p in zip(socks, payloads):
        m = load(pool, p)
        pool.w[(m << 6) + L.W_SOCKID] = s + 1
        tab.q[(s << 6) + 20] += len(p)  # Q_SB_APPENDED, as sbappend does
        hs.append(m)
    return hs


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.binary(max_size=300)), min_size=1,
                max_size=40), st.booleans())
def test_compiled_soreceive_equals_the_per_packet_one(pkts, digest):
    """Copied bytes, the user's buffer as the last read leaves it, socket counters,
    stats and digests: the compiled pass and the per-packet loop agree."""
    results = []
    for fast in (True, False):
        pool = MbufPool.create(f"demu-test-{os.getpid()}-kern{int(fast)}", SMALL)
        tab = SocketTable.create(None, 8)
        try:
            socks = [tab.bind_udp("0.0.0.0", 9 + k) for k in range(3)]
            ctx = Ctx(pool, config=StackConfig(digest=digest), sockets=tab)
            hs = _delivered(pool, tab, [socks[s] for s, _ in pkts], [p for _, p in pkts])
            if fast:
                assert so._soreceive_fast(ctx, hs) == {}
            else:
                assert so._soreceive_slow(ctx, hs) == {}
            results.append((bytes(so._uio(ctx)), tab.q.tobytes(), dict(ctx.stats.counters),
                            so.socket_digests(ctx)))
            assert pool.audit().whole
        finally:
            tab.close()
            pool.close()
    assert results[0] == results[1]


def test_compiled_soreceive_refuses_a_packet_without_socket(pool):
    tab = SocketTable.create(None, 4)
    try:
        s = tab.bind_udp("0.0.0.0", 9)
        ctx = Ctx(pool, config=StackConfig(), sockets=tab)
        hs = _delivered(pool, tab, [s, s], [b"a" * 10, b"b" * 10])
        pool.w[(hs[1] << 6) + L.W_SOCKID] = 0
        before = (pool._mh.tobytes(), tab.q.tobytes())
        assert so._soreceive_fast(ctx, hs) is None
        assert (pool._mh.tobytes(), tab.q.tobytes()) == before
        so.soreceive(ctx, hs)  # the per-packet path drops the socketless one, counted
        assert ctx.stats.drops["soreceive"]["nosock"] == 1
        assert pool.audit().whole
    finally:
        tab.close()

