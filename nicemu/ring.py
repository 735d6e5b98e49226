"""Descriptor rings and interrupt control blocks in shared memory, between a NIC and a host.

A NIC and its driver talk through rings of descriptors that both can see: the
producer writes descriptors and then publishes a new producer index, the
consumer reads them and publishes its own index.  Each index is written by
exactly one side, so the fill level ``head - tail`` is exact without locks or
atomic read-modify-write: a reader may see an index a little late, never a
torn or wrong one (aligned 8-byte stores are single stores on x86-64, and x86
keeps stores in program order, so a slot written before its index is visible
before the index).  Indices are free-running 64-bit counters: they never
wrap in practice, and ``index & (capacity - 1)`` is the slot.

* :class:`Ring`: single-producer single-consumer ring of u32 mbuf handles,
  each with a u32 word beside it (length or flags), over any writable buffer
  (a ``bytearray`` in tests, a shared segment in a run).
* :class:`TxRing`: a ring with a third index, ``done``, written by the NIC as
  it completes descriptors.  The driver posts at ``head``, the NIC transmits
  ``[done, head)``, and the driver reclaims (``txeof``) ``[tail, done)``:
  a descriptor's slot is free again only when the driver has freed its mbuf,
  as on real hardware.
* :class:`IrqControl`: the interrupt state of one rx queue.  The NIC counts
  interrupts it raised (``raised``); the ithread, when done, copies that count
  into ``rearmed``.  So "masked" is ``raised != rearmed`` (an interrupt is out
  and not yet re-armed: the NIC raises no other), and each counter still has
  one writer.  ``disabled`` (host-written) keeps the queue masked regardless,
  as a polling driver does.
* :class:`RingSet`: one segment per NIC holding every rx ring, tx ring and
  control block, created by name by the NIC process (which unlinks it on
  close) and attached by name from ithread and driver processes.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from dispatch.jit import entries_by_dtype, entry
from dispatch.mbuf.segment import (
    PAGE,
    attach_segment,
    close_at_exit,
    create_segment,
    forget,
    shm_path,
)
from nicemu import kernels as _nk

__all__ = [
    "RING_MAGIC",
    "Ring",
    "TxRing",
    "IrqControl",
    "RingSet",
    "ring_set_name",
    "check_ring_size",
]

RING_MAGIC: Final = b"DEMURING"
LINE: Final = 64
#: Ring header: head (line 0), tail (line 1), aux/done (line 2), each its own cache line.
RING_HDR: Final = 3 * LINE
#: Control block: NIC-written line, host-written line.
IRQ_BYTES: Final = 2 * LINE
MAX_RING: Final = 1 << 16
MAX_QUEUES: Final = 64

_H, _T, _A = 0, LINE // 8, 2 * LINE // 8  # u64 index of head, tail, aux in the header view
_NO_WORDS = np.zeros(0, np.uint32)
_HANDLE_DTYPES = (np.dtype(np.intp), np.dtype(np.uint32))


# entry points (jit.entry: no type checks): their arguments are the ring's own views,
# ints, and handle / word batches the methods made 1-d arrays of the declared dtypes
_PUSH = entries_by_dtype(_nk.ring_push, 4)
_POP = entry(_nk.ring_pop)


def check_ring_size(size: int) -> int:
    """Validate a ring size: a power of two from 8 to 65536."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size > MAX_RING \
            or size & (size - 1):
        raise ValueError(f"ring size {size!r} invalid: valid sizes are powers of two "
                         f"from 8 to {MAX_RING} (8, 16, ..., 1024, ...)")
    return size


def ring_set_name(pool_name: str, index: int) -> str:
    """The conventional segment name of NIC `index`'s rings on pool `pool_name`."""
    return f"{pool_name}.nic{index}"


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


