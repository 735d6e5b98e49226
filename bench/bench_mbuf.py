"""Benchmark: mbuf pool alloc+free operations per second.

Prints, as the median of N runs with min and max:
  - single process, one at a time: m_get + m_free, and m_getcl + m_free;
  - single process, batched by 32: getcl_batch + freem_batch;
  - cross-process: process A allocates (m_getcl, mbuf + 2k cluster) and sends
    the handles over ZeroMQ ipc:// to process B, which frees them; batched
    by 1 and by 32 handles per message. B returns a credit every 64 batches
    so A never runs the pool dry (as a ring's size bounds a real NIC);
  - the same ZeroMQ pipeline with no pool work at all (the bound of the
    ZeroMQ rows), and the pool's cross-process cost over a shared-memory
    ring instead of ZeroMQ.

An "operation" is one buffer allocated and freed. Usage:
    python bench/bench_mbuf.py [--runs 5] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from array import array

import zmq
from calibration import calibrate

from dispatch.mbuf import MbufPool, PoolConfig

CONFIG = PoolConfig(nmbufs=65536, nclusters=32768, njumbop=16, njumbo9=4, njumbo16=4,
                    bucket=256)
CREDIT_EVERY = 64
#: CPU microseconds per operation of the last cross-process case: (A, B). On a
#: shared machine the wall-clock rate depends on who else runs; CPU per op does
#: not (much), and 1 / max(A, B) is the rate two idle cores would reach.
LAST_CPU: list[tuple[float, float]] = []


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _record_cpu(child: subprocess.Popen, a_cpu: float, ops: int) -> None:
    """After the child exited: A's CPU and B's (which B printed as "cpu SECONDS",
    counted from its first message) per op, in microseconds."""
    out = child.stdout.read() if child.stdout else ""
    b_cpu = float(out.split("cpu", 1)[1]) if "cpu" in out else float("nan")
    LAST_CPU.append((a_cpu / max(ops, 1) * 1e6, b_cpu / max(ops, 1) * 1e6))
WINDOW = 256  # batches in flight


def single_get(pool: MbufPool, seconds: float) -> float:
    n = 0
    get, free = pool.get, pool.free
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(10000):
            free(get())
        n += 10000
        if time.perf_counter() >= end:
            break
    return n / (time.perf_counter() - t0)


def single_getcl(pool: MbufPool, seconds: float) -> float:
    n = 0
    getcl, free = pool.getcl, pool.free
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(10000):
            free(getcl())
        n += 10000
        if time.perf_counter() >= end:
            break
    return n / (time.perf_counter() - t0)


def single_batch(pool: MbufPool, seconds: float, batch: int = 32) -> float:
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(500):
            pool.freem_batch(pool.getcl_batch(batch))
        n += 500 * batch
        if time.perf_counter() >= end:
            break
    return n / (time.perf_counter() - t0)


def freer(pool_name: str, endpoint: str, credit_ep: str) -> None:
    """Process B: receive handle batches, free them, return credit."""
    pool = MbufPool.attach(pool_name, owner="freer")
    ctx = zmq.Context()
    rx = ctx.socket(zmq.PULL)
    rx.connect(endpoint)
    tx = ctx.socket(zmq.PUSH)
    tx.connect(credit_ep)
    tx.send(b"ready")  # the allocator starts its clock on this
    got = 0
    c0 = None
    while True:
        msg = rx.recv()
        if c0 is None:
            c0 = _self_cpu()
        if msg == b"stop":
            break
        hs = memoryview(msg).cast("I")
        if len(hs) == 1:
            pool.free(hs[0])
        else:
            pool.freem_batch(hs)
        got += 1
        if got % CREDIT_EVERY == 0:
            tx.send(b"c")
    print(f"cpu {_self_cpu() - (c0 or 0)}", flush=True)
    tx.send(b"done")
    rx.close()
    tx.close(linger=1000)
    ctx.term()
    pool.close()


def cross(pool: MbufPool, seconds: float, batch: int, tmp: str) -> float:
    endpoint = f"ipc://{tmp}/bench-mbuf-data"
    credit_ep = f"ipc://{tmp}/bench-mbuf-credit"
    ctx = zmq.Context()
    tx = ctx.socket(zmq.PUSH)
    tx.bind(endpoint)
    credits = ctx.socket(zmq.PULL)
    credits.bind(credit_ep)
    child = subprocess.Popen([sys.executable, __file__, "--freer", pool.name, endpoint,
                              credit_ep], stdout=subprocess.PIPE, text=True)
    try:
        in_flight = 0
        sent = 0
        assert credits.recv() == b"ready"  # B is up: only now start the clock
        t0 = time.perf_counter()
        cpu0 = _self_cpu()
        end = t0 + seconds
        while True:
            if in_flight >= WINDOW:
                credits.recv()
                in_flight -= CREDIT_EVERY
            if batch == 1:
                m = pool.getcl()
                if not m:
                    credits.recv()
                    in_flight -= CREDIT_EVERY
                    continue
                tx.send(array("I", (m,)).tobytes())
            else:
                hs = pool.getcl_batch(batch)
                if len(hs) < batch:
                    pool.freem_batch(hs)
                    credits.recv()
                    in_flight -= CREDIT_EVERY
                    continue
                tx.send(hs.astype("uint32").tobytes())
            in_flight += 1
            sent += 1
            if sent % 256 == 0 and time.perf_counter() >= end:
                break
        tx.send(b"stop")
        while credits.recv() != b"done":
            pass
        elapsed = time.perf_counter() - t0
        a_cpu = _self_cpu() - cpu0
    finally:
        child.wait(timeout=30)
        tx.close(linger=0)
        credits.close(linger=0)
        ctx.term()
    _record_cpu(child, a_cpu, sent * batch)
    assert pool.audit().whole, pool.audit()
    return sent * batch / elapsed


def bare_sink(endpoint: str, credit_ep: str) -> None:
    """Process B of the bare case: receive handle batches and do nothing with them."""
    ctx = zmq.Context()
    rx = ctx.socket(zmq.PULL)
    rx.connect(endpoint)
    tx = ctx.socket(zmq.PUSH)
    tx.connect(credit_ep)
    tx.send(b"ready")  # the allocator starts its clock on this
    got = 0
    c0 = None
    while True:
        msg = rx.recv()
        if c0 is None:
            c0 = _self_cpu()
        if msg == b"stop":
            break
        memoryview(msg).cast("I")
        got += 1
        if got % CREDIT_EVERY == 0:
            tx.send(b"c")
    print(f"cpu {_self_cpu() - (c0 or 0)}", flush=True)
    tx.send(b"done")
    rx.close()
    tx.close(linger=1000)
    ctx.term()


def bare_zmq(seconds: float, batch: int, tmp: str) -> float:
    """The same ZeroMQ pipeline with no pool at all: the same 32 handles sent again
    and again. What this costs bounds the cross-process rows from above."""
    endpoint = f"ipc://{tmp}/bench-mbuf-bare"
    credit_ep = f"ipc://{tmp}/bench-mbuf-bare-credit"
    ctx = zmq.Context()
    tx = ctx.socket(zmq.PUSH)
    tx.bind(endpoint)
    credits = ctx.socket(zmq.PULL)
    credits.bind(credit_ep)
    child = subprocess.Popen([sys.executable, __file__, "--bare-sink", endpoint, credit_ep],
                             stdout=subprocess.PIPE, text=True)
    payload = array("I", range(1, batch + 1)).tobytes()
    try:
        in_flight = sent = 0
        assert credits.recv() == b"ready"  # B is up: only now start the clock
        t0 = time.perf_counter()
        cpu0 = _self_cpu()
        end = t0 + seconds
        while True:
            if in_flight >= WINDOW:
                credits.recv()
                in_flight -= CREDIT_EVERY
            tx.send(payload)
            in_flight += 1
            sent += 1
            if sent % 256 == 0 and time.perf_counter() >= end:
                break
        tx.send(b"stop")
        while credits.recv() != b"done":
            pass
        elapsed = time.perf_counter() - t0
        a_cpu = _self_cpu() - cpu0
    finally:
        child.wait(timeout=30)
        tx.close(linger=0)
        credits.close(linger=0)
        ctx.term()
    _record_cpu(child, a_cpu, sent * batch)
    return sent * batch / elapsed


def ring_freer(pool_name: str, ring_name: str) -> None:
    """Process B over a shared-memory SPSC ring: pop handle batches, free them."""
    from nicemu.ring import RingSet

    pool = MbufPool.attach(pool_name, owner="freer")
    rings = RingSet.attach(ring_name)
    ring = rings.rx[0]
    stop = rings.tx[0]
    c0 = None
    while True:
        hs = ring.pop_array(256)
        if len(hs):
            if c0 is None:
                c0 = _self_cpu()
            pool.freem_batch(hs)
        elif len(stop):  # the allocator's "done" (a handle-less tx post)
            break
    print(f"cpu {_self_cpu() - (c0 or 0)}", flush=True)
    rings.close()
    pool.close()


def cross_ring(pool: MbufPool, seconds: float, batch: int) -> float:
    """Allocate in A, free in B, handles passed through a shared-memory ring:
    the pool's own cross-process cost, without ZeroMQ's per-message cost."""
    from nicemu.ring import RingSet

    ring_name = f"{pool.name}.ring"
    rings = RingSet.create(ring_name, rx_queues=1, tx_queues=1, rx_size=8192, tx_size=8)
    child = subprocess.Popen([sys.executable, __file__, "--ring-freer", pool.name, ring_name],
                             stdout=subprocess.PIPE, text=True)
    try:
        ring = rings.rx[0]
        sent = 0
        hs = pool.getcl_batch(1)  # B is up once it has taken this: then start the clock
        ring.push_many(hs)
        while len(ring):
            time.sleep(0.001)
        t0 = time.perf_counter()
        cpu0 = _self_cpu()
        end = t0 + seconds
        while True:
            hs = pool.getcl_batch(batch) if batch > 1 else _one(pool)
            if len(hs) < batch:
                pool.freem_batch(hs)
                continue
            while ring.push_many(hs) == 0:
                pass
            sent += batch
            if sent % 4096 < batch and time.perf_counter() >= end:
                break
        while len(ring):
            time.sleep(0.0001)
        while pool.in_use():
            time.sleep(0.0001)
        elapsed = time.perf_counter() - t0
        a_cpu = _self_cpu() - cpu0
        rings.tx[0].push_many([0])
        child.wait(timeout=30)
    finally:
        rings.close()
    _record_cpu(child, a_cpu, sent)
    return sent / elapsed


def _one(pool: MbufPool) -> list[int]:
    m = pool.getcl()
    return [m] if m else []


def fmt(name: str, xs: list[float]) -> str:
    return (f"{name:44s} {statistics.median(xs) / 1e6:7.3f} M/s "
            f"[min {min(xs) / 1e6:.3f}, max {max(xs) / 1e6:.3f}]")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--freer":
        freer(*sys.argv[2:5])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--bare-sink":
        bare_sink(*sys.argv[2:4])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--ring-freer":
        ring_freer(*sys.argv[2:4])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    import tempfile

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {platform.platform()}")
    print(f"median of {args.runs} runs, {args.seconds:.1f} s each; an op = alloc + free")
    print(f"calibration: {calibrate():.0f} ns per loop of 3 pool-header reads (machine "
          "speed now: bench/calibration.py)")
    name = f"demu-bench-{os.getpid()}"
    with tempfile.TemporaryDirectory() as tmp, MbufPool.create(name, CONFIG,
                                                               owner="alloc") as pool:
        cases = [
            ("single process, m_get+m_free, one at a time", lambda: single_get(pool, args.seconds)),
            ("single process, m_getcl+m_free, one at a time",
             lambda: single_getcl(pool, args.seconds)),
            ("single process, getcl+free batched by 32", lambda: single_batch(pool, args.seconds)),
            ("cross-process m_getcl A -> free B, batch 1",
             lambda: cross(pool, args.seconds, 1, tmp)),
            ("cross-process m_getcl A -> free B, batch 32",
             lambda: cross(pool, args.seconds, 32, tmp)),
            ("  bare ZeroMQ, 32 handles a message, no pool",
             lambda: bare_zmq(args.seconds, 32, tmp)),
            ("  same over a shared-memory ring, batch 1",
             lambda: cross_ring(pool, args.seconds, 1)),
            ("  same over a shared-memory ring, batch 32",
             lambda: cross_ring(pool, args.seconds, 32)),
        ]
        results: dict[str, list[float]] = {n: [] for n, _ in cases}
        cpus: dict[str, list[tuple[float, float]]] = {n: [] for n, _ in cases}
        for _ in range(args.runs):  # interleaved, so drift hits every case alike
            for n, fn in cases:
                LAST_CPU.clear()
                results[n].append(fn())
                cpus[n].extend(LAST_CPU)
        for n, _ in cases:
            line = fmt(n, results[n])
            if cpus[n]:  # cross-process: CPU per op on each side (robust to a busy machine)
                a = statistics.median(x for x, _ in cpus[n])
                b = statistics.median(y for _, y in cpus[n])
                line += (f"  cpu/op A {a:.2f} us, B {b:.2f} us"
                         f" (two idle cores: {1 / max(a, b):.2f} M/s)")
            print(line)


if __name__ == "__main__":
    main()
