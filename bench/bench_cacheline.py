"""Benchmark: what the pool's cache-line traffic alone costs across two processes.

Two processes share a region laid out like the pool's mbuf headers (256 bytes
each) and a ring of handles. A (the allocator's part) writes each buffer's
first 34 header words -- three cache lines, as `getcl_batch` does -- and
pushes its handle, 32 at a time; B (the freer's part) pops the handles and,
by mode, touches nothing, reads the first line (as `freem` reads next, ext
and the owner word) or also writes the owner word (as `freem` retags it).
Both sides are compiled (numba), with a Python loop around each batch as the
pool's callers have. Prints buffers per second for each mode, median of N
runs: the ceiling that cache-line transfers alone put on the pool's
cross-process rate, against which `bench_mbuf.py`'s rows can be read.

    python bench/bench_cacheline.py [--runs 3] [--buffers 5000000]
"""

from __future__ import annotations

import argparse
import mmap
import os
import platform
import statistics
import time

import numpy as np
from numba import njit

NBUF = 8192  # buffers cycled through (2 MiB of headers, as a full pool's in-flight set)
RING = 4096
BATCH = 32
MODES = {"none": 0, "read": 1, "write": 2}


@njit(cache=True)
def _produce(hdr, ctl, ring, m, batch):  # type: ignore[no-untyped-def]
    h = ctl[0]
    if h - ctl[8] > RING - batch:
        return m
    for j in range(batch):
        for k in range(34):
            hdr[m, k] = k
        ring[(h + j) % RING] = m
        m = (m + 1) % NBUF
    ctl[0] = h + batch  # (x86 keeps stores in order; the slots are visible first)
    return m


@njit(cache=True)
def _consume(hdr, ctl, ring, mode):  # type: ignore[no-untyped-def]
    t = ctl[8]
    h = ctl[0]
    s = 0
    while t < h:
        m = ring[t % RING]
        if mode >= 1:
            s += hdr[m, 0] + hdr[m, 7]
        if mode == 2:
            hdr[m, 6] = 5
        t += 1
    ctl[8] = t  # (its own cache line: ctl[0] and ctl[8] are 64 bytes apart)
    return t


def one(mode: int, total: int) -> float:
    buf = mmap.mmap(-1, NBUF * 256 + 4096 + RING * 8)
    hdr = np.frombuffer(buf, np.uint32, NBUF * 64, 0).reshape(NBUF, 64)
    ctl = np.frombuffer(buf, np.int64, 16, NBUF * 256)
    ring = np.frombuffer(buf, np.int64, RING, NBUF * 256 + 4096)
    _produce(hdr, ctl, ring, 0, BATCH)  # compile (or load) both before the fork
    _consume(hdr, ctl, ring, mode)
    ctl[:] = 0
    pid = os.fork()
    if pid == 0:
        t = 0
        while t < total:
            t = _consume(hdr, ctl, ring, mode)
        os._exit(0)
    t0 = time.perf_counter()
    m = 0
    while ctl[0] < total:
        m = _produce(hdr, ctl, ring, m, BATCH)
    os.waitpid(pid, 0)
    return total / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--buffers", type=int, default=5_000_000)
    a = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{platform.python_implementation()} {platform.python_version()}")
    print(f"median of {a.runs} runs, {a.buffers} buffers each, batch {BATCH}")
    res: dict[str, list[float]] = {k: [] for k in MODES}
    for _ in range(a.runs):
        for name, mode in MODES.items():
            res[name].append(one(mode, a.buffers))
    for name, xs in res.items():
        print(f"B {name:5s} the header line   {statistics.median(xs) / 1e6:6.2f} M/s "
              f"[min {min(xs) / 1e6:.2f}, max {max(xs) / 1e6:.2f}]")


if __name__ == "__main__":
    main()
