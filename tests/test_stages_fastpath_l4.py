"""The vectorised udp_input / soreceive fast paths against the per-packet reference.

Two identical setups (pool, socket table, config) get the same random batches:
one through the stages as registered (numpy fast path where the batch allows,
else the per-packet code), the other through `_udp_input_slow` /
`_soreceive_slow` only. Everything observable must be identical: routed lists,
drops, every counter, the socket table's bytes, digests, the user buffer, and
every mbuf header word and timestamp in the pool.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.mbuf import layout as L
from dispatch.packet.ipv4 import build_ipv4
from dispatch.packet.ipv6 import build_ipv6
from dispatch.packet.udp import build_udp
from dispatch.stages import socket as so
from dispatch.stages import udp
from dispatch.stages.base import Ctx, StackConfig
from dispatch.stages.socktab import SocketTable

HOST, HOST6 = "10.0.0.1", "fd00::1"
PEERS = ("192.0.2.9", "192.0.2.10")
PEER6 = "2001:db8::9"
OFFL = L.CSUM_DATA_VALID | L.CSUM_PSEUDO_HDR
_names = itertools.count()

packet = st.fixed_dictionaries({
    "v6": st.sampled_from([False] * 6 + [True]),
    "plen": st.sampled_from([0, 1, 7, 22, 22, 22, 40, 100, 180]),
    "dport": st.sampled_from([53, 53, 53, 54, 55, 99]),
    "sport": st.sampled_from([1000, 1001, 1002, 0]),
    "peer": st.sampled_from([0, 0, 1]),
    "csum": st.sampled_from(["offload"] * 5 + ["offload_bad", "valid_only", "sw_good",
                                                "sw_bad", "zero", "zero_flags"]),
    "length": st.sampled_from(["ok"] * 8 + ["ulen_big", "ulen_small", "ulen_short",
                                           "padded", "short_hdr"]),
    "chain": st.sampled_from([False] * 8 + [True]),
})
common = st.fixed_dictionaries({
    "v6": st.just(False), "plen": st.sampled_from([0, 22, 22, 64]),
    "dport": st.sampled_from([53, 53, 54, 55]), "sport": st.sampled_from([1000, 1001, 7]),
    "peer": st.sampled_from([0, 1]), "csum": st.sampled_from(["offload"] * 6 + ["zero"]),
    "length": st.just("ok"), "chain": st.just(False),
})
batches = st.lists(st.one_of(st.lists(packet, min_size=1, max_size=12),
                             st.lists(common, min_size=1, max_size=40)),
                   min_size=1, max_size=4)


def frame(p: dict) -> tuple[bytes, int, int, int]:
    """(IP datagram, l3hlen, csum_flags, csum_data) for one packet spec."""
    payload = bytes((p["plen"] + k) & 0xFF for k in range(p["plen"]))
    src = PEER6 if p["v6"] else PEERS[p["peer"]]
    dst = HOST6 if p["v6"] else HOST
    kw: dict = {}
    ulen = 8 + len(payload)
    if p["length"] == "ulen_big":
        kw["length"] = ulen + 4
    elif p["length"] == "ulen_small":
        kw["length"] = 4
    elif p["length"] == "ulen_short" and payload:
        kw["length"] = ulen - 1
    if p["csum"] in ("zero", "zero_flags"):
        kw["checksum"] = 0
    elif p["csum"] == "sw_bad":
        kw["checksum"] = 0x1234
    u = build_udp(src_port=p["sport"], dst_port=p["dport"], payload=payload, src_ip=src,
                  dst_ip=dst, **kw)
    if p["v6"]:
        ip = build_ipv6(src=src, dst=dst, next_header=17, payload=u)
        l3 = 40
    else:
        ip = build_ipv4(src=src, dst=dst, proto=17, payload=u)
        l3 = 20
    if p["length"] == "padded":
        ip += b"\0" * 6
    if p["length"] == "short_hdr":
        ip = ip[: l3 + 5]
    flags, data = {"offload": (OFFL, 0xFFFF), "offload_bad": (OFFL, 0x1234),
                   "valid_only": (L.CSUM_DATA_VALID, 0xFFFF), "sw_good": (0, 0),
                   "sw_bad": (0, 0), "zero": (0, 0), "zero_flags": (OFFL, 0xFFFF)}[p["csum"]]
    return ip, l3, flags, data


class Setup:
    def __init__(self, cfg: StackConfig, small_hiwat: bool) -> None:
        self.pool = MbufPool.create(f"fp-l4-{os.getpid()}-{next(_names)}",
                                    PoolConfig(nmbufs=1024, nclusters=512, njumbop=8,
                                               njumbo9=0, njumbo16=0))
        self.tab = SocketTable.create(None, 64)
        self.ctx = Ctx(self.pool, config=cfg, sockets=self.tab)
        self.tab.bind_udp("0.0.0.0", 53)
        self.tab.bind_udp("::", 53)
        self.tab.connect_udp(HOST, 53, PEERS[1], 1001)
        self.tab.bind_udp(HOST, 54, sb_hiwat=120 if small_hiwat else 0)

    def load(self, p: dict) -> int:
        data, l3, flags, cdata = frame(p)
        pool = self.pool
        m = pool.gethdr() if p["chain"] else pool.getcl(len(data))
        assert m and pool.append(m, data)
        pool.hset(m, L.W_HDRLENS, l3 << 8)
        pool.hset(m, L.W_CSUM_FLAGS, flags)
        pool.hset(m, L.W_CSUM_DATA, cdata)
        return m

    def close(self) -> None:
        self.tab.close()
        audit = self.pool.audit()
        self.pool.close()
        assert audit.whole, audit


def observe(s: Setup) -> dict:
    c = s.ctx
    return {"counters": dict(c.stats.counters),
            "drops": {k: dict(v) for k, v in c.stats.drops.items()},
            "table": bytes(s.tab.buf),
            "digests": so.socket_digests(c),
            "uio": bytes(c.extra["uio"]) if "uio" in c.extra else None}


@pytest.fixture
def fast_min(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(udp, "_FAST_MIN", 1)
    monkeypatch.setattr(so, "_FAST_MIN", 1)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batches=batches, auto=st.booleans(), digest=st.booleans(), small=st.booleans(),
       read_every=st.sampled_from([1, 1, 2]))
def test_fast_paths_match_reference(fast_min: None, batches: list[list[dict]], auto: bool,
                                    digest: bool, small: bool, read_every: int) -> None:
    cfg = StackConfig(auto_sockets=auto, digest=digest, sb_hiwat=300 if small else 2 << 20)
    a, b = Setup(cfg, small), Setup(cfg, small)
    try:
        runs: list[tuple[Setup, Callable, Callable]] = [
            (a, udp.udp_input, so.soreceive),
            (b, udp._udp_input_slow, so._soreceive_slow)]
        pending: dict[int, list[int]] = {id(a): [], id(b): []}
        for k, spec in enumerate(batches):
            outs = []
            for s, uin, srecv in runs:
                s.ctx.now = 1000 + k
                hs = [s.load(p) for p in spec]
                r = uin(s.ctx, hs)
                assert set(r) <= {"soreceive"}
                rcv = r.get("soreceive", [])
                pending[id(s)] += rcv
                rows = s.pool.headers[np.array(rcv, dtype=np.intp)].copy()
                got = {"routed": rcv, "rows": rows.tobytes(), **observe(s)}
                if (k + 1) % read_every == 0 or k == len(batches) - 1:
                    s.ctx.now = 5000 + k
                    assert srecv(s.ctx, pending[id(s)]) == {}
                    pending[id(s)] = []
                    got["after_read"] = observe(s)
                got["headers"] = s.pool.headers.tobytes()
                outs.append(got)
            fa, fb = outs
            assert fa.keys() == fb.keys()
            for key in fa:
                assert fa[key] == fb[key], key
    finally:
        a.close()
        b.close()


def test_fast_path_is_taken(fast_min: None) -> None:
    """A batch of ordinary datagrams goes through the vectorised code (no fallback)."""
    s = Setup(StackConfig(digest=True), False)
    try:
        specs = [{"v6": False, "plen": 22, "dport": 53, "sport": 1000 + k % 3, "peer": k % 2,
                  "csum": "offload" if k % 5 else "zero", "length": "ok", "chain": False}
                 for k in range(32)]
        hs = [s.load(p) for p in specs]
        r = udp._udp_input_fast(s.ctx, hs)
        assert r is not None and r["soreceive"] == hs
        assert s.ctx.stats.counters["udp.udps_nosum"] == 7
        assert so._soreceive_fast(s.ctx, r["soreceive"]) == {}
        assert s.ctx.stats.counters["socket.rcv_packets"] == 32
        assert s.ctx.stats.counters["copies.copyout_bytes"] == 32 * 22
    finally:
        s.close()
