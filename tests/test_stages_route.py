"""RouteTable (LPM against a brute-force reference), NeighborTable, interfaces."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.stages.base import Ctx, StackConfig
from dispatch.stages.route import (
    Interface,
    NeighborTable,
    RouteTable,
    interfaces,
    local_addrs,
)


def brute(prefixes: list[tuple[str, int]], dst: bytes) -> tuple[str, int] | None:
    """An independent reference: the longest matching prefix, last added wins ties."""
    a = ipaddress.ip_address(dst)
    best = None
    for p, ifx in prefixes:
        n = ipaddress.ip_network(p, strict=False)
        if n.version == a.version and a in n and (best is None or n.prefixlen >= best[0]):
            best = (n.prefixlen, str(n), ifx)
    return None if best is None else (best[1], best[2])


def _prefix(bits: int) -> st.SearchStrategy[str]:
    fam = ipaddress.IPv4Address if bits == 32 else ipaddress.IPv6Address
    # a few bit patterns, so that prefixes nest and addresses hit them
    base = st.sampled_from([0, (1 << bits) - 1, 0xA << (bits - 4), 0xA5A5 << (bits - 16)])
    noise = st.integers(0, (1 << bits) - 1)
    return st.builds(lambda b, n, plen, k: f"{fam((b ^ (n >> k)) & ((1 << bits) - 1))}/{plen}",
                     base, noise, st.integers(0, bits), st.integers(0, bits))


@pytest.mark.parametrize("bits", [32, 128])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_lpm_matches_brute_force(bits: int, data: st.DataObject) -> None:
    prefixes = data.draw(st.lists(st.tuples(_prefix(bits), st.integers(0, 7)), max_size=25))
    rt = RouteTable()
    for p, ifx in prefixes:
        rt.add(p, ifindex=ifx)
    addrs = data.draw(st.lists(_prefix(bits).map(
        lambda p: ipaddress.ip_network(p, strict=False).network_address.packed), max_size=30))
    for nets, _ in prefixes[:10]:  # and addresses inside the prefixes
        addrs.append(ipaddress.ip_network(nets, strict=False).broadcast_address.packed)
    for a in addrs:
        for _ in range(2):  # the second time from the cache
            r = rt.lookup(a)
            ref = rt.lookup_ref(a)
            assert r is ref
            want = brute(prefixes, a)
            assert (None if r is None else (r.prefix, r.ifindex)) == want


def test_add_replace_delete_and_gateways() -> None:
    rt = RouteTable()
    d = rt.add("0.0.0.0/0", ifindex=0, gateway="10.0.0.254")
    n = rt.add("10.0.0.0/8", ifindex=1)
    h = rt.add("10.1.2.3/32", ifindex=2)
    v6 = rt.add("2001:db8::/32", ifindex=3, gateway="fe80::1")
    assert [r.id for r in (d, n, h, v6)] == [0, 1, 2, 3]
    dst = ipaddress.ip_address("10.1.2.3").packed
    assert rt.lookup(dst) is h
    assert rt.lookup(ipaddress.ip_address("10.9.9.9").packed) is n
    assert rt.lookup(ipaddress.ip_address("8.8.8.8").packed) is d
    assert d.next_hop(b"\x08\x08\x08\x08") == bytes([10, 0, 0, 254])
    assert n.next_hop(dst) == dst
    assert rt.lookup(ipaddress.ip_address("2001:db8::5").packed) is v6
    assert rt.lookup(ipaddress.ip_address("2001:db9::5").packed) is None
    assert rt.delete("10.1.2.3/32") and not rt.delete("10.1.2.3/32")
    assert rt.lookup(dst) is n
    n2 = rt.add("10.0.0.0/8", ifindex=5)
    assert n2.id == n.id and rt.routes[n.id] is n2 and rt.lookup(dst) is n2
    assert len(rt) == 3
    with pytest.raises(ValueError):
        rt.add("10.0.0.0/8", ifindex=0, gateway="fe80::1")


def test_neighbors_and_interfaces(pool_name: str) -> None:
    nt = NeighborTable()
    nt.add("10.0.0.7", "02:00:00:00:00:07")
    nt.add(ipaddress.ip_address("fd00::7").packed, bytes(6))
    assert nt.lookup(bytes([10, 0, 0, 7])) == bytes.fromhex("020000000007")
    assert nt.lookup(bytes([10, 0, 0, 8])) is None and len(nt) == 2
    ctx = Ctx(None, StackConfig(local_v4=("10.0.0.1",), local_v6=("fd00::1",)))  # type: ignore
    (i0,) = interfaces(ctx)
    assert i0.index == 0 and i0.mac == bytes.fromhex("020000000002") and i0.mtu == 1500
    v4, v6 = local_addrs(ctx)
    assert v4 == {bytes([10, 0, 0, 1])} and v6 == {ipaddress.ip_address("fd00::1").packed}
    ctx.extra["interfaces"] = [Interface(0, bytes(6), ("192.168.0.1",))]
    v4, _ = local_addrs(ctx)
    assert v4 == {bytes([10, 0, 0, 1]), bytes([192, 168, 0, 1])}
