"""Tests for dispatch.stages.kernels: the compiled socket lookup against the
table's own, and the compiled soreceive against the per-packet one.

(The fused input kernel is held to the stages run one by one on random mixed
batches in test_stages_inputfast.py.)
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from stage_helpers import SMALL, load

from dispatch.mbuf import MbufPool
from dispatch.mbuf import layout as L
from dispatch.packet.checksum import ones_sum
from dispatch.packet.ipv4 import build_ipv4
from dispatch.packet.tcp import TH_ACK, TH_FIN, TH_PUSH, TH_SYN, build_tcp
from dispatch.stages import kernels as K
from dispatch.stages import socket as so
from dispatch.stages import tcp_input as ti
from dispatch.stages.base import Ctx, Runner, StackConfig
from dispatch.stages.socktab import (
    AF_INET4,
    IPPROTO_TCP,
    IPPROTO_UDP,
    P_MAXSEG,
    P_RCV_ADV,
    P_RCV_NXT,
    P_SB_HIWAT,
    P_SND_MAX,
    P_SND_NXT,
    P_SND_UNA,
    P_SND_WND,
    P_STATE,
    SocketTable,
    addr_int,
    pf_of,
)
from dispatch.stages.tcp_var import TCPS_ESTABLISHED

ADDRS = [0, 0x0A000001, 0x0A000002, 0xC0000201, 0xFFFFFFFF, 0x7F000001]
PORTS = [0, 9, 53, 80, 65535]
key_st = st.tuples(st.sampled_from([IPPROTO_TCP, IPPROTO_UDP]), st.sampled_from(ADDRS),
                   st.sampled_from(PORTS), st.sampled_from(ADDRS), st.sampled_from(PORTS))


@settings(max_examples=60, deadline=None)
@given(st.lists(key_st, max_size=24), st.lists(st.integers(0, 23), max_size=6),
       st.lists(key_st, min_size=1, max_size=24), st.integers(1, 64))
def test_compiled_lookup_finds_what_lookup_key_finds(inserts, unlinks, probes, cap):
    """Exact 4-tuples, addr:port listeners and wildcard ones, some unlinked again,
    in tables small enough that chains form: lookup4 == SocketTable.lookup_key."""
    tab = SocketTable.create(None, cap)
    try:
        made = []
        for proto, la, lp, fa, fp in inserts:
            key = (pf_of(proto, AF_INET4), la, lp, fa if lp else 0, fp if lp else 0)
            i, _ = tab.insert_key(key)
            if i >= 0:
                made.append(i)
        for j in unlinks:
            if j < len(made):
                tab.unlink(made[j])
        for proto, la, lp, fa, fp in probes:
            pf = pf_of(proto, AF_INET4)
            want = tab.lookup_key((pf, la, lp, fa, fp))
            got = K.lookup4(tab.np_w, tab.np_buckets, tab.np_mask, pf, la, lp, fa, fp)
            assert got == want, (proto, hex(la), lp, hex(fa), fp)
    finally:
        tab.close()


def _delivered(pool: MbufPool, tab: SocketTable, socks: list[int], payloads: list[bytes]
               ) -> list[int]:
    """Packets as udp_input leaves them: payload only, with their socket."""
    hs = []
    for s, p in zip(socks, payloads):
        m = load(pool, p)
        pool.w[(m << 6) + L.W_SOCKID] = s + 1
        tab.q[(s << 6) + 20] += len(p)  # Q_SB_APPENDED, as sbappend does
        hs.append(m)
    return hs


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.binary(max_size=300)), min_size=1,
                max_size=40), st.booleans())
def test_compiled_soreceive_equals_the_per_packet_one(pkts, digest):
    """Copied bytes, the user's buffer as the last read leaves it, socket counters,
    stats and digests: the compiled pass and the per-packet loop agree."""
    results = []
    for fast in (True, False):
        pool = MbufPool.create(f"demu-test-{os.getpid()}-kern{int(fast)}", SMALL)
        tab = SocketTable.create(None, 8)
        try:
            socks = [tab.bind_udp("0.0.0.0", 9 + k) for k in range(3)]
            ctx = Ctx(pool, config=StackConfig(digest=digest), sockets=tab)
            hs = _delivered(pool, tab, [socks[s] for s, _ in pkts], [p for _, p in pkts])
            if fast:
                assert so._soreceive_fast(ctx, hs) == {}
            else:
                assert so._soreceive_slow(ctx, hs) == {}
            results.append((bytes(so._uio(ctx)), tab.q.tobytes(), dict(ctx.stats.counters),
                            so.socket_digests(ctx)))
            assert pool.audit().whole
        finally:
            tab.close()
            pool.close()
    assert results[0] == results[1]


def test_compiled_soreceive_refuses_a_packet_without_socket(pool):
    tab = SocketTable.create(None, 4)
    try:
        s = tab.bind_udp("0.0.0.0", 9)
        ctx = Ctx(pool, config=StackConfig(), sockets=tab)
        hs = _delivered(pool, tab, [s, s], [b"a" * 10, b"b" * 10])
        pool.w[(hs[1] << 6) + L.W_SOCKID] = 0
        before = (pool._mh.tobytes(), tab.q.tobytes())
        assert so._soreceive_fast(ctx, hs) is None
        assert (pool._mh.tobytes(), tab.q.tobytes()) == before
        so.soreceive(ctx, hs)  # the per-packet path drops the socketless one, counted
        assert ctx.stats.drops["soreceive"]["nosock"] == 1
        assert pool.audit().whole
    finally:
        tab.close()



# ------------------------------------------------------------- tcp4_input
HOST, PEERS = "10.0.0.1", ["192.0.2.1", "192.0.2.2", "198.51.100.9"]
seg_st = st.fixed_dictionaries({
    "conn": st.integers(0, 2),
    "kind": st.sampled_from(["next"] * 10 + ["gap", "dup", "old_ack", "ack_ahead", "fin",
                                             "syn", "psh", "win", "opts", "badsum"]),
    "plen": st.sampled_from([1, 100, 536, 1460, 1460, 1460]),
    "csum": st.sampled_from(["sw", "sw", "offload", "offload_partial", "bad_offload"]),
    "pad": st.sampled_from([0] * 6 + [4]),
})


class _TcpWorld:
    """A host with three established connections (one with a small receive
    buffer), and a peer that builds segments for them."""

    def __init__(self, name: str, hiwat: int) -> None:
        self.pool = MbufPool.create(name, SMALL)
        self.tab = SocketTable.create(None, 16)
        self.ctx = Ctx(self.pool, config=StackConfig(), sockets=self.tab)
        self.runner = Runner(self.ctx, {"tcp_input": ti.tcp_input})
        self.conns = []
        _, la = addr_int(HOST)
        for k, peer in enumerate(PEERS):
            _, fa = addr_int(peer)
            i, _ = self.tab.insert_key((pf_of(IPPROTO_TCP, AF_INET4), la, 80, fa, 40000 + k))
            for f, v in ((P_STATE, TCPS_ESTABLISHED), (P_RCV_NXT, 1000), (P_RCV_ADV, 1000),
                         (P_SND_UNA, 5), (P_SND_NXT, 5), (P_SND_MAX, 5), (P_MAXSEG, 1460),
                         (P_SND_WND, 65535), (P_SB_HIWAT, hiwat if k == 2 else 0)):
                self.tab.set(i, f, v)
            self.conns.append([i, peer, 40000 + k, 1000])  # next sequence the peer sends

    def frame(self, s: dict) -> tuple[bytes, int, int]:
        c = self.conns[s["conn"]]
        seq, ack, flags, win, opts = c[3], 5, TH_ACK, 65535, b""
        kind = s["kind"]
        if kind == "gap":
            seq += 1460
        elif kind == "dup":
            seq -= s["plen"]
        elif kind == "old_ack":
            ack = 4
        elif kind == "ack_ahead":
            ack = 9
        elif kind == "fin":
            flags |= TH_FIN
        elif kind == "syn":
            flags = TH_SYN | TH_ACK
        elif kind == "psh":
            flags |= TH_PUSH
        elif kind == "win":
            win = 4096
        elif kind == "opts":
            opts = b"\x01\x01\x08\x0a" + bytes(8)
        payload = bytes((seq + j) & 0xFF for j in range(s["plen"]))
        t = build_tcp(src_port=c[2], dst_port=80, seq=seq, ack=ack, flags=flags, window=win,
                      payload=payload, options=opts, src_ip=c[1], dst_ip=HOST)
        if kind == "badsum":
            t = t[:16] + bytes([t[16] ^ 0xFF]) + t[17:]
        if kind in ("next", "psh", "win", "opts"):
            c[3] = (seq + s["plen"]) & 0xFFFFFFFF
        frame = build_ipv4(src=c[1], dst=HOST, proto=6, payload=t) + bytes(s["pad"])
        flags_csum, data = {"sw": (0, 0),
                            "offload": (L.CSUM_DATA_VALID | L.CSUM_PSEUDO_HDR, 0xFFFF),
                            # without CSUM_PSEUDO_HDR a NIC reports the segment's own sum
                            "offload_partial": (L.CSUM_DATA_VALID, ones_sum(t)),
                            "bad_offload": (L.CSUM_DATA_VALID | L.CSUM_PSEUDO_HDR, 0x1234),
                            }[s["csum"]]
        return frame, flags_csum, data

    def run(self, frames: list[tuple[bytes, int, int]], now: int) -> dict:
        hs = []
        for f, fl, d in frames:
            m = load(self.pool, f, csum_flags=fl, csum_data=d)
            self.pool.hset(m, L.W_HDRLENS, 20 << 8)
            hs.append(m)
        out = self.runner.run("tcp_input", hs, now)
        seen = {k: [(m, self.pool.chain_bytes(m)) for m in v] for k, v in out.items()}
        for v in out.values():
            self.pool.freem_batch(v)
        return seen

    def state(self) -> tuple:
        st_ = {k: v for k, v in self.ctx.stats.counters.items() if v}
        dr = {s: {r: n for r, n in d.items() if n} for s, d in self.ctx.stats.drops.items()}
        return (self.tab.w.tobytes(), self.tab.q.tobytes(), st_, dr,
                sorted(self.ctx.extra.get(ti._DELACK_KEY, ())), self.pool.headers.tobytes())

    def close(self) -> None:
        self.tab.close()
        self.pool.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(seg_st, min_size=1, max_size=12), min_size=1, max_size=4),
       st.sampled_from([0, 3000]))
def test_compiled_tcp_input_equals_segment_by_segment(batches, hiwat):
    """Batches of segments on three connections, mostly in order (the compiled
    header-prediction path's case), some out of order, duplicate, with old or
    impossible ACKs, FIN, SYN, a new window, options, bad checksums, padding, or
    beyond a small receive buffer: with the compiled path and without, the same
    routed packets and ACK segments, header words, socket table, counters, drops
    and delayed-ACK set."""
    pid = os.getpid()
    worlds = [_TcpWorld(f"demu-test-{pid}-tcpk{k}", hiwat) for k in range(2)]
    orig = ti._FAST_MIN
    try:
        now = 10**9
        for batch in batches:
            now += 10**6
            results = []
            for k, wd in enumerate(worlds):
                ti._FAST_MIN = orig if k == 0 else 10**9
                frames = [wd.frame(s) for s in batch]
                before = wd.ctx.stats.counters.get("tcp.tcps_rcvtotal", 0)
                results.append((wd.run(frames, now), wd.state()))
                assert wd.ctx.stats.counters["tcp.tcps_rcvtotal"] == before + len(batch)
            assert results[0] == results[1]
    finally:
        ti._FAST_MIN = orig
        for wd in worlds:
            wd.close()



def test_compiled_tcp_input_takes_in_order_data_and_acks_every_batch(monkeypatch):
    """Eight in-order 1460-byte segments: one compiled pass, the payloads delivered,
    rcv_nxt advanced, and one ACK (for the whole batch) sent back."""
    calls = []
    real = ti._k.tcp4_input

    def counting(*a):  # type: ignore[no-untyped-def]
        r = real(*a)
        calls.append(r)
        return r

    monkeypatch.setattr(ti._k, "tcp4_input", counting)
    wd = _TcpWorld(f"demu-test-{os.getpid()}-tcpk", 0)
    try:
        frames = [wd.frame({"conn": 0, "kind": "next", "plen": 1460, "csum": "sw", "pad": 0})
                  for _ in range(8)]
        out = wd.run(frames, 10**9)
        assert calls == [8 * 1460]
        assert [len(b) for _, b in out["soreceive"]] == [1460] * 8
        assert len(out["ip_output"]) == 1  # the delayed ACK collected by the 2nd segment
        assert wd.tab.get(wd.conns[0][0], P_RCV_NXT) == 1000 + 8 * 1460
    finally:
        wd.close()


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=3000), st.integers(0, 64))
def test_compiled_ones_sum_equals_rfc1071(data, start):
    """8 bytes at a time through a u64 view, any alignment and parity, against the
    literal RFC 1071 loop."""
    from dispatch.packet.checksum import fold

    buf = np.zeros(start + len(data) + 16, np.uint8)
    buf[start : start + len(data)] = np.frombuffer(data, np.uint8)
    seg64 = buf[: len(buf) // 8 * 8].view(np.uint64)
    assert fold(K.ones_sum(buf, seg64, start, len(data))) == fold(ones_sum(data))
