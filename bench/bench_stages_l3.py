"""Per-packet cost of ether_input and ip_input (ns), the L2/L3 share of the input path.

Frames: 64-byte UDP and 1514-byte TCP (an Ethernet frame of a 1500-byte IP
packet); batches of 1, 32 and 128 (the stages' vectorised fast path starts at
48 packets); IPv4 header checksum in software, or offloaded
(the NIC set CSUM_L3_CALC | CSUM_L3_VALID). Each figure is the median of 5
runs (min and max beside it); a run times the stage functions themselves over
about 20,000 packets, with the mbuf headers reset between rounds outside the
timed region. The goal for the whole inline input path is < 1.5 us per
64-byte UDP packet at batch 32 with offload, so ether_input + ip_input
should stay well under 400 ns there.

    python bench/bench_stages_l3.py [--runs 5] [--packets 20000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.mbuf import layout as L
from dispatch.packet.frames import build_tcp_frame, build_udp_frame
from dispatch.stages.base import Ctx
from dispatch.stages.ether import ether_input
from dispatch.stages.ip import ip_input

HDR_WORDS = 18  # m_hdr and the pkthdr words a stage may change


def frame(kind: str) -> bytes:
    if kind == "udp64":
        f = build_udp_frame(src_ip="10.0.0.2", dst_ip="10.0.0.1", src_port=1000, dst_port=9,
                            payload=b"\0" * 18)
        assert len(f) == 60, len(f)  # 64 on the wire with the FCS
        return f
    f = build_tcp_frame(src_ip="10.0.0.2", dst_ip="10.0.0.1", src_port=1000, dst_port=80,
                        seq=1, ack=1, payload=b"\0" * 1460)
    assert len(f) == 1514, len(f)
    return f


def one_run(pool: MbufPool, kind: str, batch: int, offload: bool, npackets: int) -> tuple[
        float, float]:
    """ns per packet for (ether_input, ip_input)."""
    ctx = Ctx(pool)
    f = frame(kind)
    flags = L.CSUM_L3_CALC | L.CSUM_L3_VALID if offload else 0
    hs = []
    for _ in range(batch):
        m = pool.getcl(len(f))
        pool.append(m, f)
        pool.hset(m, L.W_CSUM_FLAGS, flags)
        hs.append(m)
    w = pool.w
    saved = [bytes(w[(m << 6) : (m << 6) + HDR_WORDS]) for m in hs]
    saved_v = [memoryview(s).cast("I") for s in saved]
    rounds = max(1, npackets // batch)
    t_eth = t_ip = 0
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for m, s in zip(hs, saved_v):
            w[(m << 6) : (m << 6) + HDR_WORDS] = s
        b = list(hs)
        t0 = clock()
        out = ether_input(ctx, b)
        t1 = clock()
        out2 = ip_input(ctx, out["ip_input"])
        t2 = clock()
        t_eth += t1 - t0
        t_ip += t2 - t1
        assert len(out2["tcp_input" if kind == "tcp1500" else "udp_input"]) == batch
    for m in hs:
        pool.freem(m)
    n = rounds * batch
    return t_eth / n, t_ip / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--packets", type=int, default=20000)
    args = ap.parse_args()
    pool = MbufPool.create(f"demu-bench-l3-{os.getpid()}",
                           PoolConfig(nmbufs=1024, nclusters=256, njumbop=4, njumbo9=2,
                                      njumbo16=2))
    try:
        print(f"{'frame':8} {'batch':>5} {'ip csum':8} | {'ether_input ns':>22} | "
              f"{'ip_input ns':>22} | {'both ns':>22}")
        print("-" * 100)
        for kind in ("udp64", "tcp1500"):
            for batch in (1, 32, 128):
                for offload in (False, True):
                    one_run(pool, kind, batch, offload, 2000)  # warm up
                    runs = [one_run(pool, kind, batch, offload, args.packets)
                            for _ in range(args.runs)]
                    cols = []
                    for vals in ([r[0] for r in runs], [r[1] for r in runs],
                                 [r[0] + r[1] for r in runs]):
                        cols.append(f"{statistics.median(vals):6.0f} "
                                    f"[{min(vals):5.0f}-{max(vals):5.0f}]")
                    print(f"{kind:8} {batch:5} {'offload' if offload else 'software':8} | "
                          f"{cols[0]:>22} | {cols[1]:>22} | {cols[2]:>22}")
        assert pool.audit().whole
    finally:
        pool.close()


if __name__ == "__main__":
    main()
