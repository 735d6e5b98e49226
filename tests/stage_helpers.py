"""Helpers shared by the L2/L3 stage tests: frames into mbufs, drop tables.

(The `pool` fixture they use, a small pool of this SMALL size, is in conftest.py.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.mbuf import layout as L
from dispatch.stages.base import Ctx

SMALL = PoolConfig(nmbufs=1024, nclusters=512, njumbop=8, njumbo9=2, njumbo16=2, bucket=16)


def load(pool: MbufPool, frame: bytes, *, csum_flags: int = 0, csum_data: int = 0,
         cuts: Sequence[int] = (), lead: int = 0) -> int:
    """Put a frame in an rx-style mbuf (a cluster), or a chain cut at `cuts`."""
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(frame)), len(frame)]
    head = prev = 0
    for a, z in zip(bounds, bounds[1:]):
        m = pool.getcl(pkthdr=not head)
        assert m
        pool.w[(m << 6) + L.W_DATA] = lead if not head else 0
        o = pool.data_offset(m)
        pool.buf[o : o + z - a] = frame[a:z]
        pool.w[(m << 6) + L.W_LEN] = z - a
        if prev:
            pool.w[(prev << 6) + L.W_NEXT] = m
        else:
            head = m
        prev = m
    w = pool.w
    w[(head << 6) + L.W_PKTLEN] = len(frame)
    w[(head << 6) + L.W_CSUM_FLAGS] = csum_flags
    w[(head << 6) + L.W_CSUM_DATA] = csum_data
    return head


def drops(ctx: Ctx) -> dict[str, dict[str, int]]:
    return {s: {r: n for r, n in d.items() if n} for s, d in ctx.stats.drops.items()
            if any(d.values())}


def free_all(pool: MbufPool, out: Mapping[str, list[int]]) -> None:
    for hs in out.values():
        for m in hs:
            pool.freem(m)
    assert pool.audit().whole, pool.audit()
