"""The sending side of a TCP connection, as frames: handshake, in-order data, FIN.

The host's TCP input (reassembly, ACK generation, socket append) can only be
exercised by a byte stream it accepts: a SYN first, then segments whose
sequence numbers continue exactly where the previous one ended, whose
acknowledgement numbers match what the host sent, and a FIN at the end.
:class:`TcpStream` is that sender, sans-IO: it returns frames and is told
about the frames that came back.

Handshake modes (:data:`HANDSHAKES`):

- ``'await'``: send a SYN (with an MSS option), wait for the host's SYN-ACK
  (:meth:`TcpStream.on_reply` returns the ACK to send), then data.
- ``'assume'``: send a SYN and carry straight on with data as if the SYN-ACK
  had arrived with initial sequence number ``peer_isn``; if a SYN-ACK does
  come back (read from a reply wire) its real ISN is used from then on.
- ``'none'``: no SYN at all: a stream picked up mid-connection.

:func:`hostless_segments` is the pure form for one-way receive tests: a
valid byte stream's SYN, data and FIN with no replies needed.

Data segments are stamped (see :mod:`nicemu.trafgen.flows`) and built from a
template per payload length: only the sequence, acknowledgement and stamp
fields are written per segment, and the TCP checksum is updated
incrementally (RFC 1624) from the template's, never recomputed over the data.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from dispatch.packet.checksum import l4_checksum
from dispatch.packet.errors import BytesLike
from dispatch.packet.frames import build_tcp_frame
from dispatch.packet.tcp import TH_ACK, TH_FIN, TH_PUSH, TH_RST, TH_SYN, opt_mss
from nicemu.trafgen.flows import STAMP, STAMP_LEN, STAMP_MAGIC, Flow, l4_offsets

__all__ = [
    "HANDSHAKES",
    "TcpConfig",
    "TcpStream",
    "hostless_segments",
    "reply_key",
    "tcp_header_len",
]

HANDSHAKES: Final = ("await", "assume", "none")
_M32: Final = 0xFFFFFFFF
_SEQACK: Final = struct.Struct(">II")
_CSUM: Final = struct.Struct(">H")
_STAMP_TAIL: Final = struct.Struct(">IQ")


def tcp_header_len(version: int) -> int:
    """Ethernet + IP + TCP header bytes of a data segment (no options)."""
    return 14 + (20 if version == 4 else 40) + 20


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """TCP stream parameters: MSS, window, handshake mode, assumed peer ISN."""

    mss: int = 1460
    window: int = 65535
    handshake: str = "assume"
    handshake_timeout_s: float = 1.0
    peer_isn: int = 0

    def __post_init__(self) -> None:
        if self.handshake not in HANDSHAKES:
            raise ValueError(
                f"handshake {self.handshake!r} unknown: one of {', '.join(HANDSHAKES)}"
            )
        if not STAMP_LEN <= self.mss <= 65495:
            raise ValueError(f"mss must be {STAMP_LEN}..65495, got {self.mss}")
        if not 0 <= self.window <= 0xFFFF:
            raise ValueError(f"window must be 0..65535, got {self.window}")


def _fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


class _Template:
    """A data segment of one payload length with seq = ack = stamp = 0."""

    __slots__ = ("frame", "seq_off", "csum_off", "stamp_off", "base", "stamped")

    def __init__(self, flow: Flow, payload_len: int, window: int, stamped: bool) -> None:
        stamped = stamped and payload_len >= STAMP_LEN
        payload = bytearray(payload_len)
        if stamped:
            STAMP.pack_into(payload, 0, STAMP_MAGIC, 0, 0)
        self.frame = build_tcp_frame(
            src_ip=flow.src_ip, dst_ip=flow.dst_ip, src_port=flow.src_port,
            dst_port=flow.dst_port, seq=0, ack=0, flags=TH_ACK | TH_PUSH, window=window,
            payload=payload, src_mac=flow.src_mac, dst_mac=flow.dst_mac, pad=True,
        )  # fmt: skip
        l4 = 14 + (20 if flow.version == 4 else 40)
        self.seq_off = l4 + 4
        self.csum_off = l4 + 16
        self.stamp_off = l4 + 20 + 4
        self.stamped = stamped
        seg = bytearray(self.frame[l4 : l4 + 20 + payload_len])
        seg[16:18] = b"\0\0"
        # ones sum of pseudo-header + segment with checksum zero
        self.base = ~l4_checksum(flow.src_ip, flow.dst_ip, 6, seg) & 0xFFFF

    def make(self, seq: int, ack: int, fseq: int, t_ns: int) -> bytes:
        b = bytearray(self.frame)
        _SEQACK.pack_into(b, self.seq_off, seq, ack)
        s = self.base + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF)
        if self.stamped:
            _STAMP_TAIL.pack_into(b, self.stamp_off, fseq, t_ns)
            s += (fseq >> 16) + (fseq & 0xFFFF) + (t_ns >> 48) + ((t_ns >> 32) & 0xFFFF)
            s += ((t_ns >> 16) & 0xFFFF) + (t_ns & 0xFFFF)
        _CSUM.pack_into(b, self.csum_off, ~_fold(s) & 0xFFFF)
        return bytes(b)


class TcpStream:
    """One flow's sending TCP.  States: ``closed``, ``syn_sent``, ``established``,
    ``fin_sent``.  Sequence numbers are 32-bit and wrap."""

    def __init__(
        self,
        flow: Flow,
        *,
        isn: int = 0,
        mss: int = 1460,
        window: int = 65535,
        peer_isn: int = 0,
        stamps: bool = True,
    ) -> None:
        self.flow = flow
        self.isn = isn & _M32
        self.mss = mss
        self.window = window
        self.peer_isn = peer_isn & _M32
        self.stamps = stamps
        self.state = "closed"
        self.snd_nxt = self.isn
        self.rcv_nxt = 0
        self.segments = 0  # data segments made
        self.payload_bytes = 0
        self.replies = 0  # frames of this flow seen coming back
        self.acks_received = 0
        self.snd_una = self.isn
        self.rst = False
        self._fseq = 0
        self._templates: dict[int, _Template] = {}
        self._hdr = tcp_header_len(flow.version)
        self._reply_key = flow.reversed().key

    # -- control segments ---------------------------------------------------------
    def _ctl(self, *, seq: int, ack: int, flags: int, options: bytes = b"") -> bytes:
        f = self.flow
        return build_tcp_frame(
            src_ip=f.src_ip, dst_ip=f.dst_ip, src_port=f.src_port, dst_port=f.dst_port,
            seq=seq, ack=ack, flags=flags, window=self.window, options=options,
            src_mac=f.src_mac, dst_mac=f.dst_mac, pad=True,
        )  # fmt: skip

    def syn(self) -> bytes:
        """The SYN (with an MSS option); the stream is then ``syn_sent``."""
        self.state = "syn_sent"
        self.snd_nxt = (self.isn + 1) & _M32
        return self._ctl(seq=self.isn, ack=0, flags=TH_SYN, options=opt_mss(self.mss))

    def assume_established(self, peer_isn: int | None = None) -> None:
        """Carry on as if the SYN-ACK (ISN ``peer_isn``) had arrived ('assume'/'none')."""
        if peer_isn is not None:
            self.peer_isn = peer_isn & _M32
        self.rcv_nxt = (self.peer_isn + 1) & _M32
        if self.state == "closed":
            self.snd_nxt = (self.isn + 1) & _M32  # as after a SYN
        self.state = "established"

    def ack(self) -> bytes:
        """A bare ACK of what was received so far."""
        return self._ctl(seq=self.snd_nxt, ack=self.rcv_nxt, flags=TH_ACK)

    def fin(self) -> bytes:
        """FIN|ACK after the last data; the stream is then ``fin_sent``."""
        frame = self._ctl(seq=self.snd_nxt, ack=self.rcv_nxt, flags=TH_FIN | TH_ACK)
        self.snd_nxt = (self.snd_nxt + 1) & _M32
        self.state = "fin_sent"
        return frame

    # -- data -----------------------------------------------------------------------
    def payload_len_for(self, frame_len: int) -> int:
        """Payload bytes of a data segment whose frame is about ``frame_len`` bytes:
        at least the 16-byte stamp, at most the MSS."""
        return max(STAMP_LEN, min(self.mss, frame_len - self._hdr))

    def data(self, payload_len: int, *, now_ns: int) -> bytes:
        """The next in-order data segment of ``payload_len`` bytes, stamped ``now_ns``."""
        if not 1 <= payload_len <= self.mss:
            raise ValueError(f"payload_len must be 1..mss ({self.mss}), got {payload_len}")
        t = self._templates.get(payload_len)
        if t is None:
            t = self._templates[payload_len] = _Template(
                self.flow, payload_len, self.window, self.stamps
            )
        frame = t.make(self.snd_nxt, self.rcv_nxt, self._fseq, now_ns)
        self._fseq = (self._fseq + 1) & _M32
        self.snd_nxt = (self.snd_nxt + payload_len) & _M32
        self.segments += 1
        self.payload_bytes += payload_len
        return frame

    # -- replies ----------------------------------------------------------------------
    def matches(self, frame: BytesLike) -> bool:
        """Whether ``frame`` is a TCP segment of this flow travelling back."""
        return reply_key(frame) == self._reply_key

    def on_reply(self, frame: BytesLike) -> bytes | None:
        """Take a segment from the host; returns a frame to send (the handshake's
        ACK), or None.  ACKs are counted; a SYN-ACK fixes ``rcv_nxt``."""
        loc = l4_offsets(frame)
        if loc is None or loc[2] != 6 or len(frame) < loc[3] + 20:
            return None
        l4 = loc[3]
        seq, ack = _SEQACK.unpack_from(frame, l4 + 4)
        flags = ((frame[l4 + 12] & 1) << 8) | frame[l4 + 13]
        self.replies += 1
        if flags & TH_RST:
            self.rst = True
            return None
        if flags & TH_ACK:
            self.acks_received += 1
            self.snd_una = ack
        if flags & TH_SYN and flags & TH_ACK:
            self.peer_isn = seq
            self.rcv_nxt = (seq + 1) & _M32
            if self.state == "syn_sent":
                self.state = "established"
                return self.ack()
            return None
        if self.state == "established" or self.state == "fin_sent":
            hl = (frame[l4 + 12] >> 4) * 4
            end = len(frame)
            if loc[1] == 4:
                end = min(end, loc[0] + int.from_bytes(frame[loc[0] + 2 : loc[0] + 4], "big"))
            else:
                end = min(end, loc[0] + 40 + int.from_bytes(frame[loc[0] + 4 : loc[0] + 6], "big"))
            dlen = max(0, end - l4 - hl) + (1 if flags & TH_FIN else 0)
            if dlen and seq == self.rcv_nxt:
                self.rcv_nxt = (seq + dlen) & _M32
        return None


def reply_key(frame: BytesLike) -> tuple[bytes, bytes, int, int] | None:
    """(src_ip, dst_ip, src_port, dst_port) of a TCP/UDP frame, or None."""
    loc = l4_offsets(frame)
    if loc is None or loc[2] not in (6, 17) or len(frame) < loc[3] + 4:
        return None
    l3, version, _p, l4 = loc
    alen = 4 if version == 4 else 16
    so = l3 + (12 if version == 4 else 8)
    src = bytes(frame[so : so + alen])
    dst = bytes(frame[so + alen : so + 2 * alen])
    sp = (frame[l4] << 8) | frame[l4 + 1]
    dp = (frame[l4 + 2] << 8) | frame[l4 + 3]
    return (src, dst, sp, dp)


def hostless_segments(
    flow: Flow,
    payload_lens: Sequence[int],
    *,
    isn: int = 0,
    peer_isn: int = 0,
    mss: int = 1460,
    now_ns: int = 0,
    syn: bool = True,
    fin: bool = True,
) -> list[bytes]:
    """A complete one-way TCP stream with no host needed: SYN, one data segment
    per entry of ``payload_lens`` (each 1..mss), FIN.  Data segments acknowledge
    ``peer_isn + 1``, as if the host's SYN-ACK had carried ``peer_isn``."""
    st = TcpStream(flow, isn=isn, mss=mss, peer_isn=peer_isn)
    out: list[bytes] = []
    if syn:
        out.append(st.syn())
    st.assume_established()
    out.extend(st.data(n, now_ns=now_ns) for n in payload_lens)
    if fin:
        out.append(st.fin())
    return out
