"""Benchmark: each dispatch model's peak delivered pps and light-load latency,
side by side with a bare ZeroMQ pipeline of the same shape (the design's limit).

Peak: 64-byte UDP from the NIC's internal source at full speed (--rate max),
batch 1, 32 and 128, rx checksum offload on. `--sched batch` runs every process
of both (roles, bare hops, bare source) under SCHED_BATCH; `--flow-control`
paces the internal line by the host's queues (so deferred is measured at its
peak rather than in receive livelock), `--qlimit` sets the netisr queue limit. Light load: 10 kpps, one-way latency
p50 / p99 from the NIC's DMA stamp to the user thread's receive. The bare
pipeline moves pool handles through the same processes and queues
(source -> ithread [-> netisr] -> user, the user freeing them) with no stack
work at all. Runs are interleaved; medians of N runs with min and max.

    python bench/bench_runtime.py [--runs 3] [--seconds 2] [--sched batch]
                                  [--flow-control] [--qlimit 1024]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import zmq

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.runtime import sched
from dispatch.runtime.config import SCHEDS, RunConfig
from dispatch.runtime.controller import run_sync
from dispatch.runtime.placement import MODELS


def bare_stage(role: str, pool_name: str, rx: str, tx: str, batch: int, ready: str,
               policy: str) -> None:
    """One hop of the bare pipeline: forward handle batches, or (user) free them."""
    pool = MbufPool.attach(pool_name, owner=role)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(rx)
    push = None
    if tx != "-":
        push = ctx.socket(zmq.PUSH)
        push.connect(tx)
    up = ctx.socket(zmq.PUSH)
    up.connect(ready)
    sched.apply(policy)  # every thread, ZeroMQ's I/O thread included (as a role does)
    up.send(b"ready")  # the source starts its clock once every hop is up (imports take time)
    # runs until the source stops it by PID (SIGTERM): a "stop" message sent down a
    # PUSH that then closes can be lost with the queue's tail (DESIGN.md, s. 10)
    while True:
        msg = pull.recv()
        if push is not None:
            pool.adopt(memoryview(msg).cast("I"))
            push.send(msg)
        else:
            pool.freem_batch(memoryview(msg).cast("I"))


def bare_pipeline(hops: list[str], batch: int, seconds: float, policy: str = "other") -> float:
    """Allocate mbuf+cluster batches and push their handles through `hops`; pps freed."""
    name = f"demu-benchrt-{os.getpid()}"
    with tempfile.TemporaryDirectory() as tmp, MbufPool.create(
            name, PoolConfig(nmbufs=65536, nclusters=32768, njumbop=0, njumbo9=0, njumbo16=0),
            owner="source") as pool:
        eps = [f"ipc://{tmp}/hop{i}" for i in range(len(hops))]
        ctx = zmq.Context()
        ready = ctx.socket(zmq.PULL)
        ready_ep = f"ipc://{tmp}/ready"
        ready.bind(ready_ep)
        procs = []
        for i, role in enumerate(hops):
            tx = eps[i + 1] if i + 1 < len(hops) else "-"
            procs.append(subprocess.Popen([sys.executable, __file__, "--bare-stage", role,
                                           name, eps[i], tx, str(batch), ready_ep, policy]))
        push = ctx.socket(zmq.PUSH)
        push.connect(eps[0])
        was = sched.policy_name(0)
        was = was if was in sched.POLICIES else "other"
        sched.apply(policy)  # the source too, for the run (it is this process)
        for _ in hops:
            ready.recv()
        ready.close(linger=0)
        time.sleep(0.05)  # (their connects complete)
        sent = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            hs = pool.getcl_batch(batch)
            if len(hs) < batch:  # the consumers are behind: the pool bounds the pipeline
                pool.freem_batch(hs)
                time.sleep(0.0001)
                continue
            push.send(hs.astype("uint32").tobytes())
            sent += batch
        # delivered = freed by the last hop: wait until every handle has come back
        deadline = time.perf_counter() + 60
        while pool.in_use() and time.perf_counter() < deadline:
            time.sleep(0.001)
        elapsed = time.perf_counter() - t0
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        push.close(linger=0)
        ctx.term()
        sched.apply(was)
        assert pool.in_use() == 0, "the bare pipeline lost handles"
        return sent / elapsed


def model_run(model: str, batch: int, seconds: float, rate: float, **tuning: object) -> dict:
    cfg = RunConfig(model=model, batch=batch, duration=seconds, rate=rate,
                    netisr=1, users=1, **tuning).validate()  # type: ignore[arg-type]
    doc = run_sync(cfg)
    assert doc["conservation"]["ok"], doc["conservation"]["missing"]
    return doc


def cpu_per_packet(doc: dict) -> float:
    """CPU microseconds per delivered packet, summed over every role: on a machine
    shared with other work this moves far less than the rate does."""
    cpu = sum(r["cpu_user_s"] + r["cpu_sys_s"] for r in doc["roles"].values()
              if "cpu_user_s" in r)
    return cpu / max(doc["delivered"], 1) * 1e6


def fmt(xs: list[float], unit: str = "kpps", scale: float = 1e3) -> str:
    return (f"{statistics.median(xs) / scale:8.1f} {unit} "
            f"[{min(xs) / scale:.1f}, {max(xs) / scale:.1f}]")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--bare-stage":
        role, name, rx, tx, batch, ready, policy = sys.argv[2:9]
        bare_stage(role, name, rx, tx, int(batch), ready, policy)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--sched", default="other", choices=SCHEDS,
                    help="every process's scheduling policy, bare pipeline and roles alike")
    ap.add_argument("--flow-control", action="store_true",
                    help="peak runs: the internal line paced by the host's queues")
    ap.add_argument("--qlimit", type=int, default=RunConfig.qlimit)
    args = ap.parse_args()
    tuning = {"sched": args.sched, "qlimit": args.qlimit}
    models = args.models.split(",")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {platform.platform()}")
    print(f"median of {args.runs} interleaved runs [min, max], {args.seconds:.0f} s each; "
          f"64-byte UDP, internal source, rxcsum on; sched {args.sched}, qlimit "
          f"{args.qlimit}, flow control {'on' if args.flow_control else 'off'} (peak runs)")
    peak: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    light: dict[str, list[tuple[float, float]]] = {m: [] for m in models}
    for _ in range(args.runs):
        for batch in (128, 32, 1):
            peak.setdefault(("bare direct-shape", batch), []).append(
                bare_pipeline(["ithread", "user"], batch, args.seconds, args.sched))
            peak.setdefault(("bare deferred-shape", batch), []).append(
                bare_pipeline(["ithread", "netisr", "user"], batch, args.seconds, args.sched))
            for m in models:
                doc = model_run(m, batch, args.seconds, float("inf"),
                                flow_control=args.flow_control, **tuning)
                peak.setdefault((m, batch), []).append(doc["throughput_pps"])
                cpu.setdefault((m, batch), []).append(cpu_per_packet(doc))
        for m in models:
            doc = model_run(m, 32, args.seconds, 10_000.0, **tuning)
            e2e = doc["latency_us"]["e2e"]
            light[m].append((e2e["p50"], e2e["p99"]))
    for batch in (128, 32, 1):
        print(f"\npeak delivered, batch {batch}:")
        base = {"direct": "bare direct-shape", "polling": "bare direct-shape",
                "toe": "bare direct-shape", "deferred": "bare deferred-shape",
                "hybrid": "bare deferred-shape"}
        for key in ("bare direct-shape", "bare deferred-shape", *models):
            xs = peak[(key, batch)]
            ratio = ""
            if key in base:
                ratio = (f"  = {statistics.median(xs) / statistics.median(peak[(base[key], batch)]):.2f}"
                         f" of {base[key]}")
            if (key, batch) in cpu:
                ratio += f"; {statistics.median(cpu[(key, batch)]):.1f} us CPU per packet"
            print(f"  {key:22s} {fmt(xs)}{ratio}")
    print("\nlight load (10 kpps, batch 32), one-way latency DMA -> user receive:")
    for m in models:
        p50 = [a for a, _ in light[m]]
        p99 = [b for _, b in light[m]]
        print(f"  {m:22s} p50 {fmt(p50, 'us', 1)}   p99 {fmt(p99, 'us', 1)}")


if __name__ == "__main__":
    main()
