"""The workload's addresses, flows, sockets and routes, shared by the source and the host.

The traffic source (the NIC's internal template source or the trafgen
process) and the host must agree on who talks to whom: this module is the
one place that says it. Flow i goes from a peer address and port to the
host's address and port 5001 + i; UDP flows each get a bound socket, TCP
flows a listener, so sockets spread evenly over the user threads.

The other workloads reuse the same flows: `tx` and `rr` use connected UDP
sockets (the host sends back to the peer's address and port; for TCP `tx`
the host connects to the peer's port, for TCP `rr` it listens), and
`forward` sends each flow to 10.2.x.y, a network behind the host's second
port (em1, 10.1.0.1) reached through the generator's second port (10.1.0.2),
so the host routes every packet from port 0 to port 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dispatch.runtime.config import RunConfig

HOST_V4 = "10.0.0.1"
HOST_MAC = "02:00:00:00:00:02"
PEER_MAC = "02:00:00:00:00:01"
# forward: the host's second port and the generator's port behind it
HOST1_V4 = "10.1.0.1"
HOST1_MAC = "02:00:00:00:01:02"
PEER1_V4 = "10.1.0.2"
PEER1_MAC = "02:00:00:00:01:01"
PEER0_GW = "10.0.0.254"  # the generator's port-0 side, as a router for the sources
FWD_NET = "10.2.0.0/16"
BASE_DPORT = 5001
BASE_SPORT = 10000


@dataclass(frozen=True, slots=True)
class Flow:
    src: str
    dst: str
    sport: int
    dport: int
    proto: str


def flows(cfg: RunConfig) -> list[Flow]:
    out = []
    for i in range(cfg.flows):
        src = f"10.0.{1 + (i // 250) % 250}.{1 + i % 250}"
        # Source ports spread by a multiplicative hash, not i: the Toeplitz hash is
        # linear over GF(2), and flows whose address and ports all step by one can
        # cancel in the low bits and land on a single rx queue.
        sport = BASE_SPORT + (i * 2654435761) % 40000
        dst = HOST_V4
        if cfg.workload == "forward":
            dst = f"10.2.{1 + (i // 250) % 250}.{1 + i % 250}"
        out.append(Flow(src, dst, sport, BASE_DPORT + i, cfg.proto))
    return out


def generator_of(k: int, cfg: RunConfig) -> int:
    """Which generator drives flow k (round robin over --trafgens)."""
    return k % cfg.trafgens


def generator_by_peer(cfg: RunConfig) -> dict[bytes, int]:
    """Peer address (as packed bytes) -> the generator behind it, for routing what
    the host sends back to the generator that owns the flow."""
    from dispatch.packet.ipv4 import ip_bytes

    return {ip_bytes(f.src): generator_of(k, cfg) for k, f in enumerate(flows(cfg))}


def open_sockets(table: Any, cfg: RunConfig) -> None:
    """Start from an empty table, then bind (UDP) or listen (TCP) on every flow's
    host port; auto-sockets mode opens none (they appear as traffic arrives)."""
    for i in list(table.indices()):
        table.unlink(i)
    if cfg.sockets_auto or cfg.workload == "forward":
        return
    for f in flows(cfg):
        if f.proto == "udp" and cfg.workload in ("tx", "rr"):
            table.connect_udp(f.dst, f.dport, f.src, f.sport)
        elif f.proto == "udp":
            table.bind_udp(f.dst, f.dport)
        elif cfg.workload == "tx":
            continue  # TCP tx: each user thread connects its sockets when the run starts
        else:
            table.listen(6, f.dst, f.dport)  # IPPROTO_TCP


def stack_tables(cfg: RunConfig) -> dict[str, Any]:
    """What the host's stages need in `Ctx` beyond the defaults for this workload:
    for `forward`, two interfaces, the routes and the static neighbour entries;
    for the others nothing (one interface, the peer's MAC as next hop)."""
    if cfg.workload != "forward":
        return {}
    from dispatch.packet.ether import mac_bytes
    from dispatch.stages.route import Interface, NeighborTable, RouteTable

    ifs = (Interface(0, mac_bytes(HOST_MAC), (HOST_V4,), name="em0"),
           Interface(1, mac_bytes(HOST1_MAC), (HOST1_V4,), name="em1"))
    routes = RouteTable()
    routes.add("10.0.0.0/16", ifindex=0, gateway=PEER0_GW)
    routes.add("10.1.0.0/24", ifindex=1)
    routes.add(FWD_NET, ifindex=1, gateway=PEER1_V4)
    neighbors = NeighborTable()
    neighbors.add(PEER0_GW, PEER_MAC)
    neighbors.add(PEER1_V4, PEER1_MAC)
    return {"interfaces": ifs, "routes": routes, "neighbors": neighbors}


def template_frames(cfg: RunConfig) -> list[bytes]:
    """One UDP frame per flow and size, for the NIC's internal source."""
    from dispatch.packet.frames import build_udp_frame, pad_to_min
    from nicemu.trafgen.dist import parse_size_spec

    dist = parse_size_spec(cfg.size, seed=cfg.seed)
    sizes = sorted({int(s) for s in dist.sample(256)})
    frames = []
    for f in flows(cfg):
        for size in sizes:
            payload = bytes(max(0, size - 42))
            frames.append(pad_to_min(build_udp_frame(
                src_ip=f.src, dst_ip=f.dst, src_port=f.sport, dst_port=f.dport,
                payload=payload, src_mac=PEER_MAC, dst_mac=HOST_MAC)))
    return frames
