"""The traffic generator: stamped UDP flows and TCP streams, paced, impaired, sent on a wire.

This is the Python API behind ``nicemu trafgen`` that the runtime drives:
build a :class:`GeneratorConfig`, make a :class:`Generator`, and either pull
frames from it (:meth:`Generator.frames`, :meth:`Generator.build_udp`) or let
it run against a :class:`~nicemu.wire.WireTx` (:meth:`Generator.run`), which
returns :class:`GenStats`.

How frames are made, and why it is fast:

- **UDP** frames are built a whole batch at a time in numpy.  One template
  per (flow, frame size) is built once with :mod:`dispatch.packet` (Ethernet,
  IPv4 or IPv6, UDP, and a payload that starts with the stamp magic); per
  batch the templates are gathered by flow index into one flat byte array,
  and only the stamp (flow sequence number and send time, see
  :mod:`nicemu.trafgen.flows`) and the UDP checksum are written.  The UDP
  checksum is patched incrementally (RFC 1624: template ones sum plus the new
  16-bit words, folded), vectorised, so every frame carries a correct
  checksum (``udp_checksum='zero'`` sends 0, "no checksum", over IPv4
  instead).  The IP header never changes per frame (ident 0), so its checksum
  is the template's.  The result is exactly the wire's packed form (lengths +
  concatenated frames): :meth:`~nicemu.wire.WireTx.send_packed` sends it with
  no per-frame Python work.
- **TCP** streams (``proto='tcp'``) come from :class:`~nicemu.trafgen.tcpstream.TcpStream`,
  one per flow, per segment (sequence numbers are per-flow state).
- Frame sizes come from the size distribution (``size``: a ``parse_size_spec``
  string; sizes there include the FCS).  A frame is never smaller than its
  headers plus the 16-byte stamp (UDP/IPv4: 58 bytes, so 64-byte frames keep
  their size; UDP/IPv6: 78; TCP/IPv4: 70; TCP/IPv6: 90) and a TCP payload
  never exceeds the MSS.
- Which flow each frame belongs to is drawn uniformly (``flow_order='random'``)
  or round-robin; sizes, flows and impairments each draw from their own
  stream spawned from ``seed``, one uniform per frame, so the same seed gives
  byte-identical frames however the pacer happens to batch them (apart from
  the send-time stamp and the checksum bytes that cover it; inject ``clock``
  to make those identical too).

Pacing: a rate in pps or bit/s (converted with the mean frame size) through
the :class:`~nicemu.trafgen.pacing.Pacer` and an arrival process (constant,
Poisson, on/off); ``'max'`` bypasses the pacer and sends batches back to back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from dispatch.packet.checksum import l4_checksum
from dispatch.packet.frames import build_udp_frame
from nicemu.pcap import PcapWriter
from nicemu.trafgen.dist import (
    ArrivalProcess,
    Constant,
    OnOff,
    Poisson,
    Rate,
    SizeDist,
    parse_rate,
    parse_size_spec,
)
from nicemu.trafgen.flows import (
    STAMP,
    STAMP_LEN,
    STAMP_MAGIC,
    Flow,
    FlowSpec,
    flows_version,
    parse_stamp,
)
from nicemu.trafgen.impair import IMPAIRMENTS, ImpairConfig, Impairer
from nicemu.trafgen.pacing import Batch, Pacer, PacerStats
from nicemu.trafgen.tcpstream import TcpConfig, TcpStream, reply_key, tcp_header_len
from nicemu.wire import WIRE_OVERHEAD, WireRx, WireTx

__all__ = [
    "PROTOS",
    "FLOW_ORDERS",
    "ARRIVAL_FORMS",
    "GeneratorConfig",
    "GenStats",
    "Generator",
    "parse_arrival",
    "make_arrival",
    "udp_header_len",
    "parse_stamp",
    "epoch_offset_ns",
]

PROTOS: Final = ("udp", "tcp")
FLOW_ORDERS: Final = ("random", "roundrobin")
ARRIVAL_FORMS: Final = "valid forms: 'constant', 'poisson', or 'onoff:ON:OFF' (seconds, ON > 0)"
#: Rate shortfall (achieved / target below this) that raises the warning flag.
RATE_TOLERANCE: Final = 0.98


def udp_header_len(version: int) -> int:
    """Ethernet + IP + UDP header bytes."""
    return 14 + (20 if version == 4 else 40) + 8


def parse_arrival(text: str) -> tuple[str, float, float]:
    """``'constant'`` / ``'poisson'`` / ``'onoff:ON:OFF'`` -> (kind, on_s, off_s)."""
    t = text.strip().lower()
    if t in ("constant", "poisson"):
        return t, 0.0, 0.0
    if t.startswith("onoff:"):
        parts = t.split(":")
        if len(parts) == 3:
            try:
                on, off = float(parts[1]), float(parts[2])
            except ValueError:
                on = off = math.nan
            if math.isfinite(on) and math.isfinite(off) and on > 0 and off >= 0:
                return "onoff", on, off
    raise ValueError(f"bad arrival process {text!r}; {ARRIVAL_FORMS}")


def make_arrival(text: str, rate_pps: float, *, seed: int | np.random.Generator) -> ArrivalProcess:
    kind, on, off = parse_arrival(text)
    if kind == "constant":
        return Constant(rate_pps)
    if kind == "poisson":
        return Poisson(rate_pps, seed=seed)
    return OnOff(rate_pps, on, off, seed=seed)


def epoch_offset_ns() -> int:
    """Add to a monotonic ns reading to get ns since the Unix epoch (for pcap)."""
    return time.time_ns() - time.monotonic_ns()


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """Everything that defines a generated load (validated on construction).

    ``rate``: a :class:`~nicemu.trafgen.dist.Rate` or its string (``'100k'``,
    ``'1Gbps'``, ``'max'``).  ``count``/``duration_s``: stop after that many
    scheduled frames / seconds (at least one of them, unless used only for
    :meth:`Generator.frames`).  ``size``: a size spec (FCS included).
    ``arrival``: ``'constant'``, ``'poisson'`` or ``'onoff:ON:OFF'``.
    ``batch``: most frames per wire message (the pacer sends
    smaller batches when on time: at most 100 us of schedule each).  ``wire_stamps``: also send the
    per-frame stamps as the wire's stamps part.
    """

    proto: str = "udp"
    rate: Rate | str = "max"
    count: int | None = None
    duration_s: float | None = None
    size: str = "64"
    arrival: str = "constant"
    flows: FlowSpec = field(default_factory=FlowSpec)
    impair: ImpairConfig = field(default_factory=ImpairConfig)
    tcp: TcpConfig = field(default_factory=TcpConfig)
    seed: int = 0
    batch: int = 256
    flow_order: str = "random"
    stamps: bool = True
    wire_stamps: bool = False
    udp_checksum: str = "full"

    def __post_init__(self) -> None:
        if self.proto not in PROTOS:
            raise ValueError(f"proto {self.proto!r} unknown: one of {', '.join(PROTOS)}")
        if isinstance(self.rate, str):
            object.__setattr__(self, "rate", parse_rate(self.rate))
        if self.count is not None and (isinstance(self.count, bool) or self.count < 0):
            raise ValueError(f"count must be >= 0, got {self.count!r}")
        if self.duration_s is not None and not (
            math.isfinite(self.duration_s) and self.duration_s > 0
        ):
            raise ValueError(f"duration must be > 0 seconds, got {self.duration_s!r}")
        parse_size_spec(self.size)
        parse_arrival(self.arrival)
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.flow_order not in FLOW_ORDERS:
            raise ValueError(
                f"flow_order {self.flow_order!r} unknown: one of {', '.join(FLOW_ORDERS)}"
            )
        if self.udp_checksum not in ("full", "zero"):
            raise ValueError(f"udp_checksum must be 'full' or 'zero', got {self.udp_checksum!r}")

    @property
    def rate_obj(self) -> Rate:
        assert isinstance(self.rate, Rate)
        return self.rate


@dataclass(frozen=True)
class GenStats:
    """What a run sent.  ``target_pps`` is None at 'max' rate; ``rate_warning``
    is True when the achieved rate fell short of the target by more than 2 % or
    the pacer ended behind.  ``bytes`` count frames without FCS; ``wire_bps``
    counts on-wire bits (+24 bytes per frame)."""

    frames: int
    bytes: int
    elapsed_s: float
    achieved_pps: float
    wire_bps: float
    target_pps: float | None
    ratio: float | None
    rate_warning: bool
    impairments: dict[str, int]
    scheduled: int = 0
    syn: int = 0
    fin: int = 0
    handshakes: int = 0
    replies: int = 0
    acks_received: int = 0
    loops: int = 0
    pacer: PacerStats | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.pacer is not None:
            d["pacer"] = {k: v for k, v in asdict(self.pacer).items()}
        return d


#: stamp fields after the magic, as written per frame (network order)
_STAMP_TAIL: Final = np.dtype([("seq", ">u4"), ("t", ">u8")])


class _UdpTemplates:
    """Per frame size: a (F, size) uint8 array of templates and their ones sums."""

    def __init__(self, flows: Sequence[Flow], *, stamps: bool, zero_csum: bool) -> None:
        self.flows = flows
        self.version = flows_version(flows)
        self.hdr = udp_header_len(self.version)
        self.stamps = stamps
        self.zero_csum = zero_csum and self.version == 4
        self.csum_off = self.hdr - 2
        self.stamp_off = self.hdr
        self._by_size: dict[int, tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]] = {}

    def min_frame(self) -> int:
        return max(60, self.hdr + STAMP_LEN)

    def get(self, size: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        t = self._by_size.get(size)
        if t is not None:
            return t
        plen = size - self.hdr
        payload = bytearray(plen)
        if self.stamps:
            STAMP.pack_into(payload, 0, STAMP_MAGIC, 0, 0)
        rows = np.empty((len(self.flows), size), dtype=np.uint8)
        base = np.empty(len(self.flows), dtype=np.int64)
        l4 = self.hdr - 8
        for i, f in enumerate(self.flows):
            frame = build_udp_frame(
                src_ip=f.src_ip, dst_ip=f.dst_ip, src_port=f.src_port, dst_port=f.dst_port,
                payload=payload, src_mac=f.src_mac, dst_mac=f.dst_mac,
                udp_checksum=0 if self.zero_csum else None,
            )  # fmt: skip
            assert len(frame) == size
            rows[i] = np.frombuffer(frame, dtype=np.uint8)
            seg = bytearray(frame[l4:])
            seg[6:8] = b"\0\0"
            base[i] = ~l4_checksum(f.src_ip, f.dst_ip, 17, seg) & 0xFFFF
        self._by_size[size] = (rows, base)
        return rows, base


class Generator:
    """Makes the frames of a :class:`GeneratorConfig` and sends them.

    ``clock`` gives the send-time stamps (default ``time.monotonic_ns``).
    """

    def __init__(
        self, config: GeneratorConfig, *, clock: Callable[[], int] = time.monotonic_ns
    ) -> None:
        self.config = config
        self.clock = clock
        self.flows: tuple[Flow, ...] = config.flows.flows()
        self.version = flows_version(self.flows)
        ss = np.random.SeedSequence(config.seed)
        s_size, s_flow, s_imp, s_arr, s_isn = ss.spawn(5)
        self._size_dist: SizeDist = parse_size_spec(config.size, seed=np.random.default_rng(s_size))
        self._flow_rng = np.random.default_rng(s_flow)
        self._arr_rng = np.random.default_rng(s_arr)
        self.impairer: Impairer | None = (
            Impairer(config.impair, seed=np.random.default_rng(s_imp))
            if config.impair.active else None
        )  # fmt: skip
        nflows = len(self.flows)
        self._rr_next = 0
        self._fseq = np.zeros(nflows, dtype=np.int64)
        self._udp: _UdpTemplates | None = None
        self.streams: list[TcpStream] = []
        tcfg = config.tcp
        if config.proto == "udp":
            self._udp = _UdpTemplates(
                self.flows, stamps=config.stamps, zero_csum=config.udp_checksum == "zero"
            )
            self.min_frame = self._udp.min_frame()
        else:
            isns = np.random.default_rng(s_isn).integers(0, 2**32, size=nflows)
            self.streams = [
                TcpStream(
                    f,
                    isn=int(isn),
                    mss=tcfg.mss,
                    window=tcfg.window,
                    peer_isn=tcfg.peer_isn,
                    stamps=config.stamps,
                )  # fmt: skip
                for f, isn in zip(self.flows, isns)
            ]
            self.min_frame = max(60, tcp_header_len(self.version) + STAMP_LEN)
            self._stream_by_reply = {s.flow.reversed().key: s for s in self.streams}
        self.max_frame = (
            tcp_header_len(self.version) + tcfg.mss if config.proto == "tcp" else 1 << 30
        )
        self._flow_range = np.arange(nflows, dtype=np.int64)
        sd_sizes = getattr(self._size_dist, "sizes", None)
        self._needs_clip = sd_sizes is None or any(self._clamp(x) != x for x in sd_sizes)
        self._fixed_size: int | None = (
            self._clamp(sd_sizes[0]) if sd_sizes is not None and len(sd_sizes) == 1 else None
        )
        # counters
        self.sent_frames = 0
        self.sent_bytes = 0
        self.scheduled = 0
        self.replies = 0
        self.syn = 0
        self.fin = 0
        self.handshakes = 0

    # -- sizes and flows ------------------------------------------------------------
    @property
    def mean_frame(self) -> float:
        """Mean frame size actually generated (after the minimum/maximum clamps)."""
        sd = self._size_dist
        sizes = getattr(sd, "sizes", None)
        probs = getattr(sd, "probs", None)
        if sizes is None or probs is None:
            return float(sd.mean)
        return float(sum(self._clamp(s) * p for s, p in zip(sizes, probs)))

    def _clamp(self, size: int) -> int:
        return min(max(int(size), self.min_frame), self.max_frame)

    def _sizes(self, n: int) -> npt.NDArray[np.int64]:
        s = self._size_dist.sample(n)
        if self._needs_clip:
            s = np.clip(s, self.min_frame, self.max_frame)
        return s

    def _flow_idx(self, n: int) -> npt.NDArray[np.int64]:
        nf = len(self.flows)
        if nf == 1:
            return np.zeros(n, dtype=np.int64)
        if self.config.flow_order == "roundrobin":
            idx = (np.arange(n, dtype=np.int64) + self._rr_next) % nf
            self._rr_next = (self._rr_next + n) % nf
            return idx
        idx = (self._flow_rng.random(n) * nf).astype(np.int64)
        np.minimum(idx, nf - 1, out=idx)
        return idx

    def _flow_seqs(self, fidx: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Per-flow sequence numbers of the frames of ``fidx`` (and advance the counters)."""
        n = len(fidx)
        nf = len(self.flows)
        if nf == 1:
            seq = np.arange(self._fseq[0], self._fseq[0] + n, dtype=np.int64)
            self._fseq[0] += n
            return seq
        if n * nf <= 65536:  # rank within flow by a one-hot running count
            onehot = fidx[:, None] == self._flow_range
            rank = np.cumsum(onehot, axis=0)[np.arange(n), fidx] - 1
            seq = rank + self._fseq[fidx]
            self._fseq += onehot.sum(axis=0)
            return seq
        order = np.argsort(fidx, kind="stable")
        sf = fidx[order]
        newgrp = np.empty(n, dtype=bool)
        newgrp[0] = True
        np.not_equal(sf[1:], sf[:-1], out=newgrp[1:])
        starts = np.flatnonzero(newgrp)
        lens = np.diff(np.append(starts, n))
        ranks_sorted = np.arange(n, dtype=np.int64) - np.repeat(starts, lens)
        seq = np.empty(n, dtype=np.int64)
        seq[order] = ranks_sorted
        seq += self._fseq[fidx]
        self._fseq += np.bincount(fidx, minlength=nf)
        return seq

    # -- UDP, vectorised ------------------------------------------------------------
    def build_udp(
        self, n: int, *, now_ns: int | None = None
    ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint8]]:
        """``n`` UDP frames in the wire's packed form: (lengths u32, all frames
        concatenated), stamped ``now_ns`` (default: the clock).  No impairments."""
        udp = self._udp
        if udp is None:
            raise ValueError("build_udp needs proto='udp'")
        t = self.clock() if now_ns is None else now_ns
        fidx = self._flow_idx(n)
        if self._fixed_size is not None:
            size0 = self._fixed_size
            rows, base = udp.get(size0)
            out2 = rows[fidx]
            if udp.stamps and n:
                self._patch(out2, fidx, base, t, self._flow_seqs(fidx))
            return np.full(n, size0, dtype=np.uint32), out2.reshape(-1)
        sizes = self._sizes(n)
        lengths = sizes.astype(np.uint32)
        seq = self._flow_seqs(fidx) if (udp.stamps and n) else None
        total = int(sizes.sum())
        out = np.empty(total, dtype=np.uint8)
        offs = np.zeros(n, dtype=np.int64)
        if n > 1:
            np.cumsum(sizes[:-1], out=offs[1:])
        for size in np.unique(sizes).tolist():
            sel = np.flatnonzero(sizes == size)
            rows, base = udp.get(int(size))
            part = rows[fidx[sel]]
            if seq is not None:
                self._patch(part, fidx[sel], base, t, seq[sel])
            pos = offs[sel][:, None] + np.arange(size, dtype=np.int64)
            out[pos] = part
        return lengths, out

    def _patch(
        self,
        rows: npt.NDArray[np.uint8],
        fidx: npt.NDArray[np.int64],
        base: npt.NDArray[np.int64],
        t_ns: int,
        seq: npt.NDArray[np.int64],
    ) -> None:
        """Write stamps and UDP checksums into gathered template rows (in place)."""
        udp = self._udp
        assert udp is not None
        n = len(seq)
        seq = seq & 0xFFFFFFFF
        st = np.empty(n, dtype=_STAMP_TAIL)
        st["seq"] = seq
        st["t"] = t_ns
        so = udp.stamp_off
        rows[:, so + 4 : so + 16] = st.view(np.uint8).reshape(n, 12)
        if udp.zero_csum:
            return
        tw = (t_ns >> 48) + ((t_ns >> 32) & 0xFFFF) + ((t_ns >> 16) & 0xFFFF) + (t_ns & 0xFFFF)
        # all int64: ones-complement sum of the template and the new words, folded
        s = base[fidx] + (seq >> 16) + (seq & 0xFFFF) + tw
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        c = (~s & 0xFFFF).astype(">u2")
        c[c == 0] = 0xFFFF
        co = udp.csum_off
        rows[:, co : co + 2] = c.view(np.uint8).reshape(n, 2)

    # -- frames, any protocol ----------------------------------------------------------
    def frames(self, n: int, *, now_ns: int | None = None) -> list[bytes]:
        """The next ``n`` scheduled frames as bytes, impairments applied (so possibly
        more or fewer than ``n``); for TCP, the first frame of a flow is not a SYN
        here: open streams with :meth:`open_frames`."""
        raw = self._raw_frames(n, now_ns)
        self.scheduled += n
        if self.impairer is not None:
            return self.impairer.apply(raw)
        return raw

    def _raw_frames(self, n: int, now_ns: int | None) -> list[bytes]:
        t = self.clock() if now_ns is None else now_ns
        if self._udp is not None:
            if n == 0:
                return []
            lengths, payload = self.build_udp(n, now_ns=t)
            buf = payload.tobytes()
            out: list[bytes] = []
            o = 0
            for ln in lengths.tolist():
                out.append(buf[o : o + ln])
                o += ln
            return out
        sizes = self._sizes(n).tolist()
        fidx = self._flow_idx(n).tolist()
        streams = self.streams
        res = []
        for fi, size in zip(fidx, sizes):
            st = streams[fi]
            if st.state == "closed":
                st.assume_established()
            res.append(st.data(st.payload_len_for(size), now_ns=t))
        return res

    def open_frames(self) -> list[bytes]:
        """TCP: the SYN of every stream (handshake 'await'/'assume'); for 'assume'
        and 'none' the streams are then established.  UDP: nothing."""
        if not self.streams:
            return []
        mode = self.config.tcp.handshake
        out: list[bytes] = []
        for st in self.streams:
            if mode != "none" and st.state == "closed":
                out.append(st.syn())
                self.syn += 1
            if mode != "await":
                st.assume_established()
        return out

    def close_frames(self) -> list[bytes]:
        """TCP: a FIN for every stream that is established; UDP: nothing."""
        out = []
        for st in self.streams:
            if st.state == "established":
                out.append(st.fin())
                self.fin += 1
        return out

    def on_reply(self, frame: memoryview | bytes) -> bytes | None:
        """Count a frame that came back; TCP: hand it to its stream (may return
        the handshake ACK to send)."""
        self.replies += 1
        if not self.streams:
            return None
        st = self._stream_by_reply.get(reply_key(frame))  # type: ignore[arg-type]
        if st is None:
            return None
        was = st.state
        r = st.on_reply(frame)
        if was == "syn_sent" and st.state == "established":
            self.handshakes += 1
        return r

    # -- running -----------------------------------------------------------------------
    def run(
        self,
        tx: WireTx,
        *,
        reply: WireRx | None = None,
        capture: PcapWriter | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> GenStats:
        """Send the configured load on ``tx``; read ``reply`` (if any) as it goes;
        write what is sent and received to ``capture``; ``stop()`` True ends early.
        Does not close ``tx``."""
        cfg = self.config
        if cfg.count is None and cfg.duration_s is None:
            raise ValueError("run needs count or duration_s in the config")
        epoch = epoch_offset_ns()
        impairer = self.impairer
        fast = self._udp is not None and impairer is None and capture is None
        wire_stamps = cfg.wire_stamps

        def send_list(frames: list[bytes], t: int) -> None:
            if not frames:
                return
            tx.send_batch(frames, [t] * len(frames) if wire_stamps else None)
            self.sent_frames += len(frames)
            self.sent_bytes += sum(map(len, frames))
            if capture is not None:
                for f in frames:
                    capture.write(f, timestamp_ns=t + epoch)

        def drain_replies(wait_ms: int = 0) -> None:
            if reply is None:
                return
            for _ in range(64):
                got = reply.recv_batch(wait_ms)
                if got is None:
                    return
                now = self.clock()
                out: list[bytes] = []
                for fr in got[0]:
                    if capture is not None:
                        capture.write(fr, timestamp_ns=now + epoch)
                    r = self.on_reply(fr)
                    if r is not None:
                        out.append(r)
                send_list(out, now)
                wait_ms = 0

        def emit(n: int) -> None:
            t = self.clock()
            if fast:
                lengths, payload = self.build_udp(n, now_ns=t)
                stamps = np.full(n, t, dtype="<u8") if wire_stamps else None
                tx.send_packed(lengths.astype("<u4", copy=False), payload, stamps)
                self.sent_frames += n
                self.sent_bytes += int(payload.size)
                self.scheduled += n
            else:
                send_list(self.frames(n, now_ns=t), t)
            drain_replies()

        # TCP: open the streams
        opening = self.open_frames()
        if opening:
            send_list(opening, self.clock())
            if cfg.tcp.handshake == "await":
                if reply is None:
                    raise ValueError("handshake 'await' needs a reply wire")
                deadline = time.monotonic() + cfg.tcp.handshake_timeout_s
                while time.monotonic() < deadline and any(
                    s.state == "syn_sent" for s in self.streams
                ):
                    drain_replies(10)
                for s in self.streams:  # never answered: carry on regardless
                    if s.state == "syn_sent":
                        s.assume_established()

        rate = cfg.rate_obj
        pstats: PacerStats | None = None
        t0 = time.monotonic_ns()
        if rate.is_max:
            limit = cfg.count
            end = None if cfg.duration_s is None else t0 + int(cfg.duration_s * 1e9)
            b = cfg.batch
            while limit is None or self.scheduled < limit:
                if end is not None and time.monotonic_ns() >= end:
                    break
                if stop is not None and stop():
                    break
                emit(b if limit is None else min(b, limit - self.scheduled))
            t1 = time.monotonic_ns()
            target = None
        else:
            pps = rate.pps(self.mean_frame)
            pacer = Pacer(make_arrival(cfg.arrival, pps, seed=self._arr_rng), batch=cfg.batch)

            def send(batch: Batch) -> None:
                emit(batch.count)
                if stop is not None and stop():
                    raise _Stop

            try:
                pacer.run(send, frames=cfg.count, duration_s=cfg.duration_s)
            except _Stop:
                pass
            pstats = pacer.stats()
            t1 = time.monotonic_ns()
            target = pacer.target_pps or pps
        if impairer is not None:
            send_list(impairer.flush(), self.clock())
        send_list(self.close_frames(), self.clock())
        if reply is not None:  # let the last replies come back
            end_wait = time.monotonic() + 0.05
            while time.monotonic() < end_wait:
                drain_replies(5)
        elapsed = max(t1 - t0, 1) / 1e9
        achieved = self.scheduled / elapsed
        ratio = None
        warn = False
        if target is not None and pstats is not None:
            ratio = pstats.ratio if pstats.frames else 0.0
            warn = ratio < RATE_TOLERANCE or pstats.behind
        return self.stats(elapsed_s=elapsed, achieved_pps=achieved, target_pps=target,
                          ratio=ratio, rate_warning=warn, pacer=pstats)  # fmt: skip

    def stats(
        self,
        *,
        elapsed_s: float = 0.0,
        achieved_pps: float = 0.0,
        target_pps: float | None = None,
        ratio: float | None = None,
        rate_warning: bool = False,
        pacer: PacerStats | None = None,
    ) -> GenStats:
        imp = dict(self.impairer.counts) if self.impairer else dict.fromkeys(IMPAIRMENTS, 0)
        wire_bps = (
            (self.sent_bytes + WIRE_OVERHEAD * self.sent_frames) * 8 / elapsed_s
            if elapsed_s > 0 else 0.0
        )  # fmt: skip
        return GenStats(
            frames=self.sent_frames, bytes=self.sent_bytes, elapsed_s=elapsed_s,
            achieved_pps=achieved_pps, wire_bps=wire_bps, target_pps=target_pps, ratio=ratio,
            rate_warning=rate_warning, impairments=imp, scheduled=self.scheduled, syn=self.syn,
            fin=self.fin, handshakes=self.handshakes, replies=self.replies,
            acks_received=sum(s.acks_received for s in self.streams), pacer=pacer,
        )  # fmt: skip


class _Stop(Exception):
    pass
