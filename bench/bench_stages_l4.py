"""Benchmark the transport and socket stages: ns per packet, median of 5 runs (min, max).

Rows:
  udp_input (+sbappend)   64-byte UDP frames (22-byte payload), after ip_input
  soreceive (+copyout)    the same packets, as the user thread receives them
  tcp_input               1460-byte in-order segments on an established
                          connection (delayed ACKs built every second segment;
                          the soreceive that frees the buffer is not timed)
  whole input path        ether_input -> ip -> udp/tcp -> soreceive inline (the
                          issue's goals: 64-byte UDP at batch 32 with rx
                          checksum offload < 1.5 us; 1500-byte TCP with software
                          checksums < 3 us); needs the ether/ip stages.
                          The UDP rows take the fused ether/ip/udp path
                          (dispatch/stages/inputfast.py) where the batch allows;
                          "stage by stage" is the same with fusion off
  UDP output              udp_output -> ip_output -> ether_output of a datagram
                          copied in by sosend (64 and 1400 payload bytes, txcsum
                          on): fused (dispatch/stages/outputfast.py) and stage by
                          stage
each at batch 1 and 32 (the whole UDP path also at 128), with software ("sw") or NIC-verified ("offload")
checksums. The frame copy into the pool (the NIC's DMA) is outside the timing.
Run: ``python bench/bench_stages_l4.py [--runs 5] [--packets 8192]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import struct
import time
from collections.abc import Callable

from calibration import calibrate

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.mbuf import layout as L
from dispatch.packet.checksum import l4_checksum
from dispatch.packet.ipv4 import build_ipv4
from dispatch.packet.tcp import TH_ACK, build_tcp
from dispatch.packet.udp import build_udp
from dispatch.stages import socket as so
from dispatch.stages import tcp_input as ti
from dispatch.stages import udp
from dispatch.stages.base import Ctx, Runner, StackConfig, registry
from dispatch.stages.socktab import (
    IPPROTO_TCP,
    P_MAXSEG,
    P_RCV_ADV,
    P_RCV_NXT,
    P_SND_MAX,
    P_SND_NXT,
    P_SND_UNA,
    P_STATE,
    SocketTable,
    addr_int,
    pf_of,
)
from dispatch.stages.tcp_var import TCPS_ESTABLISHED

HOST, PEER = "10.0.0.1", "192.0.2.1"
OFFLOAD = L.CSUM_DATA_VALID | L.CSUM_PSEUDO_HDR
ETH = bytes.fromhex("020000000002" "020000000001" "0800")


def udp_packet(sport: int) -> bytes:
    payload = b"p" * 22  # 14 + 20 + 8 + 22 = 64-byte frame
    u = build_udp(src_port=sport, dst_port=9, payload=payload, src_ip=PEER, dst_ip=HOST)
    return build_ipv4(src=PEER, dst=HOST, proto=17, payload=u)


class Tcp:
    """An established connection and a generator of in-order 1460-byte segments."""

    def __init__(self, ctx: Ctx) -> None:
        tab: SocketTable = ctx.sockets
        fam, la = addr_int(HOST)
        _, fa = addr_int(PEER)
        self.i, _ = tab.insert_key((pf_of(IPPROTO_TCP, fam), la, 80, fa, 40000))
        for f, v in ((P_STATE, TCPS_ESTABLISHED), (P_RCV_NXT, 1), (P_RCV_ADV, 1),
                     (P_SND_UNA, 5), (P_SND_NXT, 5), (P_SND_MAX, 5), (P_MAXSEG, 1460)):
            tab.set(self.i, f, v)
        self.seq = 1
        seg = build_tcp(src_port=40000, dst_port=80, seq=0, ack=5, flags=TH_ACK,
                        payload=b"d" * 1460, checksum=0)
        self.tmpl = bytearray(build_ipv4(src=PEER, dst=HOST, proto=6, payload=seg))
        self.src, self.dst = bytes(self.tmpl[12:16]), bytes(self.tmpl[16:20])

    def next(self) -> bytes:
        t = self.tmpl
        struct.pack_into("!I", t, 24, self.seq)
        t[36:38] = b"\0\0"
        t[36:38] = l4_checksum(self.src, self.dst, 6, t[20:]).to_bytes(2, "big")
        self.seq = (self.seq + 1460) & 0xFFFFFFFF
        return bytes(t)


def load(pool: MbufPool, data: bytes, *, l3: int, flags: int) -> int:
    m = pool.getcl(len(data))
    pool.append(m, data)
    b = m << 6
    pool.w[b + L.W_HDRLENS] = l3 << 8
    pool.w[b + L.W_CSUM_FLAGS] = flags
    pool.w[b + L.W_CSUM_DATA] = 0xFFFF if flags else 0
    return m


def timed(total: int, batch: int, prep: Callable[[int], list[int]],
          call: Callable[[list[int]], object], after: Callable[[object], None]) -> float:
    """ns per packet of `call` over `total` packets in batches (prep/after untimed)."""
    t = 0
    done = 0
    now = time.perf_counter_ns
    while done < total:
        ms = prep(batch)
        t0 = now()
        r = call(ms)
        t += now() - t0
        after(r)
        done += len(ms)
    return t / done


def median_of(runs: int, fn: Callable[[], float]) -> tuple[float, float, float]:
    fn()  # warm-up
    xs = [fn() for _ in range(runs)]
    return statistics.median(xs), min(xs), max(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--packets", type=int, default=8192)
    args = ap.parse_args()
    name = f"bench-l4-{os.getpid()}"
    pool = MbufPool.create(name, PoolConfig(nmbufs=16384, nclusters=4096, njumbop=64,
                                            njumbo9=0, njumbo16=0))
    tab = SocketTable.create(None, 1024)
    rows: list[tuple[str, int, str, tuple[float, float, float]]] = []
    try:
        ctx = Ctx(pool, config=StackConfig(), sockets=tab)
        tab.bind_udp("0.0.0.0", 9)
        conn = Tcp(ctx)
        udp_frames = [udp_packet(1024 + k) for k in range(64)]
        n = args.packets
        gc.freeze()  # as the roles do: no full collection over the modules' objects mid-run

        def free(r: object) -> None:
            """Untimed: the user reads what was delivered (keeping the socket buffer's
            books), and whatever else left (ACKs) is freed."""
            for stage_name, hs in r.items():  # type: ignore[attr-defined]
                if stage_name == "soreceive":
                    so.soreceive(ctx, hs)
                else:
                    pool.freem_batch(hs)

        for batch in (1, 32):
            for mode, flags in (("sw", 0), ("offload", OFFLOAD)):
                def prep_udp(k: int, flags: int = flags) -> list[int]:
                    return [load(pool, udp_frames[j % 64], l3=20, flags=flags) for j in range(k)]

                rows.append(("udp_input (+sbappend)", batch, mode, median_of(args.runs, lambda
                             b=batch, p=prep_udp: timed(n, b, p, lambda ms: udp.udp_input(ctx, ms),
                                                        free))))
            # soreceive: packets as udp_input leaves them
            def prep_rcv(k: int) -> list[int]:
                return udp.udp_input(ctx, [load(pool, udp_frames[j % 64], l3=20, flags=OFFLOAD)
                                           for j in range(k)])["soreceive"]

            rows.append(("soreceive (+copyout)", batch, "-", median_of(args.runs, lambda
                         b=batch: timed(n, b, prep_rcv, lambda ms: so.soreceive(ctx, ms),
                                        lambda r: None))))
            for mode, flags in (("sw", 0), ("offload", OFFLOAD)):
                def prep_tcp(k: int, flags: int = flags) -> list[int]:
                    return [load(pool, conn.next(), l3=20, flags=flags) for _ in range(k)]

                def after_tcp(r: object) -> None:
                    rcv = r.pop("soreceive", [])  # type: ignore[attr-defined]
                    so.soreceive(ctx, rcv)
                    free(r)

                rows.append(("tcp_input 1460 B", batch, mode, median_of(args.runs, lambda
                             b=batch, p=prep_tcp: timed(n // 4, b, p,
                                                        lambda ms: ti.tcp_input(ctx, ms),
                                                        after_tcp))))
        # the whole input path, if the link and network stages are there
        try:
            # every stage module, the fused paths included (registered on import),
            # as a role process has them
            import dispatch.stages.all  # noqa: F401
            ok = True
        except ImportError:
            ok = False
        if ok:
            reg = registry()
            local = {k: reg[k] for k in ("ether_input", "ip_input", "ip6_input", "udp_input",
                                         "tcp_input", "soreceive") if k in reg}
            runner = Runner(ctx, local)
            unfused = Runner(ctx, local, fuse=False)  # the same stages, one by one
            eth_udp = [ETH + f for f in udp_frames]
            for batch in (1, 32, 128):
                for mode, flags in (("sw", 0), ("offload", OFFLOAD | L.CSUM_L3_CALC |
                                                 L.CSUM_L3_VALID)):
                    def prep_e(k: int, flags: int = flags) -> list[int]:
                        ms = [load(pool, eth_udp[j % 64], l3=0, flags=flags) for j in range(k)]
                        for m in ms:
                            pool.w[(m << 6) + L.W_HDRLENS] = 0
                        return ms

                    rows.append(("whole path UDP 64 B", batch, mode, median_of(args.runs, lambda
                                 b=batch, p=prep_e: timed(n, b, p, lambda ms: runner.run(
                                     "ether_input", ms, 1), free))))
                    if mode == "offload" and batch > 1:  # side by side: without fusion
                        rows.append(("  same, stage by stage", batch, mode, median_of(
                            args.runs, lambda b=batch, p=prep_e: timed(
                                n, b, p, lambda ms: unfused.run("ether_input", ms, 1), free))))
                for mode, flags in (("sw", 0), ("offload", OFFLOAD | L.CSUM_L3_CALC |
                                                 L.CSUM_L3_VALID)):
                    def prep_t(k: int, flags: int = flags) -> list[int]:
                        ms = [load(pool, ETH + conn.next(), l3=0, flags=flags) for _ in range(k)]
                        for m in ms:
                            pool.w[(m << 6) + L.W_HDRLENS] = 0
                        return ms

                    rows.append(("whole path TCP 1514 B", batch, mode, median_of(
                        args.runs, lambda b=batch, p=prep_t: timed(
                            n // 4, b, p, lambda ms: runner.run("ether_input", ms, 1), free))))
            # the UDP output path a user thread runs for each datagram it sends (an rr
            # answer, a tx message): udp_output -> ip_output -> ether_output, fused
            # (dispatch/stages/outputfast.py) and stage by stage; txcsum on
            from dispatch.stages.route import driver_hwassist, interfaces, with_hwassist

            ctx.extra["interfaces"] = with_hwassist(interfaces(ctx),
                                                    driver_hwassist(txcsum=True, tso=False))
            ctx.extra["txcsum"] = True
            out_local = {k: reg[k] for k in ("udp_output", "ip_output", "ip6_output",
                                             "ether_output")}
            out_runner = Runner(ctx, out_local)
            out_unfused = Runner(ctx, out_local, fuse=False)
            sid = tab.connect_udp(HOST, 9000, PEER, 9001)
            for size in (64, 1400):
                data = b"r" * size

                def prep_o(k: int, data: bytes = data) -> list[int]:
                    return so.sosend_stage(ctx, [so.sosend_copyin(ctx, sid, data)
                                                 for _ in range(k)])["udp_output"]

                def sent(r: object) -> None:
                    pool.freem_batch(r["if_transmit"])  # type: ignore[index]

                for batch in (1, 32):
                    for label, rn in ((f"UDP output {size} B", out_runner),
                                      ("  same, stage by stage", out_unfused)):
                        rows.append((label, batch, "txcsum", median_of(
                            args.runs, lambda b=batch, p=prep_o, rn=rn: timed(
                                n, b, p, lambda ms: rn.run("udp_output", ms, 1), sent))))
    finally:
        tab.close()
        audit = pool.audit()
        pool.close()
    print(f"calibration: {calibrate():.0f} ns per loop of 3 pool-header reads (machine speed)")
    print(f"{'stage':<24}{'batch':>6}  {'csum':<8}{'ns/pkt median':>14}{'min':>9}{'max':>9}")
    for label, batch, mode, (med, lo, hi) in rows:
        print(f"{label:<24}{batch:>6}  {mode:<8}{med:>14.0f}{lo:>9.0f}{hi:>9.0f}")
    if not audit.whole:
        raise SystemExit(f"pool not whole after the benchmark: {audit}")


if __name__ == "__main__":
    main()
