"""Per-stage latency counting in a user thread, from each packet's pkthdr stamps.

Why it exists: a user thread sees every delivered packet's stamps (wire,
DMA, ithread, netisr enqueue and start, socket append, user receive) and
turns them into the run's latency histograms. Kept raw, 2 M packets' stamps
were 128 MB per process, halved by concatenation when full; counted with
numpy (seven subtractions, masks, logarithms and bincounts per fold) it took
~10 % of a user thread's CPU at full rate. `fold` counts a batch's stamps in
one compiled pass into bins of 3 significant digits (the histograms'
precision: decade x mantissa 0..999), so memory is fixed and the cost is
some 20 ns a packet; `histograms` turns the bins into HDR histograms once,
when asked. Durations beyond the histograms' range are counted at its top,
not lost.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dispatch.jit import helper, i64_2d, kernel, types, u64_2d
from dispatch.mbuf import layout as L
from dispatch.runtime.result import HIST_MAX_NS, LATENCY_STAGES, new_histogram

#: bins per stage: decades 0..11 (values are clamped to HIST_MAX_NS, 6e10: 11 digits)
#: times a 3-digit mantissa
NDECADES = 12
NBINS = NDECADES * 1000
_WIRE, _DMA, _ITH = L.TS_WIRE, L.TS_DMA, L.TS_ITHREAD
_ENQ, _NST, _SOCK, _USER = L.TS_NETISR_ENQ, L.TS_NETISR_START, L.TS_SOCKET, L.TS_USER
assert LATENCY_STAGES == ("e2e", "wire_to_dma", "dma_to_ithread", "ithread", "netisr_queue",
                          "netisr", "socket_queue")


@helper
def _count(bins, k, a, b, top):  # type: ignore[no-untyped-def]
    """Count the duration a -> b (when b >= a) into stage k's bins."""
    if b < a:
        return
    d = b - a
    if d < 1:
        d = 1
    if d > top:
        d = top
    e = 0
    while d >= 1000:
        d //= 10
        e += 1
    bins[k, e * 1000 + d] += 1


@kernel(types.void(u64_2d, i64_2d, types.int64))
def fold(stamps, bins, top):  # type: ignore[no-untyped-def]
    """Count each row of stamps (a packet's TS_* slots, ns) into the per-stage bins:
    e2e (wire, else DMA, to user), wire_to_dma, dma_to_ithread, ithread (to the
    netisr enqueue, else the socket append), netisr_queue, netisr, socket_queue;
    a stage whose stamps a packet lacks (0) is not counted for it."""
    for i in range(stamps.shape[0]):
        wire = np.int64(stamps[i, _WIRE])
        dma = np.int64(stamps[i, _DMA])
        ith = np.int64(stamps[i, _ITH])
        enq = np.int64(stamps[i, _ENQ])
        nst = np.int64(stamps[i, _NST])
        sock = np.int64(stamps[i, _SOCK])
        user = np.int64(stamps[i, _USER])
        _count(bins, 0, wire if wire > 0 else dma, user, top)
        if wire > 0:
            _count(bins, 1, wire, dma, top)
        if dma > 0 and ith > 0:
            _count(bins, 2, dma, ith, top)
        if ith > 0:
            _count(bins, 3, ith, enq if enq > 0 else sock, top)
        if enq > 0:
            _count(bins, 4, enq, nst, top)
            _count(bins, 5, nst, sock, top)
        if sock > 0:
            _count(bins, 6, sock, user, top)


class LatencyBins:
    """The bins of one process's packets, by stage (LATENCY_STAGES order)."""

    def __init__(self) -> None:
        self.bins = np.zeros((len(LATENCY_STAGES), NBINS), np.int64)

    def add(self, stamps: np.ndarray) -> None:
        """Count a batch's stamps (an (n, NTS) u64 array, C-contiguous)."""
        fold(stamps, self.bins, HIST_MAX_NS)

    @property
    def count(self) -> int:
        """Packets counted (end to end)."""
        return int(self.bins[0].sum())

    def histograms(self) -> dict[str, Any]:
        """One HDR histogram per stage, from the bins (each bin's value recorded once
        with its count)."""
        out = {}
        for k, name in enumerate(LATENCY_STAGES):
            h = new_histogram()
            row = self.bins[k]
            keys = np.flatnonzero(row)
            vals = (keys % 1000) * 10 ** (keys // 1000)
            for v, c in zip(vals.tolist(), row[keys].tolist()):
                h.record_value(v, c)
            out[name] = h
        return out
