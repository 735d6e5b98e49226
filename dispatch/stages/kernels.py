"""Compiled kernels of the receive fast paths: fused ether/ip/udp input, and soreceive.

Why it exists: the fused UDP/IPv4 input path and soreceive were whole-batch
numpy code, and at batch 32 their cost was the fixed ~0.5-2 us of each of
about 45 numpy calls, not the work per packet (docs/BENCHMARKS.md). Each is
now one call into machine code that walks the batch once over the shared
segments: the pool's headers and clusters, and the socket table's hash and
records (looked up lock-free, exactly as `SocketTable._find` walks them).

Each kernel is a transcription of the Python fast path it replaces, with the
same all-or-nothing contract: the common case is done in full, and anything
else returns a refusal having written nothing, so the caller runs the
per-packet stages (the reference the tests hold both to).
"""

from __future__ import annotations

import numpy as np

from dispatch.jit import i64_1d, intp_1d, kernel, types, u8_1d, u32_1d, u32_2d, u64_1d
from dispatch.mbuf import layout as L
from dispatch.stages import socktab as S

_u64_2d = types.uint64[:, ::1]

_W_NEXT, _W_DATA, _W_LEN, _W_EXT = L.W_NEXT, L.W_DATA, L.W_LEN, L.W_EXT
_W_PKTLEN, _W_CSUM_FLAGS, _W_CSUM_DATA = L.W_PKTLEN, L.W_CSUM_FLAGS, L.W_CSUM_DATA
_W_HDRLENS, _W_SOCKID = L.W_HDRLENS, L.W_SOCKID
_Q_TS_SOCKET = L.Q_TS + L.TS_SOCKET
_Q_TS_USER = L.Q_TS + L.TS_USER
_CV = L.CSUM_L3_CALC | L.CSUM_L3_VALID
_OFFL = L.CSUM_DATA_VALID | L.CSUM_PSEUDO_HDR
_PF_UDP4 = S.pf_of(S.IPPROTO_UDP, S.AF_INET4)
_REC_W, _REC_Q = S.REC_WORDS, S.REC_SLOTS
_P_SFLAGS, _P_PF, _P_HNEXT = S.P_SFLAGS, S.P_PF, S.P_HNEXT
_P_LPORT, _P_FPORT, _P_LADDR, _P_FADDR, _P_SB_HIWAT = (S.P_LPORT, S.P_FPORT, S.P_LADDR,
                                                       S.P_FADDR, S.P_SB_HIWAT)
_SF_INHASH = S.SF_INHASH
_Q_SB_APPENDED, _Q_SB_REMOVED, _Q_RCVPACK, _Q_RCVBYTE = (S.Q_SB_APPENDED, S.Q_SB_REMOVED,
                                                         S.Q_RCVPACK, S.Q_RCVBYTE)
_Q_DELIVERED, _Q_DELIVERED_PKTS = S.Q_DELIVERED, S.Q_DELIVERED_PKTS
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)

#: the fused kernel's refusals (nothing written): the caller runs the stages one by one
REFUSED = -1


@kernel(types.int64(u32_1d, u32_1d, types.uint64, types.int64, types.int64, types.int64,
                    types.int64, types.int64))
def find4(tw, buckets, mask, pf, la, lp, fa, fp):  # type: ignore[no-untyped-def]
    """SocketTable._find for an IPv4 key (addresses as 32-bit big-endian integers):
    the record index, or -1. Lock-free, as the Python walk is."""
    h = ((np.uint64(la) * np.uint64(0x9E3779B1)) ^ (np.uint64(fa) * np.uint64(0x85EBCA77))
         ^ (np.uint64((lp << 16) | fp) * np.uint64(0xC2B2AE3D)) ^ np.uint64(pf))
    h ^= h >> np.uint64(29)
    h ^= h >> np.uint64(13)
    j = buckets[h & mask]
    # the record keeps addresses as 16 big-endian bytes: an IPv4 one in the last 4,
    # which a little-endian u32 read sees byte-swapped
    la_w = ((la & 0xFF) << 24) | ((la >> 8 & 0xFF) << 16) | ((la >> 16 & 0xFF) << 8) | (la >> 24)
    fa_w = ((fa & 0xFF) << 24) | ((fa >> 8 & 0xFF) << 16) | ((fa >> 16 & 0xFF) << 8) | (fa >> 24)
    while j != 0:
        i = j - 1
        b = i * _REC_W
        if (tw[b + _P_PF] == pf and tw[b + _P_LPORT] == lp and tw[b + _P_FPORT] == fp
                and tw[b + _P_SFLAGS] & _SF_INHASH
                and tw[b + _P_LADDR] == 0 and tw[b + _P_LADDR + 1] == 0
                and tw[b + _P_LADDR + 2] == 0 and tw[b + _P_LADDR + 3] == la_w
                and tw[b + _P_FADDR] == 0 and tw[b + _P_FADDR + 1] == 0
                and tw[b + _P_FADDR + 2] == 0 and tw[b + _P_FADDR + 3] == fa_w):
            return i
        j = tw[b + _P_HNEXT]
    return -1


