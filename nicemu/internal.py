"""An internal frame source for peak-rate benchmarks: the NIC as an ideal line.

To measure how fast the host side can go, the wire must not be the
bottleneck: a traffic generator in another process, its ZeroMQ hop and the
NIC's classification all cost time per frame.  DPDK's testpmd has a txonly
mode for the same reason.  :class:`InternalSource` makes the NIC produce
frames itself from a few templates, as fast as it is asked to, through the
very same receive path as wire frames (ring space, posted buffers, the DMA
copy, pkthdr fields, counters, moderation): only classification is done once
per template, since a template's bytes never change (its RSS hash, queue and
rx checksum result are the same every time).  With ``stamp_wire`` each frame
gets TS_WIRE = the ``now_ns`` it was produced at, so end-to-end latency is
measured from the "wire" as for real frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dispatch.packet.errors import BytesLike
from nicemu.nic import Classified, FlatFrames, Nic, flatten

__all__ = ["InternalSource"]

_CACHE_MAX = 1024


class InternalSource:
    """Template frames fed to `nic` in batches, cycling through the templates in order.

    ``produce(now_ns)`` delivers one batch and returns the rx queues to
    interrupt (as :meth:`Nic.receive`).  Frames that do not fit (ring full,
    pool exhausted) are counted by the NIC as missed, as on a real line.
    """

    def __init__(self, nic: Nic, templates: Sequence[BytesLike], *, batch: int = 32,
                 stamp_wire: bool = True) -> None:
        if not templates:
            raise ValueError("templates must hold at least one frame")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch={batch!r} invalid: valid values are integers >= 1")
        self.nic = nic
        self.templates = [bytes(t) for t in templates]
        self.batch = batch
        self.stamp_wire = stamp_wire
        # classified once: RSS hash, queue, checksum result per template
        self._cls: Classified = nic.classify(self.templates)
        self._pos = 0
        self._cache: dict[tuple[int, int], tuple[list[bytes], Classified, FlatFrames]] = {}
        t = len(self.templates)
        self._cacheable = t // math.gcd(t, batch) <= _CACHE_MAX
        #: frames offered so far
        self.offered = 0

    @property
    def hashes(self) -> list[int]:
        """The RSS hash of each template (as the NIC computed it)."""
        return self._cls.hashes.tolist()

    @property
    def queues(self) -> list[int]:
        """The rx queue of each template."""
        return self._cls.queues.tolist()

    def _batch(self, start: int, n: int) -> tuple[list[bytes], Classified, FlatFrames]:
        if n < self.batch and self._cacheable:  # a prefix of the full batch, as views
            frames, cls, (data, doff) = self._batch(start, self.batch)
            end = int(doff[n])
            return (frames[:n], Classified(cls.blk[:n], cls.queues[:n], cls.lens[:n],
                                           None if cls.lro is None else cls.lro[:n]),
                    (data[:end], doff[:n]))
        key = (start, n)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        t = len(self.templates)
        idx = (np.arange(n) + start) % t
        frames = [self.templates[i] for i in idx.tolist()]
        cls = self._cls.take(idx)
        out = (frames, cls, flatten(frames, cls.lens))
        if self._cacheable and n == self.batch:
            self._cache[key] = out
        return out

    def produce(self, now_ns: int, n: int | None = None) -> list[int]:
        """Offer `n` frames (default: one batch) at `now_ns`; the queues to interrupt."""
        n = self.batch if n is None else n
        if n <= 0:
            return self.nic.poll_timers(now_ns)
        frames, cls, flat = self._batch(self._pos, n)
        self._pos = (self._pos + n) % len(self.templates)
        self.offered += n
        return self.nic.receive_classified(frames, cls, now_ns,
                                           now_ns if self.stamp_wire else None, flat=flat)
