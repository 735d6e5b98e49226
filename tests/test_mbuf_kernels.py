"""Tests for dispatch.mbuf.kernels: the compiled batch paths refuse, changing
nothing, whatever is outside their common case, and do the common case in full.

(The pool's hypothesis state machine in test_mbuf_pool.py drives getcl_batch and
freem_batch, and so these kernels, through random sequences against a bytes model.)
"""

from __future__ import annotations

import numpy as np

from dispatch.mbuf import MbufPool
from dispatch.mbuf import kernels as K
from dispatch.mbuf import layout as L

# (the `pool` fixture: conftest's small pool, 16-buffer buckets)


def _state(p: MbufPool) -> bytes:
    """Everything a kernel may write: headers, cluster metadata, caches and their levels."""
    return p._mh.tobytes() + p._meta64.tobytes() + p._bc.tobytes() + p._bn.tobytes()


def _freem(p: MbufPool, hs: np.ndarray) -> int:
    return K.freem_fast(p._mh, p._meta64, p._cl_zone_np, hs, p._bc, p._bn, p._cmax_np,
                        p.cached_tag, p._meta_cached)


def test_freem_fast_refuses_chains_shared_clusters_mixed_zones_and_double_frees(pool):
    a = pool.getcl(100)
    b = pool.getcl(100)
    pool.cat(a, pool.getcl(100))  # a chain
    shared = pool.copym(b, 0)  # b's cluster now has two references
    plain = pool.gethdr()
    jumbo = pool.getcl(3000)
    done = pool.getcl(100)
    pool.freem(done)  # a double free from here on
    cases = [[a], [b], [shared], [plain, jumbo], [jumbo, b], [done]]
    for hs in cases:
        before = _state(pool)
        ro = np.array(hs, np.uint32)
        ro.flags.writeable = False
        for arr in (np.array(hs, np.intp), np.array(hs, np.uint32), ro):
            assert _freem(pool, arr) == -1, hs
        assert _state(pool) == before, f"{hs}: a refusal wrote something"
    for m in (a, b, shared, plain, jumbo):
        pool.freem(m)
    assert pool.audit().whole


def test_freem_fast_frees_one_zone_or_plain_mbufs_and_asks_for_flushes(pool):
    cl = pool.getcl_batch(40)
    r = _freem(pool, cl)
    assert r >= 0
    assert all(pool.hget(int(m), L.W_OWNER) == pool.cached_tag for m in cl)
    assert pool._bn[1] >= 40 or r & 0b10  # the clusters went to our zone-1 cache
    plain = pool.get_batch(20)
    pool.freem_batch(memoryview(plain.astype(np.uint32).tobytes()).cast("I"))  # off the wire
    # freed: in our cache, or already flushed with a bucket to the global stack
    assert all(pool.hget(int(m), L.W_OWNER) >> L.STATE_SHIFT != L.ST_INUSE for m in plain)
    # past its maximum a cache asks for a flush: the pool's freem_batch does it
    big = pool.getcl_batch(64)
    r = _freem(pool, big)
    assert r & 1 and r & 0b10  # mbufs and 2k clusters both over their 2 x bucket
    for z in range(L.NZONES):
        if r >> z & 1:
            pool._flush_over(z)
    assert pool._bn[0] <= pool._cmax[0] and pool._bn[1] <= pool._cmax[1]
    assert pool.audit().whole


def test_getcl_take_refuses_short_caches_and_writes_rx_buffers(pool):
    out = np.empty(8, np.intp)
    pool._bn[:] = 0  # (the caches hold nothing yet: a new pool's are empty)
    before = _state(pool)
    assert K.getcl_take(pool._mh, pool._meta64, pool._bc, pool._bn, 1, 8, pool._t_rx,
                        pool._meta_inuse1, out) == 0
    assert _state(pool) == before
    hs = pool.getcl_batch(8)  # fills the caches, then the kernel takes them
    assert len(hs) == 8
    for m in hs.tolist():
        assert pool.flags(m) == L.M_EXT | L.M_PKTHDR
        assert pool.hget(m, L.W_OWNER) == pool.inuse_tag
        e = pool.hget(m, L.W_EXT)
        assert pool.cl_meta[e << 1] == 1 and pool.cl_meta[(e << 1) | 1] == pool.inuse_tag
        assert pool.stamps([m]).sum() == 0
    pool.freem_batch(hs)
    assert pool.audit().whole


def test_exhaustion_through_the_batch_path_is_counted_not_raised(pool):
    ncl = pool.counts[1]
    got = [pool.getcl_batch(32) for _ in range(ncl // 32)]  # every 2k cluster
    assert sum(len(h) for h in got) == ncl
    before = pool.stats()
    assert len(pool.getcl_batch(32)) == 0
    after = pool.stats()
    assert after.getcl_denied == before.getcl_denied + 32
    assert after.zones[1].denied == before.zones[1].denied + 32
    for h in got:
        pool.freem_batch(h)
    assert pool.audit().whole
