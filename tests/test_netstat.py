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


DOC = {
    "model": "hybrid",
    "config": {"bindthreads": False},
    "netisr": {"threads": 2, "qlimit": 256, "policy": "flow", "workstreams": [
        {"wsid": 0, "cpu": 0, "name": "ip", "len": 0, "wmark": 12, "dispatched": 0,
         "hybrid_dispatched": 40, "qdrops": 3, "queued": 60, "handled": 97},
        {"wsid": 1, "cpu": 1, "name": "ip", "len": 0, "wmark": 0, "dispatched": 0,
         "hybrid_dispatched": 0, "qdrops": 0, "queued": 0, "handled": 0}]},
    "counters": {"ip.ips_total": 100, "ip.ips_delivered": 97, "udp.udps_ipackets": 97,
                 "tcp.tcps_rcvpack": 0},
    "drops": {"ip_input": {"badsum": 2}, "netisr": {"qdrop": 3}},
}


def test_netstat_q_layout():
    from dispatch.netstat import format_netisr

    text = format_netisr(DOC)
    rows = text.splitlines()
    assert next(r for r in rows if r.startswith("Dispatch policy")).split() == [
        "Dispatch", "policy", "hybrid", "n/a"]
    head = rows.index("Workstreams:") + 1
    assert rows[head].split() == ["WSID", "CPU", "Name", "Len", "WMark", "Disp'd", "HDisp'd",
                                  "QDrops", "Queued", "Handled"]
    assert rows[head + 1].split() == ["0", "0", "ip", "0", "12", "0", "40", "3", "60", "97"]
    assert any(r.split()[:3] == ["Thread", "count", "2"] for r in rows)


def test_netstat_s_lists_counters_and_drop_reasons_with_their_text():
    from dispatch.netstat import format_protocols

    text = format_protocols(DOC)
    assert "ip:\n\t97 ips_delivered\n\t100 ips_total" in text
    assert "\t2 dropped: bad header checksums (ips_badsum)" in text
    assert "tcps_rcvpack" not in text  # zero counters are left out
    assert "netisr:\n\t3 dropped:" in text
