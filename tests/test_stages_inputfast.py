"""The fused ether -> ip -> udp fast path against the stages run one by one.

Two identical setups (pool, socket table, config) get the same random batches
of Ethernet frames: one through a Runner holding the registered stages (so it
takes the fused path whenever a batch allows), the other through a Runner
holding the per-packet reference stages (`_ether_input_slow`, `_ip_input_slow`,
`_udp_input_slow`, `_soreceive_slow`), which can never fuse. Batches mix the
common case (untagged unicast UDP/IPv4 for a bound port, NIC-verified
checksums) with everything the fused path must refuse: other lengths,
padding, VLAN tags, group addresses, IPv6, TCP, IP options, fragments,
non-local addresses, unverified or bad checksums, unknown ports, full socket
buffers, chains. Everything observable must be identical: routed lists, drops,
counters, the socket table's bytes, every mbuf header word and timestamp.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dispatch.stages.all  # noqa: F401  (registers every stage)
from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.mbuf import layout as L
from dispatch.packet.ipv4 import build_ipv4
from dispatch.packet.udp import build_udp
from dispatch.stages import base as S
from dispatch.stages import ether, inputfast, ip, udp
from dispatch.stages import socket as so
from dispatch.stages.base import Ctx, Runner, StackConfig, as_list
from dispatch.stages.frag import frag_flush
from dispatch.stages.socktab import SocketTable

HOST = "10.0.0.1"
PEERS = ("192.0.2.9", "192.0.2.10")
OK = L.CSUM_L3_CALC | L.CSUM_L3_VALID | L.CSUM_DATA_VALID | L.CSUM_PSEUDO_HDR
_names = itertools.count()

packet = st.fixed_dictionaries({
    "plen": st.sampled_from([18, 18, 18, 0, 40, 300]),
    "dport": st.sampled_from([53, 53, 53, 54, 99]),
    "sport": st.sampled_from([1000, 1001]),
    "peer": st.sampled_from([0, 1]),
    "odd": st.sampled_from(["none"] * 12 + [
        "pad", "vlan", "group", "arp", "tcp", "opts", "frag", "nonlocal", "l3bad",
        "noflags", "l4data", "zerosum", "ulen", "chain", "short"]),
})
common = st.fixed_dictionaries({
    "plen": st.just(18), "dport": st.sampled_from([53, 53, 54]),
    "sport": st.sampled_from([1000, 1001]), "peer": st.sampled_from([0, 1]),
    "odd": st.sampled_from(["none"] * 5 + ["zerosum"]),
})
batches = st.lists(st.one_of(st.lists(packet, min_size=1, max_size=12),
                             st.lists(common, min_size=1, max_size=40)),
                   min_size=1, max_size=4)


def frame(p: dict) -> tuple[bytes, int, int]:
    """(Ethernet frame, csum_flags, csum_data) for one packet spec."""
    odd = p["odd"]
    payload = bytes((p["plen"] + k) & 0xFF for k in range(p["plen"]))
    src = PEERS[p["peer"]]
    dst = "10.0.0.77" if odd == "nonlocal" else HOST
    kw: dict = {}
    if odd == "zerosum":
        kw["checksum"] = 0
    if odd == "ulen":
        kw["length"] = 8 + len(payload) + 2
    u = build_udp(src_port=p["sport"], dst_port=p["dport"], payload=payload, src_ip=src,
                  dst_ip=dst, **kw)
    pkt = build_ipv4(src=src, dst=dst, proto=6 if odd == "tcp" else 17, payload=u,
                     more_fragments=odd == "frag",
                     options=b"\x01\x01\x01\x00" if odd == "opts" else b"")
    dmac = b"\x01\x00\x5e\x00\x00\x01" if odd == "group" else b"\x02\x00\x00\x00\x00\x02"
    eth = dmac + b"\x02\x00\x00\x00\x00\x09"
    if odd == "vlan":
        eth += b"\x81\x00\x00\x05"
    eth += b"\x08\x06" if odd == "arp" else b"\x08\x00"
    f = eth + pkt
    if odd == "pad":
        f += b"\0" * 6
    if odd == "short":
        f = f[:30]
    flags, data = OK, 0xFFFF
    if odd == "l3bad":
        flags = OK & ~L.CSUM_L3_VALID
    elif odd == "noflags":
        flags, data = 0, 0
    elif odd == "l4data":
        data = 0x1234
    return f, flags, data


class Setup:
    def __init__(self, cfg: StackConfig, small_hiwat: bool, fused: bool) -> None:
        self.pool = MbufPool.create(f"fp-in-{os.getpid()}-{next(_names)}",
                                    PoolConfig(nmbufs=1024, nclusters=512, njumbop=8,
                                               njumbo9=0, njumbo16=0))
        self.tab = SocketTable.create(None, 64)
        self.ctx = Ctx(self.pool, config=cfg, sockets=self.tab)
        self.tab.bind_udp("0.0.0.0", 53)
        self.tab.connect_udp(HOST, 53, PEERS[1], 1001)
        self.tab.bind_udp(HOST, 54, sb_hiwat=100 if small_hiwat else 0)
        reg = S.registry()
        if fused:
            stages = {s: reg[s] for s in (S.ETHER_INPUT, S.IP_INPUT, S.UDP_INPUT,
                                          S.IP6_INPUT, S.TCP_INPUT, S.ICMP_INPUT)}
        else:
            stages = {S.ETHER_INPUT: ether._ether_input_slow, S.IP_INPUT: ip._ip_input_slow,
                      S.UDP_INPUT: udp._udp_input_slow, S.IP6_INPUT: reg[S.IP6_INPUT],
                      S.TCP_INPUT: reg[S.TCP_INPUT], S.ICMP_INPUT: reg[S.ICMP_INPUT]}
        self.runner = Runner(self.ctx, stages)
        self.chain = bool(self.runner.fused)

    def load(self, p: dict) -> int:
        data, flags, cdata = frame(p)
        pool = self.pool
        if p["odd"] == "chain":
            m = pool.gethdr()
            assert m and pool.append(m, data)
        else:
            m = pool.getcl(len(data))
            assert m and pool.append(m, data)
        pool.hset(m, L.W_CSUM_FLAGS, flags)
        pool.hset(m, L.W_CSUM_DATA, cdata)
        return m

    def close(self) -> None:
        frag_flush(self.ctx)  # fragments held for reassembly
        self.tab.close()
        audit = self.pool.audit()
        self.pool.close()
        assert audit.whole, audit


def observe(s: Setup) -> dict:
    c = s.ctx
    return {"counters": dict(c.stats.counters),
            "drops": {k: dict(v) for k, v in c.stats.drops.items() if v},
            "table": bytes(s.tab.buf)}


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batches=batches, auto=st.booleans(), small=st.booleans(),
       entry=st.sampled_from([S.ETHER_INPUT, S.ETHER_INPUT, S.IP_INPUT]),
       arrays=st.booleans())
def test_fused_matches_stage_by_stage(batches: list[list[dict]], auto: bool, small: bool,
                                      entry: str, arrays: bool) -> None:
    # arrays: the fused side is handed its batches as u32 arrays, as a role hands them
    # over (off a ring or a message); what comes out must be the same
    cfg = StackConfig(auto_sockets=auto, sb_hiwat=400 if small else 2 << 20)
    a, b = Setup(cfg, small, True), Setup(cfg, small, False)
    assert a.chain and not b.chain
    try:
        for k, spec in enumerate(batches):
            outs = []
            for s in (a, b):
                hs = [s.load(p) for p in spec]
                if entry == S.IP_INPUT:  # deferred's netisr: ether already ran elsewhere
                    r0 = ether._ether_input_slow(s.ctx, hs)
                    hs = r0.pop(S.IP_INPUT, [])
                    for rest in r0.values():
                        for m in rest:
                            s.pool.freem(m)
                given_hs = np.array(hs, np.uint32) if arrays and s is a else hs
                r = s.runner.run(entry, given_hs, 1000 + k)
                rcv = as_list(r.pop(S.SORECEIVE, []))
                rows = s.pool.headers[np.array(rcv, dtype=np.intp)].copy()
                got = {"routed": rcv, "rest": {kk: as_list(v) for kk, v in r.items()
                                               if len(v)},
                       "rows": rows.tobytes(), **observe(s),
                       "headers": s.pool.headers.tobytes()}
                for hs2 in r.values():
                    for m in hs2:
                        s.pool.freem(m)
                s.ctx.now = 5000 + k
                assert so._soreceive_slow(s.ctx, rcv) == {}
                got["after_read"] = observe(s)
                outs.append(got)
            fa, fb = outs
            for key in fa:
                assert fa[key] == fb[key], key
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("entry", [S.ETHER_INPUT, S.IP_INPUT])
def test_fused_path_is_taken(entry: str) -> None:
    """A batch of ordinary datagrams goes through the fused code (no fallback)."""
    s = Setup(StackConfig(), False, True)
    try:
        specs = [{"plen": 18, "dport": 53, "sport": 1000 + k % 2, "peer": k % 2,
                  "odd": "zerosum" if k % 5 == 0 else "none"} for k in range(32)]
        hs = [s.load(p) for p in specs]
        if entry == S.IP_INPUT:
            hs = ether._ether_input_slow(s.ctx, hs)[S.IP_INPUT]
        r = inputfast.udp4_input_fused(s.ctx, hs, entry)
        assert r is not None and r[S.SORECEIVE] == hs
        c = s.ctx.stats.counters
        assert c["udp.udps_ipackets"] == 32 and c["udp.udps_nosum"] == 7
        assert c["ip.ips_delivered"] == 32
        assert so.soreceive(s.ctx, hs) == {}
        assert c["socket.rcv_packets"] == 32 and c["copies.copyout_bytes"] == 32 * 18
    finally:
        s.close()


def test_fusion_needs_the_registered_stages() -> None:
    """A runner with a substituted stage in the chain never fuses it."""
    s = Setup(StackConfig(), False, False)
    try:
        reg = S.registry()
        r = Runner(s.ctx, {S.IP_INPUT: reg[S.IP_INPUT], S.UDP_INPUT: reg[S.UDP_INPUT]})
        assert set(r.fused) == {S.IP_INPUT}
        r2 = Runner(s.ctx, {S.ETHER_INPUT: reg[S.ETHER_INPUT], S.IP_INPUT: reg[S.IP_INPUT],
                            S.UDP_INPUT: udp._udp_input_slow})
        assert r2.fused == {}
    finally:
        s.close()


ether_frame = st.fixed_dictionaries({
    "group": st.sampled_from([False] * 6 + [True]),
    "et": st.sampled_from([b"\x08\x00"] * 6 + [b"\x86\xdd", b"\x08\x06", b"\x81\x00"]),
    "chain": st.sampled_from([False] * 8 + [True]),
})


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(frames=st.lists(ether_frame, min_size=1, max_size=40),
       length=st.sampled_from([10, 14, 60, 60, 1514, 1600]))
def test_compiled_ether_matches_slow(frames: list[dict], length: int) -> None:
    """ether_input (its compiled `_ether_input_fast`) against `_ether_input_slow`
    on batches of frames of one length: the same routing, counters, drops, headers."""
    cfg = StackConfig()
    a, b = Setup(cfg, False, True), Setup(cfg, False, False)
    try:
        outs = []
        for s, fn in ((a, ether.ether_input), (b, ether._ether_input_slow)):
            hs = []
            for p in frames:
                dmac = b"\x01\x00\x5e\x00\x00\x01" if p["group"] else b"\x02\x00\x00\x00\x00\x02"
                f = (dmac + b"\x02\x00\x00\x00\x00\x09" + p["et"] + bytes(range(256)) * 7)
                f = f[:length]
                m = s.pool.gethdr() if p["chain"] else s.pool.getcl(len(f))
                assert m and s.pool.append(m, f)
                hs.append(m)
            r = fn(s.ctx, hs)
            outs.append({"routed": r, **observe(s), "headers": s.pool.headers.tobytes()})
            for v in r.values():
                s.pool.freem_batch(v)
        assert outs[0] == outs[1]
    finally:
        a.close()
        b.close()


def test_compiled_ether_is_taken() -> None:
    s = Setup(StackConfig(), False, True)
    try:
        specs = [{"plen": 18, "dport": 53, "sport": 1000, "peer": k % 2, "odd": "none"}
                 for k in range(16)]
        hs = [s.load(p) for p in specs]
        r = ether._ether_input_fast(s.ctx, hs)
        assert r == {S.IP_INPUT: hs}
        assert s.ctx.stats.counters["ether.if_ibytes"] == 16 * 60
        s.pool.freem_batch(hs)
    finally:
        s.close()
