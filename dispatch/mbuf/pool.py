"""The shared-memory mbuf pool: FreeBSD's mbuf operations on integer handles.

One pool per emulated host. Processes pass handles (small integers), never
bytes; the bytes stay in this segment from the NIC's DMA to the socket's
copyout. Handles are 1-based (0 is NULL, as a failed allocation returns).

Allocation is UMA-shaped: each attached process keeps per-zone caches (plain
Python lists) and refills them from, or flushes them to, the segment's global
free stacks a bucket at a time under one lock. So the hot path takes no lock
per packet, and a buffer allocated in one process and freed in another simply
lands in the freeing process's cache and goes back to the global stack with
its bucket: "batched return" without a return queue to deadlock on.

Every buffer carries an owner word (state << 16 | owner slot): ST_INUSE, or
ST_CACHED in that owner's cache, or ST_FREE on the global stack. That is what
lets `reclaim()` find everything a dead process held, and `audit()` say
whether the pool is whole. Cluster reference counts are changed without a
lock when the caller is the only holder (refcount 1) and under a lock when
the cluster is shared, which is the only time two processes can race on it.

Exhaustion is never an exception: allocation returns 0 and counts a denial
in the owner's slot, which `netstat -m` sums as "requests for mbufs denied".
Misuse (a double free, a bad size) is a bug and does raise.

Attach in each process (after fork or spawn): a pool object is per process.
"""

from __future__ import annotations

import mmap
import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dispatch.jit import entries_by_dtype, entry

from . import kernels as _k
from . import layout as L
from .segment import (
    LOCK_OWNERS,
    LOCKS_OFF,
    NLOCK_WORDS,
    PAGE,
    TOPS_OFF,
    OfdLock,
    PoolError,
    attach_segment,
    close_at_exit,
    create_segment,
    forget,
    process_alive,
    process_start_time,
    shm_path,
)
from .spinlock import SpinLock

MAX_OWNERS = 256
OWNER_SLOT_WORDS = 64
# owner slot words: 0 live flag, 1 pid, 2-3 start time, 4..8 denied per zone,
# 9 m_getcl denied (mbuf+cluster), 16..31 the name (64 bytes)
OS_LIVE, OS_PID, OS_START, OS_DENIED, OS_GETCL_DENIED, OS_NAME = 0, 1, 2, 4, 9, 16
REF_LOCK_BASE = 8  # lock words 9..12 guard shared-cluster refcounts per zone


_BATCH_MAX = 4096  # larger batches still work, through the per-packet path
# header word indices and flags as plain globals for get / free (a module attribute
# costs one more lookup per use, on the one-at-a-time path)
_W_TYPE = L.W_TYPE
_W_FLAGS = L.W_FLAGS
_W_OWNER = L.W_OWNER
_W_EXT = L.W_EXT
_STATE_SHIFT = L.STATE_SHIFT
_ST_INUSE = L.ST_INUSE
_M_EXT = L.M_EXT
_MT_DATA = L.MT_DATA
_PKTHDR_WORDS_END = L.PKTHDR_WORDS_END
_HANDLE_DTYPES = (np.dtype(np.intp), np.dtype(np.uint32))  # what the batch kernels take
if np.dtype(np.intp) != np.dtype(np.int64):  # (the kernel state keeps the batch caches'
    # handles as int64 and hands them to kernels declared over intp arrays)
    raise ImportError("dispatch.mbuf needs a 64-bit platform (numpy's intp is "
                      f"{np.dtype(np.intp)}, not int64)")
# The batch kernels' entry points, called without numba's type resolution (jit.entry:
# half the call cost, no type checks): every argument is one of the pool's own arrays,
# a scalar, or a handle batch that `_handles` made a 1-d C-contiguous intp or u32 array.
_getcl_take = entry(_k.getcl_take)
_freem_fast = entries_by_dtype(_k.freem_fast, 3)
_stack_pop = entry(_k.stack_pop)
_stack_push = entry(_k.stack_push)
_adopt = entries_by_dtype(_k.adopt, 2)
_stamp = entries_by_dtype(_k.stamp, 1)


def _handles(handles: Sequence[int] | np.ndarray | memoryview) -> np.ndarray:
    """A batch of handles as an array the compiled kernels take, without a copy
    where it already is one (or a u32 memoryview, as decoded off a message)."""
    if isinstance(handles, np.ndarray):
        if handles.dtype in _HANDLE_DTYPES and handles.flags.c_contiguous \
                and handles.ndim == 1:
            return handles
        return np.ascontiguousarray(handles.ravel(), dtype=np.intp)
    if isinstance(handles, memoryview) and handles.format == "I":
        return np.frombuffer(handles, np.uint32)
    return np.array(handles, dtype=np.intp)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Sizes of the pool's zones. Defaults take about 57 MiB of /dev/shm."""

    nmbufs: int = 65536
    nclusters: int = 16384  # 2k (MCLBYTES)
    njumbop: int = 1024  # 4k (MJUMPAGESIZE)
    njumbo9: int = 256  # 9k
    njumbo16: int = 128  # 16k
    bucket: int = 128  # per-process cache refill/flush unit

    def counts(self) -> tuple[int, ...]:
        return (self.nmbufs, self.nclusters, self.njumbop, self.njumbo9, self.njumbo16)

    def validate(self) -> None:
        for name, n in zip(("nmbufs", "nclusters", "njumbop", "njumbo9", "njumbo16"),
                           self.counts()):
            if not 0 <= n <= L.MAX_ZONE_ITEMS:
                raise PoolError(f"{name}={n}: must be between 0 and {L.MAX_ZONE_ITEMS}")
        if self.nmbufs < 1:
            raise PoolError("nmbufs must be at least 1")
        if self.bucket < 1:
            raise PoolError("bucket must be at least 1")


@dataclass(frozen=True, slots=True)
class Geometry:
    """Byte offsets of every region of the segment, derived from the counts."""

    counts: tuple[int, ...]
    owners_off: int
    stack_off: tuple[int, ...]
    mbuf_off: int
    meta_off: int  # (refcount, owner) u32 pairs for every cluster, by pool-wide id
    first: tuple[int, ...]  # pool-wide id of each cluster zone's first cluster
    data_off: tuple[int, ...]
    size: int

    @property
    def nclusters(self) -> int:
        return sum(self.counts[1:])

    @classmethod
    def of(cls, counts: tuple[int, ...]) -> Geometry:
        off = PAGE
        owners_off = off
        off += MAX_OWNERS * OWNER_SLOT_WORDS * 4
        stack_off = []
        for n in counts:
            stack_off.append(off)
            off = _align(off + n * 4, 64)
        off = _align(off, PAGE)
        mbuf_off = off
        off += (counts[0] + 1) * L.MSIZE
        meta_off = off
        off = _align(off + (sum(counts[1:]) + 1) * 8, 64)
        first = [0, 1]
        for n in counts[1:-1]:
            first.append(first[-1] + n)
        data_off = [0]
        for n, size in zip(counts[1:], L.CLUSTER_SIZES):
            off = _align(off, PAGE)
            data_off.append(off)
            off += n * size
        return cls(counts, owners_off, tuple(stack_off), mbuf_off, meta_off, tuple(first),
                   tuple(data_off), _align(off, PAGE))


@dataclass(frozen=True, slots=True)
class ZoneStats:
    name: str
    size: int
    current: int
    cache: int
    total: int
    denied: int


@dataclass(frozen=True, slots=True)
class PoolStats:
    """`netstat -m` figures. Zones are preallocated, so total is also the max."""

    zones: tuple[ZoneStats, ...]
    getcl_denied: int

    @property
    def bytes_current(self) -> int:
        return sum(z.current * z.size for z in self.zones)

    @property
    def bytes_cache(self) -> int:
        return sum(z.cache * z.size for z in self.zones)

    def as_dict(self) -> dict[str, object]:
        return {
            "zones": {z.name: {"size": z.size, "current": z.current, "cache": z.cache,
                               "total": z.total, "max": z.total, "denied": z.denied}
                      for z in self.zones},
            "bytes_current": self.bytes_current,
            "bytes_cache": self.bytes_cache,
            "bytes_total": self.bytes_current + self.bytes_cache,
            "denied": {"mbufs": self.zones[0].denied, "clusters": self.zones[1].denied,
                       "mbuf+clusters": self.getcl_denied},
        }


