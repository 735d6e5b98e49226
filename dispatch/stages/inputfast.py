"""The fused fast path of the UDP/IPv4 input path: ether -> ip -> udp in one pass.

Why it exists: each of ether_input, ip_input and udp_input has its own
whole-batch fast path, but each one gathers the batch's mbuf headers and
frame bytes again, checks them again and writes them back again; at a numpy
call's cost here (0.5-1 us) that fixed cost per stage, not the work per
packet, is most of the input path at batch 32. When consecutive stages run
in the same process (direct dispatch: ether, ip and udp in the ithread;
deferred: ip and udp in a netisr worker), the Runner hands a batch to
`udp4_input_fused` instead: one header gather, one gather of the 42 (or 28)
header bytes, every check of the three fast paths in a handful of whole-batch
comparisons, and one write-back.

It takes only the homogeneous batch those fast paths were built for: every
packet one mbuf on a cluster, the same frame length and the same checksum
flags on all (IPv4 and UDP verified by the NIC), untagged unicast IPv4
without options or fragments, for this host, UDP with consistent lengths,
every socket found with room for its packets. Anything else returns None
having changed nothing (but the socket table's per-process lookup cache),
and the Runner runs the stages one by one: the results (routed handles,
header words, counters, drop reasons, socket counters) are identical, which
tests/test_stages_inputfast.py holds it to on random mixed batches.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from dispatch.mbuf import layout as L
from dispatch.packet.ether import ETHER_HDR_LEN
from dispatch.stages.base import ETHER_INPUT, IP_INPUT, SORECEIVE, UDP_INPUT, Ctx, Routed, fusion
from dispatch.stages.ether import _max_frame
from dispatch.stages.ip import _local4_ints
from dispatch.stages.socktab import (
    P_SB_HIWAT,
    Q_RCVBYTE,
    Q_RCVPACK,
    Q_SB_APPENDED,
    Q_SB_REMOVED,
    SocketTable,
)

__all__ = ["udp4_input_fused"]

_MAXN = 4096
_ZERO = bytes(4 * _MAXN)
_CV = L.CSUM_L3_CALC | L.CSUM_L3_VALID
_OFFL = L.CSUM_DATA_VALID | L.CSUM_PSEUDO_HDR
_PF4 = 17 | 4 << 8
_Q_TS_SOCKET = L.Q_TS + L.TS_SOCKET
_WB_END = 2 * _Q_TS_SOCKET + 2  # u32 words W_DATA .. the TS_SOCKET stamp, written back


def _tables(ctx: Ctx, e: int) -> tuple[np.ndarray, bytes, np.ndarray | None, bool] | None:
    """(mask as u64 words, expected, local, dst127) over the k = e + 28 header bytes rounded up to
    whole u64 words, or None when nothing can take this path (a local address in
    127/8, which ip_input's fast path refuses too).

    A packet passes when (bytes & mask) == expected: unicast destination and
    ethertype IPv4 (link header), version 4 without options, neither MF nor an
    offset, protocol UDP, and (one local address, not auto_sockets) that
    destination; ip_len and uh_ulen are patched into `expected` per batch. `local`
    (several local addresses) is checked separately, as are loopback sources
    (and destinations when `dst127`): the exact rules of ip_input's fast path."""
    local4 = _local4_ints(ctx)
    extra = ctx.extra
    key = f"_udp4_fused_tables{e}"
    cached = extra.get(key)
    if cached is not None and cached[0] is local4 and cached[1] is ctx.config:
        return cached[2]
    k = (e + 28 + 7) // 8 * 8
    mask = bytearray(k)
    exp = bytearray(k)
    if e:
        mask[0] = 0x01  # group bit clear
        mask[12:14] = b"\xff\xff"
        exp[12:14] = b"\x08\x00"
    mask[e] = 0xFF
    exp[e] = 0x45
    mask[e + 6] = 0x3F  # IP_MF and the fragment offset
    mask[e + 7] = 0xFF
    mask[e + 9] = 0xFF
    exp[e + 9] = 17
    mask[e + 2 : e + 4] = b"\xff\xff"  # ip_len (per batch)
    mask[e + 24 : e + 26] = b"\xff\xff"  # uh_ulen (per batch)
    local: np.ndarray | None = None
    dst127 = True
    out: tuple[np.ndarray, bytes, np.ndarray | None, bool] | None
    if not ctx.config.auto_sockets:
        if len(local4) == 1:
            (a,) = local4
            mask[e + 16 : e + 20] = b"\xff\xff\xff\xff"
            exp[e + 16 : e + 20] = a.to_bytes(4, "big")
            dst127 = False
        else:
            local = np.array(sorted(local4), dtype=np.uint32)
    if any(a >> 24 == 127 for a in local4) and not ctx.config.auto_sockets:
        out = None
    else:
        out = (np.frombuffer(bytes(mask), np.uint64), bytes(exp), local, dst127)
    extra[key] = (local4, ctx.config, out)
    return out


_WIN: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
#: (link header length, bytes trimmed) -> the header-word deltas W_DATA..W_PKTLEN
_DELTAS: dict[tuple[int, int], np.ndarray] = {}


def _windows(seg: np.ndarray, k: int) -> np.ndarray:
    """A read-only view of the segment whose row o is the k bytes at offset o."""
    win = _WIN.get((id(seg), k))
    if win is None or win[0] is not seg:
        win = _WIN[(id(seg), k)] = (seg, as_strided(seg, (len(seg) - k + 1, k), (1, 1),
                                                    writeable=False))
    return win[1]


@fusion(ETHER_INPUT, IP_INPUT, UDP_INPUT)
def udp4_input_fused(ctx: Ctx, batch: list[int], entry: str) -> Routed | None:
    """ether_input (if `entry` is it) + ip_input + udp_input over a whole batch, or
    None (nothing changed) when the batch is not the homogeneous common case."""
    n = len(batch)
    if n > _MAXN or ctx.pool.w[(batch[0] << 6) + L.W_CSUM_FLAGS] & _OFFL != _OFFL:
        return None  # (checksums in software: the stages' own batch paths)
    ipq = ctx.extra.get("ipq")
    if ipq is not None and ipq.queues:
        return None  # ip_input expires fragments first
    e = ETHER_HDR_LEN if entry == ETHER_INPUT else 0
    pool = ctx.pool
    w = pool.w
    b0 = batch[0] << 6
    c0 = w[b0 + L.W_EXT]  # the first packet not UDP (a TCP batch): no numpy spent on it
    if not c0 or pool.buf[pool.cl_base[c0] + w[b0 + L.W_DATA] + e + 9] != 17:
        return None
    hdr = pool.headers
    arr = np.fromiter(batch, np.intp, n)
    H = hdr.take(arr, 0)
    n4 = 4 * n
    pk_b = H[:, L.W_PKTLEN].tobytes()
    if (pk_b != pk_b[:4] * n or H[:, L.W_LEN].tobytes() != pk_b
            or H[:, L.W_NEXT].tobytes() != _ZERO[:n4]):
        return None
    ext = H[:, L.W_EXT]
    if np.count_nonzero(ext) != n:
        return None
    p0 = int(H[0, L.W_PKTLEN])
    if e and (p0 < ETHER_HDR_LEN or p0 > _max_frame(ctx)):
        return None
    cw = H[:, L.W_CSUM_FLAGS : L.W_CSUM_DATA + 1].tobytes()
    f0 = int(H[0, L.W_CSUM_FLAGS])
    if (cw != cw[:8] * n or f0 & _CV != _CV or f0 & _OFFL != _OFFL
            or H[0, L.W_CSUM_DATA] != 0xFFFF):
        return None
    tables = _tables(ctx, e)
    if tables is None:
        return None
    mask, exp, local, dst127 = tables
    k = 8 * len(mask)
    try:
        g = _windows(pool.segment, k)[pool.cluster_base.take(ext) + H[:, L.W_DATA]]
    except IndexError:
        return None
    ip_len = (int(g[0, e + 2]) << 8) | int(g[0, e + 3])
    if ip_len < 28 or ip_len > p0 - e:
        return None
    exp = bytearray(exp)
    exp[e + 2 : e + 4] = ip_len.to_bytes(2, "big")
    exp[e + 24 : e + 26] = (ip_len - 20).to_bytes(2, "big")
    G = g.view(np.uint64)
    if (G & mask).tobytes() != bytes(exp) * n:
        return None
    if 127 in g[:, e + 12].tobytes() or (dst127 and 127 in g[:, e + 16].tobytes()):
        return None
    if local is not None and np.count_nonzero(
            (g[:, e + 16 : e + 20].copy().view(">u4") == local).any(axis=1)) != n:
        return None
    tab: SocketTable = ctx.sockets
    r = g[:, e + 12 : e + 24].tobytes()
    if r == r[:12] * n:  # one flow
        one = tab.lookup_raw_batch(_PF4, [r[:12]])
        sid_list = None if one is None else one * n
    else:
        sid_list = tab.lookup_raw_batch(_PF4, [r[j : j + 12] for j in range(0, 12 * n, 12)])
    if sid_list is None:
        return None
    plen = ip_len - 28
    tw, tq = tab.w, tab.q
    def_hiwat = ctx.config.sb_hiwat
    usids = dict.fromkeys(sid_list)
    sid_col: int | np.ndarray
    if len(usids) == 1:
        (i,) = usids
        acc = [(i, n * plen, n)]
        sid_col = i + 1
    else:
        sids = np.array(sid_list, dtype=np.intp)
        npkts = np.bincount(sids).tolist()
        acc = [(i, npkts[i] * plen, npkts[i]) for i in usids]
        sid_col = sids + 1
    for i, nb, _ in acc:
        qb = i << 6
        if tq[qb + Q_SB_APPENDED] - tq[qb + Q_SB_REMOVED] + nb > \
                (tw[(i << 7) + P_SB_HIWAT] or def_hiwat):
            return None  # udp_input counts udps_fullsock per packet
    nosum = n - int(np.count_nonzero(g[:, e + 26 : e + 28].view(np.uint16)))
    # commit: the three stages' header writes as one block
    dk = (e, p0 - plen)
    delta = _DELTAS.get(dk)
    if delta is None:
        shrink = (plen - p0) & 0xFFFFFFFF
        delta = _DELTAS[dk] = np.array([e + 28, shrink, 0, 0, 0, 0, shrink], dtype=np.uint32)
    H[:, L.W_DATA : L.W_PKTLEN + 1] += delta
    if e:
        H[:, L.W_HDRLENS] = e | 20 << 8
    else:
        H[:, L.W_HDRLENS] = (H[:, L.W_HDRLENS] & np.uint32(0xFF)) | np.uint32(20 << 8)
    H[:, L.W_SOCKID] = sid_col
    H.view(np.uint64)[:, _Q_TS_SOCKET] = ctx.now
    hdr[arr, L.W_DATA:_WB_END] = H[:, L.W_DATA:_WB_END]
    for i, nb, cnt in acc:
        qb = i << 6
        tq[qb + Q_SB_APPENDED] += nb
        tq[qb + Q_RCVPACK] += cnt
        tq[qb + Q_RCVBYTE] += nb
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
    return {SORECEIVE: list(batch)}
