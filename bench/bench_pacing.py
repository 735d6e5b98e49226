"""Benchmark: how accurately the Pacer holds a rate, and how fast RSS hashes.

Pacing: a constant-rate schedule at 10k, 100k, 200k and 500k pps, batches of
32, released with no send work and with a simulated per-frame cost (a busy
wait); each case is run 5 times for ``--seconds`` and the achieved/target
ratio printed as median [min, max], with the worst lag.  RSS: hashes per
second of TCP/IPv4 4-tuples (12-byte inputs), scalar and numpy-batched.

    python bench/bench_pacing.py [--seconds 1.0] [--runs 5] [--cost-ns 1000]
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nicemu.rss import Rss, pack_inputs  # noqa: E402
from nicemu.trafgen.dist import Constant  # noqa: E402
from nicemu.trafgen.pacing import Batch, Pacer, PacerStats  # noqa: E402

RATES = (10_000, 100_000, 200_000, 500_000)


def _busy(ns: int) -> None:
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


def pace_once(rate: int, seconds: float, batch: int, cost_ns: int) -> PacerStats:
    pacer = Pacer(Constant(rate), batch=batch)

    def send(b: Batch) -> None:
        if cost_ns:
            _busy(cost_ns * b.count)

    return pacer.run(send, duration_s=seconds)


def bench_pacing(seconds: float, runs: int, batch: int, cost_ns: int) -> None:
    print(f"Pacer: Constant rate, batch {batch}, {runs} runs x {seconds:g} s each;")
    print("ratio = achieved/target pps, median [min, max]; on time = batches released < 100 us")
    print("late (all runs); max lag = worst release lateness; behind = runs that were ever")
    print("more than 1 ms behind (then caught up, unless the ratio shows otherwise)")
    print(f"{'rate':>9} {'work/frame':>10}  {'ratio median [min, max]':>26}  {'on time':>8}  "
          f"{'max lag':>9}  {'batch':>5}  behind")
    for cost in (0, cost_ns):
        for rate in RATES:
            stats = [pace_once(rate, seconds, batch, cost) for _ in range(runs)]
            ratios = [s.ratio for s in stats]
            lag = max(s.max_lag_ns for s in stats)
            behind = sum(s.fell_behind for s in stats)
            on_time = sum(sum(s.lag_buckets[:2]) for s in stats) / sum(s.batches for s in stats)
            print(
                f"{rate:>9,} {f'{cost} ns':>10}  {statistics.median(ratios):>8.4f} "
                f"[{min(ratios):.4f}, {max(ratios):.4f}]  {on_time:>8.2%}  {lag / 1000:>7.0f}us  "
                f"{statistics.mean(s.mean_batch for s in stats):>5.1f}  {behind}/{runs}"
            )


def bench_rss(n: int) -> None:
    rng = np.random.default_rng(1)
    src = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    dst = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    sp = rng.integers(0, 65536, n)
    dp = rng.integers(0, 65536, n)
    r = Rss(queues=8)
    inputs = pack_inputs(src, dst, sp, dp)
    raw = [row.tobytes() for row in inputs]

    t = time.perf_counter()
    for b in raw:
        r.toeplitz(b)
    scalar_raw = n / (time.perf_counter() - t)

    m = min(n, 50_000)
    tuples = [
        (ipaddress.IPv4Address(int(src[i])), ipaddress.IPv4Address(int(dst[i])), int(sp[i]),
         int(dp[i]))
        for i in range(m)
    ]
    t = time.perf_counter()
    for s, d, a, b in tuples:
        r.hash_tuple(s, d, a, b)
    scalar_tuple = m / (time.perf_counter() - t)

    t = time.perf_counter()
    hashes = r.hash_batch(inputs)
    r.queues_of(hashes)
    batched = n / (time.perf_counter() - t)

    t = time.perf_counter()
    r.hash_batch(pack_inputs(src, dst, sp, dp))
    batched_pack = n / (time.perf_counter() - t)

    print(f"RSS Toeplitz, TCP/IPv4 4-tuple (12-byte input), {n:,} flows:")
    print(f"  scalar Rss.toeplitz(bytes):          {scalar_raw:>14,.0f} hashes/s")
    print(f"  scalar Rss.hash_tuple(ipaddress...): {scalar_tuple:>14,.0f} hashes/s")
    print(f"  batched Rss.hash_batch + queues_of:  {batched:>14,.0f} hashes/s")
    print(f"  batched incl. pack_inputs:           {batched_pack:>14,.0f} hashes/s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="length of each run (default 1)")
    ap.add_argument("--runs", type=int, default=5, help="runs per case (default 5)")
    ap.add_argument("--batch", type=int, default=32, help="frames per batch (default 32)")
    ap.add_argument("--cost-ns", type=int, default=1000,
                    help="simulated send work per frame in ns (default 1000)")
    ap.add_argument("--rss-flows", type=int, default=1_000_000, help="flows for the RSS bench")
    args = ap.parse_args(argv)
    bench_pacing(args.seconds, args.runs, args.batch, args.cost_ns)
    print()
    bench_rss(args.rss_flows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
