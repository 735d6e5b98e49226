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
    """Everything a kernel may write: headers, cluster metadata, the kernel state
    (caches and their levels among it), the global stacks and their tops, the lock words."""
    return (p._mh.tobytes() + p._meta64.tobytes() + p._st.tobytes()
            + p._stk.tobytes() + p._tops_np.tobytes() + p._lockw.tobytes())


def _freem(p: MbufPool, hs: np.ndarray) -> int:
    return K.freem_fast(p._seg32, p._seg64k, p._st, hs)


def _getcl(p: MbufPool, n: int, out: np.ndarray) -> int:
    return K.getcl_take(p._seg32, p._seg64k, p._st, 1, n, out)


def test_the_kernel_state_says_where_everything_is(pool):
    """The views a kernel derives from (segment, state) are the pool's own regions."""
    st = pool._st
    nmh = st[K.ST_NMH]
    assert nmh == pool.nmbufs + 1
    mh = pool._seg32[st[K.ST_MH] : st[K.ST_MH] + nmh * 64].reshape(nmh, 64)
    assert np.shares_memory(mh, pool._mh) and mh.shape == pool._mh.shape
    assert mh.ctypes.data == pool._mh.ctypes.data
    meta = pool._seg64k[st[K.ST_META] : st[K.ST_META] + st[K.ST_NMETA]]
    assert meta.ctypes.data == pool._meta64.ctypes.data and len(meta) == len(pool._meta64)
    stk = pool._seg32[st[K.ST_STK] : st[K.ST_STK] + st[K.ST_NSTK]]
    assert stk.ctypes.data == pool._stk.ctypes.data and len(stk) == len(pool._stk)
    for z in range(L.NZONES):
        lo, hi = st[K.ST_SREG + 2 * z], st[K.ST_SREG + 2 * z + 1]
        assert stk[lo:hi].ctypes.data == pool._stacks[z].ctypes.data
        assert hi - lo == len(pool._stacks[z])
    assert pool._seg32[st[K.ST_TOPS]:].ctypes.data == pool._tops_np.ctypes.data
    assert pool._seg32[st[K.ST_LOCKS]:].ctypes.data == pool._lockw.ctypes.data
    assert st[K.ST_NLOCKS] == len(pool._lockw)
    assert list(st[K.ST_TRX : K.ST_TRX + L.PKTHDR_WORDS_END]) == list(pool._t_rx)
    assert np.uint64(st[K.ST_META_INUSE1]) == pool._meta_inuse1
    # every cluster id maps to its zone
    for e in range(1, len(pool.cl_zone)):
        assert K._zone_of.py_func(st, e) == pool.cl_zone[e]


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


def test_freem_fast_frees_one_zone_or_plain_mbufs_and_flushes_whole_buckets(pool):
    cl = pool.getcl_batch(40)
    r = _freem(pool, cl)
    assert r == 0
    assert all(pool.hget(int(m), L.W_OWNER) >> L.STATE_SHIFT in (L.ST_CACHED, L.ST_FREE)
               for m in cl)
    plain = pool.get_batch(20)
    pool.freem_batch(memoryview(plain.astype(np.uint32).tobytes()).cast("I"))  # off the wire
    assert all(pool.hget(int(m), L.W_OWNER) >> L.STATE_SHIFT != L.ST_INUSE for m in plain)
    # past its maximum a cache gives its most recent whole buckets back to the global stack
    big = pool.getcl_batch(64)
    tops = pool._tops_np.copy()
    assert _freem(pool, big) == 0
    assert pool._bn[0] <= pool._cmax[0] and pool._bn[1] <= pool._cmax[1]
    for z in (0, 1):
        assert (int(pool._tops_np[z]) - int(tops[z])) % pool._bucket[z] == 0
    assert pool.lock_words_free() and pool.audit().whole


def test_a_busy_zone_lock_leaves_refills_and_flushes_to_the_python_path(pool):
    other = pool._lock_tag + 1  # another owner holds both zone locks
    pool._lockw[0] = pool._lockw[1] = other
    pool._bn[:] = 0
    out = np.empty(8, np.intp)
    before = _state(pool)
    assert _getcl(pool, 8, out) == -1  # a refill needs the lock: nothing taken
    assert _state(pool) == before
    pool._lockw[0] = pool._lockw[1] = 0
    hs = pool.getcl_batch(3 * pool._bucket[1])
    pool._lockw[0] = pool._lockw[1] = other
    bn = pool._bn.copy()
    assert _freem(pool, hs) == 0b11  # freed into the caches, both over their maximum
    assert (pool._bn[:2] == bn[:2] + len(hs)).all()
    pool._lockw[0] = pool._lockw[1] = 0
    for z in (0, 1):
        pool._flush_over(z)
    assert pool._bn[0] <= pool._cmax[0] and pool._bn[1] <= pool._cmax[1]
    assert pool.audit().whole


def test_getcl_take_refuses_short_caches_and_writes_rx_buffers(pool):
    out = np.empty(8, np.intp)
    pool._bn[:] = 0  # (the caches hold nothing yet: a new pool's are empty)
    tops = pool._tops_np.copy()
    before = _state(pool)
    pool._tops_np[0] = 4  # the global stack holds 4 mbufs: the batch cannot be made
    assert _getcl(pool, 8, out) == 0  # nothing taken; the refills kept what they got
    assert pool._bn[0] == 4 and pool._tops_np[0] == 0 and pool._bn[1] == pool._bucket[1]
    assert pool.in_use() == 0
    pool._push_all(0)  # give the refills back: the stacks are as they were
    pool._push_all(1)
    pool._tops_np[0] = tops[0]
    pool._st[:] = np.frombuffer(before, np.int64, pool._st.size, pool._mh.nbytes
                                + pool._meta64.nbytes)
    assert _state(pool) == before
    hs = pool.getcl_batch(8)  # refills the caches in the kernel, then takes from them
    assert len(hs) == 8
    assert (pool._tops_np[:2] == tops[:2] - np.array(pool._bucket[:2])).all()
    for m in hs.tolist():
        assert pool.flags(m) == L.M_EXT | L.M_PKTHDR
        assert pool.hget(m, L.W_OWNER) == pool.inuse_tag
        e = pool.hget(m, L.W_EXT)
        assert pool.cl_meta[e << 1] == 1 and pool.cl_meta[(e << 1) | 1] == pool.inuse_tag
        assert pool.stamps([m]).sum() == 0
    pool.freem_batch(hs)
    assert pool.lock_words_free() and pool.audit().whole


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
