"""Request/response load (netperf TCP_RR / UDP_RR): transactions per second and RTTs.

Throughput alone hides latency; a request/response test measures it end to
end without trusting anyone else's clock.  On each of F flows one transaction
is outstanding at a time: a request of ``request`` payload bytes goes out on
the wire, and the transaction completes when a frame of the same flow comes
back on the reply wire (addresses and ports swapped; for TCP, a segment with
data).  The round trip is measured here with ``time.monotonic_ns`` (from just
before the request batch is handed to the wire to the moment its response
batch is read) and recorded in an HDR histogram; the report gives
transactions/s and RTT p50/p90/p99/p99.9/max.

Requests carry the latency stamp (see :mod:`nicemu.trafgen.flows`) when they
have room for it (``request`` >= 16); if a response carries a stamp too (an
echo peer that copies it back), a response whose sequence number is not the
outstanding one is counted ``stale`` and ignored.  A transaction with no
response within ``timeout_ms`` is counted as a timeout and a new one started.
TCP requests are data segments of a :class:`~nicemu.trafgen.tcpstream.TcpStream`
per flow (handshake per ``tcp.handshake``, default ``'none'``), acknowledging
the responses' data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np
from hdrh.histogram import HdrHistogram

from dispatch.packet.frames import build_udp_frame
from nicemu.pcap import PcapWriter
from nicemu.trafgen.flows import STAMP, STAMP_LEN, STAMP_MAGIC, FlowSpec, l4_offsets, parse_stamp
from nicemu.trafgen.generator import PROTOS, epoch_offset_ns, udp_header_len
from nicemu.trafgen.tcpstream import TcpConfig, TcpStream, reply_key
from nicemu.wire import WireRx, WireTx

__all__ = ["RR_FORMS", "RRConfig", "RRStats", "RequestResponse", "parse_rr"]

RR_FORMS: Final = (
    "valid form: REQ:RESP, payload bytes of request and response, e.g. '1:1', '64:1024'"
)
#: largest RTT the histogram records (ns): 60 s
_HIST_MAX: Final = 60_000_000_000


def parse_rr(text: str) -> tuple[int, int]:
    """``'REQ:RESP'`` -> (request bytes, response bytes), each 1..65000."""
    parts = text.strip().split(":")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        req, resp = int(parts[0]), int(parts[1])
        if 1 <= req <= 65000 and 1 <= resp <= 65000:
            return req, resp
    raise ValueError(f"bad request/response sizes {text!r}; {RR_FORMS} (1..65000)")


@dataclass(frozen=True, slots=True)
class RRConfig:
    """A request/response test: sizes are L4 payload bytes (netperf's -r)."""

    proto: str = "udp"
    request: int = 1
    response: int = 1
    flows: FlowSpec = field(default_factory=FlowSpec)
    count: int | None = None
    duration_s: float | None = None
    timeout_ms: int = 1000
    tcp: TcpConfig = field(default_factory=lambda: TcpConfig(handshake="none"))
    seed: int = 0

    def __post_init__(self) -> None:
        if self.proto not in PROTOS:
            raise ValueError(f"proto {self.proto!r} unknown: one of {', '.join(PROTOS)}")
        if not 1 <= self.request <= 65000 or not 1 <= self.response <= 65000:
            raise ValueError(f"request/response sizes must be 1..65000; {RR_FORMS}")
        if self.proto == "tcp" and self.request > self.tcp.mss:
            raise ValueError(f"a TCP request must fit one segment (<= mss {self.tcp.mss})")
        if self.count is None and self.duration_s is None:
            raise ValueError("give count (transactions) or duration_s")
        if self.count is not None and self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")
        if self.duration_s is not None and not (
            math.isfinite(self.duration_s) and self.duration_s > 0
        ):
            raise ValueError(f"duration must be > 0 seconds, got {self.duration_s!r}")
        if self.timeout_ms < 1:
            raise ValueError(f"timeout_ms must be >= 1, got {self.timeout_ms}")


@dataclass(frozen=True, slots=True)
class RRStats:
    """Transactions completed, per second, and RTT percentiles in ns."""

    transactions: int
    requests: int
    timeouts: int
    stale: int
    elapsed_s: float
    tps: float
    rtt_p50_ns: int
    rtt_p90_ns: int
    rtt_p99_ns: int
    rtt_p999_ns: int
    rtt_max_ns: int
    rtt_mean_ns: float
    per_flow: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RequestResponse:
    """Runs an :class:`RRConfig` over a request wire and a reply wire."""

    def __init__(self, config: RRConfig, *, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.config = config
        self.clock = clock
        self.flows = config.flows.flows()
        self._by_key = {f.reversed().key: i for i, f in enumerate(self.flows)}
        self._seq = [0] * len(self.flows)
        self.streams: list[TcpStream] = []
        if config.proto == "tcp":
            isns = np.random.default_rng(config.seed).integers(0, 2**32, size=len(self.flows))
            t = config.tcp
            self.streams = [
                TcpStream(f, isn=int(i), mss=t.mss, window=t.window, peer_isn=t.peer_isn)
                for f, i in zip(self.flows, isns)
            ]
        self.hist = HdrHistogram(1, _HIST_MAX, 3)
        #: UDP: per flow, its request frame with sequence number and time 0, whose
        #: stamp and checksum each request patches (built on first use)
        self._udp_tmpl: list[bytes | None] = [None] * len(self.flows)

    def request_frame(self, i: int, now_ns: int) -> bytes:
        """The next request on flow ``i`` (stamped with its sequence number)."""
        seq = self._seq[i]
        self._seq[i] = (seq + 1) & 0xFFFFFFFF
        n = self.config.request
        if self.streams:
            return self.streams[i].data(n, now_ns=now_ns)
        tm = self._udp_tmpl[i]
        if tm is None:
            payload = bytearray(n)
            if n >= STAMP_LEN:
                STAMP.pack_into(payload, 0, STAMP_MAGIC, 0, 0)
            f = self.flows[i]
            tm = self._udp_tmpl[i] = build_udp_frame(
                src_ip=f.src_ip, dst_ip=f.dst_ip, src_port=f.src_port, dst_port=f.dst_port,
                payload=payload, src_mac=f.src_mac, dst_mac=f.dst_mac, pad=True,
            )  # fmt: skip
        if n < STAMP_LEN:
            return tm
        # the template with this request's stamp, its UDP checksum updated for the
        # six 16-bit words that changed from 0 (RFC 1624), as the Generator does:
        # building the frame anew per request cost ~20 us here
        hdr = udp_header_len(self.flows[i].version)
        fr = bytearray(tm)
        STAMP.pack_into(fr, hdr, STAMP_MAGIC, seq, now_ns)
        c = fr[hdr - 2] << 8 | fr[hdr - 1]
        if c:  # (0: sent without a checksum, which stays so)
            t = (~c & 0xFFFF) + (seq >> 16) + (seq & 0xFFFF) + (now_ns >> 48 & 0xFFFF) \
                + (now_ns >> 32 & 0xFFFF) + (now_ns >> 16 & 0xFFFF) + (now_ns & 0xFFFF)
            t = (t & 0xFFFF) + (t >> 16)
            t = (t & 0xFFFF) + (t >> 16)
            c = ~t & 0xFFFF or 0xFFFF  # (a computed 0 is sent as 0xFFFF: RFC 768)
            fr[hdr - 2] = c >> 8
            fr[hdr - 1] = c & 0xFF
        return bytes(fr)

    def run(
        self,
        tx: WireTx,
        rx: WireRx,
        *,
        capture: PcapWriter | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> RRStats:
        """Run the test; ``tx`` carries requests, ``rx`` brings responses."""
        cfg = self.config
        clock = self.clock
        nflows = len(self.flows)
        epoch = epoch_offset_ns()
        limit = cfg.count
        timeout_ns = cfg.timeout_ms * 1_000_000
        outstanding: dict[int, tuple[int, int]] = {}  # flow -> (sent ns, seq)
        per_flow = [0] * nflows
        started = done = timeouts = stale = 0
        hist = self.hist

        def send(frames: list[bytes]) -> None:
            if frames:
                tx.send_batch(frames)
                if capture is not None:
                    now = clock() + epoch
                    for fr in frames:
                        capture.write(fr, timestamp_ns=now)

        # TCP: open connections
        if self.streams:
            opening: list[bytes] = []
            for st in self.streams:
                if cfg.tcp.handshake != "none":
                    opening.append(st.syn())
                if cfg.tcp.handshake != "await":
                    st.assume_established()
            send(opening)
            if cfg.tcp.handshake == "await":
                end = time.monotonic() + cfg.tcp.handshake_timeout_s
                while time.monotonic() < end and any(
                    s.state != "established" for s in self.streams
                ):
                    got = rx.recv_batch(10)
                    acks = []
                    for fr in got[0] if got else ():
                        i = self._by_key.get(reply_key(fr))  # type: ignore[arg-type]
                        if i is not None:
                            r = self.streams[i].on_reply(fr)
                            if r is not None:
                                acks.append(r)
                    send(acks)
                for st in self.streams:
                    if st.state != "established":
                        st.assume_established()

        t0 = clock()
        end_ns = None if cfg.duration_s is None else t0 + int(cfg.duration_s * 1e9)

        def more(now: int) -> bool:
            if stop is not None and stop():
                return False
            if end_ns is not None and now >= end_ns:
                return False
            return limit is None or started < limit

        def start_batch(idx: list[int]) -> None:
            nonlocal started
            now = clock()
            frames = []
            for i in idx:
                seq = self._seq[i]
                frames.append(self.request_frame(i, now))
                outstanding[i] = (now, seq)
                started += 1
            send(frames)

        first = list(range(nflows if limit is None else min(nflows, limit)))
        start_batch(first)
        while outstanding:
            now = clock()
            wait_ms = max(0, min((t for t, _ in outstanding.values())) + timeout_ns - now)
            got = rx.recv_batch(max(1, min(100, wait_ms // 1_000_000 + 1)))
            now = clock()
            again: list[int] = []
            if got is not None:
                if capture is not None:
                    for fr in got[0]:
                        capture.write(fr, timestamp_ns=now + epoch)
                for fr in got[0]:
                    i = self._by_key.get(reply_key(fr))  # type: ignore[arg-type]
                    if i is None or i not in outstanding:
                        stale += 1
                        continue
                    if self.streams:
                        st = self.streams[i]
                        before = st.rcv_nxt
                        st.on_reply(fr)
                        if st.rcv_nxt == before and not _has_data(fr):
                            continue  # a bare ACK: not the response
                    t_sent, seq = outstanding[i]
                    stamp = parse_stamp(fr)
                    if stamp is not None and stamp[0] != seq and not self.streams:
                        stale += 1
                        continue
                    del outstanding[i]
                    hist.record_value(max(1, min(now - t_sent, _HIST_MAX)))
                    done += 1
                    per_flow[i] += 1
                    again.append(i)
            for i, (t_sent, _s) in list(outstanding.items()):
                if now - t_sent > timeout_ns:
                    del outstanding[i]
                    timeouts += 1
                    again.append(i)
            if again and more(now):
                if limit is not None:
                    again = again[: max(0, limit - started)]
                start_batch(again)
        elapsed = max(clock() - t0, 1) / 1e9
        if self.streams:
            send([st.fin() for st in self.streams if st.state == "established"])
        return RRStats(
            transactions=done, requests=started, timeouts=timeouts, stale=stale,
            elapsed_s=elapsed, tps=done / elapsed,
            rtt_p50_ns=hist.get_value_at_percentile(50.0) if done else 0,
            rtt_p90_ns=hist.get_value_at_percentile(90.0) if done else 0,
            rtt_p99_ns=hist.get_value_at_percentile(99.0) if done else 0,
            rtt_p999_ns=hist.get_value_at_percentile(99.9) if done else 0,
            rtt_max_ns=hist.get_max_value() if done else 0,
            rtt_mean_ns=float(hist.get_mean_value()) if done else 0.0,
            per_flow=tuple(per_flow),
        )  # fmt: skip


def _has_data(frame: memoryview | bytes) -> bool:
    loc = l4_offsets(frame)
    if loc is None or loc[2] != 6:
        return False
    l3, version, _p, l4 = loc
    if version == 4:
        end = l3 + int.from_bytes(frame[l3 + 2 : l3 + 4], "big")
    else:
        end = l3 + 40 + int.from_bytes(frame[l3 + 4 : l3 + 6], "big")
    return end - l4 - (frame[l4 + 12] >> 4) * 4 > 0
