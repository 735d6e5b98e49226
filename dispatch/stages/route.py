"""The host's L3 tables: routes (longest-prefix match), neighbours (ARP/NDP), interfaces.

Forwarding and local output both need to answer "which interface, and which
next hop, for this destination?" (the routing table, FreeBSD's FIB) and
"which MAC address has that next hop?" (the neighbour cache, ARP for IPv4 and
NDP for IPv6). The emulator keeps both static: they are configured, never
learnt, so there is no ARP or neighbour-discovery traffic to emulate and a
missing entry is simply a counted drop.

`RouteTable` keeps one dict per prefix length per family, keyed by the
network's integer value shifted down to the prefix, and tries the lengths
from the longest to the shortest; a per-table cache of recent answers makes
the common lookup one dict probe. Every route has a small integer `id` (its
index in `RouteTable.routes`), which is what a packet carries in its
``W_AUX`` word between the stage that chose the route and ``ether_output``.
`lookup_ref` is the brute-force reference the property tests hold it to.

`Interface` describes one of the host's interfaces (index, MAC, addresses,
MTU, transmit offloads). The interface list lives in ``ctx.extra["interfaces"]``
(a sequence with ``interfaces[i].index == i``); without one, `interfaces`
derives a single interface 0 from the StackConfig (its MAC and addresses).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from dispatch.mbuf import layout as L
from dispatch.packet.ether import mac_bytes
from dispatch.packet.ipv4 import ip_bytes

if TYPE_CHECKING:
    from dispatch.stages.base import Ctx, StackConfig

__all__ = ["Route", "RouteTable", "NeighborTable", "Interface", "interfaces", "local_addrs",
           "DEFAULT_MTU", "driver_hwassist", "with_hwassist"]

DEFAULT_MTU = 1500
_CACHE_MAX = 1 << 16


@dataclass(frozen=True, slots=True)
class Route:
    """One routing-table entry. ``gateway`` is None for a directly connected prefix."""

    id: int  # index in RouteTable.routes; a packet carries id + 1 in W_AUX
    prefix: str  # normalised, e.g. "10.1.0.0/16"
    net: bytes  # network address, 4 or 16 bytes
    plen: int
    ifindex: int
    gateway: bytes | None

    def next_hop(self, dst: bytes) -> bytes:
        """The address whose MAC the frame is sent to: the gateway, or dst itself."""
        return self.gateway if self.gateway is not None else dst


class RouteTable:
    """Longest-prefix match over IPv4 and IPv6 prefixes."""

    def __init__(self) -> None:
        self.routes: list[Route] = []
        # family bits (32/128) -> prefix length -> (net >> (bits - plen)) -> Route
        self._by_len: dict[int, dict[int, dict[int, Route]]] = {32: {}, 128: {}}
        self._order: dict[int, list[int]] = {32: [], 128: []}  # lengths, longest first
        self._cache: dict[bytes, Route | None] = {}

    def add(self, prefix: str, *, ifindex: int, gateway: str | bytes | None = None) -> Route:
        """Add (or replace) a route: ``add("10.0.0.0/8", ifindex=1, gateway="10.0.0.254")``."""
        net = ipaddress.ip_network(prefix, strict=False)
        bits = net.max_prefixlen
        gw = ip_bytes(gateway) if gateway is not None else None
        if gw is not None and len(gw) * 8 != bits:
            raise ValueError(f"gateway {gateway!r} is not in {prefix}'s address family")
        plen = net.prefixlen
        key = int(net.network_address) >> (bits - plen)
        table = self._by_len[bits].setdefault(plen, {})
        old = table.get(key)
        rid = old.id if old is not None else len(self.routes)
        r = Route(rid, str(net), net.network_address.packed, plen, ifindex, gw)
        if old is not None:
            self.routes[rid] = r
        else:
            self.routes.append(r)
        table[key] = r
        self._order[bits] = sorted(self._by_len[bits], reverse=True)
        self._cache.clear()
        return r

    def delete(self, prefix: str) -> bool:
        """Remove a route; its id stays reserved (a packet in flight may carry it)."""
        net = ipaddress.ip_network(prefix, strict=False)
        bits = net.max_prefixlen
        table = self._by_len[bits].get(net.prefixlen, {})
        r = table.pop(int(net.network_address) >> (bits - net.prefixlen), None)
        if r is None:
            return False
        if not table:
            del self._by_len[bits][net.prefixlen]
            self._order[bits] = sorted(self._by_len[bits], reverse=True)
        self._cache.clear()
        return True

    def lookup(self, dst: bytes) -> Route | None:
        """The most specific route for a 4- or 16-byte destination, or None."""
        cache = self._cache
        try:
            return cache[dst]
        except KeyError:
            pass
        bits = len(dst) * 8
        tables = self._by_len.get(bits)
        if tables is None:
            return None
        x = int.from_bytes(dst, "big")
        found: Route | None = None
        for plen in self._order[bits]:
            r = tables[plen].get(x >> (bits - plen))
            if r is not None:
                found = r
                break
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[bytes(dst)] = found
        return found

    def lookup_ref(self, dst: bytes) -> Route | None:
        """Brute-force longest-prefix match (the reference for tests)."""
        addr = ipaddress.ip_address(bytes(dst))
        best: Route | None = None
        for r in self.routes:
            net = ipaddress.ip_network(r.prefix)
            if net.version != addr.version or addr not in net:
                continue
            if self._live(r) and (best is None or r.plen > best.plen):
                best = r
        return best

    def _live(self, r: Route) -> bool:
        bits = len(r.net) * 8
        return self._by_len[bits].get(r.plen, {}).get(
            int.from_bytes(r.net, "big") >> (bits - r.plen)) is r

    def __len__(self) -> int:
        return sum(len(t) for f in self._by_len.values() for t in f.values())


class NeighborTable:
    """Static ARP/NDP entries: next-hop address -> MAC address."""

    def __init__(self) -> None:
        self._macs: dict[bytes, bytes] = {}

    def add(self, ip: str | bytes, mac: str | bytes) -> None:
        self._macs[ip_bytes(ip)] = mac_bytes(mac)

    def lookup(self, ip: bytes) -> bytes | None:
        return self._macs.get(ip)

    def __len__(self) -> int:
        return len(self._macs)


@dataclass(frozen=True, slots=True)
class Interface:
    """One interface of the host, as ifconfig would show it.

    ``hwassist`` holds the transmit offloads the driver does (CSUM_IP,
    CSUM_TCP, ...; FreeBSD's if_hwassist); what is not in it the output path
    computes in software. ``vlan`` tags every frame sent on it with that id.
    """

    index: int
    mac: bytes
    addrs: tuple[str, ...] = ()
    mtu: int = DEFAULT_MTU
    hwassist: int = 0
    vlan: int | None = None
    name: str = ""


def interfaces(ctx: Ctx) -> Sequence[Interface]:
    """``ctx.extra["interfaces"]``, or one interface 0 made from the StackConfig."""
    ifs = ctx.extra.get("interfaces")
    if ifs is not None:
        return ifs
    cached = ctx.extra.get("_default_interfaces")
    if cached is None or cached[0] is not ctx.config:
        cfg = ctx.config
        ifs = (Interface(0, mac_bytes(cfg.mac), tuple(cfg.local_v4) + tuple(cfg.local_v6),
                         name="em0"),)
        cached = (cfg, ifs)
        ctx.extra["_default_interfaces"] = cached
    return cached[1]


def driver_hwassist(*, txcsum: bool, tso: bool) -> int:
    """``if_hwassist`` as a driver sets it from its NIC's enabled offloads: the IP
    and TCP/UDP checksums with txcsum, CSUM_TSO with tso (the NIC's own view is
    `nicemu.nic.Nic.hwassist`; a test holds the two equal)."""
    fl = (L.CSUM_IP | L.CSUM_IP_TCP | L.CSUM_IP_UDP | L.CSUM_IP6_TCP | L.CSUM_IP6_UDP) \
        if txcsum else 0
    return fl | (L.CSUM_TSO if tso else 0)


def with_hwassist(ifs: Sequence[Interface], hwassist: int) -> tuple[Interface, ...]:
    """The interfaces with the transmit offloads their driver does set."""
    return tuple(replace(i, hwassist=hwassist) for i in ifs)


def _local_sets(cfg: StackConfig, ifs: Sequence[Interface]) -> tuple[frozenset[bytes],
                                                                     frozenset[bytes]]:
    addrs = [ip_bytes(a) for a in (*cfg.local_v4, *cfg.local_v6)]
    addrs += [ip_bytes(a) for i in ifs for a in i.addrs]
    return (frozenset(a for a in addrs if len(a) == 4),
            frozenset(a for a in addrs if len(a) == 16))


def local_addrs(ctx: Ctx) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """The host's own IPv4 and IPv6 addresses (config and interfaces), as packed bytes."""
    ifs = interfaces(ctx)
    cached = ctx.extra.get("_local_addrs")
    if cached is None or cached[0] is not ctx.config or cached[1] is not ifs:
        cached = (ctx.config, ifs, *_local_sets(ctx.config, ifs))
        ctx.extra["_local_addrs"] = cached
    return cached[2], cached[3]
