"""udp_input and udp_output: datagrams between IP and the socket layer.

Why it exists: UDP is the emulator's cheapest transport and its benchmark
workload (64-byte datagrams), so udp_input is written for the per-packet
budget: one pass reading the headers with struct on the pool's memoryview,
checksums verified in one numpy batch when the NIC has not done it, socket
lookup through the socket table's per-process cache, and the payload handed
to "soreceive" without a copy (FreeBSD's udp_input + sbappendaddr).

Input: packets from ip_input / ip6_input, m_data at the IP header, W_HDRLENS
with l3hlen, csum_flags from the NIC. Validation, in FreeBSD's order: header
present (udps_hdrops), length field against the IP payload (udps_badlen),
checksum (udps_badsum; a zero checksum means "none" over IPv4, counted
udps_nosum, and is invalid over IPv6), socket lookup (exact, then the
bound address:port, then the wildcard address; none: udps_noport unless
auto_sockets creates a connected socket for the 4-tuple), the receive
buffer's high-water mark (udps_fullsock).

Output: udp_output takes payload packets from sosend (W_SOCKID set; the
socket must be connected), prepends IP + UDP headers (IPv4: total length,
TTL 64, protocol, addresses; ip_id and the header checksum are ip_output's)
and computes the UDP checksum, or marks CSUM_UDP / CSUM_UDP_IPV6 for txcsum
(uh_sum = the pseudo-header sum, csum_data = 6).
"""

from __future__ import annotations

import struct
from itertools import repeat

import numpy as np

from dispatch.mbuf import layout as L
from dispatch.packet.checksum import fold, in_cksum, ones_sum, verify_batch
from dispatch.packet.ipv4 import IPV4_HDR
from dispatch.packet.ipv6 import IPV6_HDR
from dispatch.packet.udp import UDP_HDR
from dispatch.stages.base import (
    IP6_OUTPUT,
    IP_OUTPUT,
    SORECEIVE,
    UDP_INPUT,
    UDP_OUTPUT,
    Ctx,
    Routed,
    declare_reasons,
    stage,
)
from dispatch.stages.socktab import (
    AF_INET6,
    P_FPORT,
    P_SB_HIWAT,
    Q_DROPS,
    Q_RCVBYTE,
    Q_RCVPACK,
    Q_SB_APPENDED,
    Q_SB_REMOVED,
    Q_SND_REMOVED,
    Q_SNDBYTE,
    Q_SNDPACK,
    SF_AUTO,
    SocketTable,
)
from dispatch.stages.tcp_output import endpoints, offload

UDP_DROPS = declare_reasons(
    UDP_INPUT,
    ("hdrops", "udps_hdrops", "with incomplete header"),
    ("badlen", "udps_badlen", "with bad data length field"),
    ("badsum", "udps_badsum", "with bad checksum"),
    ("noport", "udps_noport", "dropped due to no socket"),
    ("fullsock", "udps_fullsock", "dropped due to full socket buffers"),
    ("nomem", "udps_nomem", "dropped: socket table full (auto sockets)"),
)
UDP_OUT_DROPS = declare_reasons(
    UDP_OUTPUT,
    ("nosock", "udps_snd_nosock", "datagrams without a socket"),
    ("noaddr", "udps_snd_noaddr", "datagrams on an unconnected socket (EDESTADDRREQ)"),
    ("nobufs", "udps_snd_nobufs", "datagrams dropped: no mbufs for headers"),
)

IPPROTO_UDP = 17
_H = struct.Struct("!H")
_II = struct.Struct("!II")
_VALID = L.CSUM_DATA_VALID
_PSEUDO = L.CSUM_PSEUDO_HDR
_BATCH_SUM_MIN = 4


_W_DATA, _W_LEN, _W_EXT, _W_PKTLEN = L.W_DATA, L.W_LEN, L.W_EXT, L.W_PKTLEN
_W_HDRLENS, _W_CSUM_FLAGS, _W_CSUM_DATA, _W_SOCKID = (L.W_HDRLENS, L.W_CSUM_FLAGS,
                                                      L.W_CSUM_DATA, L.W_SOCKID)
_Q_TS_SOCKET = L.Q_TS + L.TS_SOCKET
_PF4, _PF6 = IPPROTO_UDP | 4 << 8, IPPROTO_UDP | 6 << 8


_FAST_MIN = 4  # below this, the per-packet path is cheaper than the numpy calls
_AR28 = np.arange(28, dtype=np.int64)
_UPD_COLS = np.array([_W_DATA, _W_LEN, _W_PKTLEN, _W_SOCKID], dtype=np.intp)
_OFFL = _VALID | _PSEUDO


