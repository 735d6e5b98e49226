"""Benchmark the Internet checksum variants of dispatch.packet.checksum.

Prints nanoseconds per packet (median of 5 runs, with min and max) for: a
naive Python loop (the RFC 1071 reference), ``in_cksum`` on bytes and on a
memoryview (``int.from_bytes``), ``l4_checksum`` (with pseudo-header),
``cksum_batch`` / ``verify_batch`` (numpy) at the given batch size, and the
RFC 1624 incremental TTL update.  Run: ``python bench/bench_checksum.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from dispatch.packet.checksum import (
    cksum_batch,
    in_cksum,
    incr_update_ttl,
    l4_checksum,
    verify_batch,
)


def naive_cksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def measure(fn: Callable[[], object], pkts_per_call: int, target_s: float, runs: int) -> list[float]:
    """ns per packet for ``runs`` runs, each of about ``target_s`` seconds."""
    fn()
    n = 1
    while True:  # calibrate
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt > target_s / 4:
            break
        n *= 2
    n = max(1, int(n * target_s / max(dt, 1e-9)))
    out = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        out.append((time.perf_counter_ns() - t0) / (n * pkts_per_call))
    return out


def cases_for(size: int, nbatch: int) -> list[tuple[str, Callable[[], object], int]]:
    """(name, zero-argument callable, packets per call) for one packet size."""
    src, dst = os.urandom(4), os.urandom(4)
    pkt = os.urandom(size)
    mv = memoryview(bytearray(pkt))
    batch = [os.urandom(size) for _ in range(nbatch)]
    mvs = [memoryview(b) for b in batch]
    inits = [0x1234] * nbatch
    return [
        ("naive python loop", lambda: naive_cksum(pkt), 1),
        ("in_cksum(bytes)", lambda: in_cksum(pkt), 1),
        ("in_cksum(memoryview)", lambda: in_cksum(mv), 1),
        ("l4_checksum (v4 pseudo-header)", lambda: l4_checksum(src, dst, 6, pkt), 1),
        (f"cksum_batch x{nbatch}", lambda: cksum_batch(batch), nbatch),
        (f"cksum_batch x{nbatch} mv+initials", lambda: cksum_batch(mvs, inits), nbatch),
        (f"verify_batch x{nbatch}", lambda: verify_batch(batch), nbatch),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 576, 1500])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.2, help="per run")
    args = ap.parse_args()

    print(f"{'variant':<34}{'size':>6}{'median ns/pkt':>15}{'min':>10}{'max':>10}")
    for size in args.sizes:
        for name, fn, per in cases_for(size, args.batch):
            secs = args.seconds / 10 if name.startswith("naive") else args.seconds
            r = measure(fn, per, secs, args.runs)
            print(f"{name:<34}{size:>6}{statistics.median(r):>15.0f}{min(r):>10.0f}{max(r):>10.0f}")
    r = measure(lambda: incr_update_ttl(0xB1E6, 64, 6), 1, args.seconds, args.runs)
    name = "incr_update_ttl (RFC 1624)"
    print(f"{name:<34}{'-':>6}{statistics.median(r):>15.0f}{min(r):>10.0f}{max(r):>10.0f}")


if __name__ == "__main__":
    main()
