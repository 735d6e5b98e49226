"""The generator's TCP receiver: the far end a host's TCP sender talks to.

Why it exists: in the ``tx`` and ``rr`` workloads the host's TCP sends, so
the generator must be a real receiver, or the sender's window, congestion
control and retransmissions would have nothing to react to. `TcpSink` is
that receiver, sans-IO and in pure Python over frames as bytes (no zmq, no
clock: time comes in as ``now_ns``):

- passive open: a SYN gets a SYN-ACK with MSS, window scale, SACK-permitted
  and timestamps as configured and as the SYN offered them (a repeated SYN
  gets the same SYN-ACK again);
- in-order delivery with reassembly: out-of-order data waits until the hole
  is filled; wherever segments overlap, the bytes that arrived first are kept;
  duplicates and data beyond the advertised window are counted and dropped;
- cumulative ACKs: every segment (``ack_every=1``) or every second segment
  with a delayed-ACK timer (``ack_every=2``, ``delack_ns``), and at once for
  out-of-order data, duplicates, a hole filled, a FIN, a window probe;
- a receive buffer of ``rcvbuf`` bytes that the "application" drains at
  ``read_rate`` bytes/s (None: at once), so the advertised window closes and
  reopens; the right edge moves only in steps of min(rcvbuf / 2, MSS) (RFC
  1122's receiver-side SWS avoidance), so a slow reader closes it to zero;
  `poll` sends the window update when the window can grow by
  min(rcvbuf / 2, 2 * MSS), and the delayed ACKs that are due;
- FIN: acknowledged with our own FIN at once (the application closes on EOF),
  LAST_ACK until the host acknowledges it (`poll` sends the FIN again after
  ``fin_rto_ns``, doubling); an RST closes the flow;
- frames with a bad IPv4 header or TCP checksum are counted and ignored.

Per flow (`stats`, `digest`): bytes received in order, goodput (in-order
bits per second between the first and the last data segment), sha256 of
the byte stream, data segments, duplicate segments / bytes, out-of-order
segments, ACKs and window updates sent, and per-segment latency (now_ns -
stamp_ns, the sender's stamp carried beside the frame on the wire) in an
HDR histogram. A flow is named "src:sport>dst:dport" (the host's address
first; IPv6 addresses in brackets).

API: ``on_frame(frame, now_ns, stamp_ns) -> list[bytes]`` (frames to send
back), ``poll(now_ns) -> list[bytes]`` (timers: delayed ACKs, window
updates), ``stats() -> dict``, ``digest(flow) -> str``, ``flows()``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Final

from hdrh.histogram import HdrHistogram

from dispatch.packet.checksum import in_cksum, pseudo_header_sum
from dispatch.packet.errors import PacketError
from dispatch.packet.frames import build_tcp_frame
from dispatch.packet.tcp import (
    TH_ACK,
    TH_FIN,
    TH_RST,
    TH_SYN,
    build_tcp_options,
    parse_tcp_options,
)

__all__ = ["SinkConfig", "TcpSink", "flow_name"]

_HIST_MAX: Final = 60_000_000_000  # 60 s in ns
_MASK: Final = 0xFFFFFFFF
_TCP: Final = struct.Struct("!HHIIBBHHH")
_ETH_IP4: Final = 0x0800
_ETH_IP6: Final = 0x86DD
_VLAN_TPIDS: Final = (0x8100, 0x88A8)
_MAX_WINSHIFT: Final = 14

FlowKey = tuple[bytes, int, bytes, int]  # host addr, host port, our addr, our port

SYN_RCVD, ESTABLISHED, LAST_ACK, CLOSED = "SYN_RCVD", "ESTABLISHED", "LAST_ACK", "CLOSED"


def _sdiff(a: int, b: int) -> int:
    d = (a - b) & _MASK
    return d - 0x100000000 if d >= 0x80000000 else d


def _addr_text(a: bytes) -> str:
    s = str(ipaddress.ip_address(a))
    return f"[{s}]" if len(a) == 16 else s


def flow_name(key: FlowKey) -> str:
    """"src:sport>dst:dport", the sender (the host) first."""
    return f"{_addr_text(key[0])}:{key[1]}>{_addr_text(key[2])}:{key[3]}"


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """How the receiver behaves (keyword-only; bad values raise ValueError)."""

    rcvbuf: int = 256 * 1024  # receive buffer, bytes
    read_rate: float | None = None  # bytes/s the application reads; None: at once
    ack_every: int = 2  # 1: ACK every segment; 2: every second one (delayed ACK)
    delack_ns: int = 40_000_000  # a delayed ACK goes out after this long at most
    mss: int = 1460  # announced in the SYN-ACK
    wscale: bool = True  # answer a window scale option with ours
    sack_permitted: bool = True  # answer SACK-permitted (no SACK blocks are sent)
    timestamps: bool = True  # answer timestamps and echo them
    isn_seed: int = 0  # our initial sequence numbers: crc32 of the flow + seed
    fin_rto_ns: int = 200_000_000  # our FIN is sent again after this (doubling) if unacked

    def __post_init__(self) -> None:
        if self.rcvbuf < 1:
            raise ValueError(f"rcvbuf must be at least 1 byte, not {self.rcvbuf}")
        if self.read_rate is not None and self.read_rate <= 0:
            raise ValueError(f"read_rate must be positive bytes/s or None, not "
                             f"{self.read_rate}")
        if self.ack_every not in (1, 2):
            raise ValueError(f"ack_every must be 1 or 2, not {self.ack_every}")
        if self.fin_rto_ns <= 0:
            raise ValueError(f"fin_rto_ns must be positive, not {self.fin_rto_ns}")
        if self.delack_ns < 0:
            raise ValueError(f"delack_ns must be >= 0, not {self.delack_ns}")
        if not 88 <= self.mss <= 65495:
            raise ValueError(f"mss must be within 88..65495, not {self.mss}")


class _Flow:
    """One connection's receive state (stream offsets are Python ints: no wrap)."""

    def __init__(self, key: FlowKey, irs: int, iss: int, fam: int, macs: tuple[bytes, bytes],
                 now: int) -> None:
        self.key = key
        self.fam = fam
        self.our_mac, self.peer_mac = macs
        self.state = SYN_RCVD
        self.irs = irs
        self.iss = iss
        self.snd_nxt = (iss + 1) & _MASK
        self.nxt_off = 0  # in-order bytes received
        self.adv_right = 0  # stream offset of the right edge last advertised
        self.ooo: list[tuple[int, bytes]] = []  # sorted, non-overlapping held segments
        self.fin_off: int | None = None
        self.fin_rcvd = False
        self.buffered = 0  # in-order bytes the application has not read yet
        self.last_read = now
        self.scale = 0  # our receive window scale (if agreed)
        self.wscale_ok = False  # both sides scale
        self.rmss = 536  # the sender's segment size (its MSS option less timestamps)
        self.sack = False  # SACK-permitted answered
        self.ts = False
        self.ts_recent = 0
        self.unacked = 0  # segments received since our last ACK
        self.ack_due: int | None = None  # delayed ACK owed since
        self.fin_at = 0  # when our FIN was last sent
        self.fin_tries = 0
        self.sha = hashlib.sha256()
        self.hist = HdrHistogram(1, _HIST_MAX, 3)
        self.c = {"bytes": 0, "segments": 0, "dup_segments": 0, "dup_bytes": 0,
                  "ooo_segments": 0, "afterwin_segments": 0, "afterwin_bytes": 0,
                  "acks_sent": 0, "window_updates": 0, "zero_windows": 0, "probes": 0,
                  "synacks": 0, "fins": 0, "fin_rexmits": 0, "resets": 0, "first_ns": 0,
                  "last_ns": 0}

    def rcv_nxt(self) -> int:
        return (self.irs + 1 + self.nxt_off + (1 if self.fin_rcvd else 0)) & _MASK


