"""Tests for dispatch.netstat: FreeBSD layouts, figures equal to the pool's."""

from __future__ import annotations

import re

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.netstat import format_mbuf


def test_netstat_m_layout_and_figures(pool_name):
    cfg = PoolConfig(nmbufs=64, nclusters=16, njumbop=4, njumbo9=2, njumbo16=1, bucket=4)
    with MbufPool.create(pool_name, cfg) as p:
        held = [p.getcl() for _ in range(3)] + [p.get() for _ in range(2)]
        j = p.getcl(9000)
        assert p.getcl(16384) and p.getcl(16384) == 0  # one 16k, the second denied
        text = format_mbuf(p.stats())
        lines = text.splitlines()
        assert lines[0] == "7/57/64 mbufs in use (current/cache/total)"
        assert lines[1] == "3/13/16/16 mbuf clusters in use (current/cache/total/max)"
        assert lines[3] == "1/1/2/2 9k jumbo clusters in use (current/cache/total/max)"
        assert lines[4] == "1/0/1/1 16k jumbo clusters in use (current/cache/total/max)"
        cur = 7 * 256 + 3 * 2048 + 9216 + 16384
        assert re.match(rf"{cur // 1024}K/\d+K/\d+K bytes allocated to network", lines[5])
        assert lines[6] == "0/0/1 requests for mbufs denied (mbufs/clusters/mbuf+clusters)"
        assert lines[9] == "0/0/1 requests for jumbo clusters denied (4k/9k/16k)"
        for m in held + [j]:
            p.freem(m)
