"""How fast this machine runs Python right now: one figure to print beside a benchmark.

The 2-core VM these benchmarks are kept on runs at about half speed at some
hours (its neighbours' load): one round of benchmarks measured 272 ns for the
loop below and a later one 150, and the pool's rows went from 0.95 to 1.7 M/s
within a session with no code changed. This is a snapshot (the best of 20
passes) taken when the benchmark starts: it says how fast the machine can
run then, not that it kept that speed through the rows (a 140 ns snapshot
once preceded rows at half speed). Side-by-side ratios are the reliable part.
"""

from __future__ import annotations

import time


def calibrate() -> float:
    """ns for a bare Python loop body of three memoryview reads (best of 20 passes
    over 1024 items): lower is a faster machine."""
    w = memoryview(bytearray(4 * 1100 * 64)).cast("I")
    ms = list(range(1, 1025))
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter_ns()
        for m in ms:
            b = m << 6
            _x, _y, _z = w[b + 14], w[b + 8], w[b + 7]
        best = min(best, (time.perf_counter_ns() - t0) / len(ms))
    return best
