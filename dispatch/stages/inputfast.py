"""The fused fast path of the UDP/IPv4 input path: ether -> ip -> udp in one pass.

Why it exists: each of ether_input, ip_input and udp_input has its own
whole-batch fast path, but each one gathers the batch's mbuf headers and
frame bytes again, checks them again and writes them back again; at a numpy
call's cost here (0.5-1 us) that fixed cost per stage, not the work per
packet, is most of the input path at batch 32. When consecutive stages run
in the same process (direct dispatch: ether, ip and udp in the ithread;
deferred: ip and udp in a netisr worker), the Runner hands a batch to
`udp4_input_fused` instead: one compiled pass over the batch
(`kernels.udp4_input`) that makes every check of the three stages on each
packet's headers in place, looks its socket up in the shared table's hash
(lock-free, as `SocketTable._find` does), checks each socket's room, and
only then writes the header words, stamps and socket counters. (It was a
dozen whole-batch numpy calls at 0.5-2 us each: 3.1 us per packet at batch
32; docs/BENCHMARKS.md has the before and after.)

It takes only the homogeneous batch those fast paths were built for: every
packet one mbuf on a cluster, the same frame length and the same checksum
flags on all (IPv4 and UDP verified by the NIC), untagged unicast IPv4
without options or fragments, for this host, UDP with consistent lengths,
every socket found with room for its packets. Anything else returns None
having changed nothing, and the Runner runs the stages one by one: the
results (routed handles, header words, counters, drop reasons, socket
counters) are identical, which tests/test_stages_inputfast.py holds it to on
random mixed batches. The host's addresses are taken as ip_input's compiled
path takes them (`ip._fast_local`).
"""

from __future__ import annotations

import numpy as np

from dispatch.mbuf import layout as L
from dispatch.packet.ether import ETHER_HDR_LEN
from dispatch.stages import kernels as _k
from dispatch.stages.base import (
    ETHER_INPUT,
    IP_INPUT,
    SORECEIVE,
    UDP_INPUT,
    Batch,
    Ctx,
    Routed,
    fusion,
)
from dispatch.stages.ether import _max_frame
from dispatch.stages.ip import _fast_local
from dispatch.stages.socktab import SocketTable

__all__ = ["udp4_input_fused"]

_MAXN = 4096
_OFFL = L.CSUM_DATA_VALID | L.CSUM_PSEUDO_HDR


@fusion(ETHER_INPUT, IP_INPUT, UDP_INPUT)
def udp4_input_fused(ctx: Ctx, batch: Batch, entry: str) -> Routed | None:
    """ether_input (if `entry` is it) + ip_input + udp_input over a whole batch (a
    list or an integer array), or None (nothing changed) when the batch is not the
    homogeneous common case."""
    n = len(batch)
    pool = ctx.pool
    w = pool.w
    b0 = int(batch[0]) << 6
    if n > _MAXN or w[b0 + L.W_CSUM_FLAGS] & _OFFL != _OFFL:
        return None  # (checksums in software: the stages' own batch paths)
    ipq = ctx.extra.get("ipq")
    if ipq is not None and ipq.queues:
        return None  # ip_input expires fragments first
    e = ETHER_HDR_LEN if entry == ETHER_INPUT else 0
    c0 = w[b0 + L.W_EXT]  # the first packet not UDP (a TCP batch): no kernel call for it
    if not c0 or pool.buf[pool.cl_base[c0] + w[b0 + L.W_DATA] + e + 9] != 17:
        return None
    local, check = _fast_local(ctx)
    p0 = w[b0 + L.W_PKTLEN]
    tab: SocketTable = ctx.sockets
    scratch = _scratch(ctx, n)
    nosum = _k.udp4_input(pool.headers, pool.stamps64, pool.segment, pool.cluster_base,
                          np.asarray(batch, dtype=np.intp), e, _max_frame(ctx) if e else 0,
                          local, check, tab.np_w, tab.np_buckets, tab.np_q,
                          tab.np_mask, ctx.config.sb_hiwat, ctx.now, *scratch)
    if nosum < 0:
        return None
    st = ctx.stats.counters
    if e:
        st["ether.if_ipackets"] += n
        st["ether.if_ibytes"] += n * p0
    st["ip.ips_total"] += n
    st["ip.ips_delivered"] += n
    ctx.stats.drops[UDP_INPUT]  # noqa: B018 - udp_input creates the entry too
    st["udp.udps_ipackets"] += n
    if nosum:
        st["udp.udps_nosum"] += nosum
    return {SORECEIVE: batch}


def _scratch(ctx: Ctx, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kernel's per-batch scratch (socket per packet, sockets seen, their
    counts), kept per process and grown to the largest batch seen."""
    sc = ctx.extra.get("_udp4_fused_scratch")
    if sc is None or len(sc[0]) < n:
        m = max(n, 64)
        sc = ctx.extra["_udp4_fused_scratch"] = (np.empty(m, np.intp), np.empty(m, np.intp),
                                                 np.empty(m, np.int64))
    return sc
