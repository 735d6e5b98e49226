"""Compiled kernels for the pool's batch operations (m_getcl and m_freem by the batch).

Why it exists: an rx ring refill (the NIC) and a socket's copyout (a user
thread) allocate and free a batch of buffers per handoff. Done with numpy,
each costs about a dozen whole-batch calls at 0.5-2 us apiece on this
machine (docs/BENCHMARKS.md), which is 0.3-0.6 us per buffer at batch 32:
the floor that kept cross-process allocate/free near 1.5 M/s. Here each is
one call into machine code that walks the batch once.

The kernels move handles between a process's batch caches (one row per zone
of ``MbufPool._bc``, with their fill levels in ``_bn``: both live in the
pool's kernel state, ST_* below), the mbuf headers
and cluster metadata in the shared segment, and the segment's global free
stacks: a cache that runs short or overflows is refilled or flushed a
bucket at a time inside the same call, under the zone's spin lock
(spinlock.py), so the common batch operation is one call with no system
call at all. A kernel that meets anything outside its common case -- a
pool running dry, a lock that stays busy -- changes nothing and says so,
and the caller takes the general Python path.
"""

from __future__ import annotations

import numpy as np

from dispatch.jit import (
    cas32,
    helper,
    i64_1d,
    intp_1d,
    intp_2d,
    kernel,
    ro_intp_1d,
    ro_u32_1d,
    types,
    u32_1d,
    u32_2d,
    u64_1d,
    u64_2d,
)

from . import layout as L
from .spinlock import SPINS, spin_take

_W_NEXT = L.W_NEXT
_W_OWNER = L.W_OWNER
_W_EXT = L.W_EXT
_ST_SHIFT = L.STATE_SHIFT
_ST_INUSE = L.ST_INUSE
_Q_TS = L.Q_TS
_LOW32 = np.uint64(0xFFFFFFFF)

# -- A pool's kernel state: one process-local int64 array (MbufPool._st) with what
# -- the batch kernels need beside the segment itself: the batch caches and their
# -- fill levels, the caches' sizes, where each region of the segment is, and the
# -- process's tags. The kernels take it, and the segment as u32 and u64 views, as
# -- three arguments: each array argument costs 40-80 ns to pass on this machine,
# -- and with the sixteen they took one by one the call cost more than the batch.
NZ = L.NZONES
ST_BN = 0  # fill level of each zone's batch cache
ST_BUCKET = ST_BN + NZ  # refill / flush unit of each zone
ST_CMAX = ST_BUCKET + NZ  # most a zone's batch cache keeps before it flushes
ST_SREG = ST_CMAX + NZ  # zone z's free stack is stk[st[ST_SREG + 2z] : st[ST_SREG + 2z + 1]]
ST_ZFIRST = ST_SREG + 2 * NZ  # pool-wide id of each cluster zone's first cluster
ST_MH = ST_ZFIRST + NZ  # u32 index of mbuf 0's header in the segment
ST_NMH = ST_MH + 1  # headers (mbufs + 1: handle 0 is none)
ST_META = ST_NMH + 1  # u64 index of cluster 0's metadata
ST_NMETA = ST_META + 1
ST_STK = ST_NMETA + 1  # u32 index of the first zone's free stack
ST_NSTK = ST_STK + 1
ST_TOPS = ST_NSTK + 1  # u32 index of the stacks' tops (one per zone)
ST_LOCKS = ST_TOPS + 1  # u32 index of the lock words
ST_NLOCKS = ST_LOCKS + 1
ST_LOCK_TAG = ST_NLOCKS + 1  # what this process writes into a lock word it holds
ST_CACHED_TAG = ST_LOCK_TAG + 1  # owner word of a buffer in this process's cache
ST_META_CACHED = ST_CACHED_TAG + 1  # a cluster's metadata in our cache: refcount 0, ours
ST_META_INUSE1 = ST_META_CACHED + 1  # ... in use: refcount 1, ours
ST_BCW = ST_META_INUSE1 + 1  # width of a batch-cache row
ST_TRX = ST_BCW + 1  # the header words of an rx buffer (pkthdr mbuf on a cluster)
ST_BC = ST_TRX + L.PKTHDR_WORDS_END  # the batch caches: NZ rows of ST_BCW handles


