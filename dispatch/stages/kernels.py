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

from dispatch.jit import (
    helper,
    i64_1d,
    i64_2d,
    intp_1d,
    kernel,
    types,
    u8_1d,
    u32_1d,
    u32_2d,
    u64_1d,
    u64_2d,
)
from dispatch.mbuf import layout as L
from dispatch.stages import socktab as S

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


@helper
def _seq_diff(a, b):  # type: ignore[no-untyped-def]
    """a - b as a signed 32-bit sequence-space difference (tcp_var.seq_diff)."""
    d = (a - b) & _M32
    return d - (1 << 32) if d >= (1 << 31) else d


@helper
def _fold(s):  # type: ignore[no-untyped-def]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


@helper
def _be16(seg, o):  # type: ignore[no-untyped-def]
    return (np.int64(seg[o]) << 8) | np.int64(seg[o + 1])


@helper
def _be32(seg, o):  # type: ignore[no-untyped-def]
    return ((np.int64(seg[o]) << 24) | (np.int64(seg[o + 1]) << 16)
            | (np.int64(seg[o + 2]) << 8) | np.int64(seg[o + 3]))




@helper
def _is_one_of(local, a):  # type: ignore[no-untyped-def]
    """Whether address `a` is in the array `local`."""
    for q in range(local.shape[0]):
        if np.int64(local[q]) == a:
            return True
    return False


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


@kernel(types.int64(u32_2d, u64_2d, u8_1d, i64_1d, intp_1d, types.int64, types.int64,
                    u32_1d, types.int64, u32_1d, u32_1d, u64_1d, types.uint64,
                    types.int64, types.uint64, intp_1d, intp_1d, i64_1d))
