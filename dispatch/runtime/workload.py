"""The workload's addresses, flows and sockets, shared by the source and the host.

The traffic source (the NIC's internal template source or the trafgen
process) and the host must agree on who talks to whom: this module is the
one place that says it. Flow i goes from a peer address and port to the
host's address and port 5001 + i; UDP flows each get a bound socket, TCP
flows a listener, so sockets spread evenly over the user threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dispatch.runtime.config import RunConfig

HOST_V4 = "10.0.0.1"
HOST_MAC = "02:00:00:00:00:02"
PEER_MAC = "02:00:00:00:00:01"
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
        out.append(Flow(src, HOST_V4, sport, BASE_DPORT + i, cfg.proto))
    return out


def open_sockets(table: Any, cfg: RunConfig) -> None:
    """Start from an empty table, then bind (UDP) or listen (TCP) on every flow's
    host port; auto-sockets mode opens none (they appear as traffic arrives)."""
    for i in list(table.indices()):
        table.unlink(i)
    if cfg.sockets_auto:
        return
    for f in flows(cfg):
        if f.proto == "udp":
            table.bind_udp(f.dst, f.dport)
        else:
            table.listen(6, f.dst, f.dport)  # IPPROTO_TCP


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
