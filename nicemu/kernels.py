"""Compiled kernels of the NIC: the receive DMA, and descriptor-ring moves.

Why it exists: the DMA of a batch was a Python loop of one slice copy per
frame plus, for the descriptor write-back, whole-batch numpy assignments (or
word-by-word writes for small batches): about 2 us of NIC time per 64-byte
frame at batch 32, the largest share of the CPU a packet costs in the
runtime (docs/BENCHMARKS.md). The kernel does the same in one pass: for
each frame, the copy into its cluster (the one copy on the receive side
before the socket's copyout), the length and pkthdr words of its descriptor
(RSS hash and type, receiving interface, the checksum verdict when the NIC
reports it), the DMA stamp (and the wire stamp when given), and the tallies
the NIC's counters need.

`classify_v4` is the receive classifier's common case (untagged IPv4
without options or fragmentation, carrying TCP or UDP) for a batch of any
size, one frame included: the RSS hash, and with rxcsum the IP header and
transport checksum verdicts, read straight from the frames laid out for the
DMA. In Python (and numpy for batches) one frame took ~20 us; a
request/response transaction pays it per request.

`tx_csum_v4` is txcsum for the same common kind of frame: the IP header
and transport checksums of one frame on its way to the wire (per frame in
Python, parsing the headers with dispatch.packet, it was ~30 us after a
wakeup: an rr answer pays it once).

The ring moves (`ring_push`, `ring_pop`) are ring.Ring's push_many and
pop_array as one call each: a batch's slots written (or read) and the
index published with release ordering (read with acquire), instead of
half a dozen numpy slice operations at 0.5-1 us apiece.
"""

from __future__ import annotations

import numpy as np

from dispatch.jit import (
    helper,
    i64_1d,
    intp_1d,
    kernel,
    load_acquire,
    ra_intp_1d,
    ra_u32_1d,
    ro_u8_1d,
    ro_u32_1d,
    store_release,
    types,
    u8_1d,
    u32_1d,
    u32_2d,
    u64_1d,
    u64_2d,
)
from dispatch.mbuf import layout as L
from nicemu import offload as off
from nicemu.rss import M_HASHTYPE_RSS_IPV4, M_HASHTYPE_RSS_TCP_IPV4, M_HASHTYPE_RSS_UDP_IPV4

_W_DATA, _W_LEN, _W_EXT, _W_PKTLEN = L.W_DATA, L.W_LEN, L.W_EXT, L.W_PKTLEN
_W_CSUM_FLAGS, _W_CSUM_DATA = L.W_CSUM_FLAGS, L.W_CSUM_DATA
_Q_DMA = L.Q_TS + L.TS_DMA
_Q_WIRE = L.Q_TS + L.TS_WIRE
_L3_OK, _L3_BAD = off.RX_L3_OK, off.RX_L3_BAD
_L4_OK, _L4_BAD = off.RX_L4_OK, off.RX_L4_BAD
_CSUM_IP, _TX_L4 = L.CSUM_IP, off.TX_L4_FLAGS

#: stamp_kind: no wire stamp, one for every frame (stamps[0]), one per frame (stamps[row])
STAMP_NONE, STAMP_ONE, STAMP_EACH = 0, 1, 2


@kernel(types.void(u32_2d, u64_2d, u8_1d, i64_1d, intp_1d, ro_u8_1d, i64_1d, u32_2d, intp_1d,
                   types.int64, types.uint64, u64_1d, types.int64, i64_1d))
