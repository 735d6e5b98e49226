"""Impairments: reordering, loss, duplication, bad checksums and truncation at set rates.

A receive path is only tested when it sees what real networks deliver:
segments out of order, missing, twice, damaged or cut short.  An
:class:`Impairer` sits between the generator and the wire and damages a
stream of frames at the rates of an :class:`ImpairConfig`, deterministically
given its seed, and counts every frame it touched per kind.

Per frame, independently, with the configured probabilities, in this order:

1. ``loss``: the frame is dropped (and nothing else happens to it);
2. ``badsum``: one byte of a checksum is inverted (XOR 0xFF): the L4 (TCP/UDP)
   checksum, or the IPv4 header checksum with ``badsum_target='ip'``, or
   either at random with ``'any'`` (IPv6 has no header checksum: L4 then).  A
   UDP checksum is never turned into 0 (which would mean "no checksum");
3. ``truncate``: the frame is cut to a length uniform in
   ``truncate_min .. len-1`` (default from 14: still an Ethernet header);
4. ``dup``: the frame is sent twice in a row;
5. ``reorder``: the frame is held back and sent after ``reorder_gap`` later
   frames (default 3); :meth:`Impairer.flush` releases what is still held.

Randomness: 8 uniforms per input frame, drawn as one ``(n, 8)`` block per
call, so the outcome depends on the seed and the frame sequence only, never
on how the stream is cut into batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from dispatch.packet.errors import BytesLike
from nicemu.trafgen.dist import SeedLike, make_rng
from nicemu.trafgen.flows import l4_offsets

__all__ = ["IMPAIRMENTS", "ImpairConfig", "Impairer", "checksum_offset", "corrupt_checksum"]

#: Impairment kinds, as counted and as named on the CLI.
IMPAIRMENTS: Final = ("reorder", "loss", "dup", "badsum", "truncate")
_TARGETS: Final = ("l4", "ip", "any")


@dataclass(frozen=True, slots=True)
class ImpairConfig:
    """Rates (probabilities per frame, 0..1) and parameters of the impairments."""

    reorder: float = 0.0
    loss: float = 0.0
    dup: float = 0.0
    badsum: float = 0.0
    truncate: float = 0.0
    reorder_gap: int = 3
    badsum_target: str = "l4"
    truncate_min: int = 14

    def __post_init__(self) -> None:
        for name in IMPAIRMENTS:
            r = getattr(self, name)
            if not (isinstance(r, int | float) and 0.0 <= r <= 1.0):
                raise ValueError(f"{name} rate must be a probability in 0..1, got {r!r}")
        if self.reorder_gap < 1:
            raise ValueError(f"reorder_gap must be >= 1, got {self.reorder_gap}")
        if self.badsum_target not in _TARGETS:
            raise ValueError(
                f"badsum_target {self.badsum_target!r} unknown: one of {', '.join(_TARGETS)}"
            )
        if self.truncate_min < 1:
            raise ValueError(f"truncate_min must be >= 1, got {self.truncate_min}")

    @property
    def active(self) -> bool:
        return any(getattr(self, n) > 0 for n in IMPAIRMENTS)


def checksum_offset(frame: BytesLike, *, target: str = "l4") -> int | None:
    """Offset of the TCP/UDP checksum (``'l4'``) or IPv4 header checksum (``'ip'``)."""
    loc = l4_offsets(frame)
    if loc is None:
        return None
    l3, version, proto, l4 = loc
    if target == "ip":
        return l3 + 10 if version == 4 else None
    if proto == 6:
        off = l4 + 16
    elif proto == 17:
        off = l4 + 6
    else:
        return None
    return off if off + 2 <= len(frame) else None


def corrupt_checksum(frame: bytearray, off: int, which: int) -> None:
    """Invert byte ``which`` (0/1) of the 16-bit checksum at ``off``; never leaves
    a UDP checksum at 0 (no checksum) -- then the other byte is inverted too."""
    frame[off + which] ^= 0xFF
    if frame[off] == 0 and frame[off + 1] == 0:
        frame[off + 1 - which] ^= 0xFF


@dataclass(slots=True)
class _Held:
    frame: bytes
    left: int


@dataclass(slots=True)
class Impairer:
    """Applies an :class:`ImpairConfig` to successive lists of frames."""

    config: ImpairConfig
    seed: SeedLike = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(IMPAIRMENTS, 0))
    _rng: np.random.Generator = field(init=False)
    _held: list[_Held] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self._rng = make_rng(self.seed)

    @property
    def held(self) -> int:
        """Frames currently held back for reordering."""
        return len(self._held)

    def _emit(self, out: list[bytes], frame: bytes) -> None:
        out.append(frame)
        if self._held:
            ready: list[bytes] = []
            keep: list[_Held] = []
            for h in self._held:
                h.left -= 1
                if h.left <= 0:
                    ready.append(h.frame)
                else:
                    keep.append(h)
            self._held = keep
            out.extend(ready)

    def apply(self, frames: Sequence[BytesLike]) -> list[bytes]:
        """The frames to send instead of ``frames`` (some may come from earlier calls)."""
        cfg = self.config
        n = len(frames)
        if n == 0:
            return []
        rows = self._rng.random((n, 8)).tolist()
        out: list[bytes] = []
        counts = self.counts
        for i in range(n):
            row = rows[i]
            if row[0] < cfg.loss:
                counts["loss"] += 1
                continue
            f: bytes | bytearray = bytes(frames[i])
            if row[1] < cfg.badsum:
                target = cfg.badsum_target
                if target == "any":
                    target = "ip" if row[5] < 0.5 else "l4"
                off = checksum_offset(f, target=target)
                if off is None and target == "ip":
                    off = checksum_offset(f, target="l4")
                if off is not None:
                    b = bytearray(f)
                    corrupt_checksum(b, off, int(row[6] * 2) & 1)
                    f = b
                    counts["badsum"] += 1
            if row[2] < cfg.truncate and len(f) > cfg.truncate_min:
                lo = cfg.truncate_min
                cut = lo + int(row[7] * (len(f) - lo))  # lo .. len-1
                f = f[: min(cut, len(f) - 1)]
                counts["truncate"] += 1
            fb = bytes(f)
            copies = 1
            if row[3] < cfg.dup:
                counts["dup"] += 1
                copies = 2
            reorder = row[4] < cfg.reorder
            for _ in range(copies):
                if reorder:
                    self._held.append(_Held(fb, cfg.reorder_gap))
                    reorder = False
                    counts["reorder"] += 1
                else:
                    self._emit(out, fb)
        return out

    def flush(self) -> list[bytes]:
        """Release every frame still held back for reordering, in order."""
        out = [h.frame for h in self._held]
        self._held = []
        return out
