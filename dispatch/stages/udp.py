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
_FAST_MAX = 4096  # longest batch the byte patterns below cover (longer: per packet)
_OFFL = _VALID | _PSEUDO
# header words 12..14 checked at once: (mask, expected value)
assert (_W_CSUM_FLAGS, _W_CSUM_DATA, _W_HDRLENS) == (12, 13, 14)
_HCHECK = ((_OFFL, _OFFL), (0xFFFFFFFF, 0xFFFF), (0xFFFF00, 20 << 8))
_HMASK = np.array([c[0] for c in _HCHECK], dtype=np.uint32)
_HEXP_ROW = np.array([c[1] for c in _HCHECK], dtype=np.uint32)
_HEXP = _HEXP_ROW.tobytes() * _FAST_MAX
_P_ZERO = bytes(4 * _FAST_MAX)
_P_45 = b"\x45" * _FAST_MAX
_WB_END = 2 * _Q_TS_SOCKET + 2  # the u32 words up to and including the TS_SOCKET stamp
assert _W_DATA < _W_SOCKID < 2 * _Q_TS_SOCKET
_LEN_OFF = np.array([0, 20], dtype=np.int64)  # ip_len = pktlen, uh_ulen = pktlen - 20


@stage(UDP_INPUT)
def udp_input(ctx: Ctx, batch: list[int]) -> Routed:
    """A whole-batch numpy fast path for the common case (every packet one mbuf on a
    cluster, IPv4 without options and without padding, UDP length consistent,
    checksum verified by the NIC or absent, every destination found with room for
    all its packets); any other batch runs the per-packet `_udp_input_slow`, which
    the fast path matches exactly (routed list, drops, counters, table, headers)."""
    # (a batch whose first packet the NIC did not verify is taken to be one of
    # software checksums: those the per-packet path sums in one numpy batch)
    if _FAST_MIN <= len(batch) <= _FAST_MAX and \
            ctx.pool.w[(batch[0] << 6) + _W_CSUM_FLAGS] & _OFFL == _OFFL:
        r = _udp_input_fast(ctx, batch)
        if r is not None:
            return r
    return _udp_input_slow(ctx, batch)


