"""Tests for dispatch.stages.base: reasons declared once, Runner routing and order."""

from __future__ import annotations

import pytest

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.stages.base import Ctx, Runner, Stats, declare_reasons

R = declare_reasons("test_stage", ("odd", "tst_odd", "odd-numbered packets"))


def test_reasons_are_declared_once_and_listed():
    assert R.odd.key == "test_stage.odd" and R.odd.stat == "tst_odd"
    with pytest.raises(AttributeError, match="declared"):
        _ = R.nope
    with pytest.raises(ValueError, match="twice"):
        declare_reasons("test_stage", ("odd", "other", "different text"))


def test_runner_routes_drops_and_keeps_order(pool_name):
    with MbufPool.create(pool_name, PoolConfig(nmbufs=64, nclusters=0, njumbop=0, njumbo9=0,
                                                njumbo16=0)) as pool:
        ctx = Ctx(pool)
        seen: list[int] = []

        def a(ctx, batch):
            out = {"b": [], "c": []}
            for m in batch:
                if pool.hget(m, 17) % 3 == 0:
                    ctx.drop(m, R.odd)
                else:
                    out["b" if pool.hget(m, 17) % 2 else "c"].append(m)
            return out

        def b(ctx, batch):
            seen.extend(batch)
            return {"c": batch}

        ms = []
        for i in range(1, 13):
            m = pool.gethdr()
            pool.hset(m, 17, i)
            ms.append(m)
        out = Runner(ctx, {"a": a, "b": b}).run("a", ms, now=5)
        assert ctx.now == 5
        assert [pool.hget(m, 17) for m in seen] == [1, 5, 7, 11]
        assert sorted(pool.hget(m, 17) for m in out["c"]) == [1, 2, 4, 5, 7, 8, 10, 11]
        assert ctx.stats.drops["test_stage"]["odd"] == 4
        pool.freem_batch(out["c"])
        assert pool.audit().whole


def test_array_batches_reach_array_stages_whole_and_others_as_lists(pool_name):
    import numpy as np

    from dispatch.stages import base as B

    with MbufPool.create(pool_name, PoolConfig(nmbufs=64, nclusters=0, njumbop=0, njumbo9=0,
                                                njumbo16=0)) as pool:
        ctx = Ctx(pool)
        got: dict[str, object] = {}

        def takes_arrays(ctx, batch):
            got["x"] = batch
            return {"y": batch[:2], "out": batch[2:]}

        def takes_lists(ctx, batch):
            got["y"] = batch
            return {"out": batch}

        B._ARRAYS.add(takes_arrays)
        try:
            ms = np.array([pool.gethdr() for _ in range(5)], np.uint32)
            out = Runner(ctx, {"x": takes_arrays, "y": takes_lists}).run("x", ms, now=1)
        finally:
            B._ARRAYS.discard(takes_arrays)
        assert got["x"] is ms  # no conversion on the way in
        assert type(got["y"]) is list and got["y"] == ms[:2].tolist()
        # two contributions to one non-local stage are joined, as a list, in order
        assert out["out"] == ms[2:].tolist() + ms[:2].tolist()
        pool.freem_batch(out["out"])
        assert pool.audit().whole
        assert B.as_list(ms) == ms.tolist() and B.as_list(got["y"]) is got["y"]


def test_stats_merge():
    a, b = Stats(), Stats()
    a.add("ip.ips_total", 3)
    b.add("ip.ips_total", 4)
    b.drop(R.odd, 2)
    a.merge(b.snapshot())
    assert a.counters["ip.ips_total"] == 7 and a.total_drops() == 2
