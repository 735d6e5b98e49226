"""ip_input / ip_output against packets built by scapy; every drop reason counted."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.l2 import Ether
from stage_helpers import SMALL, drops, free_all, load  # noqa: F401

from dispatch.mbuf import MbufPool
from dispatch.mbuf import layout as L
from dispatch.packet.checksum import in_cksum
from dispatch.stages.base import Ctx, Runner, StackConfig
from dispatch.stages.ether import ether_output
from dispatch.stages.ip import chain_sum, ip_input, ip_output
from dispatch.stages.route import Interface, NeighborTable, RouteTable


def run_ip(pool: MbufPool, pkts: list[bytes | int], **cfg: object) -> tuple[Ctx, dict]:
    ctx = Ctx(pool, StackConfig(**cfg))  # type: ignore[arg-type]
    hs = [p if isinstance(p, int) else load(pool, p) for p in pkts]
    return ctx, Runner(ctx, {"ip_input": ip_input}).run("ip_input", hs, 0)


def ip(**kw: object) -> IP:
    kw.setdefault("src", "10.0.0.2")
    kw.setdefault("dst", "10.0.0.1")
    return IP(**kw)


def test_local_delivery_by_protocol(pool: MbufPool) -> None:
    pkts = [bytes(ip() / UDP() / b"u"), bytes(ip() / TCP() / b"t"), bytes(ip() / ICMP()),
            bytes(ip(options=[IPOption_NOP(), IPOption_RR()]) / UDP())]
    ctx, out = run_ip(pool, pkts)
    assert sorted(out) == ["icmp_input", "tcp_input", "udp_input"]
    assert len(out["udp_input"]) == 2
    for m, p in zip([out["udp_input"][0], out["tcp_input"][0], out["icmp_input"][0],
                     out["udp_input"][1]], pkts):
        assert pool.chain_bytes(m) == p  # the IP header stays in place
        assert (pool.hget(m, L.W_HDRLENS) >> 8) & 0xFFFF == IP(p).ihl * 4
    assert ctx.stats.counters["ip.ips_total"] == 4
    assert ctx.stats.counters["ip.ips_delivered"] == 4
    assert drops(ctx) == {}
    free_all(pool, out)


def test_padding_is_trimmed(pool: MbufPool) -> None:
    p = bytes(ip() / UDP() / b"x")
    for cuts in ((), (30,)):
        m = load(pool, p + b"\0" * 17, cuts=cuts)
        ctx, out = run_ip(pool, [m])
        (h,) = out["udp_input"]
        assert pool.pkt_len(h) == len(p) and pool.chain_len(h) == len(p)
        assert pool.chain_bytes(h) == p
        free_all(pool, out)


def test_header_over_a_chain_is_pulled_up(pool: MbufPool) -> None:
    p = bytes(ip(options=[IPOption_RR()]) / UDP() / b"payload")
    m = load(pool, p, cuts=(5, 22))
    ctx, out = run_ip(pool, [m])
    (h,) = out["udp_input"]
    assert pool.chain_bytes(h) == p
    assert pool.length(h) >= IP(p).ihl * 4
    free_all(pool, out)


def _bad_sum(p: bytes) -> bytes:
    b = bytearray(p)
    b[10] ^= 0x55
    return bytes(b)


def test_every_validation_is_a_counted_drop(pool: MbufPool) -> None:
    good = bytes(ip() / UDP() / b"0123456789")
    pkts: list[bytes | int] = [
        good[:19],  # tooshort (pkthdr.len < 20)
        bytes(ip(version=5) / UDP()),  # badvers
        bytes(ip(ihl=4) / UDP()),  # badhlen
        bytes(ip(ihl=15) / UDP())[:40],  # badhlen: header longer than the data
        bytes(ip(src="127.0.0.1") / UDP()),  # badaddr
        bytes(ip(dst="127.0.0.1") / UDP()),  # badaddr
        _bad_sum(good),  # badsum (software)
        load(pool, good, csum_flags=L.CSUM_L3_CALC),  # badsum (the NIC says so)
        bytes(ip(len=19) / UDP()),  # badlen
        bytes(ip(len=200) / UDP()),  # tooshort: ip_len > data
        bytes(ip(dst="224.0.0.5") / UDP()),  # notmember
        bytes(ip(dst="10.9.9.9") / UDP()),  # cantforward
        bytes(ip(proto=47) / b"gre!"),  # noproto
    ]
    ctx, out = run_ip(pool, pkts)
    assert out == {}
    assert drops(ctx) == {"ip_input": {"tooshort": 2, "badvers": 1, "badhlen": 2, "badaddr": 2,
                                       "badsum": 2, "badlen": 1, "notmember": 1,
                                       "cantforward": 1, "noproto": 1}}
    assert ctx.stats.counters["ip.ips_total"] == len(pkts)
    free_all(pool, out)


def test_offloaded_checksum_is_trusted(pool: MbufPool) -> None:
    bad = _bad_sum(bytes(ip() / UDP()))
    m = load(pool, bad, csum_flags=L.CSUM_L3_CALC | L.CSUM_L3_VALID)
    ctx, out = run_ip(pool, [m])
    assert out == {"udp_input": [m]}
    free_all(pool, out)


def test_broadcast_forwarding_and_auto_sockets(pool: MbufPool) -> None:
    ctx, out = run_ip(pool, [bytes(ip(dst="255.255.255.255") / UDP())])
    (m,) = out["udp_input"]
    assert pool.flags(m) & L.M_BCAST
    free_all(pool, out)
    ctx, out = run_ip(pool, [bytes(ip(dst="192.0.2.1") / UDP())], forwarding=True)
    assert list(out) == ["ip_forward"]
    free_all(pool, out)
    ctx, out = run_ip(pool, [bytes(ip(dst="192.0.2.1") / UDP())], auto_sockets=True)
    assert list(out) == ["udp_input"]
    assert ctx.stats.counters["ip.ips_delivered"] == 1
    free_all(pool, out)


def test_local_addresses_come_from_config_and_interfaces(pool: MbufPool) -> None:
    ctx = Ctx(pool, StackConfig(local_v4=("10.0.0.1", "10.0.0.3")),
              extra={"interfaces": [Interface(0, b"\2" * 6, ("172.16.0.1",))]})
    hs = [load(pool, bytes(ip(dst=d) / UDP())) for d in ("10.0.0.3", "172.16.0.1", "10.0.0.4")]
    out = Runner(ctx, {"ip_input": ip_input}).run("ip_input", hs, 0)
    assert out == {"udp_input": hs[:2]}
    assert drops(ctx) == {"ip_input": {"cantforward": 1}}
    free_all(pool, out)


# ------------------------------------------------------------------ output

def out_ctx(pool: MbufPool, *, hwassist: int = 0, mtu: int = 1500) -> Ctx:
    rt = RouteTable()
    rt.add("10.0.0.0/24", ifindex=0)
    nt = NeighborTable()
    nt.add("10.0.0.2", "02:00:00:00:00:01")
    ifs = [Interface(0, bytes.fromhex("020000000002"), ("10.0.0.1",), mtu=mtu,
                     hwassist=hwassist)]
    return Ctx(pool, routes=rt, neighbors=nt, extra={"interfaces": ifs})


def template(payload: bytes, *, proto: int = 17, src: str = "10.0.0.1",
             dst: str = "10.0.0.2", ttl: int = 0, df: bool = False) -> bytes:
    """What a transport layer hands to ip_output: header fields partly filled."""
    h = bytearray(20)
    h[6] = 0x40 if df else 0
    h[8] = ttl
    h[9] = proto
    h[12:16] = bytes(map(int, src.split(".")))
    h[16:20] = bytes(map(int, dst.split(".")))
    return bytes(h) + payload


def send(ctx: Ctx, pkts: list[bytes], *, csum_flags: int = 0) -> dict[str, list[int]]:
    hs = [load(ctx.pool, p, lead=64, csum_flags=csum_flags) for p in pkts]
    return Runner(ctx, {"ip_output": ip_output, "ether_output": ether_output}).run(
        "ip_output", hs, 0)


def test_output_fills_the_header(pool: MbufPool) -> None:
    ctx = out_ctx(pool)
    udp = bytes(UDP(sport=5, dport=6, len=13, chksum=0) / b"hello")
    out = send(ctx, [template(udp), template(udp, ttl=9, df=True)])
    f1, f2 = (Ether(pool.chain_bytes(m)) for m in out["if_transmit"])
    for f in (f1, f2):
        p = f[IP]
        assert p.version == 4 and p.ihl == 5 and p.len == 33 and p.proto == 17
        assert in_cksum(bytes(p)[:20]) == 0
        assert f.dst == "02:00:00:00:00:01"
    assert f1[IP].ttl == 64 and f2[IP].ttl == 9 and f2[IP].flags == "DF"
    assert f2[IP].id == (f1[IP].id + 1) & 0xFFFF
    assert ctx.stats.counters["ip.ips_localout"] == 2
    free_all(pool, out)


def test_output_checksums_software_or_offloaded(pool: MbufPool) -> None:
    udp = bytes(UDP(sport=5, dport=6, len=13, chksum=0) / b"hello")
    tcp = bytes(TCP(sport=5, dport=6, chksum=0) / b"data")
    ctx = out_ctx(pool)
    out = send(ctx, [template(udp), template(tcp, proto=6)],
               csum_flags=L.CSUM_UDP | L.CSUM_TCP)
    for m in out["if_transmit"]:
        p = Ether(pool.chain_bytes(m))[IP]
        ref = IP(bytes(p))
        l4 = ref.payload
        got = l4.chksum
        del l4.chksum
        assert IP(bytes(ref)).payload.chksum == got != 0
        assert pool.hget(m, L.W_CSUM_FLAGS) == 0
    free_all(pool, out)
    ctx = out_ctx(pool, hwassist=L.CSUM_IP | L.CSUM_UDP)
    out = send(ctx, [template(udp)], csum_flags=L.CSUM_UDP)
    (m,) = out["if_transmit"]
    assert pool.hget(m, L.W_CSUM_FLAGS) == L.CSUM_IP | L.CSUM_UDP  # left to the NIC
    assert Ether(pool.chain_bytes(m))[IP].chksum == 0
    free_all(pool, out)


def test_output_source_address_and_drops(pool: MbufPool) -> None:
    ctx = out_ctx(pool, mtu=100)
    out = send(ctx, [template(b"x" * 8, src="0.0.0.0"),
                     template(b"x" * 8, dst="192.0.2.9"),  # no route
                     template(b"x" * 200),  # over the MTU, no TSO
                     b"\x65" + b"\0" * 30])  # not IPv4
    (m,) = out["if_transmit"]
    assert Ether(pool.chain_bytes(m))[IP].src == "10.0.0.1"
    assert drops(ctx) == {"ip_output": {"noroute": 1, "cantfrag": 1, "badpacket": 1}}
    free_all(pool, out)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=600), seed=st.integers(0, 2**32))
def test_chain_sum_matches_in_cksum(pool: MbufPool, data: bytes, seed: int) -> None:
    rnd = random.Random(seed)
    cuts = sorted(rnd.sample(range(1, len(data)), min(4, len(data) - 1))) if len(data) > 1 else []
    m = load(pool, data, cuts=cuts)
    off = rnd.randrange(len(data))
    n = rnd.randrange(len(data) - off + 1)
    s = chain_sum(pool, m, off, n)
    assert (-s) % 0xFFFF == in_cksum(data[off : off + n]) % 0xFFFF
    pool.freem(m)
    assert pool.audit().whole