@dataclass(frozen=True, slots=True)
class OwnerInfo:
    slot: int
    name: str
    pid: int
    alive: bool


@dataclass(frozen=True, slots=True)
class PoolAudit:
    """What is in use, by whom, and whether the pool is whole."""

    in_use: dict[str, dict[str, int]] = field(default_factory=dict)  # owner -> zone -> n
    free: tuple[int, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def whole(self) -> bool:
        return not self.in_use and not self.problems


class MbufPool:
    """A process's handle on an emulated host's mbuf pool."""

    # ---------------------------------------------------------------- set-up
    def __init__(self, name: str, fd: int, mm: mmap.mmap, counts: tuple[int, ...],
                 *, creator: bool, owner: str, bucket: int) -> None:
        self.name = name
        self.creator = creator
        self._pid = os.getpid()
        self._fd = fd
        self._mm = mm
        self.geometry = g = Geometry.of(counts)
        self.counts = counts
        self.nmbufs = counts[0]
        self.buf = memoryview(mm)
        mbuf_bytes = (counts[0] + 1) * L.MSIZE
        mb = self.buf[g.mbuf_off : g.mbuf_off + mbuf_bytes]
        #: header words of mbuf m: w[(m << 6) + W_*]; timestamps: q[(m << 5) + Q_TS + slot]
        self.w = mb.cast("I")
        self.q = mb.cast("Q")
        self.mbuf_off = g.mbuf_off
        self._tops = self.buf[TOPS_OFF : TOPS_OFF + 4 * L.NZONES].cast("I")
        self._tops_np = np.frombuffer(mm, np.uint32, L.NZONES, TOPS_OFF)
        self._owners = np.frombuffer(mm, np.uint32, MAX_OWNERS * OWNER_SLOT_WORDS,
                                     g.owners_off).reshape(MAX_OWNERS, OWNER_SLOT_WORDS)
        self._mh = np.frombuffer(mm, np.uint32, mbuf_bytes // 4, g.mbuf_off).reshape(
            counts[0] + 1, L.WORDS_PER_MBUF)
        self._mq = np.frombuffer(mm, np.uint64, mbuf_bytes // 8, g.mbuf_off).reshape(
            counts[0] + 1, L.WORDS_PER_MBUF // 2)
        self._stacks = [np.frombuffer(mm, np.uint32, n, off) for n, off in
                        zip(counts, g.stack_off)]
        self.cl_size = (0,) + L.CLUSTER_SIZES
        self.cl_first = g.first
        ncl = g.nclusters
        #: cluster metadata by pool-wide id c: cl_meta[2c] refcount, cl_meta[2c+1] owner tag
        self.cl_meta = self.buf[g.meta_off : g.meta_off + 8 * (ncl + 1)].cast("I")
        meta = np.frombuffer(mm, np.uint32, 2 * (ncl + 1), g.meta_off).reshape(ncl + 1, 2)
        self._ref_col = meta[:, 0]
        self._cown_col = meta[:, 1]
        #: the same (refcount, owner) pairs as one u64 each (refcount in the low half):
        #: a batch sets both with one fancy assignment
        self._meta64 = np.frombuffer(mm, np.uint64, ncl + 1, g.meta_off)
        # per cluster id: its zone and the absolute offset of its storage (Python lists:
        # a list index is the cheapest lookup there is on the per-packet path)
        self.cl_zone: list[int] = [0]
        self.cl_base: list[int] = [0]
        for z in range(1, L.NZONES):
            size = self.cl_size[z]
            self.cl_zone.extend([z] * counts[z])
            self.cl_base.extend(range(g.data_off[z], g.data_off[z] + counts[z] * size, size))
        # column views of the mbuf headers, for batch operations with intp indices
        self._own_col = self._mh[:, L.W_OWNER]
        self._ext_col = self._mh[:, L.W_EXT]
        self._owner_lock = OfdLock(fd, LOCK_OWNERS)
        self._lockw = np.frombuffer(mm, np.uint32, NLOCK_WORDS, LOCKS_OFF)
        # every zone's free stack as one array (the kernels refill and flush inside a
        # batch operation: zone z's region of it is in the kernel state, ST_SREG)
        stk_words = (g.stack_off[-1] + 4 * counts[-1] - g.stack_off[0]) // 4
        self._stk = np.frombuffer(mm, np.uint32, stk_words, g.stack_off[0])
        self._caches: list[list[int]] = [[] for _ in range(L.NZONES)]
        self._bucket = [max(1, min(bucket, n // 8 or 1)) for n in counts]
        self._cmax = [2 * b for b in self._bucket]
        self._c0 = self._caches[0]  # the mbuf cache, for get / free (the list is kept)
        self._cmax0 = self._cmax[0]
        # batch caches: the same per-process caches for the batch operations, as
        # numpy arrays (a batch of handles moves in or out as one slice, with no
        # conversion to or from a Python list); filled from and flushed to the
        # global stacks a bucket at a time, like the list caches of get/free
        # (one row per zone, fill levels in _bn: the compiled batch kernels take both whole)
        # (both live in the kernel state, _st: see below)
        bcw = max(self._cmax) + _BATCH_MAX
        self._st = st = np.zeros(_k.state_size(bcw), dtype=np.int64)
        self._bc = st[_k.ST_BC :].reshape(L.NZONES, bcw)
        self._bn = st[_k.ST_BN : _k.ST_BN + L.NZONES]
        self._denied = [0] * L.NZONES
        self.slot = self._claim_slot(owner)
        self.owner_name = owner
        self._lock_tag = self.slot + 1
        self._zone_locks = [SpinLock(self._lockw, z, self._lock_tag, self._tag_alive)
                            for z in range(L.NZONES)]
        self._ref_locks = [SpinLock(self._lockw, REF_LOCK_BASE + z, self._lock_tag,
                                    self._tag_alive) for z in range(L.NZONES)]
        self.inuse_tag = (L.ST_INUSE << L.STATE_SHIFT) | self.slot
        self.cached_tag = (L.ST_CACHED << L.STATE_SHIFT) | self.slot
        self._meta_inuse1 = np.uint64(1 | self.inuse_tag << 32)  # refcount 1, ours
        self._t_plain = memoryview(array("I", [0, 0, L.M_DAT_OFF, 0, L.MT_DATA, 0,
                                               self.inuse_tag, 0]))
        self._t_hdr = memoryview(array("I", [0, 0, L.M_PKTDAT_OFF, 0, L.MT_DATA, L.M_PKTHDR,
                                             self.inuse_tag, 0]
                                            + [0] * (L.PKTHDR_WORDS_END - 8)))
        self._t_hdr_np = np.frombuffer(self._t_hdr, np.uint32).copy()
        self._t_plain_np = np.frombuffer(self._t_plain, np.uint32).copy()
        t_rx = self._t_hdr_np.copy()
        t_rx[L.W_FLAGS] |= L.M_EXT
        t_rx[L.W_DATA] = 0
        self._t_rx = t_rx  # an rx-ring buffer: pkthdr mbuf on a cluster
        # the batch kernels' state (kernels.ST_*): all they need beside the segment,
        # which they take whole as u32 and u64 words (three arguments, not sixteen)
        st[_k.ST_BUCKET : _k.ST_BUCKET + L.NZONES] = self._bucket
        st[_k.ST_CMAX : _k.ST_CMAX + L.NZONES] = self._cmax
        s0 = g.stack_off[0]
        st[_k.ST_SREG : _k.ST_SREG + 2 * L.NZONES] = [
            w for n, off in zip(counts, g.stack_off) for w in ((off - s0) // 4, (off - s0) // 4 + n)]
        st[_k.ST_ZFIRST : _k.ST_ZFIRST + L.NZONES] = g.first
        st[_k.ST_MH], st[_k.ST_NMH] = g.mbuf_off // 4, counts[0] + 1
        st[_k.ST_META], st[_k.ST_NMETA] = g.meta_off // 8, ncl + 1
        st[_k.ST_STK], st[_k.ST_NSTK] = s0 // 4, stk_words
        st[_k.ST_TOPS] = TOPS_OFF // 4
        st[_k.ST_LOCKS], st[_k.ST_NLOCKS] = LOCKS_OFF // 4, NLOCK_WORDS
        st[_k.ST_LOCK_TAG] = self._lock_tag
        st[_k.ST_CACHED_TAG] = self.cached_tag
        st[_k.ST_META_CACHED] = self.cached_tag << 32  # refcount 0, in our cache
        st[_k.ST_META_INUSE1] = 1 | self.inuse_tag << 32  # refcount 1, ours
        st[_k.ST_BCW] = bcw
        st[_k.ST_TRX : _k.ST_TRX + L.PKTHDR_WORDS_END] = t_rx
        self._seg32 = np.frombuffer(mm, np.uint32)
        self._seg64k = np.frombuffer(mm, np.uint64)
        self._cl_base_np: np.ndarray | None = None
        self._seg_np: np.ndarray | None = None
        self._seg64_np: np.ndarray | None = None
        self._closed = False

    @classmethod
    def create(cls, name: str, config: PoolConfig | None = None, *,
               owner: str = "creator") -> MbufPool:
        """Make the segment (removing a stale one) and own its lifetime.

        The segment is unlinked when this object is closed, when the process
        exits, and on SIGTERM (a SIGINT already unwinds through atexit).
        """
        config = config or PoolConfig()
        config.validate()
        counts = config.counts()
        g = Geometry.of(counts)
        fd, mm = create_segment(name, g.size, counts)
        tops = memoryview(mm)[TOPS_OFF : TOPS_OFF + 4 * L.NZONES].cast("I")
        for z, n in enumerate(counts):
            stack = np.frombuffer(mm, np.uint32, n, g.stack_off[z])
            base = g.first[z] if z else 1
            stack[:] = np.arange(base + n - 1, base - 1, -1, dtype=np.uint32)  # pops 1, 2, ...
            tops[z] = n
            del stack
        tops.release()
        pool = cls(name, fd, mm, counts, creator=True, owner=owner, bucket=config.bucket)
        close_at_exit(pool)
        return pool

    @classmethod
    def attach(cls, name: str, *, owner: str, bucket: int = 128) -> MbufPool:
        """Attach to an existing pool by name (another process, or container)."""
        fd, mm, sb = attach_segment(name)
        return cls(name, fd, mm, sb.counts, creator=False, owner=owner, bucket=bucket)

    def _claim_slot(self, owner: str) -> int:
        name = owner.encode()[:63]
        start = process_start_time(self._pid)
        with self._owner_lock:
            live = self._owners[:, OS_LIVE]
            free = np.nonzero(live[1:] == 0)[0]
            if len(free) == 0:
                raise PoolError(f"pool {self.name!r} has no free owner slot ({MAX_OWNERS - 1})")
            slot = int(free[0]) + 1
            row = self._owners[slot]
            row[:] = 0
            row[OS_PID] = self._pid
            row[OS_START] = start & 0xFFFFFFFF
            row[OS_START + 1] = start >> 32
            row[OS_NAME : OS_NAME + 16] = np.frombuffer(name.ljust(64, b"\0"), np.uint32)
            row[OS_LIVE] = 1
        return slot

    def lock_words_free(self) -> bool:
        """Whether no zone or refcount lock is held (by anyone) right now."""
        return not self._lockw.any()

    def _tag_alive(self, tag: int) -> bool:
        """Whether the owner holding a lock word with `tag` (its slot + 1) still runs."""
        row = self._owners[(tag - 1) % MAX_OWNERS]
        if not row[OS_LIVE]:
            return False
        return process_alive(int(row[OS_PID]), int(row[OS_START]) | int(row[OS_START + 1]) << 32)

    def close(self) -> None:
        """Give cached buffers back, free the owner slot, unmap; the creator unlinks."""
        if self._closed or os.getpid() != self._pid:
            return
        self._closed = True
        forget(self)
        try:
            for z in range(L.NZONES):
                while self._caches[z]:
                    self._flush(z, len(self._caches[z]))
                if self._bn[z]:
                    self._push_all(z)
            with self._owner_lock:
                row = self._owners[self.slot]
                retired = self._owners[0]
                retired[OS_DENIED : OS_GETCL_DENIED + 1] += row[OS_DENIED : OS_GETCL_DENIED + 1]
                row[OS_LIVE] = 0
        finally:
            self._release()
            if self.creator:
                try:
                    os.unlink(shm_path(self.name))
                except FileNotFoundError:
                    pass

    def _release(self) -> None:
        for v in (self.w, self.q, self._tops, self._t_plain, self._t_hdr):
            v.release()
        self.cl_meta.release()
        del self._owners, self._mh, self._mq, self._stacks, self._ref_col, self._cown_col
        del self._meta64, self._lockw, self._zone_locks, self._ref_locks, self._stk
        del self._seg32, self._seg64k
        del self._own_col, self._ext_col
        self._seg_np = self._seg64_np = None
        del self._tops_np
        self.buf.release()
        try:
            self._mm.close()
        except BufferError:
            pass  # a caller still holds a view; the mapping goes when it does
        os.close(self._fd)

    def __enter__(self) -> MbufPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------- caches (UMA-ish)
    def _refill(self, z: int) -> int:
        """Take a bucket from our batch cache, else from the global stack, into our
        list cache; returns how many came."""
        n_want = self._bucket[z]
        bn = self._bn[z]
        if bn:
            k = min(n_want, bn)
            self._caches[z].extend(self._bc[z][bn - k : bn].tolist())
            self._bn[z] = bn - k
            return k
        stack = self._stacks[z]
        with self._zone_locks[z]:
            top = self._tops[z]
            n = min(n_want, top)
            if n:
                hs = stack[top - n : top].copy()
                self._tops[z] = top - n
                (self._cown_col if z else self._own_col)[hs.astype(np.intp)] = self.cached_tag
        if n:
            self._caches[z].extend(hs[::-1].tolist())
        return n

    def _flush(self, z: int, n: int) -> None:
        """Return the `n` coldest handles of our cache to the global stack."""
        c = self._caches[z]
        hs = np.array(c[:n], dtype=np.intp)
        del c[:n]
        stack = self._stacks[z]
        with self._zone_locks[z]:
            (self._cown_col if z else self._own_col)[hs] = 0
            top = self._tops[z]
            stack[top : top + len(hs)] = hs
            self._tops[z] = top + len(hs)


    def _fill_batch(self, z: int, n: int) -> None:
        """Bring our batch cache up to `n` handles if the pool has them: first from
        our list cache, then from the global stack, at least a bucket at a time."""
        bc = self._bc[z]
        bn = int(self._bn[z])
        c = self._caches[z]
        if c:
            k = min(len(c), len(bc) - bn)
            bc[bn : bn + k] = c[len(c) - k :]
            del c[len(c) - k :]
            bn += k
            self._bn[z] = bn
        if bn < n:
            want = max(self._bucket[z], n - bn)
            with self._zone_locks[z]:
                _stack_pop(self._mh, self._meta64, self._stacks[z], self._tops_np, z,
                           self._bc, self._bn, want, self.cached_tag)

    def _deny(self, z: int, n: int = 1) -> None:
        self._owners[self.slot, OS_DENIED + z] += n

    def _take(self, z: int) -> int:
        c = self._caches[z]
        if not c and not self._refill(z):
            self._deny(z)
            return 0
        return c.pop()

    def _give(self, z: int, h: int) -> None:
        c = self._caches[z]
        c.append(h)
        if len(c) > self._cmax[z]:
            self._flush(z, self._bucket[z])

    # ------------------------------------------------------------ allocation
    def get(self, mtype: int = L.MT_DATA) -> int:
        """m_get: a plain mbuf with MLEN bytes of internal data, or 0."""
        c = self._c0
        if c:
            m = c.pop()
        else:
            m = self._take(0)
            if not m:
                return 0
        b = m << 6
        self.w[b : b + 8] = self._t_plain
        if mtype != _MT_DATA:
            self.w[b + _W_TYPE] = mtype
        return m

    def gethdr(self, mtype: int = L.MT_DATA) -> int:
        """m_gethdr: a packet-header mbuf (MHLEN bytes internal, pkthdr zeroed), or 0."""
        c = self._c0
        if c:
            m = c.pop()
        else:
            m = self._take(0)
            if not m:
                return 0
        b = m << 6
        self.w[b : b + _PKTHDR_WORDS_END] = self._t_hdr
        if mtype != _MT_DATA:
            self.w[b + _W_TYPE] = mtype
        return m

    def _cluster(self, z: int) -> int:
        """A cluster of zone z, refcount 1, or 0 (denial counted)."""
        c = self._caches[z]
        if c:
            i = c.pop()
        else:
            i = self._take(z)
            if not i:
                return 0
        self.cl_meta[i << 1] = 1
        self.cl_meta[(i << 1) | 1] = self.inuse_tag
        return i

    def getcl(self, size: int = L.MCLBYTES, *, pkthdr: bool = True,
              mtype: int = L.MT_DATA) -> int:
        """m_getcl / m_getjcl: an mbuf with a cluster of at least `size` bytes, or 0."""
        z = L.zone_for_size(size)
        if not z:
            raise PoolError(f"cluster size {size} too large: zones are {L.CLUSTER_SIZES}")
        i = self._cluster(z)
        if not i:
            self._deny_getcl()
            return 0
        m = self.gethdr(mtype) if pkthdr else self.get(mtype)
        if not m:
            self._cl_release(z, i)
            self._deny_getcl()
            return 0
        b = m << 6
        w = self.w
        w[b + L.W_FLAGS] |= L.M_EXT
        w[b + L.W_EXT] = i
        w[b + L.W_DATA] = 0
        return m

    def _deny_getcl(self) -> None:
        self._owners[self.slot, OS_GETCL_DENIED] += 1

    def clget(self, m: int, size: int = L.MCLBYTES) -> bool:
        """m_clget: attach a cluster to mbuf m (which must have none). False if denied."""
        z = L.zone_for_size(size)
        if not z:
            raise PoolError(f"cluster size {size} too large: zones are {L.CLUSTER_SIZES}")
        b = m << 6
        if self.w[b + L.W_FLAGS] & L.M_EXT:
            raise PoolError(f"mbuf {m} already has external storage")
        i = self._cluster(z)
        if not i:
            return False
        self.w[b + L.W_FLAGS] |= L.M_EXT
        self.w[b + L.W_EXT] = i
        self.w[b + L.W_DATA] = 0
        return True

    # ------------------------------------------------------------------ free
    def _cl_release(self, z: int, i: int) -> None:
        self.cl_meta[i << 1] = 0
        self.cl_meta[(i << 1) | 1] = self.cached_tag
        self._give(z, i)

    def _ext_free(self, e: int) -> None:
        """Drop a reference to cluster e; free it with the last one."""
        meta = self.cl_meta
        if meta[e << 1] == 1:  # sole holder: nobody else can touch it
            self._cl_release(self.cl_zone[e], e)
            return
        z = self.cl_zone[e]
        with self._ref_locks[z]:
            r = meta[e << 1] - 1
            meta[e << 1] = r
        if r == 0:
            self._cl_release(z, e)

    def free(self, m: int) -> int:
        """m_free: free one mbuf (and drop its cluster reference); returns its next."""
        w = self.w
        b = m << 6
        if (w[b + _W_OWNER] >> _STATE_SHIFT) != _ST_INUSE:
            raise PoolError(f"free of mbuf {m}, which is not in use (double free?)")
        nxt = w[b]
        if w[b + _W_FLAGS] & _M_EXT:
            self._ext_free(w[b + _W_EXT])
        w[b + _W_OWNER] = self.cached_tag
        c = self._c0
        c.append(m)
        if len(c) > self._cmax0:
            self._flush(0, self._bucket[0])
        return nxt

    def freem(self, m: int) -> None:
        """m_freem: free a whole chain."""
        while m:
            m = self.free(m)

    # ------------------------------------------------------------- batches
    def getcl_batch(self, n: int, size: int = L.MCLBYTES) -> np.ndarray:
        """n packet-header mbufs with clusters (an rx ring refill). May return fewer."""
        z = 1 if size == L.MCLBYTES else L.zone_for_size(size)
        if not z:
            raise PoolError(f"cluster size {size} too large: zones are {L.CLUSTER_SIZES}")
        if 0 < n <= _BATCH_MAX:  # the compiled path, once the caches hold n of each
            out = np.empty(n, dtype=np.intp)
            if _getcl_take(self._seg32, self._seg64k, self._st, z, n, out) > 0:
                return out
            self._fill_batch(0, n)  # (the pool may be short, or a zone lock was busy)
            self._fill_batch(z, n)
            if _getcl_take(self._seg32, self._seg64k, self._st, z, n, out) > 0:
                return out
        m_arr = self._take_many(0, n)
        c_arr = self._take_many(z, n)
        k = min(len(m_arr), len(c_arr))
        if k < n:
            self._owners[self.slot, OS_GETCL_DENIED] += n - k
            self._give_many(0, m_arr[k:])
            self._give_many(z, c_arr[k:])
            m_arr, c_arr = m_arr[:k], c_arr[:k]
        if k:
            self._mh[m_arr, : L.PKTHDR_WORDS_END] = self._t_rx
            self._ext_col[m_arr] = c_arr
            self._meta64[c_arr] = self._meta_inuse1
        return m_arr

    def get_batch(self, n: int, *, pkthdr: bool = True) -> np.ndarray:
        """n mbufs (packet-header ones by default) without clusters. May return fewer."""
        m_arr = self._take_many(0, n)
        if len(m_arr):
            if pkthdr:
                self._mh[m_arr, : L.PKTHDR_WORDS_END] = self._t_hdr_np
            else:
                self._mh[m_arr, :8] = self._t_plain_np
        return m_arr

    def _take_many(self, z: int, n: int) -> np.ndarray:
        """Up to n handles of zone z from our caches (as an intp array, in use from
        now on: the caller tags them); a shortfall is counted as denied."""
        if n > _BATCH_MAX:
            return np.array(self._take_many_list(z, n), dtype=np.intp)
        bn = self._bn[z]
        if bn < n:
            self._fill_batch(z, n)
            bn = self._bn[z]
            if bn < n:
                self._deny(z, n - bn)
                n = bn
        out = self._bc[z][bn - n : bn].copy()
        self._bn[z] = bn - n
        return out

    def _take_many_list(self, z: int, n: int) -> list[int]:
        c = self._caches[z]
        while self._bn[z] and len(c) < n:
            self._refill(z)
        while len(c) < n and self._refill(z) and len(c) < n:
            pass
        if len(c) < n:
            self._deny(z, n - len(c))
        k = min(n, len(c))
        out = c[len(c) - k :]
        del c[len(c) - k :]
        return out

    def freem_batch(self, handles: Sequence[int] | np.ndarray | memoryview) -> None:
        """Free a batch of packets.

        The common case, each packet one mbuf, all without clusters or all on
        unshared clusters of one zone, is one compiled pass (kernels.freem_fast);
        anything else (chains, shared clusters, mixed zones, a double free that
        freem reports) goes packet by packet through freem.
        """
        n = len(handles)
        if not n:
            return
        arr = _handles(handles)
        if n <= _BATCH_MAX:
            r = _freem_fast[arr.dtype](self._seg32, self._seg64k, self._st, arr)
            if r >= 0:
                z = 0
                while r:
                    if r & 1:
                        self._flush_over(z)
                    r >>= 1
                    z += 1
                return
        for m in arr.tolist():
            self.freem(m)

    def _flush_over(self, z: int) -> None:
        """Flush buckets of our zone-z batch cache while it holds more than its maximum."""
        bn = int(self._bn[z])
        b = self._bucket[z]
        if bn > self._cmax[z]:
            k = (bn - self._cmax[z] + b - 1) // b * b  # whole buckets, the most recent
            with self._zone_locks[z]:
                _stack_push(self._mh, self._meta64, self._stacks[z], self._tops_np, z,
                            self._bc, self._bn, k)

    def _give_many(self, z: int, hs: np.ndarray) -> None:
        """Put freed handles (already tagged cached) into our batch cache; flush
        buckets to the global stack while it holds more than its maximum."""
        k = len(hs)
        bc = self._bc[z]
        pos = 0
        while pos < k:  # (in pieces only for a batch larger than the cache's room)
            bn = int(self._bn[z])
            if bn == len(bc):
                self._push_all(z)
                continue
            c = min(len(bc) - bn, k - pos)
            bc[bn : bn + c] = hs[pos : pos + c]
            self._bn[z] = bn + c
            pos += c
        self._flush_over(z)

    def _push_all(self, z: int) -> None:
        """Our whole zone-z batch cache back to the global stack."""
        with self._zone_locks[z]:
            _stack_push(self._mh, self._meta64, self._stacks[z], self._tops_np, z,
                        self._bc, self._bn, int(self._bn[z]))

    def adopt(self, handles: Sequence[int] | np.ndarray, *, stamp: int = -1, now: int = 0,
              stamps: bool = False) -> np.ndarray | None:
        """Take ownership of received packets (retag their head mbufs as ours), in one
        compiled pass; with `stamp` (a TS_* slot) also stamp it with `now`; with
        `stamps`, return a copy of the batch's (n, NTS) timestamps, read after the
        stamping (for latency samples kept after the packets are freed)."""
        arr = _handles(handles)
        out = np.empty((len(arr), L.NTS if stamps else 0), dtype=np.uint64)
        _adopt[arr.dtype](self._mh, self._mq, arr, self.inuse_tag, stamp, now, out)
        return out if stamps else None

    def stamp_batch(self, handles: Sequence[int] | np.ndarray, slot: int, t_ns: int) -> None:
        """Stamp timestamp slot `slot` (a TS_* index) of each packet with `t_ns`."""
        if not 0 <= slot < L.NTS:
            raise ValueError(f"slot {slot} is not valid: 0..{L.NTS - 1}")
        arr = _handles(handles)
        _stamp[arr.dtype](self._mq, arr, slot, t_ns)

    def stamps(self, handles: Sequence[int] | np.ndarray) -> np.ndarray:
        """The (n, NTS) array of timestamps of these packets."""
        return self._mq[np.asarray(handles).astype(np.intp, copy=False), L.Q_TS : L.Q_TS + L.NTS]

    # -------------------------------------------------------- field access
    @property
    def headers(self) -> np.ndarray:
        """All mbuf headers as a (nmbufs + 1, 64) uint32 array (row m = mbuf m): for
        stages that read or write a whole batch's header words with one numpy call
        (index with an intp array of handles)."""
        return self._mh

    @property
    def stamps64(self) -> np.ndarray:
        """All mbuf headers as a (nmbufs + 1, 32) uint64 array: timestamps at
        column Q_TS + slot."""
        return self._mq

    @property
    def cluster_base(self) -> np.ndarray:
        """Absolute byte offset in `buf` of each cluster's storage, by cluster id
        (an int64 array; index 0 unused)."""
        if self._cl_base_np is None:
            self._cl_base_np = np.array(self.cl_base, dtype=np.int64)
        return self._cl_base_np

    @property
    def segment(self) -> np.ndarray:
        """The whole segment as a flat uint8 array (gather frame bytes with fancy
        indexing: ``segment[offsets[:, None] + np.arange(k)]``)."""
        if self._seg_np is None:
            self._seg_np = np.frombuffer(self._mm, np.uint8)
        return self._seg_np

    @property
    def segment64(self) -> np.ndarray:
        """The whole segment as u64 words (it is page-aligned and a whole number of
        pages long): for compiled code that sums or copies 8 bytes at a time."""
        if self._seg64_np is None:
            self._seg64_np = np.frombuffer(self._mm, np.uint64)
        return self._seg64_np

    def hget(self, m: int, word: int) -> int:
        return self.w[(m << 6) + word]

    def hset(self, m: int, word: int, value: int) -> None:
        self.w[(m << 6) + word] = value

    def stamp(self, m: int, slot: int, t_ns: int) -> None:
        self.q[(m << 5) + L.Q_TS + slot] = t_ns

    def tstamp(self, m: int, slot: int) -> int:
        return self.q[(m << 5) + L.Q_TS + slot]

    def next(self, m: int) -> int:
        return self.w[m << 6]

    def length(self, m: int) -> int:
        """m_len of this one mbuf."""
        return self.w[(m << 6) + L.W_LEN]

    def pkt_len(self, m: int) -> int:
        return self.w[(m << 6) + L.W_PKTLEN]

    def flags(self, m: int) -> int:
        return self.w[(m << 6) + L.W_FLAGS]

    def chain_len(self, m: int) -> int:
        """m_length: bytes in the whole chain."""
        n = 0
        w = self.w
        while m:
            n += w[(m << 6) + L.W_LEN]
            m = w[m << 6]
        return n

    def storage(self, m: int) -> tuple[int, int]:
        """(absolute offset of m's storage in the segment, its capacity in bytes)."""
        e = self.w[(m << 6) + L.W_EXT]
        if e:
            return self.cl_base[e], self.cl_size[self.cl_zone[e]]
        return self.mbuf_off + (m << 8), L.MSIZE

    def data_offset(self, m: int) -> int:
        """Absolute offset in `buf` of m's first data byte (mtod)."""
        w = self.w
        b = m << 6
        e = w[b + L.W_EXT]
        if e:
            return self.cl_base[e] + w[b + L.W_DATA]
        return self.mbuf_off + (m << 8) + w[b + L.W_DATA]

    def mtod(self, m: int) -> memoryview:
        """Zero-copy view of this mbuf's current data (m_len bytes)."""
        off = self.data_offset(m)
        return self.buf[off : off + self.w[(m << 6) + L.W_LEN]]

    def array(self, m: int) -> np.ndarray:
        """Zero-copy numpy uint8 view of this mbuf's current data."""
        return np.frombuffer(self.mtod(m), dtype=np.uint8)

    def writable(self, m: int) -> bool:
        """M_WRITABLE: not read-only and not sharing a cluster."""
        w = self.w
        b = m << 6
        f = w[b + L.W_FLAGS]
        if f & L.M_RDONLY:
            return False
        if f & L.M_EXT:
            e = w[b + L.W_EXT]
            return self.cl_meta[e << 1] == 1
        return True

    def leadingspace(self, m: int) -> int:
        """M_LEADINGSPACE: free bytes before the data (0 unless writable)."""
        if not self.writable(m):
            return 0
        b = m << 6
        data = self.w[b + L.W_DATA]
        if self.w[b + L.W_FLAGS] & L.M_EXT:
            return data
        start = L.M_PKTDAT_OFF if self.w[b + L.W_FLAGS] & L.M_PKTHDR else L.M_DAT_OFF
        return data - start

    def trailingspace(self, m: int) -> int:
        """M_TRAILINGSPACE: free bytes after the data (0 unless writable)."""
        if not self.writable(m):
            return 0
        b = m << 6
        _, cap = self.storage(m)
        return cap - self.w[b + L.W_DATA] - self.w[b + L.W_LEN]

    def _move_pkthdr(self, to: int, frm: int) -> None:
        """m_move_pkthdr: `to` takes frm's pkthdr; frm becomes a plain mbuf."""
        w = self.w
        bt, bf = to << 6, frm << 6
        w[bt + 8 : bt + L.PKTHDR_WORDS_END] = w[bf + 8 : bf + L.PKTHDR_WORDS_END]
        w[bt + L.W_FLAGS] = (w[bt + L.W_FLAGS] & ~L.M_COPYFLAGS) | \
            (w[bf + L.W_FLAGS] & L.M_COPYFLAGS)
        w[bf + L.W_FLAGS] &= ~L.M_PKTHDR

    def _dup_pkthdr(self, to: int, frm: int) -> None:
        """m_dup_pkthdr: `to` gets a copy of frm's pkthdr; frm keeps its own."""
        w = self.w
        bt, bf = to << 6, frm << 6
        w[bt + 8 : bt + L.PKTHDR_WORDS_END] = w[bf + 8 : bf + L.PKTHDR_WORDS_END]
        w[bt + L.W_FLAGS] = (w[bt + L.W_FLAGS] & ~L.M_COPYFLAGS) | \
            (w[bf + L.W_FLAGS] & L.M_COPYFLAGS & ~L.M_RDONLY) | L.M_PKTHDR

    def _adjust_pktlen(self, m: int, delta: int) -> None:
        b = m << 6
        if self.w[b + L.W_FLAGS] & L.M_PKTHDR:
            self.w[b + L.W_PKTLEN] += delta

    # ------------------------------------------------------- chain surgery
    def prepend(self, m: int, n: int) -> int:
        """M_PREPEND: n more bytes in front, in leading space or a new mbuf.

        Returns the (possibly new) head; on allocation failure the chain is
        freed and 0 returned, as M_PREPEND does.
        """
        w = self.w
        b = m << 6
        if self.leadingspace(m) >= n:
            w[b + L.W_DATA] -= n
            w[b + L.W_LEN] += n
            self._adjust_pktlen(m, n)
            return m
        pk = w[b + L.W_FLAGS] & L.M_PKTHDR
        cap = L.MHLEN if pk else L.MLEN
        if n > cap:
            raise PoolError(f"prepend of {n} bytes exceeds an mbuf's {cap}")
        h = self.gethdr() if pk else self.get()
        if not h:
            self.freem(m)
            return 0
        hb = h << 6
        w[hb + L.W_TYPE] = w[b + L.W_TYPE]
        if pk:
            self._move_pkthdr(h, m)
        w[hb + L.W_NEXT] = m
        w[hb + L.W_DATA] = L.MSIZE - n  # M_ALIGN to the end of the buffer
        w[hb + L.W_LEN] = n
        self._adjust_pktlen(h, n)
        return h

    def append(self, m: int, data: bytes | memoryview) -> bool:
        """m_append: copy `data` onto the end of the chain (copyin into mbufs/clusters).

        All needed buffers are allocated before anything is copied, so a
        denial leaves the chain as it was and returns False.
        """
        w = self.w
        last = m
        while w[last << 6]:
            last = w[last << 6]
        data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        total = len(data)
        space = min(self.trailingspace(last), total)
        rest = total - space
        new: list[int] = []
        while rest > 0:
            size = L.MJUMPAGESIZE if rest >= L.MJUMPAGESIZE and self.counts[2] else \
                L.MCLBYTES if rest > L.MLEN else 0
            n = self.getcl(size, pkthdr=False) if size else self.get()
            if not n:
                for x in new:
                    self.free(x)
                return False
            new.append(n)
            rest -= self.storage(n)[1] - w[(n << 6) + L.W_DATA]
        pos = 0
        if space:
            off = self.data_offset(last) + w[(last << 6) + L.W_LEN]
            self.buf[off : off + space] = data[:space]
            w[(last << 6) + L.W_LEN] += space
            pos = space
        for n in new:
            nb = n << 6
            cap = self.storage(n)[1] - w[nb + L.W_DATA]
            k = min(cap, total - pos)
            off = self.data_offset(n)
            self.buf[off : off + k] = data[pos : pos + k]
            w[nb + L.W_LEN] = k
            pos += k
            w[last << 6] = n
            last = n
        self._adjust_pktlen(m, total)
        return True

    def adj(self, m: int, req: int) -> None:
        """m_adj: trim `req` bytes from the head (req > 0) or the tail (req < 0)."""
        w = self.w
        if req >= 0:
            n, x = req, m
            while x and n > 0:
                b = x << 6
                ln = w[b + L.W_LEN]
                k = min(ln, n)
                w[b + L.W_LEN] = ln - k
                w[b + L.W_DATA] += k
                n -= k
                x = w[b]
            self._adjust_pktlen(m, -(req - n))
            return
        total = self.chain_len(m)
        keep = max(0, total + req)
        self._adjust_pktlen(m, keep - total)
        x = m
        while x:
            b = x << 6
            ln = w[b + L.W_LEN]
            if ln >= keep:
                w[b + L.W_LEN] = keep
                keep = 0
            else:
                keep -= ln
            x = w[b]
            if keep == 0:
                # everything after is emptied, not freed (FreeBSD keeps the mbufs)
                while x:
                    w[(x << 6) + L.W_LEN] = 0
                    x = w[x << 6]

    def pullup(self, m: int, n: int) -> int:
        """m_pullup: make the first n bytes contiguous in the first mbuf.

        Returns the new head, or 0 (having freed the chain) if the chain is
        shorter than n or memory is short, as m_pullup does.
        """
        w = self.w
        b = m << 6
        if w[b + L.W_LEN] >= n:
            return m
        pk = w[b + L.W_FLAGS] & L.M_PKTHDR
        if n > (L.MHLEN if pk else L.MLEN):
            self.freem(m)
            return 0
        if not (w[b + L.W_FLAGS] & L.M_EXT) and w[b + L.W_DATA] + n <= L.MSIZE and \
                w[b + L.W_NEXT]:
            head, src = m, w[b + L.W_NEXT]
        else:
            head = self.gethdr() if pk else self.get()
            if not head:
                self.freem(m)
                return 0
            w[(head << 6) + L.W_TYPE] = w[b + L.W_TYPE]
            if pk:
                self._move_pkthdr(head, m)
            src = m
        hb = head << 6
        need = n - w[hb + L.W_LEN]
        while need > 0 and src:
            sb = src << 6
            k = min(need, w[sb + L.W_LEN])
            dst = self.data_offset(head) + w[hb + L.W_LEN]
            so = self.data_offset(src)
            self.buf[dst : dst + k] = self.buf[so : so + k]
            w[hb + L.W_LEN] += k
            w[sb + L.W_LEN] -= k
            w[sb + L.W_DATA] += k
            need -= k
            if w[sb + L.W_LEN] == 0:
                src = self.free(src)
        w[hb + L.W_NEXT] = src
        if need > 0:
            self.freem(head)
            return 0
        return head

    def copydata(self, m: int, off: int, length: int) -> bytes:
        """m_copydata into a new bytes object."""
        out = bytearray(length)
        self.copydata_into(m, off, length, memoryview(out))
        return bytes(out)

    def copydata_into(self, m: int, off: int, length: int, dest: memoryview) -> int:
        """m_copydata into `dest` (the copyout); returns bytes copied."""
        w = self.w
        while m and off >= w[(m << 6) + L.W_LEN]:
            off -= w[(m << 6) + L.W_LEN]
            m = w[m << 6]
        pos = 0
        while m and pos < length:
            ln = w[(m << 6) + L.W_LEN] - off
            k = min(ln, length - pos)
            src = self.data_offset(m) + off
            dest[pos : pos + k] = self.buf[src : src + k]
            pos += k
            off = 0
            m = w[m << 6]
        if pos < length:
            raise PoolError(f"copydata past the end of the chain ({pos} < {length})")
        return pos

    def chain_bytes(self, m: int) -> bytes:
        """All data bytes of a chain (a convenience for tests and tools)."""
        return self.copydata(m, 0, self.chain_len(m))

    def _share(self, n: int, src: int, off: int, k: int) -> None:
        """Make n reference src's cluster at data offset `off` for k bytes."""
        w = self.w
        sb, nb = src << 6, n << 6
        e = w[sb + L.W_EXT]
        with self._ref_locks[self.cl_zone[e]]:
            self.cl_meta[e << 1] += 1
        w[nb + L.W_FLAGS] |= L.M_EXT
        w[nb + L.W_EXT] = e
        w[nb + L.W_DATA] = w[sb + L.W_DATA] + off
        w[nb + L.W_LEN] = k

    def _copy_bytes(self, n: int, src: int, off: int, k: int) -> None:
        """Copy k bytes of src (from data offset `off`) into n's empty internal data."""
        w = self.w
        nb = n << 6
        so = self.data_offset(src) + off
        do = self.data_offset(n)
        self.buf[do : do + k] = self.buf[so : so + k]
        w[nb + L.W_LEN] = k

    def copym(self, m: int, off: int, length: int = L.M_COPYALL) -> int:
        """m_copym: a new chain for [off, off+length) sharing clusters (refcount up).

        Internal data is copied (it cannot be shared). Returns 0 on denial.
        """
        w = self.w
        head_pk = w[(m << 6) + L.W_FLAGS] & L.M_PKTHDR and off == 0
        orig = m
        while off > 0 and m:
            ln = w[(m << 6) + L.W_LEN]
            if off < ln:
                break
            off -= ln
            m = w[m << 6]
        top = prev = 0
        remaining = length
        first = True
        while remaining > 0 and m:
            mb = m << 6
            k = min(w[mb + L.W_LEN] - off, remaining)
            n = self.gethdr() if (first and head_pk) else self.get()
            if not n:
                if top:
                    self.freem(top)
                return 0
            w[(n << 6) + L.W_TYPE] = w[mb + L.W_TYPE]
            if first and head_pk:
                self._dup_pkthdr(n, orig)
                total = w[(orig << 6) + L.W_PKTLEN]
                w[(n << 6) + L.W_PKTLEN] = total if length == L.M_COPYALL else length
            if w[mb + L.W_FLAGS] & L.M_EXT:
                self._share(n, m, off, k)
            else:
                self._copy_bytes(n, m, off, k)
            if prev:
                w[prev << 6] = n
            else:
                top = n
            prev = n
            first = False
            remaining -= k
            off = 0
            m = w[mb]
        if remaining > 0 and length != L.M_COPYALL:
            if top:
                self.freem(top)
            raise PoolError("copym past the end of the chain")
        return top

    def dup(self, m: int) -> int:
        """m_dup: a deep copy of a packet (new storage, pkthdr copied). 0 on denial."""
        w = self.w
        total = self.chain_len(m)
        n = self.getcl(total, pkthdr=True) if total > L.MHLEN and total <= L.MJUM16BYTES \
            else self.gethdr()
        if not n:
            return 0
        self._dup_pkthdr(n, m)
        w[(n << 6) + L.W_TYPE] = w[(m << 6) + L.W_TYPE]
        if not w[(m << 6) + L.W_FLAGS] & L.M_PKTHDR:
            w[(n << 6) + L.W_FLAGS] &= ~L.M_PKTHDR
        pk = w[(n << 6) + L.W_PKTLEN]
        ok = self.append(n, self.chain_bytes(m))
        w[(n << 6) + L.W_PKTLEN] = pk
        if not ok:
            self.freem(n)
            return 0
        return n

    def cat(self, m: int, n: int) -> None:
        """m_cat: append chain n to m, copying small data into m's trailing space.

        Like FreeBSD's m_cat it leaves m_pkthdr.len alone; see catpkt.
        """
        w = self.w
        while w[m << 6]:
            m = w[m << 6]
        while n:
            nb = n << 6
            k = w[nb + L.W_LEN]
            if (w[nb + L.W_FLAGS] & L.M_EXT) or self.trailingspace(m) < k:
                w[m << 6] = n
                return
            do = self.data_offset(m) + w[(m << 6) + L.W_LEN]
            so = self.data_offset(n)
            self.buf[do : do + k] = self.buf[so : so + k]
            w[(m << 6) + L.W_LEN] += k
            n = self.free(n)

    def catpkt(self, m: int, n: int) -> None:
        """m_catpkt: append packet n to packet m, fixing m_pkthdr.len."""
        w = self.w
        w[(m << 6) + L.W_PKTLEN] += w[(n << 6) + L.W_PKTLEN]
        w[(n << 6) + L.W_FLAGS] &= ~L.M_PKTHDR
        self.cat(m, n)

    def split(self, m0: int, len0: int) -> int:
        """m_split: m0 keeps its first len0 bytes; returns the rest as a new chain.

        Clusters are shared at the cut; internal data is copied. If m0 has a
        pkthdr, the tail gets one too (lengths fixed). Returns 0 on denial,
        leaving m0 as it was.
        """
        w = self.w
        total = self.chain_len(m0)
        if len0 > total:
            raise PoolError(f"split at {len0} beyond the chain's {total} bytes")
        m, remain = m0, len0
        while remain > w[(m << 6) + L.W_LEN]:
            remain -= w[(m << 6) + L.W_LEN]
            m = w[m << 6]
        mb = m << 6
        pk = w[(m0 << 6) + L.W_FLAGS] & L.M_PKTHDR
        cut_inside = remain < w[mb + L.W_LEN]
        h = n = 0
        if pk:
            h = self.gethdr()
            if not h:
                return 0
        if cut_inside:
            n = self.get()
            if not n:
                if h:
                    self.free(h)
                return 0
            k = w[mb + L.W_LEN] - remain
            w[(n << 6) + L.W_TYPE] = w[mb + L.W_TYPE]
            if w[mb + L.W_FLAGS] & L.M_EXT:
                self._share(n, m, remain, k)
            else:
                self._copy_bytes(n, m, remain, k)
            w[(n << 6) + L.W_NEXT] = w[mb + L.W_NEXT]
            w[mb + L.W_LEN] = remain
            tail = n
        else:
            tail = w[mb + L.W_NEXT]
        w[mb + L.W_NEXT] = 0
        if pk:
            self._dup_pkthdr(h, m0)
            w[(h << 6) + L.W_PKTLEN] = total - len0
            w[(m0 << 6) + L.W_PKTLEN] = len0
            w[(h << 6) + L.W_NEXT] = tail
            tail = h
        return tail

    # -------------------------------------------------- owners, audit, stats
    def owners(self) -> list[OwnerInfo]:
        out = []
        for slot in np.nonzero(self._owners[1:, OS_LIVE])[0].tolist():
            row = self._owners[slot + 1]
            pid = int(row[OS_PID])
            start = int(row[OS_START]) | int(row[OS_START + 1]) << 32
            name = row[OS_NAME : OS_NAME + 16].tobytes().rstrip(b"\0").decode(errors="replace")
            out.append(OwnerInfo(slot + 1, name, pid, process_alive(pid, start)))
        return out

    def _owner_name(self, slot: int) -> str:
        if slot == 0:
            return "(none)"
        row = self._owners[slot]
        name = row[OS_NAME : OS_NAME + 16].tobytes().rstrip(b"\0").decode(errors="replace")
        return f"{name}[{slot}]" if row[OS_LIVE] else f"{name}[{slot}, detached]"

    def _zone_state(self, z: int) -> np.ndarray:
        if z == 0:
            return self._own_col[1:]
        first = self.cl_first[z]
        return self._cown_col[first : first + self.counts[z]]

    def stats(self) -> PoolStats:
        denied = self._owners[:, OS_DENIED : OS_DENIED + L.NZONES].sum(axis=0)
        zones = []
        for z in range(L.NZONES):
            st = self._zone_state(z) >> L.STATE_SHIFT
            cur = int(np.count_nonzero(st == L.ST_INUSE))
            size = L.MSIZE if z == 0 else self.cl_size[z]
            zones.append(ZoneStats(L.ZONE_NAMES[z], size, cur, self.counts[z] - cur,
                                   self.counts[z], int(denied[z])))
        return PoolStats(tuple(zones), int(self._owners[:, OS_GETCL_DENIED].sum()))

    def in_use(self) -> int:
        """Mbufs in use right now (all owners)."""
        return int(np.count_nonzero((self._mh[1:, L.W_OWNER] >> L.STATE_SHIFT) == L.ST_INUSE))

    def audit(self) -> PoolAudit:
        """Buffers in use per owner, and whether the pool's books balance."""
        in_use: dict[str, dict[str, int]] = {}
        problems: list[str] = []
        free = []
        for z in range(L.NZONES):
            tags = self._zone_state(z)
            st = tags >> L.STATE_SHIFT
            inuse = st == L.ST_INUSE
            for slot, cnt in zip(*np.unique(tags[inuse] & L.OWNER_MASK, return_counts=True)):
                in_use.setdefault(self._owner_name(int(slot)), {})[L.ZONE_NAMES[z]] = int(cnt)
            nfree = int(np.count_nonzero(st == L.ST_FREE))
            free.append(int(np.count_nonzero(st != L.ST_INUSE)))
            if nfree != self._tops[z]:
                problems.append(f"{L.ZONE_NAMES[z]}: {nfree} marked free but the free "
                                f"stack holds {self._tops[z]}")
            if z:
                first = self.cl_first[z]
                ref = self._ref_col[first : first + self.counts[z]]
                bad = int(np.count_nonzero((ref != 0) & ~inuse))
                if bad:
                    problems.append(f"{L.ZONE_NAMES[z]}: {bad} free clusters with refcount > 0")
        return PoolAudit(in_use, tuple(free), tuple(problems))

    def reclaim(self, slot: int, *, force: bool = False) -> dict[str, int]:
        """Free everything owner `slot` held (a dead process's buffers and cache).

        Chains are followed from the packets the owner held; clusters still
        referenced by another owner's mbufs survive. The global free stacks
        are then rebuilt from the buffer states, which also repairs a stack
        left half-updated by a process killed inside a refill or flush.
        Returns the number of buffers freed per zone.
        """
        row = self._owners[slot]
        if row[OS_LIVE] and not force:
            pid = int(row[OS_PID])
            start = int(row[OS_START]) | int(row[OS_START + 1]) << 32
            if process_alive(pid, start):
                raise PoolError(f"owner {self._owner_name(slot)} (pid {pid}) is alive")
        locks = [*self._zone_locks, *self._ref_locks[1:], self._owner_lock]
        for lk in locks:
            lk.__enter__()
        try:
            freed = self._reclaim_locked(slot)
            row = self._owners[slot]
            self._owners[0, OS_DENIED : OS_GETCL_DENIED + 1] += \
                row[OS_DENIED : OS_GETCL_DENIED + 1]
            row[:] = 0
        finally:
            for lk in reversed(locks):
                lk.__exit__()
        return freed

    def _reclaim_locked(self, slot: int) -> dict[str, int]:
        mh = self._mh
        tags = mh[:, L.W_OWNER]
        st = tags >> L.STATE_SHIFT
        own = tags & L.OWNER_MASK
        inuse_all = st == L.ST_INUSE
        inuse_all[0] = False
        referenced = np.zeros(len(mh), dtype=bool)
        referenced[mh[inuse_all, L.W_NEXT]] = True
        referenced[0] = False
        heads = np.nonzero(inuse_all & (own == slot) & ~referenced)[0]
        freed = dict.fromkeys(L.ZONE_NAMES, 0)
        for h in heads.tolist():
            m = h
            while m:
                b = m << 6
                nxt = self.w[b]
                if self.w[b + L.W_FLAGS] & L.M_EXT:
                    e = self.w[b + L.W_EXT]
                    r = max(0, self.cl_meta[e << 1] - 1)
                    self.cl_meta[e << 1] = r
                    if r == 0:
                        self.cl_meta[(e << 1) | 1] = 0
                        freed[L.ZONE_NAMES[self.cl_zone[e]]] += 1
                self.w[b + L.W_OWNER] = 0
                freed[L.ZONE_NAMES[0]] += 1
                m = nxt
        cached = (st == L.ST_CACHED) & (own == slot)
        cached[0] = False
        freed[L.ZONE_NAMES[0]] += int(np.count_nonzero(cached))
        mh[cached, L.W_OWNER] = 0
        # clusters: the owner's cache, and any it held that no in-use mbuf references
        tags = mh[:, L.W_OWNER]
        live = (tags >> L.STATE_SHIFT) == L.ST_INUSE
        live[0] = False
        ext_rows = mh[live & ((mh[:, L.W_FLAGS] & L.M_EXT) != 0), L.W_EXT]
        refs = np.bincount(ext_rows, minlength=len(self._cown_col))
        cown = self._cown_col
        cst = cown >> L.STATE_SHIFT
        mine = (cown & L.OWNER_MASK) == slot
        mine[0] = False
        drop = mine & ((cst == L.ST_CACHED) | ((cst == L.ST_INUSE) & (refs == 0)))
        for z in range(1, L.NZONES):
            first = self.cl_first[z]
            freed[L.ZONE_NAMES[z]] += int(np.count_nonzero(drop[first : first + self.counts[z]]))
        cown[drop] = 0
        self._ref_col[drop] = 0
        for z in range(L.NZONES):
            st_z = self._zone_state(z) >> L.STATE_SHIFT
            base = self.cl_first[z] if z else 1
            free_h = (np.nonzero(st_z == L.ST_FREE)[0] + base).astype(np.uint32)
            self._stacks[z][: len(free_h)] = free_h[::-1]
            self._tops[z] = len(free_h)
        return freed

    def reap_dead(self) -> dict[str, dict[str, int]]:
        """Reclaim every owner whose process is gone; returns what each one held."""
        out = {}
        for o in self.owners():
            if not o.alive and o.slot != self.slot:
                out[f"{o.name}[{o.slot}]"] = self.reclaim(o.slot)
        return out


class MbufQueue:
    """mbufq: a FIFO of packets linked through m_nextpkt, with a maximum length."""

    __slots__ = ("pool", "maxlen", "head", "tail", "len")

    def __init__(self, pool: MbufPool, maxlen: int) -> None:
        self.pool = pool
        self.maxlen = maxlen
        self.head = self.tail = 0
        self.len = 0

    def full(self) -> bool:
        return self.len >= self.maxlen

    def enqueue(self, m: int) -> bool:
        """mbufq_enqueue: False (ENOBUFS) when full; the caller still owns m."""
        if self.len >= self.maxlen:
            return False
        w = self.pool.w
        w[(m << 6) + L.W_NEXTPKT] = 0
        if self.tail:
            w[(self.tail << 6) + L.W_NEXTPKT] = m
        else:
            self.head = m
        self.tail = m
        self.len += 1
        return True

    def dequeue(self) -> int:
        m = self.head
        if not m:
            return 0
        w = self.pool.w
        self.head = w[(m << 6) + L.W_NEXTPKT]
        w[(m << 6) + L.W_NEXTPKT] = 0
        if not self.head:
            self.tail = 0
        self.len -= 1
        return m

    def drain(self) -> list[int]:
        out = []
        while self.head:
            out.append(self.dequeue())
        return out

    def flush(self) -> int:
        """mbufq_drain + free: drop everything queued; returns how many."""
        ms = self.drain()
        for m in ms:
            self.pool.freem(m)
        return len(ms)

    def __len__(self) -> int:
        return self.len
