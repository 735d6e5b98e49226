"""Benchmark the emulated NIC's receive path and its internal source.

Prints ns per frame for ``Nic.receive`` (64- and 1518-byte frames on the wire,
i.e. 60 and 1514 bytes here; batches of 1 and 32; rxcsum off and on) and the
internal source's frames per second, each the median of 5 runs with min and
max.  The receive figure includes everything the NIC does per batch: RSS,
checksum verification, the DMA copy, pkthdr writes, ring publication,
moderation and its buffer refills (``getcl_batch``); the host side (harvest
and free) runs between batches and is not timed.

    python bench/bench_nic.py [--frames N] [--pool NAME]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.packet.frames import build_udp_frame
from nicemu.internal import InternalSource
from nicemu.nic import Nic, NicConfig, RxQueueHost

RUNS = 5


def frames_of(size: int, flows: int = 64) -> list[bytes]:
    return [build_udp_frame(src_ip=f"10.0.0.{f + 1}", dst_ip="10.1.0.1", src_port=1000 + f,
                            dst_port=9, payload=b"x" * (size - 42)) for f in range(flows)]


def bench_receive(pool: MbufPool, *, size: int, batch: int, rxcsum: bool, total: int) -> float:
    """ns per frame of Nic.receive for one run."""
    nic = Nic(pool, NicConfig(rxcsum=rxcsum, ring_size=1024))
    try:
        host = RxQueueHost(nic.rings, 0, pool)
        fr = frames_of(size)
        batches = [fr[i : i + batch] for i in range(0, len(fr), batch)]
        spent = 0
        done = 0
        now = 0
        while done < total:
            for b in batches:
                now += 1000
                t0 = time.perf_counter_ns()
                nic.receive(b, now)
                spent += time.perf_counter_ns() - t0
                done += len(b)
                if host.pending() >= 512:  # drain, as an ithread would
                    pool.freem_batch(host.harvest_array())
        pool.freem_batch(host.harvest_array())
        return spent / done
    finally:
        nic.close()


def bench_internal(pool: MbufPool, *, total: int, batch: int = 32) -> float:
    """Frames per second the internal source delivers (host draining in the same loop)."""
    nic = Nic(pool, NicConfig(ring_size=1024))
    try:
        host = RxQueueHost(nic.rings, 0, pool)
        src = InternalSource(nic, frames_of(60, 64), batch=batch)
        now = 0
        spent = 0
        while src.offered < total:
            now += 1000
            a = time.perf_counter_ns()
            src.produce(now)
            spent += time.perf_counter_ns() - a
            if src.offered % 512 == 0:
                pool.freem_batch(host.harvest_array())
        pool.freem_batch(host.harvest_array())
        return src.offered / (spent / 1e9)
    finally:
        nic.close()


def summary(xs: list[float], fmt: str = "9.1f") -> str:
    return (f"median {statistics.median(xs):{fmt}}  min {min(xs):{fmt}}  "
            f"max {max(xs):{fmt}}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=40_000, help="frames per run (batch 32)")
    ap.add_argument("--pool", default=f"demu-bench-nic-{os.getpid()}")
    args = ap.parse_args()
    cfg = PoolConfig(nmbufs=8192, nclusters=4096, njumbop=16, njumbo9=4, njumbo16=4)
    with MbufPool.create(args.pool, cfg, owner="nic") as pool:
        print(f"Nic.receive, ns per frame ({RUNS} runs; timed: the NIC's work only)")
        for size in (60, 1514):
            for batch in (1, 32):
                for rxcsum in (False, True):
                    total = args.frames if batch > 1 else args.frames // 8
                    xs = [bench_receive(pool, size=size, batch=batch, rxcsum=rxcsum,
                                        total=total) for _ in range(RUNS)]
                    print(f"  {size + 4:5d} B on the wire  batch {batch:2d}  "
                          f"rxcsum {'on ' if rxcsum else 'off'}  {summary(xs)}")
        xs = [bench_internal(pool, total=args.frames * 2) / 1e6 for _ in range(RUNS)]
        print(f"internal source, 64 B, batch 32, Mpps (NIC time only)  {summary(xs, '6.3f')}")
        assert pool.audit().whole


if __name__ == "__main__":
    main()