def dma_rx(mh, mq, seg, cl_base, handles, data, doff, blk, rows,  # type: ignore[no-untyped-def]
           report, now, stamps, stamp_kind, tally):
    """Frame rows[j] (its bytes data[doff[r] : doff[r] + blk[r, 0]]) into buffer
    handles[j]; blk rows are (len, flowid, rsstype, rcvif, csum_flags, csum_data).
    tally[:] = bytes, L4 verified ok, L4 bad, L3 bad (from the verdicts, reported
    or not)."""
    k = handles.shape[0]
    nbytes = 0
    ok = 0
    l4bad = 0
    l3bad = 0
    for j in range(k):
        r = rows[j]
        m = handles[j]
        ln = np.int64(blk[r, 0])
        o = cl_base[mh[m, _W_EXT]] + mh[m, _W_DATA]
        s = doff[r]
        for t in range(ln):  # the DMA (a loop compiles far faster than a slice copy)
            seg[o + t] = data[s + t]
        mh[m, _W_LEN] = blk[r, 0]
        for w in range(4):
            mh[m, _W_PKTLEN + w] = blk[r, w]
        f = blk[r, 4]
        if report != 0:
            mh[m, _W_CSUM_FLAGS] = f
            mh[m, _W_CSUM_DATA] = blk[r, 5]
        else:
            mh[m, _W_CSUM_FLAGS] = 0
            mh[m, _W_CSUM_DATA] = 0
        mq[m, _Q_DMA] = now
        if stamp_kind == STAMP_ONE:
            mq[m, _Q_WIRE] = stamps[0]
        elif stamp_kind == STAMP_EACH:
            mq[m, _Q_WIRE] = stamps[r]
        nbytes += ln
        l4 = f & _L4_OK
        if l4 == _L4_OK:
            ok += 1
        elif l4 == _L4_BAD:
            l4bad += 1
        if (f & _L3_OK) == _L3_BAD:
            l3bad += 1
    tally[0] = nbytes
    tally[1] = ok
    tally[2] = l4bad
    tally[3] = l3bad


def _ring_push(idx, hcol, wcol, lim, hs, ws):  # type: ignore[no-untyped-def]
    cap = hcol.shape[0]
    head = np.int64(idx[0])
    used = head - np.int64(load_acquire(idx, lim))
    k = min(hs.shape[0], cap - used)
    if k <= 0:
        return 0
    mask = cap - 1
    words = ws.shape[0] > 0
    for j in range(k):
        s = (head + j) & mask
        hcol[s] = hs[j]
        if words:
            wcol[s] = ws[j]
    store_release(idx, 0, np.uint64(head + k))
    return k


ring_push = kernel(*(types.int64(u64_1d, u32_1d, u32_1d, types.int64, h, ra_u32_1d)
                     for h in (ra_intp_1d, ra_u32_1d)))(_ring_push)
ring_push.__doc__ = """The producer's push of a ring whose header is `idx` (u64 words; head at
0) and slots `hcol`/`wcol`: as many of `hs` (with `ws` beside them, unless
`ws` is empty) as fit before the index at `lim` (the tail; a tx ring's too)
catches up. Publishes the new head after the slots. Returns how many."""


@kernel(types.int64(u64_1d, u32_1d, types.int64, types.int64, types.int64, u32_1d))
def ring_pop(idx, hcol, lim, pos, k, out):  # type: ignore[no-untyped-def]
    """The consumer's take of k descriptors at the index `pos` (u64 word of `idx`),
    which may go up to the index at `lim` (the head, or a tx ring's done): handles
    into out[:k], then the index published. Returns how many it took (fewer than k
    only if fewer were there)."""
    tail = np.int64(idx[pos])
    k = min(k, np.int64(load_acquire(idx, lim)) - tail)
    mask = hcol.shape[0] - 1
    for j in range(k):
        out[j] = hcol[(tail + j) & mask]
    store_release(idx, pos, np.uint64(tail + k))
    return k


_HT_IP4, _HT_UDP4, _HT_TCP4 = M_HASHTYPE_RSS_IPV4, M_HASHTYPE_RSS_UDP_IPV4, M_HASHTYPE_RSS_TCP_IPV4


@helper
def _ones_sum16(data, start, end, init):  # type: ignore[no-untyped-def]
    """`init` plus data[start:end] as big-endian 16-bit words (an odd last byte padded
    with zero), folded to 16 bits (not complemented)."""
    s = np.int64(init)
    i = start
    while i + 1 < end:
        s += (np.int64(data[i]) << 8) | np.int64(data[i + 1])
        i += 2
    if i < end:
        s += np.int64(data[i]) << 8
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


@helper
def _sums_to_ones(data, start, end, init):  # type: ignore[no-untyped-def]
    """True if `init` plus data[start:end] folds to 0xFFFF in ones-complement
    arithmetic: the RFC 1071 verification of a span that includes its checksum."""
    return _ones_sum16(data, start, end, init) == 0xFFFF


