"""Per-stage latency bins (dispatch.runtime.latency) against a plain-Python reference."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.mbuf import layout as L
from dispatch.runtime.latency import LatencyBins
from dispatch.runtime.result import HIST_MAX_NS, LATENCY_STAGES

SLOTS = (L.TS_WIRE, L.TS_DMA, L.TS_ITHREAD, L.TS_NETISR_ENQ, L.TS_NETISR_START, L.TS_SOCKET,
         L.TS_USER)


def _three_digits(v: int) -> int:
    """v rounded down to 3 significant digits, in integers only."""
    q = 1
    while v // q >= 1000:
        q *= 10
    return v // q * q


def _reference(rows: list[dict[int, int]]) -> dict[str, Counter]:
    """What each stage should count, written out per packet as the stages are defined."""
    out = {k: Counter() for k in LATENCY_STAGES}

    def add(k: str, a: int, b: int) -> None:
        if b >= a:
            out[k][_three_digits(min(max(b - a, 1), HIST_MAX_NS))] += 1

    for r in rows:
        wire, dma, ith = r[L.TS_WIRE], r[L.TS_DMA], r[L.TS_ITHREAD]
        enq, nst, sock, user = (r[L.TS_NETISR_ENQ], r[L.TS_NETISR_START], r[L.TS_SOCKET],
                                r[L.TS_USER])
        add("e2e", wire if wire > 0 else dma, user)
        if wire > 0:
            add("wire_to_dma", wire, dma)
        if dma > 0 and ith > 0:
            add("dma_to_ithread", dma, ith)
        if ith > 0:
            add("ithread", ith, enq if enq > 0 else sock)
        if enq > 0:
            add("netisr_queue", enq, nst)
            add("netisr", nst, sock)
        if sock > 0:
            add("socket_queue", sock, user)
    return out


stamp = st.one_of(st.just(0), st.integers(1, 10**6), st.integers(10**9, 10**9 + 10**6),
                  st.sampled_from([10**k for k in range(14)]),
                  st.integers(1, 2 * HIST_MAX_NS))
row = st.fixed_dictionaries({s: stamp for s in SLOTS})


@given(st.lists(st.lists(row, max_size=40), max_size=4))
@settings(max_examples=150, deadline=None)
def test_bins_count_what_the_reference_counts(batches):
    lat = LatencyBins()
    rows = []
    for b in batches:
        arr = np.zeros((len(b), L.NTS), np.uint64)
        for i, r in enumerate(b):
            for s, v in r.items():
                arr[i, s] = v
        lat.add(arr)
        rows += b
    ref = _reference(rows)
    hists = lat.histograms()
    assert lat.count == sum(ref["e2e"].values())
    for k in LATENCY_STAGES:
        h = hists[k]
        assert h.get_total_count() == sum(ref[k].values()), k
        for v, c in ref[k].items():
            assert h.get_count_at_value(v) == c, (k, v)


def test_a_duration_beyond_the_range_is_counted_at_the_top():
    lat = LatencyBins()
    arr = np.zeros((2, L.NTS), np.uint64)
    arr[0, L.TS_DMA], arr[0, L.TS_USER] = 5, 5 + 3 * HIST_MAX_NS
    arr[1, L.TS_DMA], arr[1, L.TS_USER] = 5, 15
    lat.add(arr)
    h = lat.histograms()["e2e"]
    assert h.get_total_count() == 2 and h.get_max_value() >= HIST_MAX_NS
    assert lat.histograms()["socket_queue"].get_total_count() == 0
