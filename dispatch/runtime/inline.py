"""The inline reference: the same frames through the same NIC and stages in one process.

Every dispatch model must give the same per-packet outcome as this on the
same input: the same bytes (and digests) per socket, the same drops by
stage and reason. Only timing, and drops under overload, may differ. The
frames go through a real `Nic` (so rx checksum offload sets the same flags)
and then through `Runner` with every stage local, soreceive included.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from typing import Any

from dispatch.mbuf import MbufPool
from dispatch.runtime.config import RunConfig
from dispatch.runtime.workload import open_sockets
from dispatch.stages import base as S

_seq = itertools.count()


def end_of_run(ctx: S.Ctx) -> None:
    """Give back what reassembly still holds (IP fragments, out-of-order TCP data):
    the gaps were never filled, so those packets count as dropped ("flushed")."""
    from dispatch.stages.frag import frag_flush
    from dispatch.stages.tcp_reass import tcp_reass_flush

    frag_flush(ctx)
    if ctx.sockets is not None:
        for i in list(ctx.sockets.indices()):
            tcp_reass_flush(ctx, ctx.sockets, i)


def run_inline(frames: Iterable[bytes], cfg: RunConfig) -> dict[str, Any]:
    """Run `frames` inline; returns {"sockets": [...], "drops": {...}, "counters": {...}}."""
    import dispatch.stages.all  # noqa: F401
    from dispatch.stages.socket import socket_digests
    from dispatch.stages.socktab import SocketTable
    from nicemu.nic import Nic, NicConfig

    name = f"demu-inline-{os.getpid()}-{next(_seq)}"
    pool = MbufPool.create(name, cfg.pool, owner="inline")
    socks = SocketTable.create(name + ".sock", capacity=max(1024, 4 * cfg.flows), nusers=1)
    nic = None
    try:
        open_sockets(socks, cfg)
        nic = Nic(pool, NicConfig(rx_queues=1, ring_size=cfg.ring_size, rxcsum=cfg.rxcsum,
                                  lro=cfg.lro), rings_name=name + ".nic0")
        ctx = S.Ctx(pool, config=S.StackConfig(auto_sockets=cfg.sockets_auto,
                                               digest=cfg.digest), sockets=socks,
                    role="inline")
        runner = S.inline_runner(ctx)
        ring = nic.rings.rx[0]
        now = 0
        sent = 0
        batch: list[bytes] = []

        def flush() -> None:
            nonlocal now, sent
            if not batch:
                return
            now += 1000
            nic.receive(batch, now)
            sent += len(batch)
            batch.clear()
            hs = ring.pop_array()
            pool.adopt(hs)
            out = runner.run(S.ETHER_INPUT, hs.tolist(), now)
            tx = out.pop(S.IF_TRANSMIT, [])
            if tx:  # what the host sends (ACKs): the NIC would put it on the wire
                pool.freem_batch(tx)
            if out:
                raise RuntimeError(f"inline run left packets for {sorted(out)}")

        for f in frames:
            batch.append(f)
            if len(batch) >= cfg.batch:
                flush()
        flush()
        end_of_run(ctx)
        nic.release_posted()
        c = nic.counters
        drops = {s: dict(d) for s, d in ctx.stats.drops.items() if d}
        for k, v in (("ring_full", c.rx_ring_full), ("nobuf", c.rx_nobuf),
                     ("ierrors", c.ierrors)):
            if v:
                drops.setdefault("nic", {})[k] = v
        digests = socket_digests(ctx)
        sockets = []
        for info in socks.sockets():
            d = info.as_dict()
            if cfg.digest:
                d["sha256"] = digests.get(info.index)
            sockets.append(d)
        return {"offered": sent, "sockets": sockets, "drops": drops,
                "counters": dict(ctx.stats.counters), "pool_whole": pool.audit().whole}
    finally:
        if nic is not None:
            nic.close()
        socks.close()
        pool.close()