def state_size(bc_width: int) -> int:
    """Length of a kernel state array whose batch-cache rows hold `bc_width` handles."""
    return ST_BC + NZ * bc_width


@helper
def _views(seg32, seg64, st):  # type: ignore[no-untyped-def]
    """The regions of the segment and of the state that the kernels work on, as
    views: mbuf headers, cluster metadata, free stacks, stack tops, lock words,
    batch caches, their fill levels, bucket sizes, cache maxima, stack regions."""
    nmh = st[ST_NMH]
    mh = seg32[st[ST_MH] : st[ST_MH] + nmh * 64].reshape((nmh, 64))
    meta64 = seg64[st[ST_META] : st[ST_META] + st[ST_NMETA]]
    stk = seg32[st[ST_STK] : st[ST_STK] + st[ST_NSTK]]
    tops = seg32[st[ST_TOPS] : st[ST_TOPS] + NZ]
    lockw = seg32[st[ST_LOCKS] : st[ST_LOCKS] + st[ST_NLOCKS]]
    w = st[ST_BCW]
    bc = st[ST_BC : ST_BC + NZ * w].reshape((NZ, w))
    return (mh, meta64, stk, tops, lockw, bc, st[ST_BN : ST_BN + NZ],
            st[ST_BUCKET : ST_BUCKET + NZ], st[ST_CMAX : ST_CMAX + NZ],
            st[ST_SREG : ST_SREG + 2 * NZ])


@helper
def _tags(st):  # type: ignore[no-untyped-def]
    """(lock tag, cached tag) of the process whose state this is, as the u32 words
    it writes."""
    return np.uint32(st[ST_LOCK_TAG]), np.uint32(st[ST_CACHED_TAG])


@helper
def _zone_of(st, e):  # type: ignore[no-untyped-def]
    """The zone of pool-wide cluster id e (> 0)."""
    z = NZ - 1
    while z > 1 and e < st[ST_ZFIRST + z]:
        z -= 1
    return z


@helper
def _pop(mh, meta64, stack, tops, z, bc, bn, want, cached_tag):  # type: ignore[no-untyped-def]
    """Move up to `want` handles from the top of zone z's global free stack onto our
    zone-z batch cache, tagging each as cached by us (the mbuf's owner word, or the
    cluster's owner half of its metadata). The caller holds the zone lock."""
    top = np.int64(tops[z])
    b = bn[z]
    k = min(want, top, bc.shape[1] - b)
    for j in range(k):
        h = stack[top - k + j]
        if z == 0:
            mh[h, _W_OWNER] = cached_tag
        else:
            meta64[h] = (meta64[h] & _LOW32) | (np.uint64(cached_tag) << np.uint64(32))
        bc[z, b + j] = h
    tops[z] = np.uint32(top - k)
    bn[z] = b + k
    return k


@helper
def _push(mh, meta64, stack, tops, z, bc, bn, k):  # type: ignore[no-untyped-def]
    """Move the top k handles of our zone-z batch cache onto zone z's global free
    stack, tagging each free (owner word 0). The caller holds the zone lock."""
    top = np.int64(tops[z])
    b = bn[z]
    for j in range(k):
        h = bc[z, b - k + j]
        if z == 0:
            mh[h, _W_OWNER] = 0
        else:
            meta64[h] = meta64[h] & _LOW32
        stack[top + j] = np.uint32(h)
    tops[z] = np.uint32(top + k)
    bn[z] = b - k
    return k


