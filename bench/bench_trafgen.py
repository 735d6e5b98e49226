"""Benchmark: how fast the traffic generator makes frames, and how well it holds a rate.

1. Generation only: 64-byte UDP frames (16 flows, stamped, UDP checksum patched)
   built in batches of 256 into the wire's packed form, nothing sent.
2. Generation + send: the same, sent as fast as possible over ``ipc://`` to a
   receiving process that counts them (``WireRx.recv_packed``); the rate is
   frames confirmed received over the sender's time (end-of-stream acknowledged).
3. Pacing: constant-rate runs at 10k, 100k, 200k and 500k pps over the same
   wire; achieved / target pps as the Pacer measures it.

Each figure is the median of ``--runs`` runs (default 5) with [min, max].

    python bench/bench_trafgen.py [--seconds 1.0] [--runs 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nicemu.trafgen.flows import FlowSpec  # noqa: E402
from nicemu.trafgen.generator import Generator, GeneratorConfig  # noqa: E402
from nicemu.wire import WireRx, WireTx  # noqa: E402

FLOWS = FlowSpec(count=16)
RATES = (10_000, 100_000, 200_000, 500_000)


def _fmt(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    v = [x / scale for x in values]
    return f"{statistics.median(v):10.3f}{unit} [{min(v):.3f}, {max(v):.3f}]"


def gen_only(seconds: float, batch: int) -> float:
    g = Generator(GeneratorConfig(size="64", flows=FLOWS, batch=batch))
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        for _ in range(50):
            g.build_udp(batch)
        n += 50 * batch
    return n / (time.perf_counter() - t0)


def _sink(ep: str, q: mp.Queue) -> None:  # type: ignore[type-arg]
    rx = WireRx(ep)
    q.put("ready")
    while True:
        n = 0
        while not rx.ended:
            got = rx.recv_packed(1000)
            if got is not None:
                n += len(got[0])
        q.put(n)
        if n == 0:
            break
        rx.eos = 0  # ready for the next sender


def send_run(ep: str, q: mp.Queue, cfg: GeneratorConfig) -> tuple[float, int, object]:  # type: ignore[type-arg]
    tx = WireTx(ep, hwm=64)
    stats = Generator(cfg).run(tx)
    t_end = time.perf_counter()
    assert tx.close(confirm=True, timeout_ms=10_000), "receiver did not confirm"
    received = q.get(timeout=30)
    assert received == stats.frames, (received, stats.frames)
    return stats.frames / stats.elapsed_s, received, (stats, t_end)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    a = ap.parse_args()
    print(f"trafgen benchmark: 64-byte frames (60 without FCS), {FLOWS.count} UDP/IPv4 flows, "
          f"stamped, UDP checksum patched; median [min, max] of {a.runs} runs x {a.seconds:g} s")
    gen = [gen_only(a.seconds / 2, a.batch) for _ in range(a.runs)]
    print(f"generate only (batch {a.batch}, no send):      {_fmt(gen, 1e6, ' Mpps')}"
          f"  = {1e9 / statistics.median(gen):.0f} ns/frame")
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory() as d:
        ep = f"ipc://{d}/wire"
        q = ctx.Queue()
        p = ctx.Process(target=_sink, args=(ep, q))
        p.start()
        try:
            assert q.get(timeout=10) == "ready"
            cfg = GeneratorConfig(size="64", flows=FLOWS, batch=a.batch, rate="max",
                                  duration_s=a.seconds)  # fmt: skip
            sent = [send_run(ep, q, cfg)[0] for _ in range(a.runs)]
            print(f"generate + send over ipc:// (batch {a.batch}): {_fmt(sent, 1e6, ' Mpps')}"
                  "  (all frames confirmed received by the counting process)")
            print(f"pacing (constant rate, batch <= {a.batch}, 64-byte frames over ipc://):")
            print(f"{'target pps':>12}  {'achieved/target median [min, max]':>36}  fell behind")
            for rate in RATES:
                cfg = GeneratorConfig(size="64", flows=FLOWS, batch=a.batch, rate=str(rate),
                                      duration_s=a.seconds)  # fmt: skip
                ratios = []
                behind = 0
                for _ in range(a.runs):
                    _pps, _n, (st, _t) = send_run(ep, q, cfg)  # type: ignore[misc]
                    ratios.append(st.ratio)  # type: ignore[attr-defined]
                    behind += bool(st.pacer.fell_behind)  # type: ignore[attr-defined]
                ok = "ok" if abs(statistics.median(ratios) - 1) <= 0.02 else "MISSES 2 %"
                print(f"{rate:>12}  {_fmt(ratios):>36}  {behind}/{a.runs}  {ok}")
        finally:
            tx = WireTx(ep)
            tx.close(confirm=True, timeout_ms=2000)  # an empty stream ends the sink
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
            q.close()
            q.join_thread()


if __name__ == "__main__":
    main()
