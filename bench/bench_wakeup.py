"""Benchmark: what waking up costs on this machine, and what the timer slack does.

Light load is a chain of sleeps and wakeups: a role sleeps in a poll, a
message wakes it, it runs its share of a packet's path and sleeps again. On
a virtual machine the same work can cost several times more CPU right after
a sleep than in a busy loop (the vCPU halts while idle; caches, branch
predictors and TLBs are cold or were used by someone else). This script
measures it on one piece of real work, the NIC's turn at a set rate (its
internal source offers 2 frames: classify-free DMA into the rx ring,
moderation), timed in CPU time of the calling thread:

  - after no pause, and after sleeping 20 us, 100 us and 1 ms between turns;
  - the same with `--spin`: a SCHED_IDLE busy loop on every CPU (they yield
    to any other task at once) keeps the vCPUs from halting, which separates
    the halt's share from the rest.

It also prints the real length of a 50 us sleep under Linux's default timer
slack (50 us) and under the 1 us slack the roles set (`sched.set_timer_slack`).

    python bench/bench_wakeup.py [--runs 5] [--turns 2000] [--spin]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.runtime.config import RunConfig
from dispatch.runtime.sched import set_timer_slack
from dispatch.runtime.workload import template_frames
from nicemu.internal import InternalSource
from nicemu.nic import Nic, NicConfig

GAPS_S = (0.0, 20e-6, 100e-6, 1e-3)
SPIN = ("import os, time; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
        "end = time.monotonic() + {s}\nwhile time.monotonic() < end: pass")


def turns(gap: float, n: int, src: InternalSource, nic: Nic, host: MbufPool) -> float:
    """Median CPU microseconds of one NIC turn (2 frames offered) after `gap` s asleep."""
    rx = nic.rings.rx[0]
    irq = nic.rings.irq[0]
    xs = []
    for _ in range(n):
        if gap:
            time.sleep(gap)
        c0 = time.thread_time_ns()
        src.produce(time.monotonic_ns(), 2)
        xs.append(time.thread_time_ns() - c0)
        hs = rx.pop_array()  # the host's side, untimed: take, free, re-arm
        host.adopt(hs)
        host.freem_batch(hs)
        irq.rearm()
    return statistics.median(xs) / 1e3


def sleep_len(slack_ns: int, n: int = 300) -> float:
    """Median real length (us) of time.sleep(50 us) under the given timer slack."""
    set_timer_slack(slack_ns)
    xs = []
    for _ in range(n):
        t = time.perf_counter_ns()
        time.sleep(50e-6)
        xs.append(time.perf_counter_ns() - t)
    return statistics.median(xs) / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--turns", type=int, default=2000, help="turns per gap and run "
                    "(a quarter of it for the 1 ms gap)")
    ap.add_argument("--spin", action="store_true",
                    help="also measure with a SCHED_IDLE busy loop on every CPU")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {platform.platform()}")
    name = f"demu-bench-wake-{os.getpid()}"
    cfg = PoolConfig(nmbufs=8192, nclusters=4096, njumbop=0, njumbo9=0, njumbo16=0)
    modes = [False, True] if args.spin else [False]
    with MbufPool.create(name, cfg, owner="nic") as pool:
        nic = Nic(pool, NicConfig())
        host = MbufPool.attach(name, owner="host")
        try:
            src = InternalSource(nic, template_frames(RunConfig()), batch=32)
            turns(0.0, 500, src, nic, host)  # warm: kernels loaded, caches filled
            res: dict[tuple[bool, float], list[float]] = {(m, g): [] for m in modes
                                                         for g in GAPS_S}
            for _ in range(args.runs):  # interleaved, so drift hits every case alike
                for spin in modes:
                    spinners = []
                    if spin:
                        est = sum(g * args.turns for g in GAPS_S) + 5
                        spinners = [subprocess.Popen([sys.executable, "-c",
                                                      SPIN.format(s=est)])
                                    for _ in range(os.cpu_count() or 1)]
                        time.sleep(0.2)
                    try:
                        for g in GAPS_S:
                            n = args.turns if g < 1e-3 else max(50, args.turns // 4)
                            res[(spin, g)].append(turns(g, n, src, nic, host))
                    finally:
                        for p in spinners:
                            p.kill()
                            p.wait()
        finally:
            nic.close()
            host.close()
    print(f"NIC turn (2 frames offered), CPU us per turn, median of {args.runs} runs "
          "[min, max]:")
    for spin in modes:
        for g in GAPS_S:
            xs = res[(spin, g)]
            label = f"after {g * 1e6:5.0f} us asleep" + (", vCPUs kept busy" if spin else "")
            print(f"  {label:40s} {statistics.median(xs):7.1f}  "
                  f"[{min(xs):.1f}, {max(xs):.1f}]")
    print("time.sleep(50 us) lasts, median us: "
          f"slack 50 us (Linux default) {sleep_len(50_000):.1f}, "
          f"slack 1 us (the roles') {sleep_len(1_000):.1f}")


if __name__ == "__main__":
    main()
