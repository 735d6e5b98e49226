"""Replay a pcap or pcapng capture onto the wire, optionally fixing its checksums.

Real captures carry what synthetic traffic does not (odd options,
retransmissions, genuinely broken checksums from transmit offload), so the
generator can send a capture's frames instead of its own: at the capture's
own timing (the gaps between records, through the pacer), at a set rate, or
as fast as possible; ``loop`` times over.  Frames are sent byte for byte as
captured (only Ethernet link-type records; others are skipped and counted),
unless ``fixcsum`` is set: then, as ``tcpreplay --fixcsum`` does, the IPv4
header checksum and the TCP and UDP checksums (over IPv4 or IPv6) are
recomputed with :mod:`dispatch.packet`.  Not fixed: fragments, IPv6 with
extension headers before TCP/UDP, frames captured shorter than their IP
length, and IPv4 UDP checksums of 0 (which mean "no checksum" and stay so).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dispatch.packet.checksum import in_cksum, l4_checksum
from dispatch.packet.errors import BytesLike
from nicemu.pcap import LINKTYPE_ETHERNET, PcapWriter, read_packets
from nicemu.trafgen.dist import Constant, Rate, parse_rate
from nicemu.trafgen.flows import l4_offsets
from nicemu.trafgen.generator import RATE_TOLERANCE, GenStats, epoch_offset_ns
from nicemu.trafgen.pacing import Batch, Pacer, PacerStats
from nicemu.wire import WIRE_OVERHEAD, WireRx, WireTx

__all__ = ["TIMINGS", "ReplayConfig", "Replayer", "fix_checksums", "load_capture"]

TIMINGS = ("capture", "rate", "max")


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """``timing``: 'capture' | 'rate' (needs ``rate``) | 'max'; ``loop`` >= 1."""

    path: str
    timing: str = "max"
    rate: Rate | str | None = None
    loop: int = 1
    fixcsum: bool = False
    batch: int = 64

    def __post_init__(self) -> None:
        if self.timing not in TIMINGS:
            raise ValueError(f"timing {self.timing!r} unknown: one of {', '.join(TIMINGS)}")
        if isinstance(self.rate, str):
            object.__setattr__(self, "rate", parse_rate(self.rate))
        if self.timing == "rate" and (self.rate is None or self.rate.is_max):  # type: ignore[union-attr]
            raise ValueError("timing 'rate' needs a rate in pps or bit/s (e.g. '10k', '1Gbps')")
        if isinstance(self.loop, bool) or self.loop < 1:
            raise ValueError(f"loop must be >= 1, got {self.loop!r}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")


def load_capture(path: str | os.PathLike[str]) -> tuple[list[bytes], list[int], int]:
    """(frames, timestamps ns, records skipped for not being Ethernet)."""
    frames: list[bytes] = []
    stamps: list[int] = []
    skipped = 0
    for rec in read_packets(path):
        if rec.linktype != LINKTYPE_ETHERNET:
            skipped += 1
            continue
        frames.append(rec.data)
        stamps.append(rec.timestamp_ns)
    return frames, stamps, skipped


def fix_checksums(frame: BytesLike) -> bytes:
    """The frame with its IPv4 header and TCP/UDP checksums recomputed (see module doc)."""
    b = bytearray(frame)
    loc = l4_offsets(b)
    if loc is None:
        return bytes(b)
    l3, version, proto, l4 = loc
    if version == 4:
        ihl = (b[l3] & 0x0F) * 4
        if ihl < 20 or len(b) < l3 + ihl:
            return bytes(b)
        b[l3 + 10 : l3 + 12] = b"\0\0"
        b[l3 + 10 : l3 + 12] = in_cksum(b[l3 : l3 + ihl]).to_bytes(2, "big")
        end = l3 + int.from_bytes(b[l3 + 2 : l3 + 4], "big")
        if b[l3 + 6] & 0x20:  # MF: a first fragment, the L4 checksum covers more
            return bytes(b)
        src, dst = bytes(b[l3 + 12 : l3 + 16]), bytes(b[l3 + 16 : l3 + 20])
    else:
        end = l3 + 40 + int.from_bytes(b[l3 + 4 : l3 + 6], "big")
        src, dst = bytes(b[l3 + 8 : l3 + 24]), bytes(b[l3 + 24 : l3 + 40])
    if end > len(b) or end < l4:
        return bytes(b)
    if proto == 6:
        co = l4 + 16
    elif proto == 17:
        co = l4 + 6
        if version == 4 and b[co] == 0 and b[co + 1] == 0:
            return bytes(b)
    else:
        return bytes(b)
    if co + 2 > end:
        return bytes(b)
    b[co : co + 2] = b"\0\0"
    c = l4_checksum(src, dst, proto, b[l4:end])
    if proto == 17 and c == 0:
        c = 0xFFFF
    b[co : co + 2] = c.to_bytes(2, "big")
    return bytes(b)


class Replayer:
    """Sends a capture's frames on a wire per a :class:`ReplayConfig`."""

    def __init__(self, config: ReplayConfig) -> None:
        self.config = config
        frames, stamps, self.skipped = load_capture(config.path)
        if not frames:
            raise ValueError(f"{config.path}: no Ethernet frames to replay")
        self.fixed = 0
        if config.fixcsum:
            fixed = [fix_checksums(f) for f in frames]
            self.fixed = sum(a != b for a, b in zip(frames, fixed))
            frames = fixed
        self.frames = frames
        self.timestamps = stamps
        self.replies = 0

    def gaps(self) -> np.ndarray:
        """Capture timing: the gaps between records (ns, negatives as 0), ``loop`` times."""
        t = np.asarray(self.timestamps, dtype=np.int64)
        g = np.maximum(np.diff(t, prepend=t[0]), 0)
        return np.tile(g, self.config.loop)

    def run(
        self,
        tx: WireTx,
        *,
        reply: WireRx | None = None,
        capture: PcapWriter | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> GenStats:
        """Replay; ``capture`` gets what is sent and what comes back on ``reply``."""
        cfg = self.config
        frames = self.frames
        nf = len(frames)
        total = nf * cfg.loop
        epoch = epoch_offset_ns()
        sent = [0, 0]  # frames, bytes

        def drain() -> None:
            if reply is None:
                return
            while (got := reply.recv_batch(0)) is not None:
                now = time.monotonic_ns()
                self.replies += len(got[0])
                if capture is not None:
                    for fr in got[0]:
                        capture.write(fr, timestamp_ns=now + epoch)

        def emit(first: int, count: int) -> None:
            batch = [frames[(first + i) % nf] for i in range(count)]
            tx.send_batch(batch)
            sent[0] += count
            sent[1] += sum(map(len, batch))
            if capture is not None:
                now = time.monotonic_ns() + epoch
                for f in batch:
                    capture.write(f, timestamp_ns=now)
            drain()

        pstats: PacerStats | None = None
        target: float | None = None
        t0 = time.monotonic_ns()
        if cfg.timing == "max":
            i = 0
            while i < total and not (stop is not None and stop()):
                n = min(cfg.batch, total - i)
                emit(i, n)
                i += n
        else:
            if cfg.timing == "capture":
                pacer = Pacer(self.gaps(), batch=cfg.batch)
            else:
                rate = cfg.rate
                assert isinstance(rate, Rate)
                mean = sum(map(len, frames)) / nf
                pacer = Pacer(Constant(rate.pps(mean)), batch=cfg.batch)

            def send(b: Batch) -> None:
                emit(b.first, b.count)

            pacer.run(send, frames=total)
            pstats = pacer.stats()
            target = pstats.target_pps
        t1 = time.monotonic_ns()
        if reply is not None:
            end = time.monotonic() + 0.05
            while time.monotonic() < end:
                drain()
                time.sleep(0.005)
        elapsed = max(t1 - t0, 1) / 1e9
        ratio = pstats.ratio if pstats is not None and pstats.frames else None
        warn = ratio is not None and (ratio < RATE_TOLERANCE or bool(pstats and pstats.behind))
        return GenStats(
            frames=sent[0], bytes=sent[1], elapsed_s=elapsed, achieved_pps=sent[0] / elapsed,
            wire_bps=(sent[1] + WIRE_OVERHEAD * sent[0]) * 8 / elapsed, target_pps=target,
            ratio=ratio, rate_warning=warn, impairments={}, scheduled=sent[0],
            replies=self.replies, loops=cfg.loop, pacer=pstats,
        )  # fmt: skip