@kernel(types.int64(u32_1d, u32_1d, types.uint64, types.int64, types.int64, types.int64,
                    types.int64, types.int64))
def lookup4(tw, buckets, mask, pf, la, lp, fa, fp):  # type: ignore[no-untyped-def]
    """in_pcblookup as SocketTable.lookup_key does it: the exact 4-tuple, then the
    local address:port listener, then the wildcard-address one; -1 if none."""
    i = find4(tw, buckets, mask, pf, la, lp, fa, fp)
    if i < 0:
        i = find4(tw, buckets, mask, pf, la, lp, 0, 0)
        if i < 0 and la != 0:
            i = find4(tw, buckets, mask, pf, 0, lp, 0, 0)
    return i


@kernel(types.int64(u32_2d, _u64_2d, u8_1d, i64_1d, intp_1d, types.int64, types.int64,
                    u32_1d, types.int64, types.int64, u32_1d, u32_1d, u64_1d, types.uint64,
                    types.int64, types.uint64, intp_1d, intp_1d, i64_1d))
def udp4_input(mh, mq, seg, cl_base, hs, e, max_frame,  # type: ignore[no-untyped-def]
               local, local_exact, dst127, tw, buckets, tq, mask, def_hiwat, now,
               sids, uniq, cnt):
    """ether_input (e = 14) or not (e = 0) + ip_input + udp_input + sbappend over
    a whole batch of the homogeneous common case (see inputfast.py), or REFUSED.

    `local` holds the host's addresses (sorted; empty in auto-sockets mode, where
    every destination is ours), `local_exact` says the destination must be one of
    them, `dst127` whether a loopback destination refuses. Returns the number of
    packets without a UDP checksum (udps_nosum); `uniq[:k]`, `cnt[:k]` the sockets
    appended to and their packet counts, k = the number written before a -2 in uniq.
    `sids`, `uniq` and `cnt` are scratch of at least n entries.
    """
    n = hs.shape[0]
    m0 = hs[0]
    p0 = mh[m0, _W_PKTLEN]
    f0 = mh[m0, _W_CSUM_FLAGS]
    d0 = mh[m0, _W_CSUM_DATA]
    if (f0 & _CV) != _CV or (f0 & _OFFL) != _OFFL or d0 != 0xFFFF:
        return REFUSED
    if e != 0 and (p0 < 14 or p0 > max_frame):
        return REFUSED
    nseg = seg.shape[0]
    ip_len = -1
    plen = 0
    nosum = 0
    nu = 0
    last_sid = -1
    last_key_a = -1
    last_key_b = -1
    nloc = local.shape[0]
    for j in range(n):
        m = hs[j]
        if (mh[m, _W_PKTLEN] != p0 or mh[m, _W_LEN] != p0 or mh[m, _W_NEXT] != 0
                or mh[m, _W_CSUM_FLAGS] != f0 or mh[m, _W_CSUM_DATA] != d0):
            return REFUSED
        c = mh[m, _W_EXT]
        if c == 0:
            return REFUSED
        o = cl_base[c] + mh[m, _W_DATA]
        if o + e + 28 > nseg:
            return REFUSED
        if e != 0:
            if (seg[o] & 1) != 0 or seg[o + 12] != 0x08 or seg[o + 13] != 0x00:
                return REFUSED
        a = o + e
        if seg[a] != 0x45 or (seg[a + 6] & 0x3F) != 0 or seg[a + 7] != 0 or seg[a + 9] != 17:
            return REFUSED
        il = (np.int64(seg[a + 2]) << 8) | np.int64(seg[a + 3])
        if ip_len < 0:
            ip_len = il
            if ip_len < 28 or ip_len > p0 - e:
                return REFUSED
            plen = ip_len - 28
        elif il != ip_len:
            return REFUSED
        if ((np.int64(seg[a + 24]) << 8) | np.int64(seg[a + 25])) != ip_len - 20:
            return REFUSED
        src = ((np.int64(seg[a + 12]) << 24) | (np.int64(seg[a + 13]) << 16)
               | (np.int64(seg[a + 14]) << 8) | np.int64(seg[a + 15]))
        dst = ((np.int64(seg[a + 16]) << 24) | (np.int64(seg[a + 17]) << 16)
               | (np.int64(seg[a + 18]) << 8) | np.int64(seg[a + 19]))
        if (src >> 24) == 127 or (dst127 != 0 and (dst >> 24) == 127):
            return REFUSED
        if local_exact != 0:
            found = False
            for q in range(nloc):
                if np.int64(local[q]) == dst:
                    found = True
                    break
            if not found:
                return REFUSED
        sport = (np.int64(seg[a + 20]) << 8) | np.int64(seg[a + 21])
        dport = (np.int64(seg[a + 22]) << 8) | np.int64(seg[a + 23])
        ka = (dst << 32) | src
        kb = (dport << 16) | sport
        if ka == last_key_a and kb == last_key_b:
            sid = last_sid
        else:
            sid = lookup4(tw, buckets, mask, _PF_UDP4, dst, dport, src, sport)
            if sid < 0:
                return REFUSED
            last_sid, last_key_a, last_key_b = sid, ka, kb
        if seg[a + 26] == 0 and seg[a + 27] == 0:
            nosum += 1
        # the socket's packet count in this batch (uniq/cnt: the sockets in first-seen order)
        q = 0
        while q < nu and uniq[q] != sid:
            q += 1
        if q == nu:
            uniq[nu] = sid
            cnt[nu] = 0
            nu += 1
        cnt[q] += 1
        sids[j] = sid
    for q in range(nu):
        i = uniq[q]
        hiwat = np.int64(tw[i * _REC_W + _P_SB_HIWAT])
        if hiwat == 0:
            hiwat = def_hiwat
        qb = i * _REC_Q
        if np.int64(tq[qb + _Q_SB_APPENDED] - tq[qb + _Q_SB_REMOVED]) + cnt[q] * plen > hiwat:
            return REFUSED  # (udp_input counts udps_fullsock per packet)
    # commit: the three stages' header writes, the socket stamp, the sbappend counters
    shrink = np.uint32((plen - p0) & 0xFFFFFFFF)
    for j in range(n):
        m = hs[j]
        mh[m, _W_DATA] += np.uint32(e + 28)
        mh[m, _W_LEN] += shrink
        mh[m, _W_PKTLEN] += shrink
        if e != 0:
            mh[m, _W_HDRLENS] = np.uint32(e | 20 << 8)
        else:
            mh[m, _W_HDRLENS] = (mh[m, _W_HDRLENS] & np.uint32(0xFF)) | np.uint32(20 << 8)
        mh[m, _W_SOCKID] = np.uint32(sids[j] + 1)
        mq[m, _Q_TS_SOCKET] = now
    for q in range(nu):
        qb = uniq[q] * _REC_Q
        nb = np.uint64(cnt[q] * plen)
        tq[qb + _Q_SB_APPENDED] += nb
        tq[qb + _Q_RCVPACK] += np.uint64(cnt[q])
        tq[qb + _Q_RCVBYTE] += nb
    if nu < uniq.shape[0]:
        uniq[nu] = -2
    return nosum