class TcpSink:
    """A TCP receiver for many flows; see the module docstring."""

    def __init__(self, config: SinkConfig | None = None) -> None:
        self.config = config or SinkConfig()
        self._flows: dict[FlowKey, _Flow] = {}
        self.counters = {"frames": 0, "not_tcp": 0, "bad_ip_csum": 0, "bad_tcp_csum": 0,
                         "short": 0, "no_flow": 0, "rst_sent": 0}

    # ------------------------------------------------------------------ input
    def on_frame(self, frame: bytes | memoryview, now_ns: int,
                 stamp_ns: int | None = None) -> list[bytes]:
        """One frame off the wire at now_ns (stamp_ns: the sender's stamp, if the wire
        carried one). Returns the frames to send back."""
        self.counters["frames"] += 1
        fr = bytes(frame)
        p = self._parse(fr)
        if p is None:
            return []
        fam, src, dst, tcp, macs = p
        sport, dport, seq, ack, offx, flags, win, _sum, _urp = _TCP.unpack_from(tcp)
        thoff = (offx >> 4) << 2
        if thoff < 20 or thoff > len(tcp):
            self.counters["short"] += 1
            return []
        payload = tcp[thoff:]
        try:
            opts = parse_tcp_options(tcp[20:thoff]) if thoff > 20 else None
        except PacketError:
            opts = None
        key = (src, sport, dst, dport)
        f = self._flows.get(key)
        if flags & TH_RST:
            if f is not None and f.state != CLOSED:
                f.state = CLOSED
                f.c["resets"] += 1
            return []
        if flags & TH_SYN and not flags & TH_ACK:
            if f is None or (f.state == CLOSED and seq != f.irs):
                f = self._new_flow(key, fam, seq, opts, macs, now_ns)
            if seq == f.irs and f.state == SYN_RCVD:
                return [self._synack(f, now_ns)]
            return [self._ack(f, now_ns)] if f.state != CLOSED else []
        if f is None or f.state == CLOSED and not payload and not flags & TH_FIN:
            if f is None:
                self.counters["no_flow"] += 1
                return [self._rst_for(fam, macs, src, dst, sport, dport, seq, ack, flags,
                                      len(payload))]
            return []
        if f.ts and opts is not None and opts.timestamp is not None:
            f.ts_recent = opts.timestamp[0]
        if f.state == SYN_RCVD:
            if not flags & TH_ACK or ack != f.snd_nxt:
                return [self._synack(f, now_ns)]
            f.state = ESTABLISHED
        if f.state == LAST_ACK and flags & TH_ACK and ack == f.snd_nxt:
            f.state = CLOSED
        self._read(f, now_ns)
        return self._data(f, seq, payload, bool(flags & TH_FIN), now_ns, stamp_ns)

    def _parse(self, fr: bytes) -> tuple[int, bytes, bytes, bytes, tuple[bytes, bytes]] | None:
        if len(fr) < 14:
            self.counters["short"] += 1
            return None
        et = int.from_bytes(fr[12:14], "big")
        l3 = 14
        while et in _VLAN_TPIDS and len(fr) >= l3 + 4:
            et = int.from_bytes(fr[l3 + 2 : l3 + 4], "big")
            l3 += 4
        macs = (fr[0:6], fr[6:12])  # (ours: the frame's destination, the peer's)
        if et == _ETH_IP4:
            if len(fr) < l3 + 20:
                self.counters["short"] += 1
                return None
            ihl = (fr[l3] & 15) * 4
            tot = int.from_bytes(fr[l3 + 2 : l3 + 4], "big")
            if fr[l3 + 9] != 6:
                self.counters["not_tcp"] += 1
                return None
            if ihl < 20 or tot < ihl + 20 or len(fr) < l3 + tot:
                self.counters["short"] += 1
                return None
            if in_cksum(fr[l3 : l3 + ihl]) != 0:
                self.counters["bad_ip_csum"] += 1
                return None
            src, dst = fr[l3 + 12 : l3 + 16], fr[l3 + 16 : l3 + 20]
            tcp = fr[l3 + ihl : l3 + tot]
            fam = 4
        elif et == _ETH_IP6:
            if len(fr) < l3 + 40:
                self.counters["short"] += 1
                return None
            if fr[l3 + 6] != 6:  # extension headers: not from our host's TCP
                self.counters["not_tcp"] += 1
                return None
            plen = int.from_bytes(fr[l3 + 4 : l3 + 6], "big")
            if plen < 20 or len(fr) < l3 + 40 + plen:
                self.counters["short"] += 1
                return None
            src, dst = fr[l3 + 8 : l3 + 24], fr[l3 + 24 : l3 + 40]
            tcp = fr[l3 + 40 : l3 + 40 + plen]
            fam = 6
        else:
            self.counters["not_tcp"] += 1
            return None
        if in_cksum(tcp, pseudo_header_sum(src, dst, 6, len(tcp))) != 0:
            self.counters["bad_tcp_csum"] += 1
            return None
        return fam, src, dst, tcp, macs

    def _new_flow(self, key: FlowKey, fam: int, seq: int, opts: Any,
                  macs: tuple[bytes, bytes], now: int) -> _Flow:
        cfg = self.config
        iss = (zlib.crc32(repr(key).encode()) + cfg.isn_seed) & _MASK
        f = _Flow(key, seq, iss, fam, macs, now)
        if opts is not None:
            if cfg.wscale and opts.wscale is not None:
                s = 0
                while s < _MAX_WINSHIFT and (65535 << s) < cfg.rcvbuf:
                    s += 1
                f.scale = s
                f.wscale_ok = True
            if cfg.timestamps and opts.timestamp is not None:
                f.ts = True
                f.ts_recent = opts.timestamp[0]
            f.sack = cfg.sack_permitted and opts.sack_permitted
            if opts.mss:
                f.rmss = max(1, opts.mss - (12 if f.ts else 0))
        self._flows[key] = f
        return f

    # ------------------------------------------------------------------ data
    def _read(self, f: _Flow, now: int) -> None:
        """The application reads what its rate allows since it last read."""
        rate = self.config.read_rate
        if rate is None:
            f.buffered = 0
        elif now > f.last_read:
            f.buffered = max(0, f.buffered - int((now - f.last_read) * rate / 1e9))
        f.last_read = max(f.last_read, now)

    def _space(self, f: _Flow) -> int:
        return max(0, self.config.rcvbuf - f.buffered)

    def _data(self, f: _Flow, seq: int, data: bytes, fin: bool, now: int,
              stamp: int | None) -> list[bytes]:
        c = f.c
        out: list[bytes] = []
        ack_now = False
        plen = len(data)
        off = f.nxt_off + _sdiff(seq, f.rcv_nxt())
        if plen:
            c["segments"] += 1
            if stamp is not None:
                f.hist.record_value(min(max(1, now - stamp), _HIST_MAX))
            if not c["first_ns"]:
                c["first_ns"] = now
            c["last_ns"] = now
        elif not fin:
            if _sdiff(seq, f.rcv_nxt()) < 0 and f.state != CLOSED:
                c["probes"] += 1  # a window probe / keepalive: answer with our window
                return [self._ack(f, now)]
            return []  # a pure ACK
        end = off + plen
        if f.fin_rcvd or end <= f.nxt_off and plen:
            if plen:
                c["dup_segments"] += 1
                c["dup_bytes"] += plen
            ack_now = True
        elif plen:
            if off < f.nxt_off:
                c["dup_bytes"] += f.nxt_off - off
                data = data[f.nxt_off - off :]
                off = f.nxt_off
            right = max(f.adv_right, f.nxt_off + self._space(f))
            if off >= right:
                c["afterwin_segments"] += 1
                c["afterwin_bytes"] += len(data)
                data = b""
                ack_now = True
                fin = False
            elif off + len(data) > right:
                c["afterwin_bytes"] += off + len(data) - right
                data = data[: right - off]
                fin = False
            if data and off == f.nxt_off:
                filled = bool(f.ooo)
                if filled and off + len(data) > f.ooo[0][0]:
                    c["dup_bytes"] += off + len(data) - f.ooo[0][0]
                    data = data[: f.ooo[0][0] - off]  # the held bytes arrived first
                self._deliver(f, data)
                self._pull(f)
                if filled:
                    ack_now = True
                else:
                    f.unacked += 1
                    if self.config.ack_every == 1 or f.unacked >= self.config.ack_every:
                        ack_now = True
                    elif f.ack_due is None:
                        f.ack_due = now
            elif data:
                c["ooo_segments"] += 1
                self._hold(f, off, data)
                ack_now = True
        if fin and not f.fin_rcvd:
            f.fin_off = off + len(data) if plen else off
        if f.fin_off is not None and not f.fin_rcvd and f.nxt_off == f.fin_off:
            f.fin_rcvd = True
            c["fins"] += 1
            if f.state == ESTABLISHED:  # the application closes at EOF: our FIN now
                f.state = LAST_ACK
                f.snd_nxt = (f.snd_nxt + 1) & _MASK
                f.fin_at = now
            out.append(self._ack(f, now, fin=True))
            return out
        if fin and f.fin_rcvd and f.state in (LAST_ACK, CLOSED):
            out.append(self._ack(f, now, fin=f.state == LAST_ACK))  # their FIN again
            return out
        if ack_now:
            out.append(self._ack(f, now))
        return out

    def _deliver(self, f: _Flow, data: bytes) -> None:
        f.sha.update(data)
        f.nxt_off += len(data)
        f.buffered += len(data)
        f.c["bytes"] += len(data)

    def _hold(self, f: _Flow, off: int, data: bytes) -> None:
        """Queue out-of-order data, keeping what is already held where they overlap."""
        pieces: list[tuple[int, bytes]] = []
        pos, end = off, off + len(data)
        for s, d in f.ooo:
            e = s + len(d)
            if e <= pos or s >= end:
                continue
            if s > pos:
                pieces.append((pos, data[pos - off : s - off]))
            pos = max(pos, e)
        if pos < end:
            pieces.append((pos, data[pos - off :]))
        if len(pieces) < 1 or sum(len(d) for _, d in pieces) < len(data):
            f.c["dup_bytes"] += len(data) - sum(len(d) for _, d in pieces)
        f.ooo = sorted(f.ooo + pieces)

    def _pull(self, f: _Flow) -> None:
        """Deliver held segments that are now in order."""
        while f.ooo and f.ooo[0][0] <= f.nxt_off:
            s, d = f.ooo.pop(0)
            if s + len(d) > f.nxt_off:
                self._deliver(f, d[f.nxt_off - s :])

    # ------------------------------------------------------------------ output
    def _top(self, f: _Flow) -> int:
        """The right edge the free space allows: whole segments (as Linux's
        tcp_select_window), within what the window field can say."""
        space = self._space(f)
        space -= space % f.rmss
        return f.nxt_off + (min(space >> f.scale, 65535) << f.scale)

    def _window(self, f: _Flow) -> int:
        """The window to advertise: the free space in whole segments of the sender's
        MSS, and receiver-side silly-window avoidance (RFC 1122 4.2.3.3): the right
        edge moves only when it can move by min(rcvbuf / 2, MSS), so a slow reader
        closes the window to zero rather than to a sliver; it never moves left."""
        cfg = self.config
        top = self._top(f)
        if top - f.adv_right >= min(cfg.rcvbuf // 2, f.rmss):
            f.adv_right = top
        return max(0, f.adv_right - f.nxt_off) >> f.scale

    def _frame(self, f: _Flow, flags: int, seq: int, ack: int, win: int, opts: bytes,
               now: int) -> bytes:
        src, sport, dst, dport = f.key
        return build_tcp_frame(src_ip=dst, dst_ip=src, src_port=dport, dst_port=sport,
                               seq=seq, ack=ack, flags=flags, window=win, options=opts,
                               src_mac=f.our_mac, dst_mac=f.peer_mac, df=f.fam == 4)

    def _ts_opt(self, f: _Flow, now: int) -> bytes:
        if not f.ts:
            return b""
        return build_tcp_options(timestamp=((now // 1_000_000) & _MASK, f.ts_recent))

    def _synack(self, f: _Flow, now: int) -> bytes:
        cfg = self.config
        f.c["synacks"] += 1
        opts = build_tcp_options(
            mss=cfg.mss - (20 if f.fam == 6 else 0),
            wscale=f.scale if f.wscale_ok else None,
            sack_permitted=f.sack,
            timestamp=((now // 1_000_000) & _MASK, f.ts_recent) if f.ts else None)
        win = min(self._space(f), 65535)
        return self._frame(f, TH_SYN | TH_ACK, f.iss, f.rcv_nxt(), win, opts, now)

    def _ack(self, f: _Flow, now: int, *, fin: bool = False) -> bytes:
        f.unacked = 0
        f.ack_due = None
        win = self._window(f)
        if win == 0:
            f.c["zero_windows"] += 1
        f.c["acks_sent"] += 1
        seq = (f.snd_nxt - 1) & _MASK if fin else f.snd_nxt
        return self._frame(f, TH_ACK | (TH_FIN if fin else 0), seq, f.rcv_nxt(), win,
                           self._ts_opt(f, now), now)

    def _rst_for(self, fam: int, macs: tuple[bytes, bytes], src: bytes, dst: bytes,
                 sport: int, dport: int, seq: int, ack: int, flags: int, plen: int) -> bytes:
        self.counters["rst_sent"] += 1
        if flags & TH_ACK:
            rseq, rack, fl = ack, 0, TH_RST
        else:
            rseq, rack, fl = 0, (seq + plen + (1 if flags & TH_FIN else 0)) & _MASK, \
                TH_RST | TH_ACK
        return build_tcp_frame(src_ip=dst, dst_ip=src, src_port=dport, dst_port=sport,
                               seq=rseq, ack=rack, flags=fl, window=0, src_mac=macs[0],
                               dst_mac=macs[1])

    # ------------------------------------------------------------------ timers
    def poll(self, now_ns: int) -> list[bytes]:
        """Time passes: the application reads, delayed ACKs that are due go out, and a
        window that has grown enough is announced (window update)."""
        out: list[bytes] = []
        cfg = self.config
        for f in self._flows.values():
            if f.state not in (ESTABLISHED, LAST_ACK) or f.fin_rcvd and f.state == CLOSED:
                continue
            self._read(f, now_ns)
            if f.state == LAST_ACK and now_ns - f.fin_at >= cfg.fin_rto_ns << min(f.fin_tries, 8):
                f.fin_tries += 1
                f.fin_at = now_ns
                f.c["fin_rexmits"] += 1
                out.append(self._ack(f, now_ns, fin=True))
                continue
            if f.ack_due is not None and now_ns - f.ack_due >= cfg.delack_ns:
                out.append(self._ack(f, now_ns))
                continue
            if f.fin_rcvd:
                continue
            grow = self._top(f) - f.adv_right
            if grow >= min(cfg.rcvbuf // 2, 2 * f.rmss):
                f.c["window_updates"] += 1
                out.append(self._ack(f, now_ns))
        return out

    # ------------------------------------------------------------------ figures
    def flows(self) -> list[str]:
        """The flows seen, by name, in order of their SYNs."""
        return [flow_name(k) for k in self._flows]

    def _flow(self, flow: str | FlowKey) -> _Flow:
        if isinstance(flow, tuple):
            f = self._flows.get(flow)
        else:
            f = next((x for k, x in self._flows.items() if flow_name(k) == flow), None)
        if f is None:
            raise KeyError(f"no flow {flow!r}; flows: {self.flows()}")
        return f

    def digest(self, flow: str | FlowKey) -> str:
        """Hex sha256 of the flow's in-order byte stream so far."""
        return self._flow(flow).sha.hexdigest()

    def received(self, flow: str | FlowKey) -> int:
        """In-order bytes received on the flow."""
        return self._flow(flow).nxt_off

    def state(self, flow: str | FlowKey) -> str:
        return self._flow(flow).state

    def stats(self) -> dict[str, Any]:
        """Per-flow figures and the sink's counters (JSON-ready)."""
        flows: dict[str, Any] = {}
        for k, f in self._flows.items():
            c = dict(f.c)
            span = c["last_ns"] - c["first_ns"]
            c["goodput_bps"] = (c["bytes"] * 8e9 / span) if span > 0 else 0.0
            c["state"] = f.state
            c["sha256"] = f.sha.hexdigest()
            c["window"] = max(0, f.adv_right - f.nxt_off)
            h = f.hist
            c["latency_ns"] = {"count": h.get_total_count(),
                               **{f"p{p:g}": h.get_value_at_percentile(p)
                                  for p in (50, 90, 99, 99.9)},
                               "max": h.get_max_value()}
            flows[flow_name(k)] = c
        return {"flows": flows, **self.counters}