@helper
def _refill(mh, meta64, stk, sreg, tops, lockw, lock_tag, z, bc, bn, want,  # type: ignore[no-untyped-def]
            cached_tag):
    """A bucket refill of our zone-z batch cache from the global stack, under the zone
    lock (stk: every zone's stack, zone z's at stk[sreg[2z]:sreg[2z+1]]). Returns how
    many came, or -1 (nothing done) if the lock stayed busy through a spin."""
    if spin_take(lockw, z, lock_tag, SPINS) != 0:
        return -1
    k = _pop(mh, meta64, stk[sreg[2 * z] : sreg[2 * z + 1]], tops, z, bc, bn, want, cached_tag)
    cas32(lockw, z, lock_tag, 0)
    return k


@helper
def _flush(mh, meta64, stk, sreg, tops, lockw, lock_tag, z, bc, bn, k):  # type: ignore[no-untyped-def]
    """Push the top k handles of our zone-z batch cache to the global stack under the
    zone lock; False (nothing done) if the lock stayed busy through a spin."""
    if spin_take(lockw, z, lock_tag, SPINS) != 0:
        return False
    _push(mh, meta64, stk[sreg[2 * z] : sreg[2 * z + 1]], tops, z, bc, bn, k)
    cas32(lockw, z, lock_tag, 0)
    return True


@kernel(types.int64(u32_1d, u64_1d, i64_1d, types.int64, types.int64, intp_1d))
def getcl_take(seg32, seg64, st, z, n, out):  # type: ignore[no-untyped-def]
    """m_getcl for a whole batch: take n mbufs and n zone-z clusters from the batch
    caches (refilling a short one from the global stack first, a bucket or more, under
    its zone lock), write each mbuf's header from the rx template (a packet-header mbuf
    on its cluster) and each cluster's metadata (refcount 1, our in-use tag); handles
    into `out`. Returns n; 0 (nothing taken) when the pool cannot supply n of each;
    -1 (nothing taken) when a zone lock stayed busy. Either way the caller's Python
    path takes over (it waits for a lock, and counts a denial). `seg32` and `seg64`
    view the whole segment, `st` is the pool's kernel state (ST_*)."""
    mh, meta64, stk, tops, lockw, bc, bn, bucket, _cmax, sreg = _views(seg32, seg64, st)
    lock_tag, cached_tag = _tags(st)
    meta_inuse1 = np.uint64(st[ST_META_INUSE1])
    for i in range(2):  # (z is a cluster zone, never 0)
        zz = z if i else 0
        if bn[zz] < n:
            r = _refill(mh, meta64, stk, sreg, tops, lockw, lock_tag, zz, bc, bn,
                        max(bucket[zz], n - bn[zz]), cached_tag)
            if r < 0:
                return -1
    b0 = bn[0]
    bz = bn[z]
    if b0 < n or bz < n:
        return 0
    for j in range(n):
        m = bc[0, b0 - n + j]
        c = bc[z, bz - n + j]
        for k in range(L.PKTHDR_WORDS_END):
            mh[m, k] = np.uint32(st[ST_TRX + k])
        mh[m, _W_EXT] = c
        meta64[c] = meta_inuse1
        out[j] = m
    bn[0] = b0 - n
    bn[z] = bz - n
    return n