def _udp_input_fast(ctx: Ctx, batch: list[int]) -> Routed | None:
    """The vectorised path; returns None, having changed nothing but the socket
    table's per-process lookup cache, when the batch needs the per-packet path."""
    pool = ctx.pool
    n = len(batch)
    n4 = 4 * n
    arr = np.fromiter(batch, np.intp, n)
    H = pool.headers.take(arr, 0)
    ext = H[:, _W_EXT]
    pk = H[:, _W_PKTLEN]
    # one mbuf each (m_next 0), on a cluster, m_len = m_pkthdr.len, l3hlen 20,
    # checksum verified by the NIC (full L4, csum_data 0xffff)
    if (H[:, L.W_NEXT].tobytes() != _P_ZERO[:n4] or np.count_nonzero(ext) != n
            or H[:, _W_LEN].tobytes() != pk.tobytes()):
        return None
    hw = H[:, _W_CSUM_FLAGS : _W_HDRLENS + 1].tobytes()
    if hw == hw[:12] * n:  # the usual batch: the same flags on every packet
        if (H[0, _W_HDRLENS] & 0xFFFF00) != 20 << 8:
            return None
        if (H[0, _W_CSUM_FLAGS] & _OFFL) != _OFFL or H[0, _W_CSUM_DATA] != 0xFFFF:
            return None  # checksums in software (or bad): the per-packet path's batch sum
        offl = True
    else:
        sel = H[:, _W_CSUM_FLAGS : _W_HDRLENS + 1] & _HMASK
        offl = sel.tobytes() == _HEXP[: 12 * n]
        if not offl:
            sel[:, :2] = _HEXP_ROW[:2]  # the checksum: tried again below, with uh_sum
            if sel.tobytes() != _HEXP[: 12 * n]:
                return None
    base = pool.cluster_base.take(ext) + H[:, _W_DATA]
    seg = pool.segment
    try:  # the IPv4 + UDP headers of every packet: one gather
        g = np.ndarray((len(seg) - 27, 28), np.uint8, seg, 0, (1, 1))[base]
    except IndexError:
        return None
    # IPv4, 20-byte header; ip_len = m_pkthdr.len = 20 + uh_ulen >= 28 (so the
    # length checks all pass): compared as big-endian bytes
    pk_b = pk.tobytes()
    p0 = int(pk[0]) if pk_b == pk_b[:4] * n else -1  # the usual batch: one size
    if g[:, 0].tobytes() != _P_45[:n]:
        return None
    if p0 >= 0:
        if (p0 < 28 or p0 > 0xFFFF or g[:, 2:4].tobytes() != p0.to_bytes(2, "big") * n
                or g[:, 24:26].tobytes() != (p0 - 20).to_bytes(2, "big") * n):
            return None
    else:
        lens = np.empty((n, 2), ">u2")
        np.subtract(pk[:, None], _LEN_OFF, out=lens, casting="unsafe")
        if (g[:, 2:4].tobytes() != lens[:, 0].tobytes()
                or g[:, 24:26].tobytes() != lens[:, 1].tobytes()
                or np.count_nonzero(pk < 28) or np.count_nonzero(pk > 0xFFFF)):
            return None
    usum = g[:, 26:28].view(">u2")[:, 0]
    nosum = n - int(np.count_nonzero(usum))  # uh_sum 0 is counted first, whatever the NIC says
    if not offl:
        nz = usum != 0
        if (np.count_nonzero((H[nz, _W_CSUM_FLAGS] & _OFFL) != _OFFL)
                or np.count_nonzero(H[nz, _W_CSUM_DATA] != 0xFFFF)):
            return None
    tab: SocketTable = ctx.sockets
    # socket lookup: keyed by the (source, destination, ports) bytes, one lookup_key
    # per distinct flow not seen since the table last changed
    sid_list = tab.lookup_raw_batch(_PF4, g[:, 12:24].copy().view("V12").ravel().tolist())
    if sid_list is None:  # some destination unknown: noport / auto-socket, per packet
        return None
    tw, tq = tab.w, tab.q
    def_hiwat = ctx.config.sb_hiwat
    usids = dict.fromkeys(sid_list)
    if len(usids) == 1:
        (i,) = usids
        acc = [(i, n * (p0 - 28) if p0 >= 0 else int(pk.sum()) - 28 * n, n)]
        sid_col: int | np.ndarray = i + 1
    else:
        sids = np.array(sid_list, dtype=np.intp)
        nbytes = np.bincount(sids, weights=pk).tolist()
        npkts = np.bincount(sids).tolist()
        acc = [(i, int(nbytes[i]) - 28 * npkts[i], npkts[i]) for i in usids]
        sid_col = sids + 1
    for i, nb, _ in acc:
        qb = i << 6
        if tq[qb + Q_SB_APPENDED] - tq[qb + Q_SB_REMOVED] + nb > \
                (tw[(i << 7) + P_SB_HIWAT] or def_hiwat):
            return None  # the per-packet path counts udps_fullsock exactly
    # commit. Header words W_DATA..TS_SOCKET are written back as one block: those not
    # set here hold what was just read (the packet is this stage's alone while it runs)
    ctx.stats.drops[UDP_INPUT]  # noqa: B018 - the per-packet path creates the entry too
    plen = p0 - 28 if p0 >= 0 else pk - 28
    H[:, _W_DATA] += 28
    H[:, _W_LEN] = plen
    H[:, _W_PKTLEN] = plen
    H[:, _W_SOCKID] = sid_col
    H.view(np.uint64)[:, _Q_TS_SOCKET] = ctx.now
    pool.headers[arr, _W_DATA:_WB_END] = H[:, _W_DATA:_WB_END]
    for i, nb, k in acc:
        qb = i << 6
        tq[qb + Q_SB_APPENDED] += nb
        tq[qb + Q_RCVPACK] += k
        tq[qb + Q_RCVBYTE] += nb
    st = ctx.stats.counters
    st["udp.udps_ipackets"] += n
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


def udp_pseudo_sum(la: bytes, fa: bytes, ulen: int) -> int:
    """The pseudo-header's words as an unfolded sum (v4 or v6 addresses): what
    udp_output leaves in the checksum field, folded, for the NIC to finish."""
    return int.from_bytes(la, "big") % 0xFFFF + int.from_bytes(fa, "big") % 0xFFFF + \
        IPPROTO_UDP + ulen


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
        ps = udp_pseudo_sum(la, fa, ulen)
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