def udp4_input(mh, mq, seg, cl_base, hs, e, max_frame,  # type: ignore[no-untyped-def]
               local, local_check, tw, buckets, tq, mask, def_hiwat, now, sids, uniq, cnt):
    """ether_input (e = 14) or not (e = 0) + ip_input + udp_input + sbappend over
    a whole batch of the homogeneous common case (see inputfast.py), or REFUSED.

    `local` holds the host's addresses and `local_check` says the destination must
    be one of them (not in auto-sockets mode), as ip4_input takes them; loopback
    sources and destinations refuse. Returns the number of
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
        src = _be32(seg, a + 12)
        dst = _be32(seg, a + 16)
        if (src >> 24) == 127 or (dst >> 24) == 127:
            return REFUSED
        if local_check != 0 and not _is_one_of(local, dst):
            return REFUSED
        sport = _be16(seg, a + 20)
        dport = _be16(seg, a + 22)
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


@kernel(types.int64(u32_2d, u64_2d, u8_1d, i64_1d, intp_1d, u8_1d, u64_1d, types.uint64,
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
        for t in range(k):  # the copyout (a loop: LLVM makes it a copy; a slice
            uio[t] = seg[o + t]  # assignment costs seconds of compile time here)
        mq[m, _Q_TS_USER] = now
        qb = (np.int64(mh[m, _W_SOCKID]) - 1) * _REC_Q
        tq[qb + _Q_SB_REMOVED] += np.uint64(k)
        tq[qb + _Q_DELIVERED] += np.uint64(k)
        tq[qb + _Q_DELIVERED_PKTS] += np.uint64(1)
        total += k
    out[0] = n
    return total


_ETHER_HDR_LEN = 14


@kernel(types.int64(u32_2d, u8_1d, i64_1d, intp_1d, types.int64, u8_1d, i64_1d))
def ether_input(mh, seg, cl_base, hs, max_frame, route, tally):  # type: ignore[no-untyped-def]
    """ether_input over a batch whose every frame is untagged unicast IPv4 or IPv6,
    its first mbuf on a cluster holding the whole header, at least a header and at
    most `max_frame` long: strip the headers (data += 14, len and pkthdr len -= 14,
    hdrlens = 14). route[j] = 4 or 6; tally[:] = bytes, IPv6 frames. Returns 0, or
    REFUSED (nothing written) for any other batch."""
    n = hs.shape[0]
    nbytes = 0
    n6 = 0
    for j in range(n):
        m = hs[j]
        ln = mh[m, _W_LEN]
        pk = mh[m, _W_PKTLEN]
        c = mh[m, _W_EXT]
        if ln < _ETHER_HDR_LEN or c == 0 or pk < _ETHER_HDR_LEN or pk > max_frame:
            return REFUSED
        o = cl_base[c] + mh[m, _W_DATA]
        if (seg[o] & 1) != 0:
            return REFUSED  # group address: the per-packet path counts it
        t0 = seg[o + 12]
        t1 = seg[o + 13]
        if t0 == 0x08 and t1 == 0x00:
            route[j] = 4
        elif t0 == 0x86 and t1 == 0xDD:
            route[j] = 6
            n6 += 1
        else:
            return REFUSED
        nbytes += pk
    for j in range(n):
        m = hs[j]
        mh[m, _W_DATA] += np.uint32(_ETHER_HDR_LEN)
        mh[m, _W_LEN] -= np.uint32(_ETHER_HDR_LEN)
        mh[m, _W_PKTLEN] -= np.uint32(_ETHER_HDR_LEN)
        mh[m, _W_HDRLENS] = np.uint32(_ETHER_HDR_LEN)
    tally[0] = nbytes
    tally[1] = n6
    return 0


@kernel(types.int64(u32_2d, u8_1d, i64_1d, intp_1d, u32_1d, types.int64, u8_1d))
def ip4_input(mh, seg, cl_base, hs, local, local_check, proto):  # type: ignore[no-untyped-def]
    """ip_input over a batch whose every packet is a plain, valid IPv4 packet for
    this host: version 4 without options, not a fragment, TCP, UDP or ICMP, no
    loopback source or destination, the destination one of `local` (when
    local_check), 20 <= ip_len <= m_pkthdr.len with the whole packet in its first
    mbuf (a cluster), the header checksum verified by the NIC or good in software.
    Trims link padding (m_len = m_pkthdr.len = ip_len) and records l3hlen = 20.
    proto[j] = the packet's protocol. Returns 0, or REFUSED (nothing written)."""
    n = hs.shape[0]
    nseg = seg.shape[0]
    for j in range(n):
        m = hs[j]
        c = mh[m, _W_EXT]
        pk = mh[m, _W_PKTLEN]
        if c == 0 or mh[m, _W_LEN] != pk:
            return REFUSED
        o = cl_base[c] + mh[m, _W_DATA]
        if o + 20 > nseg:
            return REFUSED
        if seg[o] != 0x45 or (seg[o + 6] & 0x3F) != 0 or seg[o + 7] != 0:
            return REFUSED
        p = seg[o + 9]
        if p != 6 and p != 17 and p != 1:
            return REFUSED
        if seg[o + 12] == 127 or seg[o + 16] == 127:
            return REFUSED
        il = (np.int64(seg[o + 2]) << 8) | np.int64(seg[o + 3])
        if il < 20 or il > pk:
            return REFUSED
        cf = mh[m, _W_CSUM_FLAGS]
        if (cf & _CV) != _CV:
            if cf & L.CSUM_L3_CALC:
                return REFUSED  # the NIC found it bad: the per-packet path counts it
            s = 0
            for k in range(10):
                s += (np.int64(seg[o + 2 * k]) << 8) | np.int64(seg[o + 2 * k + 1])
            if s % 0xFFFF != 0:
                return REFUSED
        if local_check != 0 and not _is_one_of(local, _be32(seg, o + 16)):
            return REFUSED
        proto[j] = p
    for j in range(n):
        m = hs[j]
        o = cl_base[mh[m, _W_EXT]] + mh[m, _W_DATA]
        il = np.uint32((np.int64(seg[o + 2]) << 8) | np.int64(seg[o + 3]))
        mh[m, _W_LEN] = il
        mh[m, _W_PKTLEN] = il
        mh[m, _W_HDRLENS] = (mh[m, _W_HDRLENS] & np.uint32(0xFF)) | np.uint32(20 << 8)
    return 0


