"""tcp_input: checksums, lookup, the passive state machine, window checks, ACKs, auto sockets.

Packets are built by scapy (the independent oracle) and loaded into pool mbufs
as ip_input would leave them; every segment we send back is parsed by scapy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.mbuf import layout as L
from dispatch.stages import socket as so
from dispatch.stages import tcp_input as ti
from dispatch.stages.base import Ctx, Runner, StackConfig
from dispatch.stages.socktab import SocketTable
from dispatch.stages.tcp_var import TCPTV_DELACK_NS

CLIENT, HOST = "192.0.2.7", "10.0.0.1"
CLIENT6, HOST6 = "2001:db8::7", "fd00::1"
MS = 1_000_000


class Env:
    def __init__(self, pool: MbufPool, tab: SocketTable, **cfg: object) -> None:
        self.pool, self.tab = pool, tab
        self.ctx = Ctx(pool, config=StackConfig(**cfg), sockets=tab)
        self.runner = Runner(self.ctx, {"tcp_input": ti.tcp_input, "soreceive": so.soreceive})
        self.now = 1_000 * MS
        self.sent: list = []
        self.held: list[int] = []

    def load(self, pkt: object, *, csum_flags: int = 0, csum_data: int = 0) -> int:
        data = bytes(pkt)
        m = self.pool.getcl(max(len(data), 1))
        assert self.pool.append(m, data)
        l3 = 40 if data[0] >> 4 == 6 else (data[0] & 15) * 4
        self.pool.hset(m, L.W_HDRLENS, l3 << 8)
        self.pool.hset(m, L.W_CSUM_FLAGS, csum_flags)
        self.pool.hset(m, L.W_CSUM_DATA, csum_data)
        return m

    def run(self, *pkts: object, dt: int = MS, **kw: int) -> list:
        """Run packets through tcp_input + soreceive; returns the segments sent (scapy)."""
        self.now += dt
        out = self.runner.run("tcp_input", [self.load(p, **kw) for p in pkts], self.now)
        return self.collect(out)

    def collect(self, out: dict[str, list[int]]) -> list:
        sent = []
        for stage_name, hs in out.items():
            if stage_name == "soreceive":  # nobody reads (the runner has no soreceive)
                self.held.extend(hs)
                continue
            assert stage_name in ("ip_output", "ip6_output"), out
            for m in hs:
                raw = self.pool.chain_bytes(m)
                sent.append(IPv6(raw) if stage_name == "ip6_output" else IP(raw))
            self.pool.freem_batch(hs)
        self.sent.extend(sent)
        return sent

    def drops(self) -> dict[str, int]:
        return dict(self.ctx.stats.drops.get("tcp_input", {}))

    def stat(self, name: str) -> int:
        return self.ctx.stats.counters.get("tcp." + name, 0)


@pytest.fixture
def env(pool_name: str) -> Iterator[Env]:
    pool = MbufPool.create(pool_name, PoolConfig(nmbufs=2048, nclusters=1024, njumbop=16,
                                                 njumbo9=0, njumbo16=0))
    tab = SocketTable.create(None, 64)
    e = Env(pool, tab, digest=True)
    yield e
    for i in tab.indices():
        ti.tcp_reass_flush(e.ctx, tab, i)
    tab.close()
    audit = pool.audit()
    pool.close()
    assert audit.whole, audit


def checksum_ok(pkt: object) -> bool:
    """scapy recomputes the TCP checksum; compare with what we sent."""
    tcp = pkt[TCP]
    sent = tcp.chksum
    again = pkt.__class__(bytes(pkt))
    del again[TCP].chksum
    return IP(bytes(again))[TCP].chksum == sent if isinstance(pkt, IP) else \
        IPv6(bytes(again))[TCP].chksum == sent


def c2h(flags: str, seq: int, ack: int = 0, data: bytes = b"", *, v6: bool = False,
        sport: int = 40000, dport: int = 80, **tcp: object) -> object:
    ip = IPv6(src=CLIENT6, dst=HOST6) if v6 else IP(src=CLIENT, dst=HOST)
    p = ip / TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, **tcp)
    return p / Raw(data) if data else p


SYN_OPTS = [("MSS", 1400), ("WScale", 7), ("SAckOK", b""), ("Timestamp", (1234, 0))]


def handshake(env: Env, *, v6: bool = False, opts: list | None = None) -> tuple[int, int]:
    """Returns (the index of the connection, our ISS)."""
    env.tab.listen(6, "::" if v6 else "0.0.0.0", 80)
    (sa,) = env.run(c2h("S", 1000, v6=v6, options=SYN_OPTS if opts is None else opts))
    iss = sa[TCP].seq
    assert env.run(c2h("A", 1001, iss + 1, v6=v6)) == []
    i = env.tab.lookup(6, HOST6 if v6 else HOST, 80, CLIENT6 if v6 else CLIENT, 40000)
    assert env.tab.info(i).state == "ESTABLISHED"
    return i, iss


def delivered(env: Env, i: int) -> int:
    return env.tab.info(i).bytes_delivered


def test_syn_ack_mirrors_options_and_checksums(env: Env) -> None:
    env.tab.listen(6, "0.0.0.0", 80)
    (sa,) = env.run(c2h("S", 1000, options=SYN_OPTS))
    t = sa[TCP]
    assert sa[IP].src == HOST and sa[IP].dst == CLIENT and t.sport == 80 and t.dport == 40000
    assert t.flags == "SA" and t.ack == 1001
    assert checksum_ok(sa)
    opts = dict(t.options)
    assert opts["MSS"] == 1460 and opts["WScale"] == 6 and "SAckOK" in opts
    assert opts["Timestamp"][1] == 1234
    i = env.tab.lookup(6, HOST, 80, CLIENT, 40000)
    assert env.tab.info(i).state == "SYN_RCVD"
    # without options: no window scale, no SACK, no timestamps in the SYN-ACK
    (sa2,) = env.run(c2h("S", 5000, sport=40001, options=[]))
    assert [o[0] for o in sa2[TCP].options] == ["MSS"]


def test_lifecycle_listen_to_closed(env: Env) -> None:
    i, iss = handshake(env)
    assert env.stat("tcps_accepts") == 1
    (ack,) = env.run(c2h("PA", 1001, iss + 1, b"hello"), c2h("PA", 1006, iss + 1, b" world"))
    assert ack[TCP].ack == 1012 and ack[TCP].flags == "A" and checksum_ok(ack)
    assert dict(ack[TCP].options)["Timestamp"][1] == 1234
    (fin,) = env.run(c2h("FA", 1012, iss + 1))
    assert fin[TCP].flags == "FA" and fin[TCP].ack == 1013 and fin[TCP].seq == iss + 1
    assert env.tab.info(i).state == "LAST_ACK"
    assert env.run(c2h("A", 1013, iss + 2)) == []
    info = env.tab.info(i)
    assert info.state == "CLOSED" and info.bytes_delivered == 11
    assert env.stat("tcps_closed") == 1
    assert so.socket_digests(env.ctx)[i] == hashlib.sha256(b"hello world").hexdigest()
    # the 4-tuple is gone: a late segment draws a RST from no socket (the listener is
    # wildcard-remote, so an ACK to it is a premature ACK: reset)
    (rst,) = env.run(c2h("A", 1013, iss + 2, b"late"))
    assert rst[TCP].flags == "R" and rst[TCP].seq == iss + 2
    assert env.drops()["badsyn"] == 1


def test_ipv6_handshake_and_data(env: Env) -> None:
    i, iss = handshake(env, v6=True)
    (ack,) = env.run(c2h("PA", 1001, iss + 1, b"x" * 100, v6=True), c2h("A", 1101, iss + 1,
                                                                      b"y" * 100, v6=True))
    assert isinstance(ack, IPv6) and ack[TCP].ack == 1201 and checksum_ok(ack)
    assert delivered(env, i) == 200


def test_noport_sends_reset(env: Env) -> None:
    (r1,) = env.run(c2h("S", 77, dport=81))
    assert r1[TCP].flags == "RA" and r1[TCP].ack == 78 and r1[TCP].seq == 0
    (r2,) = env.run(c2h("A", 5, 999, b"abc", dport=81))
    assert r2[TCP].flags == "R" and r2[TCP].seq == 999
    assert env.run(c2h("R", 5, dport=81)) == []
    assert env.drops()["noport"] == 3


def test_rst_handling(env: Env) -> None:
    i, iss = handshake(env)
    # outside the window: ignored
    assert env.run(c2h("R", 1001 + 10_000_000)) == []
    # in the window but not exact: challenge ACK (RFC 5961)
    (ch,) = env.run(c2h("R", 1500))
    assert ch[TCP].flags == "A" and ch[TCP].ack == 1001
    assert env.drops()["badrst"] == 2 and env.tab.info(i).state == "ESTABLISHED"
    # a SYN on the connection: challenge ACK
    (ch2,) = env.run(c2h("S", 4242))
    assert ch2[TCP].ack == 1001 and env.drops()["badsyn"] == 1
    # exactly at rcv_nxt: reset
    assert env.run(c2h("R", 1001)) == []
    assert env.tab.info(i).state == "CLOSED" and env.stat("tcps_drops") == 1


def test_rst_and_bad_ack_in_syn_received(env: Env) -> None:
    env.tab.listen(6, "0.0.0.0", 80)
    (sa,) = env.run(c2h("S", 1000))
    iss = sa[TCP].seq
    (again,) = env.run(c2h("S", 1000))  # the SYN again: the SYN-ACK again
    assert again[TCP].flags == "SA" and again[TCP].seq == iss
    (rst,) = env.run(c2h("A", 1001, iss + 7))  # a bad ACK: reset
    assert rst[TCP].flags == "R" and rst[TCP].seq == iss + 7 and env.drops()["badack"] == 1
    assert env.run(c2h("R", 1001)) == []
    i = 1
    assert env.tab.info(i).state == "CLOSED" and env.stat("tcps_conndrops") == 1


def test_checksums_software_and_offload(env: Env) -> None:
    i, iss = handshake(env)
    bad = c2h("PA", 1001, iss + 1, b"abcd", chksum=0x1234)
    env.run(bad)
    assert env.drops()["badsum"] == 1 and env.stat("tcps_rcvbadsum") == 1
    # the NIC says it verified: the (wrong) checksum is not looked at
    ok = L.CSUM_DATA_VALID | L.CSUM_PSEUDO_HDR
    env.run(bad, csum_flags=ok, csum_data=0xFFFF)
    assert delivered(env, i) == 4
    # the NIC verified and found it bad
    env.run(c2h("PA", 1005, iss + 1, b"efgh"), csum_flags=ok, csum_data=0x1234)
    assert env.drops()["badsum"] == 2
    # a batch large enough for the numpy path, one of them bad
    pk = [c2h("PA", 1005 + 10 * k, iss + 1, bytes([48 + k]) * 10) for k in range(8)]
    pk[5] = c2h("PA", 1055, iss + 1, b"5" * 10, chksum=1)
    env.run(*pk)
    assert env.drops()["badsum"] == 3
    assert delivered(env, i) == 4 + 50  # in order up to the bad one; the rest queued
    assert env.tab.info(i).reass_segments == 2


def test_short_and_bad_offset(env: Env) -> None:
    handshake(env)
    raw = bytearray(bytes(c2h("A", 1001, 0)))
    raw[20 + 12] = 0x40  # data offset 16 bytes
    env.run(IP(bytes(raw)))
    raw[20 + 12] = 0xF0  # data offset 60 > segment length
    env.run(IP(bytes(raw)))
    assert env.drops()["badoff"] == 2
    short = bytes(IP(src=CLIENT, dst=HOST, proto=6) / Raw(b"\0" * 10))
    env.run(IP(short))
    assert env.drops()["short"] == 1


def test_duplicates_and_window(env: Env, pool_name: str) -> None:
    i, iss = handshake(env)
    env.run(c2h("PA", 1001, iss + 1, b"a" * 100))
    # a complete duplicate: dropped, counted, ACKed at once
    (ack,) = env.run(c2h("PA", 1001, iss + 1, b"a" * 100))
    assert ack[TCP].ack == 1101 and env.drops()["duppack"] == 1
    assert env.stat("tcps_rcvduppack") == 1 and env.stat("tcps_rcvdupbyte") == 100
    # a partial duplicate: trimmed, the new part delivered
    env.run(c2h("PA", 1051, iss + 1, b"a" * 50 + b"b" * 50))
    assert env.stat("tcps_rcvpartduppack") == 1 and env.stat("tcps_rcvpartdupbyte") == 50
    assert delivered(env, i) == 150
    # beyond the window (2 MiB): dropped and counted
    far = 1151 + 3 * 1024 * 1024
    (ack2,) = env.run(c2h("PA", far, iss + 1, b"z" * 10))
    assert env.drops()["afterwin"] == 1 and env.stat("tcps_rcvpackafterwin") == 1
    assert env.stat("tcps_rcvbyteafterwin") == 10 and ack2[TCP].ack == 1151


def test_window_trims_to_socket_buffer(pool_name: str) -> None:
    pool = MbufPool.create(pool_name, PoolConfig(nmbufs=256, nclusters=128, njumbop=0,
                                                 njumbo9=0, njumbo16=0))
    tab = SocketTable.create(None, 8)
    try:
        env = Env(pool, tab, sb_hiwat=1000, tcp_delack=False)
        env.runner = Runner(env.ctx, {"tcp_input": ti.tcp_input})  # nobody reads
        i, iss = handshake(env, opts=[])
        (a1,) = env.run(c2h("PA", 1001, iss + 1, b"a" * 600))
        assert a1[TCP].window == 400
        # 600 more: 200 fit in what is left of the window, the rest is trimmed
        (a2,) = env.run(c2h("PA", 1601, iss + 1, b"b" * 600))
        assert env.stat("tcps_rcvpackafterwin") == 1 and env.stat("tcps_rcvbyteafterwin") == 200
        assert tab.info(i).bytes_appended == 1000 and a2[TCP].window == 0
        # a zero-window probe
        env.run(c2h("PA", 2001, iss + 1, b"c"))
        assert env.stat("tcps_rcvwinprobe") == 1
        pool.freem_batch(env.held)
    finally:
        tab.close()
        pool.close()


def test_delayed_ack_every_second_segment_and_timer(env: Env) -> None:
    i, iss = handshake(env, opts=[("MSS", 100)])
    assert env.run(c2h("PA", 1001, iss + 1, b"a" * 100)) == []  # owed, delayed
    (ack,) = env.run(c2h("PA", 1101, iss + 1, b"b" * 100))  # the second: ACK now
    assert ack[TCP].ack == 1201
    assert env.run(c2h("PA", 1201, iss + 1, b"c" * 100)) == []
    env.ctx.now = env.now + TCPTV_DELACK_NS // 2
    assert env.collect(ti.tcp_timers(env.ctx)) == []
    env.ctx.now = env.now + TCPTV_DELACK_NS
    (late,) = env.collect(ti.tcp_timers(env.ctx))
    assert late[TCP].ack == 1301 and env.stat("tcps_delack") == 1
    assert env.collect(ti.tcp_timers(env.ctx)) == []
    # a whole batch of in-order segments: one ACK for the batch
    acks = env.run(*[c2h("PA", 1301 + 100 * k, iss + 1, b"d" * 100) for k in range(6)])
    assert len(acks) == 1 and acks[0][TCP].ack == 1901


def test_out_of_order_acks_at_once_and_fills(env: Env) -> None:
    i, iss = handshake(env)
    (dup,) = env.run(c2h("PA", 1101, iss + 1, b"b" * 100))
    assert dup[TCP].ack == 1001 and env.stat("tcps_rcvoopack") == 1
    assert env.tab.info(i).reass_segments == 1
    (ack,) = env.run(c2h("PA", 1001, iss + 1, b"a" * 100))
    assert ack[TCP].ack == 1201 and delivered(env, i) == 200
    assert so.socket_digests(env.ctx)[i] == hashlib.sha256(b"a" * 100 + b"b" * 100).hexdigest()


def test_out_of_order_fin_waits_for_the_data(env: Env) -> None:
    i, iss = handshake(env)
    env.run(c2h("FA", 1101, iss + 1, b"b" * 100))
    assert env.tab.info(i).state == "ESTABLISHED"
    (fin,) = env.run(c2h("PA", 1001, iss + 1, b"a" * 100))
    assert fin[TCP].flags == "FA" and fin[TCP].ack == 1202
    assert env.tab.info(i).state == "LAST_ACK" and delivered(env, i) == 200


def test_reassembly_limit(pool_name: str) -> None:
    pool = MbufPool.create(pool_name, PoolConfig(nmbufs=256, nclusters=128, njumbop=0,
                                                 njumbo9=0, njumbo16=0))
    tab = SocketTable.create(None, 8)
    try:
        env = Env(pool, tab, tcp_reass_maxseg=3)
        i, iss = handshake(env)
        env.run(*[c2h("PA", 1101 + 10 * k, iss + 1, b"x" * 10) for k in range(5)])
        assert env.drops()["memdrop"] == 2
        assert tab.info(i).reass_segments == 3
        env.run(c2h("PA", 1001, iss + 1, b"y" * 100))  # fills the hole even when full
        assert delivered(env, i) == 130
    finally:
        tab.close()
        audit = pool.audit()
        pool.close()
    assert audit.whole


def test_data_after_fin_and_acks_for_unsent(env: Env) -> None:
    i, iss = handshake(env)
    env.run(c2h("PA", 1001, iss + 1, b"a"))
    env.run(c2h("PA", 1002, iss + 999, b"b"))  # ACKs data we never sent
    assert env.drops()["acktoomuch"] == 1 and delivered(env, i) == 1
    assert env.stat("tcps_rcvacktoomuch") == 1
    env.run(c2h("FA", 1002, iss + 1))
    env.run(c2h("PA", 1003, iss + 1, b"c"))
    assert env.drops()["afterclose"] == 1


def test_segment_without_ack_is_dropped(env: Env) -> None:
    handshake(env)
    env.run(c2h("P", 1001, 0, b"x"))
    assert env.drops()["noack"] == 1


def test_auto_sockets_mid_stream_and_both_directions(env: Env) -> None:
    env.ctx.config = StackConfig(auto_sockets=True, digest=True)
    # a conversation captured mid-stream: each direction gets its own socket
    a = IP(src="1.1.1.1", dst="2.2.2.2") / TCP(sport=1, dport=2, seq=500, ack=9, flags="PA")
    b = IP(src="2.2.2.2", dst="1.1.1.1") / TCP(sport=2, dport=1, seq=9, ack=505, flags="PA")
    out = env.run(a / Raw(b"hello"), b / Raw(b"HI"), a.copy() / Raw(b"hello"))  # + a dup
    assert out == []  # observers send nothing
    socks = {s.local: s for s in env.tab.sockets()}
    assert socks["2.2.2.2:2"].bytes_delivered == 5 and socks["2.2.2.2:2"].auto
    assert socks["1.1.1.1:1"].bytes_delivered == 2
    assert env.drops()["duppack"] == 1
    # a SYN starts the stream at irs + 1
    s = IP(src="3.3.3.3", dst="4.4.4.4") / TCP(sport=7, dport=8, seq=100, flags="S")
    d = IP(src="3.3.3.3", dst="4.4.4.4") / TCP(sport=7, dport=8, seq=101, flags="A")
    env.run(s, d / Raw(b"abc"))
    (s8,) = [x for x in env.tab.sockets() if x.local == "4.4.4.4:8"]
    assert s8.bytes_delivered == 3 and s8.state == "ESTABLISHED"