@kernel(types.int64(u32_2d, _u64_2d, u8_1d, i64_1d, intp_1d, u8_1d, u64_1d, types.uint64,
                    i64_1d))
def soreceive(mh, mq, seg, cl_base, hs, uio, tq, now, out):  # type: ignore[no-untyped-def]
    """The user thread's receive for a batch of one-mbuf packets with sockets: copy
    each payload out into the user's buffer `uio` (as one read each), stamp it,
    account it to its socket (removed / delivered bytes and packets). Returns the
    bytes copied, or REFUSED (nothing written) when a packet has no socket, is a
    chain, has no cluster or is longer than the buffer. out[0] = packets."""
    n = hs.shape[0]
    usize = uio.shape[0]
    for j in range(n):
        m = hs[j]
        if (mh[m, _W_NEXT] != 0 or mh[m, _W_EXT] == 0 or mh[m, _W_SOCKID] == 0
                or mh[m, _W_PKTLEN] > usize):
            return REFUSED
    total = 0
    for j in range(n):
        m = hs[j]
        k = np.int64(mh[m, _W_PKTLEN])
        o = cl_base[mh[m, _W_EXT]] + mh[m, _W_DATA]
        uio[:k] = seg[o : o + k]  # the copyout
        mq[m, _Q_TS_USER] = now
        qb = (np.int64(mh[m, _W_SOCKID]) - 1) * _REC_Q
        tq[qb + _Q_SB_REMOVED] += np.uint64(k)
        tq[qb + _Q_DELIVERED] += np.uint64(k)
        tq[qb + _Q_DELIVERED_PKTS] += np.uint64(1)
        total += k
    out[0] = n
    return total