_M32 = 0xFFFFFFFF
_WL_SET = 1 << 32
_PF_TCP4 = S.pf_of(S.IPPROTO_TCP, S.AF_INET4)
_SF_LISTEN, _SF_AUTO = S.SF_LISTEN, S.SF_AUTO
_P_STATE, _P_TFLAGS, _P_REASS_HEAD = S.P_STATE, S.P_TFLAGS, S.P_REASS_HEAD
_P_RCV_NXT, _P_RCV_ADV, _P_SND_UNA, _P_SND_MAX = S.P_RCV_NXT, S.P_RCV_ADV, S.P_SND_UNA, S.P_SND_MAX
_P_SND_WND, _P_SCALE, _P_MAXSEG = S.P_SND_WND, S.P_SCALE, S.P_MAXSEG
_Q_SND_WL1, _Q_SND_WL2, _Q_SND_MAXWND = S.Q_SND_WL1, S.Q_SND_WL2, S.Q_SND_MAXWND
_Q_DELACK_SINCE = S.Q_DELACK_SINCE
_TCPS_ESTABLISHED = 4  # tcp_var.TCPS_ESTABLISHED
_TF_DELACK, _TF_FIN_PENDING = 0x0002, 0x0020  # tcp_var.TF_*
_TH_ACK, _TH_PUSH = 0x10, 0x08
_L4_VALID, _L4_PSEUDO = L.CSUM_DATA_VALID, L.CSUM_PSEUDO_HDR


@kernel(types.int64(u8_1d, u64_1d, types.int64, types.int64))
def ones_sum(seg, seg64, start, length):  # type: ignore[no-untyped-def]
    """The RFC 1071 sum (unfolded) of `length` bytes at `start` as big-endian 16-bit
    words: the aligned middle 8 bytes at a time through `seg64` (the same segment
    as u64 words), as little-endian words whose folded sum is the big-endian one
    byte-swapped (RFC 1071 s. 2(B)), the ends byte by byte."""
    end = start + length
    a0 = (start + 7) & ~7
    a1 = end & ~7
    s = 0
    if a1 <= a0:
        for p in range(start, end):
            s += np.int64(seg[p]) << 8 if ((p - start) & 1) == 0 else np.int64(seg[p])
        return s
    for p in range(start, a0):
        s += np.int64(seg[p]) << 8 if ((p - start) & 1) == 0 else np.int64(seg[p])
    for p in range(a1, end):
        s += np.int64(seg[p]) << 8 if ((p - start) & 1) == 0 else np.int64(seg[p])
    acc = 0
    for w in range(a0 >> 3, a1 >> 3):
        v = seg64[w]
        acc += np.int64(v & np.uint64(0xFFFFFFFF)) + np.int64(v >> np.uint64(32))
    acc = _fold(acc)
    if ((a0 - start) & 1) == 0:
        acc = ((acc & 0xFF) << 8) | (acc >> 8)
    return s + acc


@kernel(types.int64(u32_2d, u64_2d, u8_1d, u64_1d, i64_1d, intp_1d, u32_1d, u64_1d, u32_1d,
                    types.uint64, types.int64, types.int64, types.uint64, intp_1d, intp_1d,
                    i64_2d))