@stage(UDP_INPUT)
def udp_input(ctx: Ctx, batch: list[int]) -> Routed:
    """A whole-batch numpy fast path for the common case (every packet one mbuf,
    IPv4 without options, lengths consistent, checksum verified by the NIC or
    absent, every destination found with room for its packets); anything else
    runs the per-packet `_udp_input_slow` over the whole batch (same results)."""
    if len(batch) >= _FAST_MIN:
        r = _udp_input_fast(ctx, batch)
        if r is not None:
            return r
    return _udp_input_slow(ctx, batch)


def _udp_input_fast(ctx: Ctx, batch: list[int]) -> Routed | None:
    """The vectorised path; None (having changed nothing) when the batch needs the
    per-packet path."""
    pool = ctx.pool
    arr = np.array(batch, dtype=np.intp)
    H = pool.headers[arr]
    n = len(batch)
    l3 = H[:, _W_HDRLENS] & 0xFFFF00
    pktlen = H[:, _W_PKTLEN]
    cf = H[:, _W_CSUM_FLAGS] & _OFFL
    if (H[:, 0].any() or (l3 != 20 << 8).any() or (H[:, _W_LEN] < 28).any()
            or (pktlen < 28).any()):
        return None
    ext = H[:, _W_EXT]
    data = H[:, _W_DATA]
    base = pool.cluster_base[ext] + data
    if not ext.all():
        base = np.where(ext != 0, base, arr * 256 + (pool.mbuf_off + 0) + data)
    g = pool.segment[base[:, None] + _AR28]
    if (g[:, 0] >> 4 == 6).any():
        return None
    u16 = g.view(">u2")
    ulen = u16[:, 12].astype(np.int64)
    usum = u16[:, 13]
    # ulen >= 8, ulen <= totlen - 20, pktlen >= 20 + ulen; checksum none or NIC-verified
    if ((ulen < 8).any() or (ulen > u16[:, 1].astype(np.int64) - 20).any()
            or (pktlen < ulen + 20).any()):
        return None
    nz = usum != 0
    if nz.any() and ((cf[nz] != _OFFL).any() or (H[nz, _W_CSUM_DATA] != 0xFFFF).any()):
        return None
    u32 = g.view(">u4")
    keys = list(zip(repeat(_PF4, n), u32[:, 4].tolist(), u16[:, 11].tolist(),
                    u32[:, 3].tolist(), u16[:, 10].tolist()))
    tab: SocketTable = ctx.sockets
    found = tab.lookup_many(dict.fromkeys(keys))
    if found is None:  # some destination unknown: noport / auto-socket, per packet
        return None
    sid_list = list(map(found.__getitem__, keys))
    plen = ulen - 8
    tw, tq = tab.w, tab.q
    def_hiwat = ctx.config.sb_hiwat
    usids = dict.fromkeys(sid_list)
    if len(usids) == 1:
        (i,) = usids
        totals = [(i, int(plen.sum()))]
        sids = np.full(n, i, dtype=np.int64)
    else:
        sids = np.array(sid_list, dtype=np.int64)
        tot = np.bincount(sids, weights=plen).tolist()
        totals = [(i, int(tot[i])) for i in usids]
    for i, nb in totals:
        qb = i << 6
        if tq[qb + Q_SB_APPENDED] - tq[qb + Q_SB_REMOVED] + nb > \
                (tw[(i << 7) + P_SB_HIWAT] or def_hiwat):
            return None  # the per-packet path counts udps_fullsock exactly
    # commit: nothing above changed any state but the lookup cache
    ctx.stats.drops[UDP_INPUT]  # noqa: B018 - the reference touches it too
    pool.headers[arr[:, None], _UPD_COLS] = np.stack([data + 28, plen, plen, sids + 1], axis=1)
    pool.stamps64[arr, _Q_TS_SOCKET] = ctx.now
    if len(totals) == 1:
        counts = [n]
    else:
        cnt = np.bincount(sids).tolist()
        counts = [cnt[i] for i, _ in totals]
    for (i, nb), k in zip(totals, counts):
        qb = i << 6
        tq[qb + Q_SB_APPENDED] += nb
        tq[qb + Q_RCVPACK] += k
        tq[qb + Q_RCVBYTE] += nb
    st = ctx.stats.counters
    st["udp.udps_ipackets"] += n
    nosum = n - int(np.count_nonzero(nz))
    if nosum:
        st["udp.udps_nosum"] += nosum
    return {SORECEIVE: list(batch)}


