"""NIC offloads (rxcsum, txcsum, tso, lro, toe) built on dispatch.packet.

Offloads move work from the host's CPU to the NIC; they must never change
what the host delivers.  So none of them has its own idea of a header or a
checksum: parsing is ``dispatch.packet``'s parsers (or its ``struct``
layouts on the hot path) and every checksum is ``dispatch.packet.checksum``
(``verify_batch`` / ``cksum_batch`` for batches, ``in_cksum`` /
``l4_checksum`` for one).  What is here is only the NIC's policy:

* **rxcsum**: verify the IPv4 header checksum and the TCP/UDP checksum (v4
  and v6) and report it in ``csum_flags`` as FreeBSD drivers do:
  ``CSUM_L3_CALC|CSUM_L3_VALID`` for a good IPv4 header (``CALC`` alone for a
  bad one); ``CSUM_L4_CALC|CSUM_L4_VALID`` (``CSUM_PSEUDO_HDR|CSUM_DATA_VALID``)
  with ``csum_data = 0xffff`` for a good L4 checksum, ``CSUM_L4_CALC`` alone
  for a bad one, so the stack counts it; nothing at all for what the NIC
  cannot parse (non-IP, truncated, fragments' L4, IPv6 routing headers,
  other protocols' L4).  A UDP/IPv4 datagram sent without a checksum (0) gets
  no L4 flags: the stack's "no checksum" rule applies.
* **txcsum**: fill the IPv4 header checksum (``CSUM_IP``) and the TCP/UDP
  checksum (``CSUM_TCP``/``CSUM_UDP`` and the IPv6 variants) of an outgoing
  frame.  The checksum field's previous content is ignored (FreeBSD seeds it
  with the pseudo-header sum; zero works as well).
* **tso**: cut a TCP segment marked ``CSUM_TSO`` into ``tso_segsz``-sized
  ones, each with its own IP length and id (+1 per segment), sequence number,
  flags (FIN/PSH on the last only, CWR on the first only) and checksums.
* **lro**: :func:`lro_plan` decides which received segments coalesce: the
  same flow, in order with no gap, only ACK/PSH flags, payload present,
  identical ack, window and options, and a verified checksum.  The NIC then
  chains the segments' mbufs (no copy) behind the first one's headers.
* **toe**: see :data:`ToeInput`; the NIC calls the stack's own ip/tcp input
  code through this hook instead of having a second TCP.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from dispatch.mbuf import layout as L
from dispatch.packet.checksum import (
    cksum_batch,
    in_cksum,
    l4_checksum,
    pseudo_header_sum,
    verify_batch,
)
from dispatch.packet.errors import BytesLike, PacketError
from dispatch.packet.ether import ETHER_HDR_LEN, ETHERTYPE_IP, ETHERTYPE_IPV6, parse_ether
from dispatch.packet.ipv4 import (
    IP_MF,
    IP_OFFMASK,
    IPPROTO_ROUTING,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_HDR,
    IPV4_HDR_LEN,
    parse_ipv4,
)
from dispatch.packet.ipv6 import IPV6_HDR_LEN, parse_ipv6
from dispatch.packet.tcp import TCP_HDR, TCP_HDR_LEN, TH_ACK, TH_CWR, TH_FIN, TH_PUSH, parse_tcp
from dispatch.packet.udp import UDP_HDR_LEN

__all__ = [
    "RX_L3_OK",
    "RX_L3_BAD",
    "RX_L4_OK",
    "RX_L4_BAD",
    "TX_CSUM_FLAGS",
    "TX_L4_FLAGS",
    "FrameLayout",
    "frame_layout",
    "rx_csum_frame",
    "rx_csum_std",
    "tx_csum_frames",
    "tso_segment",
    "LroSeg",
    "lro_seg_std",
    "lro_plan",
    "ipv4_fix_len",
    "ToeInput",
]

RX_L3_OK: Final = L.CSUM_L3_CALC | L.CSUM_L3_VALID
RX_L3_BAD: Final = L.CSUM_L3_CALC
RX_L4_OK: Final = L.CSUM_L4_CALC | L.CSUM_L4_VALID
RX_L4_BAD: Final = L.CSUM_L4_CALC
TX_L4_FLAGS: Final = L.CSUM_IP_TCP | L.CSUM_IP_UDP | L.CSUM_IP6_TCP | L.CSUM_IP6_UDP
TX_CSUM_FLAGS: Final = L.CSUM_IP | TX_L4_FLAGS
#: rx flags and csum_data by (IPv4 header ok) + 2 * (L4 ok)
_FLAGS_LUT: Final = np.array([RX_L3_BAD | RX_L4_BAD, RX_L3_OK | RX_L4_BAD,
                              RX_L3_BAD | RX_L4_OK, RX_L3_OK | RX_L4_OK], np.uint32)
_DATA_LUT: Final = np.array([0, 0, 0xFFFF, 0xFFFF], np.uint32)
_TCP_SUM_OFF: Final = 16
_UDP_SUM_OFF: Final = 6
_LRO_FLAGS: Final = TH_ACK | TH_PUSH
_IP_MAXPACKET: Final = 65535

#: The TOE hook: ``toe_input(handles, queue, now_ns) -> handles to deliver``.  The
#: runtime supplies the stack's own ip_input/tcp_input (and reassembly) here; it
#: runs in the NIC process on packets already DMAed (with rx checksum flags set),
#: marks what it accepted (e.g. ``W_SOCKID``) and frees and counts what it drops.
ToeInput = Callable[[npt.NDArray[np.intp], int, int], npt.NDArray[np.intp]]


@dataclass(frozen=True, slots=True)
class FrameLayout:
    """Where the layers of a frame are (offsets from the frame start), as the NIC parses it.

    ``l4_end`` stops at the IP packet's end (Ethernet padding excluded).
    ``l4_ok`` is False when the L4 header cannot be checked (fragment, IPv6
    routing header, truncated).
    """

    version: int  # 4 or 6
    l3: int
    l4: int
    l4_end: int
    proto: int
    src: bytes
    dst: bytes
    l4_ok: bool


def frame_layout(frame: BytesLike) -> FrameLayout | None:
    """Parse an Ethernet (optionally VLAN-tagged) IP frame with dispatch.packet; None if the
    NIC cannot (not IP, malformed, truncated)."""
    try:
        eh = parse_ether(frame)
        l3 = eh.hdr_len
        if eh.ethertype == ETHERTYPE_IP:
            ip4 = parse_ipv4(frame, l3)
            frag = ip4.is_fragment
            return FrameLayout(4, l3, l3 + ip4.hdr_len, l3 + ip4.total_length, ip4.proto,
                               ip4.src, ip4.dst, not frag)
        if eh.ethertype == ETHERTYPE_IPV6:
            ip6 = parse_ipv6(frame, l3)
            ok = ip6.fragment is None and not any(
                h.proto == IPPROTO_ROUTING for h in ip6.ext_headers)
            return FrameLayout(6, l3, ip6.l4_offset, ip6.end, ip6.upper_proto, ip6.src,
                               ip6.dst, ok)
    except PacketError:
        return None
    return None


def _l4_checkable(lay: FrameLayout, frame: BytesLike) -> bool:
    if not lay.l4_ok:
        return False
    n = lay.l4_end - lay.l4
    if lay.proto == IPPROTO_TCP:
        return n >= TCP_HDR_LEN
    if lay.proto == IPPROTO_UDP:
        if n < UDP_HDR_LEN:
            return False
        # a UDP/IPv4 datagram without a checksum: nothing to verify
        return not (lay.version == 4 and frame[lay.l4 + 6] == 0 and frame[lay.l4 + 7] == 0)
    return False


def rx_csum_frame(frame: BytesLike) -> tuple[int, int]:
    """rxcsum for one frame: ``(csum_flags, csum_data)`` (the general, slower path)."""
    lay = frame_layout(frame)
    if lay is None:
        return 0, 0
    flags = 0
    if lay.version == 4:
        flags = RX_L3_OK if in_cksum(memoryview(frame)[lay.l3 : lay.l4]) == 0 else RX_L3_BAD
    if not _l4_checkable(lay, frame):
        return flags, 0
    seg = memoryview(frame)[lay.l4 : lay.l4_end]
    if l4_checksum(lay.src, lay.dst, lay.proto, seg) == 0:
        return flags | RX_L4_OK, 0xFFFF
    return flags | RX_L4_BAD, 0


def rx_csum_std(frames: Sequence[BytesLike], v6: npt.NDArray[np.bool_] | None,
                l4_end: Sequence[int], proto: npt.NDArray[np.integer],
                l4_check: npt.NDArray[np.bool_] | None) -> tuple[npt.NDArray[np.uint32],
                                                                 npt.NDArray[np.uint32]]:
    """rxcsum for a batch of *standard* frames: ``(csum_flags, csum_data)`` arrays.

    Standard: untagged IPv4 with a 20-byte header, or untagged IPv6 whose
    next header is the transport.  Then the addresses sit right before the
    transport header, so ``frame[addr : l4_end]`` is the pseudo-header's
    addresses followed by the segment; one ``verify_batch`` over those (with
    ``proto + length`` as the initial sum) and the IPv4 headers checks the
    whole batch.  ``v6`` None means all IPv4; ``l4_end`` is per frame (from
    its start); ``l4_check`` (None: all) says which frames have a checkable
    L4 header.
    """
    n = len(frames)
    v4i: list[int] = list(range(n)) if v6 is None else np.flatnonzero(~v6).tolist()
    lo, hi = ETHER_HDR_LEN, ETHER_HDR_LEN + IPV4_HDR_LEN
    bufs = [f[lo:hi] for f in frames] if v6 is None else [frames[i][lo:hi] for i in v4i]
    nh = len(bufs)
    ci: list[int] = list(range(n)) if l4_check is None else np.flatnonzero(l4_check).tolist()
    a4 = ETHER_HDR_LEN + 12
    ends = list(l4_end) if l4_check is None else [l4_end[i] for i in ci]
    if v6 is None:
        bufs += [frames[i][a4:e] for i, e in zip(ci, ends)]
        l4len = np.array(ends, np.uint64) - np.uint64(ETHER_HDR_LEN + IPV4_HDR_LEN)
    else:
        v6c = v6[ci]
        addr = np.where(v6c, ETHER_HDR_LEN + 8, a4).tolist()
        bufs += [frames[i][a:e] for i, a, e in zip(ci, addr, ends)]
        l4len = (np.array(ends, np.int64) - np.where(
            v6c, ETHER_HDR_LEN + IPV6_HDR_LEN, ETHER_HDR_LEN + IPV4_HDR_LEN)).astype(np.uint64)
    init = np.zeros(len(bufs), np.uint64)
    init[nh:] = l4len
    init[nh:] += proto[ci] if l4_check is not None else proto
    ok = verify_batch(bufs, init)
    if v6 is None and l4_check is None:  # the common case: table lookups, no fancy indexing
        okv = ok.view(np.uint8)
        code = okv[:nh] + (okv[nh:] << 1)
        return _FLAGS_LUT[code], _DATA_LUT[code]
    flags = np.zeros(n, np.uint32)
    data = np.zeros(n, np.uint32)
    if nh:
        flags[v4i] = np.where(ok[:nh], RX_L3_OK, RX_L3_BAD)
    if ci:
        ok4 = ok[nh:]
        flags[ci] |= np.where(ok4, RX_L4_OK, RX_L4_BAD).astype(np.uint32)
        data[ci] = np.where(ok4, 0xFFFF, 0).astype(np.uint32)
    return flags, data


# --------------------------------------------------------------------------- transmit
def tx_csum_frames(frames: Sequence[bytearray], csum_flags: Sequence[int]) -> int:
    """txcsum: fill the checksums each frame's ``csum_flags`` asks for, in place.

    Returns how many checksums were filled.  Frames the NIC cannot parse are
    left as they are.  L4 checksums of the whole batch are computed in one
    ``cksum_batch``.
    """
    done = 0
    bufs: list[memoryview] = []
    inits: list[int] = []
    where: list[tuple[bytearray, int]] = []
    for f, fl in zip(frames, csum_flags):
        if not fl & TX_CSUM_FLAGS:
            continue
        lay = frame_layout(f)
        if lay is None:
            continue
        if fl & L.CSUM_IP and lay.version == 4:
            f[lay.l3 + 10 : lay.l3 + 12] = b"\0\0"
            c = in_cksum(memoryview(f)[lay.l3 : lay.l4])
            f[lay.l3 + 10 : lay.l3 + 12] = c.to_bytes(2, "big")
            done += 1
        if not fl & TX_L4_FLAGS or not lay.l4_ok:
            continue
        if lay.proto == IPPROTO_TCP and lay.l4_end - lay.l4 >= TCP_HDR_LEN:
            off = lay.l4 + _TCP_SUM_OFF
        elif lay.proto == IPPROTO_UDP and lay.l4_end - lay.l4 >= UDP_HDR_LEN:
            off = lay.l4 + _UDP_SUM_OFF
        else:
            continue
        f[off : off + 2] = b"\0\0"
        seg = memoryview(f)[lay.l4 : lay.l4_end]
        bufs.append(seg)
        inits.append(pseudo_header_sum(lay.src, lay.dst, lay.proto, len(seg)))
        where.append((f, off | (lay.proto << 24)))
    if bufs:
        sums = cksum_batch(bufs, inits).tolist()
        del bufs
        for (f, packed), c in zip(where, sums):
            off, proto = packed & 0xFFFFFF, packed >> 24
            if proto == IPPROTO_UDP and c == 0:
                c = 0xFFFF  # RFC 768: a computed zero is sent as all ones
            f[off : off + 2] = c.to_bytes(2, "big")
            done += 1
    return done


def tso_segment(frame: BytesLike, mss: int) -> list[bytearray]:
    """TSO: cut one TCP/IP frame into frames carrying at most `mss` payload bytes each.

    Headers (Ethernet, IP, TCP with options) are replicated; the IPv4 total
    length and id (+1 per segment) or IPv6 payload length, the sequence
    number and the flags are fixed; all checksums are computed.  A frame
    whose payload fits in one segment comes back as one frame, checksummed.
    Raises ValueError for a frame that is not TCP or an mss < 1.
    """
    if mss < 1:
        raise ValueError(f"tso_segsz {mss} invalid: valid values are >= 1")
    lay = frame_layout(frame)
    if lay is None or lay.proto != IPPROTO_TCP or not lay.l4_ok:
        raise ValueError("TSO needs an unfragmented TCP/IPv4 or TCP/IPv6 frame")
    f = memoryview(frame)
    th = parse_tcp(f[: lay.l4_end], lay.l4)
    hdr_end = lay.l4 + th.hdr_len
    payload = f[hdr_end : lay.l4_end]
    head = bytes(f[:hdr_end])
    nseg = max(1, -(-len(payload) // mss))
    out: list[bytearray] = []
    for i in range(nseg):
        chunk = payload[i * mss : (i + 1) * mss]
        seg = bytearray(head)
        seg += chunk
        l4len = len(seg) - lay.l4
        if lay.version == 4:
            vhl, tos, _tl, ident, off, ttl, proto, _c, s, d = IPV4_HDR.unpack_from(seg, lay.l3)
            IPV4_HDR.pack_into(seg, lay.l3, vhl, tos, lay.l4 - lay.l3 + l4len,
                               (ident + i) & 0xFFFF, off, ttl, proto, 0, s, d)
            c = in_cksum(memoryview(seg)[lay.l3 : lay.l4])
            seg[lay.l3 + 10 : lay.l3 + 12] = c.to_bytes(2, "big")
        else:
            # payload length: everything after the fixed header (extension headers included)
            struct.pack_into("!H", seg, lay.l3 + 4, len(seg) - lay.l3 - IPV6_HDR_LEN)
        flags = th.flags
        if i < nseg - 1:
            flags &= ~(TH_FIN | TH_PUSH)
        if i > 0:
            flags &= ~TH_CWR
        TCP_HDR.pack_into(seg, lay.l4, th.src_port, th.dst_port, (th.seq + i * mss) & 0xFFFFFFFF,
                          th.ack, (th.hdr_len >> 2) << 4 | (flags >> 8 & 1), flags & 0xFF,
                          th.window, 0, th.urgent)
        out.append(seg)
    sums = cksum_batch([memoryview(s)[lay.l4 :] for s in out],
                       [pseudo_header_sum(lay.src, lay.dst, IPPROTO_TCP, len(s) - lay.l4)
                        for s in out]).tolist()
    for s, c in zip(out, sums):
        s[lay.l4 + _TCP_SUM_OFF : lay.l4 + _TCP_SUM_OFF + 2] = c.to_bytes(2, "big")
    return out


# --------------------------------------------------------------------------------- LRO
@dataclass(frozen=True, slots=True)
class LroSeg:
    """What LRO needs of one received frame (None in :func:`lro_plan` for a non-candidate
    that still belongs to `flow`, e.g. a FIN or a pure ACK: it ends the flow's run)."""

    flow: bytes  # addresses and ports
    seq: int
    payload: int  # payload bytes
    same: bytes  # fields that must be identical to coalesce: ack, window, options, tos/ttl
    hdr_len: int  # Ethernet + IP + TCP header bytes
    ip_len: int  # IPv4 total length or IPv6 payload length
    candidate: bool  # only ACK/PSH, payload > 0, checksum verified


def lro_seg_std(frame: BytesLike, *, v6: bool, csum_ok: bool) -> LroSeg | None:
    """The :class:`LroSeg` of a standard TCP frame (see :func:`rx_csum_std`); None if not
    TCP or its header is unreadable."""
    f = memoryview(frame)
    l3 = ETHER_HDR_LEN
    if v6:
        if f[l3 + 6] != IPPROTO_TCP:
            return None
        ip_len = (f[l3 + 4] << 8) | f[l3 + 5]
        l4 = l3 + IPV6_HDR_LEN
        end = l4 + ip_len
        flow = bytes(f[l3 + 8 : l3 + 40])
        keep = bytes(f[l3 : l3 + 4]) + bytes(f[l3 + 7 : l3 + 8])  # tclass, flow label, hlim
    else:
        if f[l3 + 9] != IPPROTO_TCP:
            return None
        ip_len = (f[l3 + 2] << 8) | f[l3 + 3]
        fragbits = (f[l3 + 6] << 8) | f[l3 + 7]
        if fragbits & (IP_MF | IP_OFFMASK):
            return None
        l4 = l3 + IPV4_HDR_LEN
        end = l3 + ip_len
        flow = bytes(f[l3 + 12 : l3 + 20])
        keep = bytes(f[l3 : l3 + 2]) + bytes(f[l3 + 6 : l3 + 7]) + bytes(f[l3 + 8 : l3 + 10])
    if end > len(f) or end - l4 < TCP_HDR_LEN:
        return None
    _sp, _dp, seq, _ack, offx, fl, _win, _c, _urp = TCP_HDR.unpack_from(f, l4)
    thl = (offx >> 4) << 2
    if thl < TCP_HDR_LEN or l4 + thl > end:
        return None
    flags = ((offx & 1) << 8) | fl
    payload = end - l4 - thl
    same = keep + bytes(f[l4 + 8 : l4 + 12]) + bytes(f[l4 + 14 : l4 + 16]) \
        + bytes(f[l4 + TCP_HDR_LEN : l4 + thl]) + bytes((offx & 0xF0,))
    cand = csum_ok and payload > 0 and (flags & ~_LRO_FLAGS) == 0 and bool(flags & TH_ACK)
    return LroSeg(flow + bytes(f[l4 : l4 + 4]), seq, payload, same, l4 + thl, ip_len, cand)


def lro_plan(segs: Sequence[LroSeg | None | bool], *, max_len: int = _IP_MAXPACKET
             ) -> list[list[int]]:
    """Group received frames (in arrival order) into coalescing runs.

    ``segs[i]`` is an :class:`LroSeg`, None (not TCP: no effect), or True (a
    frame the NIC could not classify: every open run ends, to be safe).
    Returns the runs of two or more frames, each a list of indices in order;
    the first keeps its headers.  A run only grows with the next in-order
    segment of its flow (seq == previous seq + payload) with identical
    ``same`` fields, while the IP length stays within `max_len`; any other
    frame of the flow ends it.
    """
    runs: list[list[int]] = []
    open_: dict[bytes, tuple[list[int], int, bytes, int]] = {}  # flow -> run, next seq, same, len

    def close(flow: bytes) -> None:
        run = open_.pop(flow)[0]
        if len(run) > 1:
            runs.append(run)

    for i, s in enumerate(segs):
        if s is None or s is False:
            continue
        if s is True:
            for fl in list(open_):
                close(fl)
            continue
        assert isinstance(s, LroSeg)
        cur = open_.get(s.flow)
        if cur is not None:
            run, nxt, same, iplen = cur
            if s.candidate and s.seq == nxt and s.same == same and iplen + s.payload <= max_len:
                run.append(i)
                open_[s.flow] = (run, (nxt + s.payload) & 0xFFFFFFFF, same, iplen + s.payload)
                continue
            close(s.flow)
        if s.candidate:
            open_[s.flow] = ([i], (s.seq + s.payload) & 0xFFFFFFFF, s.same, s.ip_len)
    for fl in list(open_):
        close(fl)
    runs.sort(key=lambda r: r[0])
    return runs


def ipv4_fix_len(buf: bytearray | memoryview, l3: int, total_length: int) -> None:
    """Set an IPv4 header's total length and recompute its header checksum."""
    struct.pack_into("!H", buf, l3 + 2, total_length)
    buf[l3 + 10] = buf[l3 + 11] = 0
    hl = (buf[l3] & 0xF) << 2
    c = in_cksum(buf[l3 : l3 + hl])
    buf[l3 + 10] = c >> 8
    buf[l3 + 11] = c & 0xFF