class Ring:
    """SPSC ring of (u32 handle, u32 word) descriptors over a writable buffer.

    ``Ring(buf, offset, capacity, init=True)`` lays a fresh ring at ``offset``
    (:meth:`nbytes` bytes); ``init=False`` attaches to one already there.  The
    producer calls :meth:`push_many`, the consumer :meth:`pop_many` /
    :meth:`pop_array`; nobody else may.
    """

    __slots__ = ("capacity", "_mask", "_idx", "_idx_np", "_h", "_w", "_views")
    _LIM = _H  # the index the consumer's reads go up to (a tx ring's: done)

    def __init__(self, buf: bytearray | memoryview | mmap.mmap, offset: int, capacity: int,
                 *, init: bool = False) -> None:
        check_ring_size(capacity)
        if offset % LINE:
            raise ValueError(f"ring offset {offset} must be {LINE}-byte aligned")
        mv = memoryview(buf).cast("B")
        if offset + self.nbytes(capacity) > len(mv):
            raise ValueError(f"buffer of {len(mv)} bytes too small for a ring of {capacity} "
                             f"at offset {offset} (needs {self.nbytes(capacity)})")
        self.capacity = capacity
        self._mask = capacity - 1
        self._idx = mv[offset : offset + RING_HDR].cast("Q")
        self._idx_np = np.frombuffer(mv, np.uint64, RING_HDR // 8, offset)
        base = offset + RING_HDR
        self._h = np.frombuffer(mv, np.uint32, capacity, base)
        self._w = np.frombuffer(mv, np.uint32, capacity, base + 4 * capacity)
        self._views = mv
        if init:
            self._idx[_H] = self._idx[_T] = self._idx[_A] = 0

    @staticmethod
    def nbytes(capacity: int) -> int:
        """Bytes a ring of `capacity` slots takes (a multiple of 64)."""
        return _align(RING_HDR + 8 * capacity, LINE)

    @classmethod
    def over(cls, capacity: int) -> Ring:
        """A fresh ring in private memory (for tests and single-process use)."""
        return cls(bytearray(cls.nbytes(capacity)), 0, capacity, init=True)

    # -- indices -----------------------------------------------------------------
    @property
    def head(self) -> int:
        """Producer index (free-running)."""
        return self._idx[_H]

    @property
    def tail(self) -> int:
        """Consumer index (free-running)."""
        return self._idx[_T]

    def _avail(self) -> int:
        """Descriptors the consumer may take."""
        return self._idx[_H] - self._idx[_T]

    def __len__(self) -> int:
        """Descriptors in the ring (posted and not yet consumed)."""
        return self._idx[_H] - self._idx[_T]

    def space(self) -> int:
        """Free slots the producer may fill."""
        return self.capacity - (self._idx[_H] - self._idx[_T])

    # -- producer ----------------------------------------------------------------
    def push_many(self, handles: Sequence[int] | npt.NDArray[np.integer],
                  words: Sequence[int] | npt.NDArray[np.integer] | None = None) -> int:
        """Append descriptors; returns how many were accepted (the rest did not fit)."""
        n = len(handles)
        if not n:
            return 0
        hs = handles
        if not (type(hs) is np.ndarray and hs.dtype in _HANDLE_DTYPES and hs.ndim == 1):
            hs = np.asarray(hs).ravel().astype(np.intp, copy=False)  # (any stride will do)
        if words is None:
            ws = _NO_WORDS
        else:
            ws = np.asarray(words).ravel().astype(np.uint32, copy=False)
            if len(ws) < n:
                raise ValueError(f"{len(ws)} words for {n} handles")
        return _PUSH[hs.dtype](self._idx_np, self._h, self._w, _T, hs, ws)  # type: ignore[operator]

    # -- consumer ----------------------------------------------------------------
    def _read(self, start: int, k: int, col: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
        s = start & self._mask
        if s + k <= self.capacity:
            return col[s : s + k].copy()
        return np.concatenate((col[s:], col[: k - (self.capacity - s)]))

    def pop_array(self, max_n: int | None = None) -> npt.NDArray[np.uint32]:
        """Take up to `max_n` descriptors (all if None) as a uint32 array of handles."""
        k = self._avail()
        if max_n is not None:
            k = min(k, max_n)
        if k <= 0:
            return np.zeros(0, np.uint32)
        out = np.empty(k, np.uint32)
        _POP(self._idx_np, self._h, self._LIM, _T, k, out)  # type: ignore[operator]
        return out

    def pop_many(self, max_n: int | None = None) -> list[int]:
        """Take up to `max_n` descriptors (all if None): their handles, in order."""
        return self.pop_array(max_n).tolist()

    def peek_words(self, max_n: int | None = None) -> npt.NDArray[np.uint32]:
        """The words of the next descriptors the consumer would take (without taking them)."""
        k = self._avail()
        if max_n is not None:
            k = min(k, max_n)
        return self._read(self._idx[_T], max(k, 0), self._w)

    def release(self) -> None:
        """Drop this object's views of the buffer (it is unusable afterwards)."""
        self._idx.release()
        del self._h, self._w, self._idx_np
        self._views.release()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(capacity={self.capacity}, len={len(self)})"


class TxRing(Ring):
    """A transmit ring: driver posts at ``head``, NIC completes up to ``done``,
    driver reclaims up to ``tail``.

    ``push_many`` (driver) fails when ``head - tail == capacity``, i.e. when
    the ring is full of descriptors not yet reclaimed.  :meth:`pending` /
    :meth:`fetch` / :meth:`complete` are the NIC's; :meth:`pop_many` /
    :meth:`pop_array` (alias :meth:`reclaim`) take only completed descriptors.
    """

    __slots__ = ()
    _LIM = _A

    @property
    def done(self) -> int:
        """NIC completion index (free-running)."""
        return self._idx[_A]

    def _avail(self) -> int:
        return self._idx[_A] - self._idx[_T]

    def completed(self) -> int:
        """Descriptors completed by the NIC and not yet reclaimed by the driver."""
        return self._idx[_A] - self._idx[_T]

    def pending(self) -> int:
        """Descriptors posted by the driver and not yet transmitted (NIC side)."""
        return self._idx[_H] - self._idx[_A]

    def fetch(self, max_n: int | None = None) -> npt.NDArray[np.uint32]:
        """NIC: the handles of up to `max_n` posted, untransmitted descriptors (not taken)."""
        k = self.pending()
        if max_n is not None:
            k = min(k, max_n)
        return self._read(self._idx[_A], max(k, 0), self._h)

    def fetch_words(self, k: int) -> npt.NDArray[np.uint32]:
        """NIC: the words of the next `k` untransmitted descriptors."""
        return self._read(self._idx[_A], max(min(k, self.pending()), 0), self._w)

    def complete(self, k: int) -> None:
        """NIC: mark the next `k` fetched descriptors done (after reading them)."""
        if not 0 <= k <= self.pending():
            raise ValueError(f"cannot complete {k} descriptors: {self.pending()} pending")
        self._idx[_A] = self._idx[_A] + k

    def reclaim(self, max_n: int | None = None) -> npt.NDArray[np.uint32]:
        """Driver: take completed descriptors (to free their mbufs)."""
        return self.pop_array(max_n)


class IrqControl:
    """Interrupt state of one rx queue, shared between the NIC and its ithread.

    NIC-written: ``raised`` (interrupts raised), ``last_raise_ns``.
    Host-written: ``rearmed`` (the ``raised`` count at the last re-arm),
    ``disabled`` (1 keeps the queue masked), ``rearms`` (re-arm calls).
    """

    __slots__ = ("_q", "_mv")

    _RAISED, _LAST = 0, 1
    _REARMED, _DISABLED, _REARMS = LINE // 8, LINE // 8 + 1, LINE // 8 + 2

    def __init__(self, buf: bytearray | memoryview | mmap.mmap, offset: int, *,
                 init: bool = False) -> None:
        if offset % LINE:
            raise ValueError(f"control block offset {offset} must be {LINE}-byte aligned")
        self._mv = memoryview(buf).cast("B")
        self._q = self._mv[offset : offset + IRQ_BYTES].cast("Q")
        if init:
            for i in range(len(self._q)):
                self._q[i] = 0

    @classmethod
    def over(cls) -> IrqControl:
        return cls(bytearray(IRQ_BYTES), 0, init=True)

    # NIC side
    @property
    def raised(self) -> int:
        return self._q[self._RAISED]

    def raise_irq(self, now_ns: int) -> None:
        """NIC: an interrupt goes out (the queue is masked until re-armed)."""
        self._q[self._LAST] = now_ns
        self._q[self._RAISED] = self._q[self._RAISED] + 1

    @property
    def last_raise_ns(self) -> int:
        return self._q[self._LAST]

    # host side
    @property
    def rearmed(self) -> int:
        return self._q[self._REARMED]

    @property
    def rearms(self) -> int:
        return self._q[self._REARMS]

    @property
    def disabled(self) -> bool:
        return bool(self._q[self._DISABLED])

    def rearm(self) -> None:
        """Host (ithread): done with the interrupt; the NIC may raise the next one."""
        self._q[self._REARMS] = self._q[self._REARMS] + 1
        self._q[self._REARMED] = self._q[self._RAISED]

    def set_disabled(self, disabled: bool) -> None:
        """Host: keep the queue's interrupt masked (polling) or let it follow rearm."""
        self._q[self._DISABLED] = int(bool(disabled))

    @property
    def masked(self) -> bool:
        """True while an interrupt is out and not re-armed, or while disabled."""
        return self._q[self._RAISED] != self._q[self._REARMED] or bool(self._q[self._DISABLED])

    def release(self) -> None:
        self._q.release()
        self._mv.release()


class RingSet:
    """All rings and control blocks of one NIC, in one shared segment.

    Layout: a page holding the superblock (geometry: rx queues, tx queues,
    rx ring size, tx ring size), then per rx queue a control block and a
    ring, then the tx rings; each region 64-byte aligned.
    """

    def __init__(self, name: str, fd: int, mm: mmap.mmap, counts: tuple[int, ...], *,
                 creator: bool) -> None:
        self.name = name
        self.creator = creator
        self._pid = os.getpid()
        self._fd = fd
        self._mm = mm
        self.n_rx, self.n_tx, self.rx_size, self.tx_size = counts[:4]
        init = creator
        off = PAGE
        self.irq: list[IrqControl] = []
        self.rx: list[Ring] = []
        for _ in range(self.n_rx):
            self.irq.append(IrqControl(mm, off, init=init))
            off += IRQ_BYTES
            self.rx.append(Ring(mm, off, self.rx_size, init=init))
            off += Ring.nbytes(self.rx_size)
        self.tx: list[TxRing] = []
        for _ in range(self.n_tx):
            self.tx.append(TxRing(mm, off, self.tx_size, init=init))
            off += TxRing.nbytes(self.tx_size)
        self._closed = False

    @staticmethod
    def nbytes(n_rx: int, n_tx: int, rx_size: int, tx_size: int) -> int:
        return _align(PAGE + n_rx * (IRQ_BYTES + Ring.nbytes(rx_size))
                      + n_tx * Ring.nbytes(tx_size), PAGE)

    @classmethod
    def create(cls, name: str, *, rx_queues: int = 1, tx_queues: int = 1,
               rx_size: int = 1024, tx_size: int = 1024) -> RingSet:
        """Create the segment (a stale one from a dead creator is replaced).

        The creator unlinks it on :meth:`close` and at interpreter exit.
        """
        for what, n in (("rx_queues", rx_queues), ("tx_queues", tx_queues)):
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_QUEUES:
                raise ValueError(f"{what}={n!r} invalid: valid values are 1..{MAX_QUEUES}")
        check_ring_size(rx_size)
        check_ring_size(tx_size)
        counts = (rx_queues, tx_queues, rx_size, tx_size)
        fd, mm = create_segment(name, cls.nbytes(*counts), counts, magic=RING_MAGIC)
        rs = cls(name, fd, mm, counts, creator=True)
        close_at_exit(rs)
        return rs

    @classmethod
    def attach(cls, name: str) -> RingSet:
        """Attach to a NIC's rings by name (from an ithread or driver process)."""
        fd, mm, sb = attach_segment(name, RING_MAGIC)
        return cls(name, fd, mm, sb.counts, creator=False)

    def close(self) -> None:
        """Unmap; the creator also unlinks the segment."""
        if self._closed or os.getpid() != self._pid:
            return
        self._closed = True
        forget(self)
        for r in (*self.rx, *self.tx):
            r.release()
        for c in self.irq:
            c.release()
        try:
            self._mm.close()
        except BufferError:
            pass  # a caller still holds a view; the mapping goes with it
        os.close(self._fd)
        if self.creator:
            try:
                os.unlink(shm_path(self.name))
            except FileNotFoundError:
                pass

    def __enter__(self) -> RingSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