def _freem_fast(seg32, seg64, st, hs):  # type: ignore[no-untyped-def]
    mh, meta64, stk, tops, lockw, bc, bn, bucket, cmax, sreg = _views(seg32, seg64, st)
    lock_tag, cached_tag = _tags(st)
    meta_cached = np.uint64(st[ST_META_CACHED])
    n = hs.shape[0]
    z = 0
    for j in range(n):
        m = hs[j]
        if (mh[m, _W_OWNER] >> _ST_SHIFT) != _ST_INUSE or mh[m, _W_NEXT] != 0:
            return -1
        e = mh[m, _W_EXT]
        zz = 0
        if e != 0:
            zz = _zone_of(st, e)
            if (meta64[e] & _LOW32) != 1:
                return -1
        if j == 0:
            z = zz
        elif zz != z:
            return -1
    width = bc.shape[1]
    b0 = bn[0]
    bz = bn[z]
    if b0 + n > width or (z != 0 and bz + n > width):
        return -1
    for j in range(n):
        m = hs[j]
        mh[m, _W_OWNER] = cached_tag
        bc[0, b0 + j] = m
        if z != 0:
            e = mh[m, _W_EXT]
            meta64[e] = meta_cached
            bc[z, bz + j] = e
    bn[0] = b0 + n
    if z != 0:
        bn[z] = bz + n
    busy = 0
    for i in range(2 if z != 0 else 1):
        zz = z if i else 0
        over = bn[zz] - cmax[zz]
        if over > 0:
            b = bucket[zz]
            k = (over + b - 1) // b * b  # whole buckets, the most recent
            if not _flush(mh, meta64, stk, sreg, tops, lockw, lock_tag, zz, bc, bn, k):
                busy |= 1 << zz
    return busy


# handles as intp or u32, writable or not (a batch decoded straight off a message is read-only)
_HS = (ro_intp_1d, ro_u32_1d)  # handle batches: intp or u32 (as decoded off a message)
freem_fast = kernel(*(types.int64(u32_1d, u64_1d, i64_1d, h) for h in _HS))(_freem_fast)
freem_fast.__doc__ = """Free a batch of one-mbuf packets into the batch caches: every head in
use and unchained, either all without clusters or all on unshared clusters
(refcount 1) of one zone. Retags mbufs and clusters as cached by us and
pushes them on the caches; a cache now over its maximum gives its most
recent whole buckets back to the global stack under the zone lock. Returns
-1 (nothing changed) outside that case, else a bit mask of the zones whose
flush found the lock busy (the caller flushes them, waiting for the lock)."""


@kernel(types.int64(u32_2d, u64_1d, u32_1d, u32_1d, types.int64, intp_2d, i64_1d, types.int64,
                    types.uint32))
def stack_pop(mh, meta64, stack, tops, z, bc, bn, want, cached_tag):  # type: ignore[no-untyped-def]
    """`_pop` for the Python paths (which hold the zone lock already). Returns how many
    came."""
    return _pop(mh, meta64, stack, tops, z, bc, bn, want, cached_tag)


@kernel(types.int64(u32_2d, u64_1d, u32_1d, u32_1d, types.int64, intp_2d, i64_1d, types.int64))
def stack_push(mh, meta64, stack, tops, z, bc, bn, k):  # type: ignore[no-untyped-def]
    """`_push` for the Python paths (which hold the zone lock already)."""
    return _push(mh, meta64, stack, tops, z, bc, bn, k)


def _adopt(mh, mq, hs, tag, slot, now, out):  # type: ignore[no-untyped-def]
    n = hs.shape[0]
    nts = out.shape[1]
    for j in range(n):
        m = hs[j]
        mh[m, _W_OWNER] = tag
        if slot >= 0:
            mq[m, _Q_TS + slot] = now
        for t in range(nts):
            out[j, t] = mq[m, _Q_TS + t]


adopt = kernel(*(types.void(u32_2d, u64_2d, h, types.uint32, types.int64, types.uint64,
                            u64_2d) for h in _HS))(_adopt)
def _stamp(mq, hs, slot, now):  # type: ignore[no-untyped-def]
    for j in range(hs.shape[0]):
        mq[hs[j], _Q_TS + slot] = now


stamp = kernel(*(types.void(u64_2d, h, types.int64, types.uint64) for h in _HS))(_stamp)
stamp.__doc__ = """Stamp timestamp slot `slot` of each packet with `now` (one call instead of a
numpy fancy-index assignment, ~4 us for a batch of 32 here)."""

adopt.__doc__ = """Take ownership of received packets (retag their head mbufs as ours), as a
role does when a batch reaches it; with slot >= 0 also stamp that timestamp
slot with `now`; copy each packet's timestamps into out[j, :out.shape[1]]
(a zero-column `out` copies none)."""
