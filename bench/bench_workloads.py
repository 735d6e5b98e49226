"""Benchmark: the tx, rr and forward workloads, side by side (issue #8's figures).

- tx goodput: TCP with 1448-byte messages (and segments), with and without the
  tso and txcsum offloads; UDP datagrams of 1448 bytes for comparison;
- rr: transactions/s and RTT p50 / p99 for direct vs deferred input dispatch,
  at batch 1 and 32 (UDP, 64:64, one transaction outstanding per flow);
- forwarding: 64-byte frames at full speed, direct vs deferred;
- next to the rr figures, a bare ZeroMQ round trip through the same number
  of processes (generator -> nic -> ithread -> user -> nic -> generator, one
  small message, no stack work): the design's limit for an rr round trip.
  Goal: rr RTT p50 under direct dispatch within 1.5x of it.

Runs are interleaved (A B A B ...) so drift on a shared machine cancels;
medians of N runs with min and max. The rr rows also print CPU per
transaction (all threads of every role, or of the relays and the driver):
this VM's slow phases double it for the roles and barely move it for the
relays, so it tells which phase a row's runs fell into.

    python bench/bench_workloads.py [--runs 3] [--seconds 2] [--only tx,rr,forward]
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
from collections.abc import Callable
from typing import Any

import zmq

from dispatch.runtime.config import RunConfig
from dispatch.runtime.controller import run_sync
from dispatch.runtime.procstat import thread_cpu_s

HOPS = ("nic", "ithread", "user", "nic-tx")  # the processes an rr round trip crosses


def relay(rx: str, tx: str) -> None:
    """One process of the bare round trip: receive a message, pass it on."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(rx)
    push = ctx.socket(zmq.PUSH)
    push.connect(tx)
    while True:
        push.send(pull.recv())


def bare_rtt(seconds: float, cpu: list[float] | None = None) -> list[float]:
    """RTTs (us) of one message at a time through len(HOPS) relay processes and back;
    with `cpu`, the CPU seconds the relays and this process spent meanwhile is
    appended to it."""
    with tempfile.TemporaryDirectory() as tmp:
        eps = [f"ipc://{tmp}/h{i}" for i in range(len(HOPS) + 1)]
        procs = [subprocess.Popen([sys.executable, __file__, "--relay", eps[i], eps[i + 1]])
                 for i in range(len(HOPS))]
        try:
            ctx = zmq.Context()
            push = ctx.socket(zmq.PUSH)
            push.connect(eps[0])
            pull = ctx.socket(zmq.PULL)
            pull.bind(eps[-1])
            msg = bytes(64)
            for _ in range(20):  # warm up: every relay bound and connected
                push.send(msg)
                pull.recv()
            rtts = []
            pids = [os.getpid()] + [p.pid for p in procs]
            cpu0 = sum(thread_cpu_s(p) for p in pids)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t = time.monotonic_ns()
                push.send(msg)
                pull.recv()
                rtts.append((time.monotonic_ns() - t) / 1e3)
            if cpu is not None:
                cpu.append(sum(thread_cpu_s(p) for p in pids) - cpu0)
            push.close(0)
            pull.close(0)
            ctx.term()
            return rtts
        finally:
            for p in procs:
                p.terminate()
                p.wait()


def run(**kw: Any) -> dict[str, Any]:
    cfg = RunConfig(source="trafgen", **kw).validate()
    doc = run_sync(cfg)
    if not doc["conservation"]["ok"]:
        raise SystemExit(f"conservation failed: {doc['conservation']['missing']}")
    return doc


def med(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.median(xs):10.1f}  [{min(xs):.1f} .. {max(xs):.1f}]"