@kernel(types.int64(ro_u8_1d, i64_1d, u32_2d, ro_u32_1d, types.int64, types.int64))
def classify_v4(data, doff, blk, t16, udp_ports, check):  # type: ignore[no-untyped-def]
    """Classify frames data[doff[j] : doff[j] + blk[j, 0]] of the common kind: untagged
    IPv4, a 20-byte header, not a fragment, TCP or UDP. Writes each row's RSS hash
    and type (blk[j, 1:3]: Toeplitz over addresses, and ports for TCP, for UDP if
    `udp_ports`; `t16` the key's table by 16-bit input word, 65536 entries per word)
    and, with `check`, the checksum verdict (blk[j, 4:6]: IP header ok or bad, the
    transport's ok or bad with csum_data 0xFFFF when ok). Returns n; -1 (rows
    partly written: the caller's general path rewrites them) at the first frame
    of another kind, or one whose lengths do not add up, or a UDP datagram
    without a checksum: as the batch classifier's own common case."""
    n = blk.shape[0]
    for j in range(n):
        o = doff[j]
        ln = np.int64(blk[j, 0])
        if ln < 60 or data[o + 12] != 0x08 or data[o + 13] != 0 or data[o + 14] != 0x45 \
                or data[o + 21] != 0 or (data[o + 20] != 0 and data[o + 20] != 0x40):
            return -1
        proto = data[o + 23]
        if proto == 17:
            ports = udp_ports != 0
            htype = _HT_UDP4 if ports else _HT_IP4
            minl = 28
        elif proto == 6:
            ports = True
            htype = _HT_TCP4
            minl = 40
        else:
            return -1
        nw = 6 if ports else 4
        h = np.uint32(0)
        for k in range(nw):
            w = (np.int64(data[o + 26 + 2 * k]) << 8) | np.int64(data[o + 27 + 2 * k])
            h ^= t16[k * 65536 + w]
        blk[j, 1] = h
        blk[j, 2] = htype
        if check:
            tl = (np.int64(data[o + 16]) << 8) | np.int64(data[o + 17])
            end = tl + 14
            if tl < minl or end > ln:
                return -1
            if proto == 17 and data[o + 40] == 0 and data[o + 41] == 0:
                return -1  # (no checksum: nothing to verify, the general path says so)
            l3ok = _sums_to_ones(data, o + 14, o + 34, 0)
            # the pseudo-header's addresses sit right before the transport header
            l4ok = _sums_to_ones(data, o + 26, o + end, np.int64(proto) + tl - 20)
            blk[j, 4] = (_L3_OK if l3ok else _L3_BAD) | (_L4_OK if l4ok else _L4_BAD)
            blk[j, 5] = 0xFFFF if l4ok else 0
    return n


@kernel(types.int64(u8_1d, types.int64))
def tx_csum_v4(f, flags):  # type: ignore[no-untyped-def]
    """txcsum for one frame of the common kind (untagged IPv4, a 20-byte header, not
    a fragment, a whole TCP or UDP header): fill the IP header checksum if `flags`
    has CSUM_IP and the transport's if it has a TCP/UDP flag, in place; returns how
    many were filled, or -1 (nothing written) for a frame of another kind, which
    `offload.tx_csum_frames` then handles as it handles every frame."""
    n = f.shape[0]
    if n < 34 or f[12] != 0x08 or f[13] != 0 or f[14] != 0x45 or f[21] != 0 \
            or (f[20] & 0x3F) != 0:
        return -1
    tl = (np.int64(f[16]) << 8) | np.int64(f[17])
    proto = f[23]
    if proto == 6:
        ck = 34 + 16
        minl = 40
    elif proto == 17:
        ck = 34 + 6
        minl = 28
    else:
        return -1
    if tl < minl or 14 + tl > n:
        return -1
    done = 0
    if flags & _CSUM_IP:
        f[24] = 0
        f[25] = 0
        c = 0xFFFF - _ones_sum16(f, 14, 34, 0)
        f[24] = c >> 8
        f[25] = c & 0xFF
        done += 1
    if flags & _TX_L4:
        f[ck] = 0
        f[ck + 1] = 0
        # the pseudo-header's addresses sit right before the transport header
        c = 0xFFFF - _ones_sum16(f, 26, 14 + tl, np.int64(proto) + tl - 20)
        if c == 0 and proto == 17:
            c = 0xFFFF  # RFC 768: a computed zero is sent as all ones
        f[ck] = c >> 8
        f[ck + 1] = c & 0xFF
        done += 1
    return done