def _udp_input_slow(ctx: Ctx, batch: list[int]) -> Routed:
    """The per-packet udp_input (the reference the fast path is held to)."""
    pool = ctx.pool
    w, pq, buf = pool.w, pool.q, pool.buf
    cl_base, mbuf_off = pool.cl_base, pool.mbuf_off
    tab: SocketTable = ctx.sockets
    tw, tq = tab.w, tab.q
    lookup = tab.lookup_key
    st = ctx.stats.counters
    D = UDP_DROPS
    drops = ctx.stats.drops[UDP_INPUT]
    before = dict(drops)
    nosum = 0
    # pass 1: headers, lengths, and the checksums the NIC verified
    items: list[tuple[int, tuple[int, int, int, int, int], int, int, int] | None] = []
    sw_at: list[int] = []
    sw_bufs: list[memoryview | bytes] = []
    sw_init: list[int] = []
    for m in batch:
        b = m << 6
        l3 = (w[b + _W_HDRLENS] >> 8) & 0xFFFF
        pktlen = w[b + _W_PKTLEN]
        if pktlen < l3 + 8:
            ctx.drop(m, D.hdrops)
            continue
        if w[b + _W_LEN] < l3 + 8:
            m = pool.pullup(m, l3 + 8)
            if not m:
                ctx.stats.drop(D.hdrops)
                continue
            b = m << 6
        e = w[b + _W_EXT]
        off = (cl_base[e] if e else mbuf_off + (m << 8)) + w[b + _W_DATA]
        if buf[off] >> 4 == 6:
            v6 = True
            avail = 40 + _H.unpack_from(buf, off + 4)[0] - l3
            src = int.from_bytes(buf[off + 8 : off + 24], "big")
            dst = int.from_bytes(buf[off + 24 : off + 40], "big")
        else:
            v6 = False
            avail = _H.unpack_from(buf, off + 2)[0] - l3
            src, dst = _II.unpack_from(buf, off + 12)
        sport, dport, ulen, usum = UDP_HDR.unpack_from(buf, off + l3)
        if ulen < 8 or ulen > avail:
            ctx.drop(m, D.badlen)
            continue
        if pktlen < l3 + ulen:
            ctx.drop(m, D.hdrops)
            continue
        if usum == 0:
            if v6:
                ctx.drop(m, D.badsum)
                continue
            nosum += 1
        else:
            cf = w[b + _W_CSUM_FLAGS]
            if cf & _VALID:
                if cf & _PSEUDO:
                    if w[b + _W_CSUM_DATA] != 0xFFFF:
                        ctx.drop(m, D.badsum)
                        continue
                elif fold(w[b + _W_CSUM_DATA] + src % 0xFFFF + dst % 0xFFFF + IPPROTO_UDP
                          + ulen) != 0xFFFF:
                    ctx.drop(m, D.badsum)
                    continue
            else:
                sw_at.append(len(items))
                if w[b + _W_LEN] >= l3 + ulen:
                    sw_bufs.append(buf[off + l3 : off + l3 + ulen])
                else:
                    sw_bufs.append(pool.copydata(m, l3, ulen))
                sw_init.append(src % 0xFFFF + dst % 0xFFFF + IPPROTO_UDP + ulen)
        items.append((m, (_PF6 if v6 else _PF4, dst, dport, src, sport), l3 + 8, ulen - 8,
                      pktlen))
    if sw_bufs:
        if len(sw_bufs) >= _BATCH_SUM_MIN:
            oks = verify_batch(sw_bufs, sw_init).tolist()
        else:
            oks = [in_cksum(x, s) == 0 for x, s in zip(sw_bufs, sw_init)]
        sw_bufs.clear()
        for j, good in zip(sw_at, oks):
            if not good:
                ctx.drop(items[j][0], D.badsum)  # type: ignore[index]
                items[j] = None
    # pass 2: socket lookup and append (sbappend inline)
    auto = ctx.config.auto_sockets
    def_hiwat = ctx.config.sb_hiwat
    now = ctx.now
    rcv: list[int] = []
    noport: list[int] = []
    for it in items:
        if it is None:
            continue
        m, key, hl, plen, pktlen = it
        i = lookup(key)
        if i < 0:
            if not auto:
                noport.append(m)
                continue
            i, _ = tab.insert_key(key, sflags=SF_AUTO, now=now, sb_hiwat=def_hiwat,
                                  snd_hiwat=ctx.config.so_snd_hiwat)
            if i < 0:
                ctx.drop(m, D.nomem)
                continue
        qb = i << 6
        if tq[qb + Q_SB_APPENDED] - tq[qb + Q_SB_REMOVED] + plen > \
                (tw[(i << 7) + P_SB_HIWAT] or def_hiwat):
            tq[qb + Q_DROPS] += 1
            ctx.drop(m, D.fullsock)
            continue
        b = m << 6
        if not w[b]:  # one mbuf: trim headers and padding inline
            w[b + _W_DATA] += hl
            w[b + _W_LEN] = plen
            w[b + _W_PKTLEN] = plen
        else:
            pool.adj(m, hl)
            if pktlen - hl > plen:
                pool.adj(m, plen - (pktlen - hl))
        w[b + _W_SOCKID] = i + 1
        pq[(m << 5) + _Q_TS_SOCKET] = now
        tq[qb + Q_SB_APPENDED] += plen
        tq[qb + Q_RCVPACK] += 1
        tq[qb + Q_RCVBYTE] += plen
        rcv.append(m)
    if noport:
        ctx.drop_many(noport, D.noport)
    st["udp.udps_ipackets"] += len(batch)
    if nosum:
        st["udp.udps_nosum"] += nosum
    if len(drops) != len(before) or drops != before:  # mirror drops into udpstat names
        for r in D:
            d = drops.get(r.name, 0) - before.get(r.name, 0)
            if d:
                st["udp." + r.stat] += d
    return {SORECEIVE: rcv} if rcv else {}


