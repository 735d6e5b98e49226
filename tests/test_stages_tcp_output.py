"""tcp_output: segments built for a connection, checked by scapy (checksums, seq, flags)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.mbuf import layout as L
from dispatch.packet.checksum import ones_sum
from dispatch.stages import socket as so
from dispatch.stages import tcp_output as to
from dispatch.stages.base import Ctx, Runner, StackConfig
from dispatch.stages.sndbuf import sb_snd_flush
from dispatch.stages.socktab import (
    IPPROTO_TCP,
    P_MAXSEG,
    P_RCV_NXT,
    P_SND_CWND,
    P_SND_MAX,
    P_SND_NXT,
    P_SND_UNA,
    P_SND_WND,
    P_STATE,
    P_TFLAGS,
    P_TS_RECENT,
    SocketTable,
    addr_int,
    pf_of,
)
from dispatch.stages.tcp_var import TCPS_ESTABLISHED, TF_RCVD_TSTMP


@pytest.fixture
def ctx(pool_name: str) -> Iterator[Ctx]:
    pool = MbufPool.create(pool_name, PoolConfig(nmbufs=1024, nclusters=256, njumbop=64,
                                                 njumbo9=0, njumbo16=0))
    tab = SocketTable.create(None, 16)
    c = Ctx(pool, config=StackConfig(), sockets=tab)
    yield c
    for i in tab.indices():  # data the (absent) peer never acknowledged
        sb_snd_flush(c, tab, i)
    tab.close()
    audit = pool.audit()
    pool.close()
    assert audit.whole, audit


def connection(ctx: Ctx, *, v6: bool = False, mss: int = 1000, ts: bool = False) -> int:
    la, fa = ("fd00::1", "2001:db8::2") if v6 else ("10.0.0.1", "192.0.2.2")
    fam, a = addr_int(la)
    _, f = addr_int(fa)
    tab = ctx.sockets
    i, _ = tab.insert_key((pf_of(IPPROTO_TCP, fam), a, 80, f, 3333))
    tab.set(i, P_STATE, TCPS_ESTABLISHED)
    tab.set(i, P_SND_UNA, 0xFFFFF000)
    tab.set(i, P_SND_NXT, 0xFFFFF000)
    tab.set(i, P_SND_MAX, 0xFFFFF000)
    tab.set(i, P_SND_WND, 1 << 20)  # the peer's window and cwnd let everything go at once
    tab.set(i, P_SND_CWND, 1 << 20)
    tab.set(i, P_RCV_NXT, 777)
    tab.set(i, P_MAXSEG, mss)
    if ts:
        tab.set(i, P_TFLAGS, TF_RCVD_TSTMP)
        tab.set(i, P_TS_RECENT, 4242)
    return i


def parse(ctx: Ctx, out: dict[str, list[int]]) -> list[tuple[object, int, int]]:
    got = []
    for name, hs in out.items():
        for m in hs:
            raw = ctx.pool.chain_bytes(m)
            got.append(((IPv6 if name == "ip6_output" else IP)(raw),
                        ctx.pool.hget(m, L.W_CSUM_FLAGS), ctx.pool.hget(m, L.W_VTAG)))
        ctx.pool.freem_batch(hs)
    return got


def sw_sum_ok(pkt: object) -> bool:
    again = pkt.copy()
    del again[TCP].chksum
    return pkt.__class__(bytes(again))[TCP].chksum == pkt[TCP].chksum


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("ts", [False, True])
def test_segments_to_the_mss(ctx: Ctx, v6: bool, ts: bool) -> None:
    i = connection(ctx, v6=v6, ts=ts)
    data = bytes(range(256)) * 17  # 4352 bytes
    routed = so.sosend(ctx, i, data)
    out = Runner(ctx, {"tcp_output": to.tcp_output}).run("tcp_output", routed["tcp_output"], 9)
    segs = parse(ctx, out)
    mss = 1000 - (12 if ts else 0)
    assert [len(bytes(p[TCP].payload)) for p, _, _ in segs] == \
        [mss] * (len(data) // mss) + [len(data) % mss]
    seq = 0xFFFFF000
    for k, (p, flags, _) in enumerate(segs):
        t = p[TCP]
        assert t.seq == seq and t.ack == 777 and t.sport == 80 and t.dport == 3333
        assert t.flags == ("PA" if k == len(segs) - 1 else "A")
        assert flags == 0 and sw_sum_ok(p)
        if ts:
            assert dict(t.options)["Timestamp"] == (9 // 1_000_000, 4242)
        seq = (seq + len(bytes(t.payload))) & 0xFFFFFFFF
    assert b"".join(bytes(p[TCP].payload) for p, _, _ in segs) == data
    assert ctx.sockets.get(i, P_SND_NXT) == seq
    c = ctx.stats.counters
    assert c["tcp.tcps_sndpack"] == len(segs) and c["tcp.tcps_sndbyte"] == len(data)
    assert c["copies.copyin_bytes"] == len(data)


def test_txcsum_marks_for_the_nic(ctx: Ctx) -> None:
    ctx.extra["txcsum"] = True
    i = connection(ctx)
    routed = so.sosend(ctx, i, b"q" * 1500)
    segs = parse(ctx, to.tcp_output(ctx, routed["tcp_output"]))
    for p, flags, _ in segs:
        assert flags == L.CSUM_TCP
        # th_sum holds the pseudo-header sum: completing it over the segment gives the real one
        raw = bytes(p[TCP])
        again = p.copy()
        del again[TCP].chksum
        real = IP(bytes(again))[TCP].chksum
        assert (~ones_sum(raw) & 0xFFFF) == real


def test_tso_one_large_segment(ctx: Ctx) -> None:
    ctx.extra["tso"] = True
    i = connection(ctx, mss=1448)
    data = b"t" * 20000
    routed = so.sosend(ctx, i, data)
    segs = parse(ctx, to.tcp_output(ctx, routed["tcp_output"]))
    ((p, flags, vtag),) = segs
    assert flags & L.CSUM_TSO and flags & L.CSUM_TCP and vtag >> 16 == 1448
    assert len(bytes(p[TCP].payload)) == 20000 and p[IP].len == 20040


def test_control_segments(ctx: Ctx) -> None:
    i = connection(ctx, ts=True)
    ctx.now = 5_000_000
    m = to.tcp_respond(ctx, i, 0x10)
    (p, _, _), = parse(ctx, {"ip_output": [m]})
    assert p[TCP].flags == "A" and p[TCP].ack == 777 and sw_sum_ok(p)
    assert dict(p[TCP].options)["Timestamp"] == (5, 4242)
    assert p[TCP].window == 65535  # unscaled: no window scale agreed
    r = to.tcp_rst(ctx, family=4, src=bytes([10, 0, 0, 1]), dst=bytes([1, 2, 3, 4]), sport=1,
                   dport=2, seq=99, ack=0, flags=0x04)
    (q, _, _), = parse(ctx, {"ip_output": [r]})
    assert q[TCP].flags == "R" and q[TCP].seq == 99 and sw_sum_ok(q)
