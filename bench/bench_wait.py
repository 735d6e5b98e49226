"""Benchmark: what a role's wait for its next message costs, by the way it waits.

A role process sleeps until a message comes (an interrupt, a handoff, a frame),
then works. On this VM the wait itself costs tens of microseconds of CPU per
wakeup, and how the role waits changes that:

- ``poll2``: a ZeroMQ poll over the queue and the control socket, then a
  non-blocking receive (how the ithread, netisr and user threads waited before
  the ninth round; ZeroMQ asks every socket of a poll for its events, a
  system call or two each, before and after it sleeps);
- ``poll1``: the same poll over the queue alone;
- ``recv``: a blocking receive on the queue alone, with a receive timeout (how
  a bare relay waits, and the roles since the ninth round).

An echo process waits in the given way and sends every message back; the
driver sends one message at a time with a pause between (default 0.5 ms, so
that each wakeup is a wakeup from idle, as in an rr run). Printed per style:
the round trip's p50 and the echo's CPU time per message (all its threads,
ZeroMQ's I/O thread included), and the part of it spent in its wait and
receive (its main thread). Styles are interleaved; medians of N runs with
min and max.

    python bench/bench_wait.py [--runs 5] [--messages 2000] [--gap-us 500]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from typing import Any

import zmq

from dispatch.runtime.procstat import thread_cpu_s

STYLES = ("poll2", "poll1", "recv")


def echo(style: str, rx: str, tx: str, ctl_ep: str, q: Any) -> None:
    """Wait in `style` for each message and send it back; b"x" ends."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(rx)
    push = ctx.socket(zmq.PUSH)
    push.connect(tx)
    ctl = ctx.socket(zmq.PULL)
    ctl.bind(ctl_ep)
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    if style == "poll2":
        poller.register(ctl, zmq.POLLIN)
    pull.setsockopt(zmq.RCVTIMEO, 20)
    n = 0
    waited = 0
    cpu0 = time.thread_time_ns()
    all0 = thread_cpu_s(os.getpid())
    while True:
        t = time.thread_time_ns()
        if style == "recv":
            try:
                m = pull.recv()
            except zmq.Again:
                continue
        else:
            if not poller.poll(20):
                continue
            m = pull.recv(zmq.NOBLOCK)
        waited += time.thread_time_ns() - t
        if m == b"x":
            break
        push.send(m)
        n += 1
    q.put((n, (thread_cpu_s(os.getpid()) - all0) / n * 1e6,
           (time.thread_time_ns() - cpu0) / n / 1e3, waited / n / 1e3))
    for s in (pull, push, ctl):
        s.close(0)
    ctx.term()


def one(style: str, messages: int, gap_s: float) -> tuple[float, float, float, float]:
    """(RTT p50 us, echo CPU us/message all threads, main thread, of it waiting)."""
    with tempfile.TemporaryDirectory() as tmp:
        a, b, c = (f"ipc://{tmp}/{x}" for x in "abc")
        q: Any = mp.get_context("spawn").Queue()
        p = mp.get_context("spawn").Process(target=echo, args=(style, a, b, c, q))
        p.start()
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.connect(a)
        pull = ctx.socket(zmq.PULL)
        pull.bind(b)
        try:
            for _ in range(50):  # warm up: both ends bound and connected
                push.send(b"m")
                pull.recv()
            rtts = []
            for _ in range(messages):
                time.sleep(gap_s)
                t = time.monotonic_ns()
                push.send(b"m")
                pull.recv()
                rtts.append((time.monotonic_ns() - t) / 1e3)
            push.send(b"x")
            n, cpu_all, cpu_main, waited = q.get(timeout=30)
        finally:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join()
            push.close(0)
            pull.close(0)
            ctx.term()
    return statistics.median(rtts), cpu_all, cpu_main, waited


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--gap-us", type=float, default=500.0)
    args = ap.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()}); {args.messages} messages, "
          f"{args.gap_us:.0f} us apart; medians of {args.runs} interleaved runs [min, max]")
    res: dict[str, list[tuple[float, float, float, float]]] = {s: [] for s in STYLES}
    for _ in range(args.runs):
        for s in STYLES:
            res[s].append(one(s, args.messages, args.gap_us / 1e6))

    def fmt(xs: list[float]) -> str:
        return f"{statistics.median(xs):7.1f} [{min(xs):6.1f}, {max(xs):6.1f}]"

    print(f"{'wait':6s} {'RTT p50 us':>24s} {'echo CPU/msg us':>24s} "
          f"{'main thread':>24s} {'in wait+recv':>24s}")
    for s in STYLES:
        r = res[s]
        print(f"{s:6s} " + " ".join(fmt([x[i] for x in r]) for i in range(4)))


if __name__ == "__main__":
    main()