@stage(UDP_OUTPUT)
def udp_output(ctx: Ctx, batch: list[int]) -> Routed:
    """Prepend IP + UDP headers to payload packets of connected sockets."""
    pool = ctx.pool
    w, buf = pool.w, pool.buf
    tab: SocketTable = ctx.sockets
    tw, tq = tab.w, tab.q
    txcsum = offload(ctx, "txcsum")
    out4: list[int] = []
    out6: list[int] = []
    for m in batch:
        sid = w[(m << 6) + L.W_SOCKID] - 1
        if sid < 0:
            ctx.drop(m, UDP_OUT_DROPS.nosock)
            continue
        if not tw[(sid << 7) + P_FPORT]:
            ctx.drop(m, UDP_OUT_DROPS.noaddr)
            continue
        fam, la, fa, lp, fp = endpoints(ctx, tab, sid)
        v6 = fam == AF_INET6
        l3 = 40 if v6 else 20
        plen = w[(m << 6) + L.W_PKTLEN]
        ulen = plen + 8
        payload_sum = 0
        if not txcsum and plen:
            if not w[m << 6]:
                o = pool.data_offset(m)
                payload_sum = ones_sum(buf[o : o + plen])
            else:
                payload_sum = ones_sum(pool.copydata(m, 0, plen))
        h = pool.prepend(m, l3 + 8)
        if not h:
            ctx.stats.drop(UDP_OUT_DROPS.nobufs)  # prepend freed the chain
            continue
        b = h << 6
        o = pool.data_offset(h)
        if v6:
            IPV6_HDR.pack_into(buf, o, 6 << 28, ulen, IPPROTO_UDP, 64, la, fa)
        else:
            IPV4_HDR.pack_into(buf, o, 0x45, 0, l3 + ulen, 0, 0, 64, IPPROTO_UDP, 0, la, fa)
        ps = int.from_bytes(la, "big") % 0xFFFF + int.from_bytes(fa, "big") % 0xFFFF + \
            IPPROTO_UDP + ulen
        if txcsum:
            w[b + L.W_CSUM_FLAGS] = L.CSUM_UDP_IPV6 if v6 else L.CSUM_UDP
            w[b + L.W_CSUM_DATA] = 6
            UDP_HDR.pack_into(buf, o + l3, lp, fp, ulen, ones_sum(b"", ps))
        else:
            hdr_sum = lp + fp + ulen  # the header's words, checksum field zero
            c = ~ones_sum(b"", ps + hdr_sum + payload_sum) & 0xFFFF
            UDP_HDR.pack_into(buf, o + l3, lp, fp, ulen, c or 0xFFFF)
        w[b + L.W_HDRLENS] = (l3 << 8) | (8 << 24)
        qb = sid << 6
        tq[qb + Q_SND_REMOVED] += plen
        tq[qb + Q_SNDPACK] += 1
        tq[qb + Q_SNDBYTE] += plen
        (out6 if v6 else out4).append(h)
    ctx.stats.counters["udp.udps_opackets"] += len(out4) + len(out6)
    out: Routed = {}
    if out4:
        out[IP_OUTPUT] = out4
    if out6:
        out[IP6_OUTPUT] = out6
    return out
