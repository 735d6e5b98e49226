"""The vectorised fast paths of ether_input / ip_input against the per-packet reference.

Random batches mix common frames (untagged unicast IPv4 TCP/UDP/ICMP for a local
address) with unusual ones (VLAN, IPv6, ARP, group addresses, options, fragments,
bad checksums with and without CSUM flags, short and truncated frames, padding,
chains, internal-storage mbufs, loopback and non-local addresses, other
protocols), under several configurations. Two copies of the same mbufs go through
the fast stages and through `_ether_input_slow` / `_ip_input_slow`; the routed
lists (as packet indices), the statistics and every header word must agree.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.mbuf import layout as L
from dispatch.stages.base import Ctx, StackConfig
from dispatch.stages.ether import _ether_input_slow, ether_input
from dispatch.stages.ip import _ip_input_slow, ip_input

POOL = PoolConfig(nmbufs=1024, nclusters=512, njumbop=8, njumbo9=2, njumbo16=2, bucket=16)
CV = L.CSUM_L3_CALC | L.CSUM_L3_VALID
# header words compared (W_EXT, W_OWNER and a chain's W_NEXT name different buffers in
# the two copies: W_NEXT is compared as zero or not)
WORDS = [L.W_DATA, L.W_LEN, L.W_TYPE, L.W_FLAGS, L.W_PKTLEN, L.W_FLOWID,
         L.W_RSSTYPE, L.W_RCVIF, L.W_CSUM_FLAGS, L.W_CSUM_DATA, L.W_HDRLENS, L.W_VTAG,
         L.W_SOCKID, L.W_AUX]


@pytest.fixture(autouse=True)
def small_batches_too(monkeypatch):
    """Let batches of any size from 4 up take the fast path, so that small random
    batches exercise it (the production threshold only decides speed)."""
    import dispatch.stages.ether as E
    import dispatch.stages.ip as IP

    monkeypatch.setattr(E, "_FAST_MIN", 4)
    monkeypatch.setattr(IP, "_FAST_MIN", 4)


@pytest.fixture
def pool(pool_name: str):
    p = MbufPool.create(pool_name, POOL)
    yield p
    p.close()


def cksum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


@st.composite
def packets(draw: st.DrawFn, mixed: bool = True) -> dict:
    """A frame's recipe; with mixed=False only variations the fast path takes
    (for the first configurations): whole batches of them reach it."""
    common = not mixed or draw(st.booleans()) or draw(st.booleans()) or draw(st.booleans())
    p = {"dmac": b"\x02\x00\x00\x00\x00\x02", "vlan": False, "et": 0x0800, "opts": 0,
         "proto": draw(st.sampled_from([6, 17, 1])), "off": 0, "src": "10.0.0.2",
         "dst": "10.0.0.1", "ver": 4, "badsum": False, "flags": CV, "pad": 0,
         "trunc": 0, "lenfix": 0, "payload": draw(st.integers(0, 80)), "cuts": (),
         "lead": draw(st.sampled_from([0, 0, 2, 64])), "internal": False, "hdrlens": 0,
         "ihl": None}
    if draw(st.booleans()):
        p["flags"] = draw(st.sampled_from(
            [0, CV, L.CSUM_L3_CALC, CV | L.CSUM_L4_CALC] if mixed else [0, CV | L.CSUM_L4_CALC]))
    if draw(st.booleans()):
        p["pad"] = draw(st.integers(0, 30))
    if draw(st.booleans()):
        p["dst"] = draw(st.sampled_from(
            ["10.0.0.1", "10.0.0.7", "10.0.1.1"] if mixed else ["10.0.0.1", "10.0.0.7"]))
    p["hdrlens"] = draw(st.sampled_from([0, 0x12345678]))
    if not common:
        kind = draw(st.sampled_from([
            "vlan", "ipv6", "arp", "other_et", "bcast", "mcast", "opts", "frag", "mf",
            "badsum", "trunc", "short", "tiny", "lenbig", "lensmall", "nonlocal", "bcast_ip",
            "mcast_ip", "loop_src", "loop_dst", "proto", "ver", "ihl_small", "chain",
            "internal", "zero_dst"]))
        if kind == "vlan":
            p["vlan"] = True
        elif kind == "ipv6":
            p["et"] = 0x86DD
        elif kind == "arp":
            p["et"] = 0x0806
        elif kind == "other_et":
            p["et"] = draw(st.sampled_from([0x1234, 0x0801, 0x86DE]))
        elif kind == "bcast":
            p["dmac"] = b"\xff" * 6
        elif kind == "mcast":
            p["dmac"] = b"\x01\x00\x5e\x00\x00\x01"
        elif kind == "opts":
            p["opts"] = draw(st.sampled_from([4, 8, 40]))
        elif kind == "frag":
            p["off"] = draw(st.sampled_from([0x2000, 0x0001, 0x2003, 0x0010]))
        elif kind == "mf":
            p["off"] = draw(st.sampled_from([0x4000, 0x8000]))  # DF, reserved: not fragments
        elif kind == "badsum":
            p["badsum"] = True
        elif kind == "trunc":
            p["trunc"] = draw(st.integers(1, 30))
        elif kind == "short":
            p["trunc"] = 10_000  # leaves only part of the Ethernet / IP header
            p["keep"] = draw(st.integers(0, 33))
        elif kind == "tiny":
            p["trunc"] = 10_000
            p["keep"] = draw(st.integers(0, 13))
        elif kind == "lenbig":
            p["lenfix"] = draw(st.integers(1, 40))
        elif kind == "lensmall":
            p["lenfix"] = -draw(st.integers(1, 60))
        elif kind == "nonlocal":
            p["dst"] = "192.168.7.9"
        elif kind == "bcast_ip":
            p["dst"] = "255.255.255.255"
        elif kind == "mcast_ip":
            p["dst"] = draw(st.sampled_from(["224.0.0.1", "239.1.2.3", "240.0.0.1"]))
        elif kind == "zero_dst":
            p["dst"] = "0.0.0.0"
        elif kind == "loop_src":
            p["src"] = "127.0.0.1"
        elif kind == "loop_dst":
            p["dst"] = "127.0.0.1"
        elif kind == "proto":
            p["proto"] = draw(st.sampled_from([0, 2, 47, 58, 132]))
        elif kind == "ver":
            p["ver"] = draw(st.sampled_from([0, 6, 5, 15]))
        elif kind == "ihl_small":
            p["ihl"] = draw(st.integers(0, 4))
        elif kind == "chain":
            p["cuts"] = (draw(st.integers(1, 60)),)
        elif kind == "internal":
            p["internal"] = True
    return p


def frame(p: dict) -> bytes:
    payload = bytes(range(p["payload"] % 256)) + b"\x00" * max(0, p["payload"] - 256)
    opts = bytes([1] * p["opts"])  # NOPs
    hl = 20 + len(opts)
    ihl = p["ihl"] if p["ihl"] is not None else hl // 4
    total = hl + len(payload)
    ip_len = max(0, min(0xFFFF, total + p["lenfix"]))
    src = bytes(int(x) for x in p["src"].split("."))
    dst = bytes(int(x) for x in p["dst"].split("."))
    h = struct.pack("!BBHHHBBH4s4s", (p["ver"] << 4) | (ihl & 0xF), 0, ip_len, 0x1234,
                    p["off"], 64, p["proto"], 0, src, dst) + opts
    s = cksum(h)
    if p["badsum"]:
        s ^= 0x0101
    h = h[:10] + struct.pack("!H", s) + h[12:]
    eth = p["dmac"] + b"\x02\x00\x00\x00\x00\x01"
    if p["vlan"]:
        eth += struct.pack("!HH", 0x8100, 0x2007)
    eth += struct.pack("!H", p["et"])
    f = eth + h + payload + b"\xee" * p["pad"]
    if p["trunc"] >= 10_000:
        f = f[: p["keep"]]
    elif p["trunc"]:
        f = f[: max(0, len(f) - p["trunc"])]
    return f


def load(pool: MbufPool, p: dict) -> int:
    f = frame(p)
    w = pool.w
    if p["internal"] and len(f) <= L.MHLEN:
        head = pool.gethdr()
        w[(head << 6) + L.W_DATA] = L.M_PKTDAT_OFF
        o = pool.data_offset(head)
        pool.buf[o : o + len(f)] = f
        w[(head << 6) + L.W_LEN] = len(f)
    else:
        bounds = [0, *sorted(c for c in p["cuts"] if 0 < c < len(f)), len(f)]
        head = prev = 0
        for a, z in zip(bounds, bounds[1:]):
            m = pool.getcl(pkthdr=not head)
            assert m
            w[(m << 6) + L.W_DATA] = p["lead"] if not head else 0
            o = pool.data_offset(m)
            pool.buf[o : o + z - a] = f[a:z]
            w[(m << 6) + L.W_LEN] = z - a
            if prev:
                w[(prev << 6) + L.W_NEXT] = m
            else:
                head = m
            prev = m
    w[(head << 6) + L.W_PKTLEN] = len(f)
    w[(head << 6) + L.W_CSUM_FLAGS] = p["flags"]
    w[(head << 6) + L.W_HDRLENS] = p["hdrlens"]
    return head


def run(pool: MbufPool, cfg: StackConfig, pkts: list[dict], fast: bool, direct_ip: bool):
    hs = [load(pool, p) for p in pkts]
    index = {h: i for i, h in enumerate(hs)}
    ctx = Ctx(pool, config=cfg)
    eth = ether_input if fast else _ether_input_slow
    ipf = ip_input if fast else _ip_input_slow
    routed: dict[str, list] = {}
    if direct_ip:  # ip_input on frames whose Ethernet header is already stripped
        for h in hs:
            b = h << 6
            if pool.w[b + L.W_LEN] >= 14:
                pool.w[b + L.W_DATA] += 14
                pool.w[b + L.W_LEN] -= 14
                pool.w[b + L.W_PKTLEN] -= 14
        first = {"ip_input": list(hs)}
    else:
        first = eth(ctx, list(hs))
    for k, v in first.items():
        if k != "ip_input":
            routed[k] = v
    if "ip_input" in first:
        routed.update(ipf(ctx, first["ip_input"]))
    words = {}
    live = []
    for v in routed.values():
        for h in v:
            live.append(h)
            if h in index:
                words[index[h]] = [pool.w[(h << 6) + x] for x in WORDS] + [
                    pool.w[h << 6] != 0]
    out = {k: [index.get(h, -1) for h in v] for k, v in routed.items()}
    snap = ctx.stats.snapshot()
    for h in live:
        pool.freem(h)
    return out, snap, words


CONFIGS = [
    StackConfig(),
    StackConfig(auto_sockets=True),
    StackConfig(forwarding=True),
    StackConfig(local_v4=("10.0.0.1", "10.0.0.7")),
    StackConfig(local_v4=("10.0.0.7",), forwarding=True),
]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pkts=st.lists(packets(), min_size=0, max_size=40)
       | st.lists(packets(mixed=False), min_size=4, max_size=40),
       cfg=st.sampled_from(CONFIGS), direct_ip=st.booleans())
def test_fast_path_matches_reference(pool: MbufPool, pkts: list[dict], cfg: StackConfig,
                                     direct_ip: bool) -> None:
    ref = run(pool, cfg, pkts, fast=False, direct_ip=direct_ip)
    got = run(pool, cfg, pkts, fast=True, direct_ip=direct_ip)
    assert got[0] == ref[0]
    assert got[1] == ref[1]
    assert got[2] == ref[2]


@pytest.mark.parametrize("flags", [0, CV])
@pytest.mark.parametrize("proto", [6, 17, 1])
def test_common_batch_takes_the_fast_path(pool: MbufPool, monkeypatch, flags: int,
                                          proto: int) -> None:
    """A batch of plain local IPv4 frames never reaches the per-packet code."""
    import dispatch.stages.ether as E
    import dispatch.stages.ip as IP

    def boom(ctx, batch):
        raise AssertionError("fell back to the per-packet path")

    monkeypatch.setattr(E, "_ether_input_slow", boom)
    monkeypatch.setattr(IP, "_ip_input_slow", boom)
    p = {"dmac": b"\x02\x00\x00\x00\x00\x02", "vlan": False, "et": 0x0800, "opts": 0,
         "proto": proto, "off": 0, "src": "10.0.0.2", "dst": "10.0.0.1", "ver": 4,
         "badsum": False, "flags": flags, "pad": 0, "trunc": 0, "lenfix": 0, "payload": 18,
         "cuts": (), "lead": 0, "internal": False, "hdrlens": 0, "ihl": None}
    out, snap, _ = run(pool, StackConfig(), [p] * 32, fast=True, direct_ip=False)
    stage_name = {6: "tcp_input", 17: "udp_input", 1: "icmp_input"}[proto]
    assert out == {stage_name: list(range(32))}
    assert snap["counters"]["ip.ips_delivered"] == 32