def tcp4_input(mh, mq, seg, seg64, cl_base, hs, tw, tq, buckets,  # type: ignore[no-untyped-def]
               mask, def_hiwat, delack_on, now, sids, uniq, cs):
    """tcp_input's header-prediction case over a whole batch: in-order data segments
    (ACK, perhaps PSH; no options) on ESTABLISHED connections, each acknowledging
    exactly snd_una with the send window unchanged, within the receive window, with
    nothing in reassembly and no FIN pending, the checksum verified by the NIC or
    good in software, each IPv4 packet one mbuf on a cluster without padding.

    Does what tcp_input does with them: headers stripped, the send window's
    snd_wl1 / snd_wl2 bookkeeping, rcv_nxt advanced, sbappend (socket, stamp,
    counters), delayed-ACK state. Returns the payload bytes, or REFUSED (nothing
    written) for any other batch. uniq[:k] are the connections seen (k: up to a
    -2), and cs[q, 5] says what each owes: bit 0 TF_DELACK newly set (the caller
    notes it for the delayed-ACK timer), bit 1 an ACK at the end of the batch, and
    bits 8 up the position of the segment that made it owed (the per-segment path
    sends the batch's ACKs in that order).
    `sids` (n), `uniq` (n + 1) and `cs` (n x 6) are scratch.
    """
    n = hs.shape[0]
    nseg = seg.shape[0]
    nu = 0
    for j in range(n):
        m = hs[j]
        c = mh[m, _W_EXT]
        pk = np.int64(mh[m, _W_PKTLEN])
        if mh[m, _W_NEXT] != 0 or c == 0 or np.int64(mh[m, _W_LEN]) != pk:
            return REFUSED
        l3 = np.int64((mh[m, _W_HDRLENS] >> 8) & 0xFFFF)
        o = cl_base[c] + mh[m, _W_DATA]
        if l3 < 20 or o + pk > nseg or pk < l3 + 20 or (seg[o] >> 4) != 4:
            return REFUSED
        tlen = _be16(seg, o + 2) - l3
        if tlen < 20 or pk != l3 + tlen:
            return REFUSED
        th = o + l3
        fl = seg[th + 13]
        if seg[th + 12] != 0x50 or (fl != _TH_ACK and fl != (_TH_ACK | _TH_PUSH)):
            return REFUSED
        plen = tlen - 20
        if plen <= 0:
            return REFUSED
        src = _be32(seg, o + 12)
        dst = _be32(seg, o + 16)
        ps = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + 6 + tlen
        cf = mh[m, _W_CSUM_FLAGS]
        if cf & _L4_VALID:
            if cf & _L4_PSEUDO:
                if mh[m, _W_CSUM_DATA] != 0xFFFF:
                    return REFUSED
            elif _fold(np.int64(mh[m, _W_CSUM_DATA]) + ps) != 0xFFFF:
                return REFUSED
        elif _fold(ps + ones_sum(seg, seg64, th, tlen)) != 0xFFFF:
            return REFUSED
        sport = _be16(seg, th)
        dport = _be16(seg, th + 2)
        seq = _be32(seg, th + 4)
        ack = _be32(seg, th + 8)
        win = _be16(seg, th + 14)
        i = find4(tw, buckets, mask, _PF_TCP4, dst, dport, src, sport)
        if i < 0:
            return REFUSED
        b = i * _REC_W
        qb = i * _REC_Q
        tf = tw[b + _P_TFLAGS]
        if (tw[b + _P_SFLAGS] & (_SF_LISTEN | _SF_AUTO)) != 0 \
                or tw[b + _P_STATE] != _TCPS_ESTABLISHED or (tf & _TF_FIN_PENDING) != 0 \
                or tw[b + _P_REASS_HEAD] != 0:
            return REFUSED
        q = 0
        while q < nu and uniq[q] != i:
            q += 1
        if q == nu:  # this connection's state as the batch goes: rcv_nxt, appended, ...
            uniq[nu] = i
            cs[q, 0] = tw[b + _P_RCV_NXT]
            cs[q, 1] = np.int64(tq[qb + _Q_SB_APPENDED])
            cs[q, 2] = 1 if (tf & _TF_DELACK) != 0 else 0
            cs[q, 3] = np.int64(tq[qb + _Q_SND_WL1])
            cs[q, 4] = np.int64(tq[qb + _Q_SND_WL2])
            cs[q, 5] = 0
            nu += 1
        nxt = cs[q, 0]
        if seq != nxt or _seq_diff(ack, np.int64(tw[b + _P_SND_MAX])) > 0 \
                or ack != tw[b + _P_SND_UNA] \
                or (win << (tw[b + _P_SCALE] & 0xFF)) != tw[b + _P_SND_WND]:
            return REFUSED
        hiwat = np.int64(tw[b + _P_SB_HIWAT])
        if hiwat == 0:
            hiwat = def_hiwat
        space = hiwat - (cs[q, 1] - np.int64(tq[qb + _Q_SB_REMOVED]))
        rcv_wnd = max(space, _seq_diff(np.int64(tw[b + _P_RCV_ADV]), nxt), 0)
        if _seq_diff((seq + plen) & _M32, (nxt + rcv_wnd) & _M32) > 0:
            return REFUSED
        wl1 = cs[q, 3]
        if wl1 == 0 or _seq_diff(seq, wl1 & _M32) > 0 or (
                seq == (wl1 & _M32) and _seq_diff(ack, cs[q, 4] & _M32) >= 0):
            cs[q, 3] = _WL_SET | seq
            cs[q, 4] = _WL_SET | ack
        cs[q, 0] = (nxt + plen) & _M32
        cs[q, 1] += plen
        if delack_on != 0 and plen <= tw[b + _P_MAXSEG] and cs[q, 2] == 0:
            cs[q, 2] = 1
            cs[q, 5] |= 1
        elif (cs[q, 5] & 2) == 0:  # (the segment that made it owed: bits 8 up)
            cs[q, 5] |= 2 | (np.int64(j) << 8)
        sids[j] = i
    total = 0
    for j in range(n):  # commit, segment by segment, as tcp_input does
        m = hs[j]
        i = sids[j]
        b = i * _REC_W
        qb = i * _REC_Q
        l3 = np.int64((mh[m, _W_HDRLENS] >> 8) & 0xFFFF)
        o = cl_base[mh[m, _W_EXT]] + mh[m, _W_DATA]
        th = o + l3
        plen = _be16(seg, o + 2) - l3 - 20
        seq = _be32(seg, th + 4)
        ack = _be32(seg, th + 8)
        newwnd = _be16(seg, th + 14) << (tw[b + _P_SCALE] & 0xFF)
        hl = np.uint32(l3 + 20)
        mh[m, _W_DATA] += hl
        mh[m, _W_LEN] -= hl
        mh[m, _W_PKTLEN] -= hl
        wl1 = np.int64(tq[qb + _Q_SND_WL1])
        if wl1 == 0 or _seq_diff(seq, wl1 & _M32) > 0 or (
                seq == (wl1 & _M32)
                and _seq_diff(ack, np.int64(tq[qb + _Q_SND_WL2]) & _M32) >= 0):
            tw[b + _P_SND_WND] = np.uint32(newwnd)
            tq[qb + _Q_SND_WL1] = np.uint64(_WL_SET | seq)
            tq[qb + _Q_SND_WL2] = np.uint64(_WL_SET | ack)
            if newwnd > np.int64(tq[qb + _Q_SND_MAXWND]):
                tq[qb + _Q_SND_MAXWND] = np.uint64(newwnd)
        tw[b + _P_RCV_NXT] = np.uint32((seq + plen) & _M32)
        mh[m, _W_SOCKID] = np.uint32(i + 1)
        mq[m, _Q_TS_SOCKET] = now
        tq[qb + _Q_SB_APPENDED] += np.uint64(plen)
        tq[qb + _Q_RCVPACK] += np.uint64(1)
        tq[qb + _Q_RCVBYTE] += np.uint64(plen)
        if delack_on != 0 and plen <= tw[b + _P_MAXSEG] and (tw[b + _P_TFLAGS] & _TF_DELACK) == 0:
            tw[b + _P_TFLAGS] |= np.uint32(_TF_DELACK)
            tq[qb + _Q_DELACK_SINCE] = now
        total += plen
    uniq[nu] = -2
    return total