def interleave(cases: dict[str, Callable[[], float | tuple[float, ...]]],
               runs: int) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {k: [] for k in cases}
    for _ in range(runs):
        for k, fn in cases.items():
            out[k].append(fn())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--only", default="tx,rr,forward")
    ap.add_argument("--relay", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.relay:
        relay(*a.relay)
        return
    only = set(a.only.split(","))
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; {a.runs} runs of {a.seconds} s, interleaved")
    d = a.seconds
    if "tx" in only:
        def tx(proto: str, **kw: Any) -> Callable[[], float]:
            def go() -> float:
                doc = run(model="direct", workload="tx", proto=proto, rate=float("inf"),
                          duration=d, msg_size=1448, flows=4, **kw)
                f = doc["egress"]["figures"]
                return f.get("tcp_goodput_bps") or f["goodput_bps"]
            return go

        res = interleave({"tcp sw csum": tx("tcp", txcsum=False, tso=False),
                          "tcp txcsum": tx("tcp", txcsum=True, tso=False),
                          "tcp txcsum+tso": tx("tcp", txcsum=True, tso=True),
                          "udp txcsum": tx("udp", txcsum=True)}, a.runs)
        print("\n## tx goodput, 1448-byte messages (Mbit/s at the generator)")
        for k, v in res.items():
            print(f"{k:<18s} {med([x / 1e6 for x in v])}")
    if "rr" in only:
        # CPU per transaction (every role's threads, or the relays' and the driver's):
        # the VM's slow phases double it for the roles and barely touch the relays,
        # so it says which phase a row's runs fell into
        def rr(model: str, batch: int) -> Callable[[], tuple[float, float, float, float]]:
            def go() -> tuple[float, float, float, float]:
                doc = run(model=model, workload="rr", rr="64:64", duration=d, flows=1,
                          batch=batch, rate=float("inf"))
                f = doc["egress"]["figures"]
                cpu = sum(r.get("cpu_user_s", 0.0) + r.get("cpu_sys_s", 0.0)
                          for r in doc["roles"].values())
                return (f["tps"], f["rtt_us"]["p50"], f["rtt_us"]["p99"],
                        cpu * 1e6 / max(1, f["transactions"]))
            return go

        cases: dict[str, Callable[[], Any]] = {}
        for b in (1, 32):
            for m in ("direct", "deferred"):
                cases[f"{m} batch {b}"] = rr(m, b)

        def bare() -> tuple[float, float, float, float]:
            cpu: list[float] = []
            r = sorted(bare_rtt(d, cpu))
            return len(r) / d, r[len(r) // 2], r[int(len(r) * 0.99)], cpu[0] * 1e6 / len(r)

        cases["bare zmq, 4 processes"] = bare
        res = interleave(cases, a.runs)
        print("\n## rr (UDP 64:64, 1 flow): transactions/s, RTT p50, RTT p99, CPU per "
              "transaction (us)")
        for k, v in res.items():
            print(f"{k:<24s} tps {med([x[0] for x in v])}   p50 {med([x[1] for x in v])}"
                  f"   p99 {med([x[2] for x in v])}   cpu {med([x[3] for x in v])}")
        bare_p50 = statistics.median(x[1] for x in res["bare zmq, 4 processes"])
        for b in (1, 32):
            p50 = statistics.median(x[1] for x in res[f"direct batch {b}"])
            print(f"direct batch {b}: RTT p50 {p50 / bare_p50:.2f}x the bare round trip "
                  f"(goal <= 1.5x)")
    if "forward" in only:
        def fwd(model: str) -> Callable[[], float]:
            def go() -> float:
                doc = run(model=model, workload="forward", rate=float("inf"), duration=d,
                          size="64", flows=4)
                return doc["egress"]["figures"]["received_pps"]
            return go

        res = interleave({"direct": fwd("direct"), "deferred": fwd("deferred")}, a.runs)
        print("\n## forwarding, 64-byte frames at full speed (kpps out of port 1)")
        for k, v in res.items():
            print(f"{k:<18s} {med([x / 1e3 for x in v])}")


if __name__ == "__main__":
    main()
