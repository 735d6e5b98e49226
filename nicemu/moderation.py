"""Interrupt moderation per rx queue, sans-IO: when does the NIC interrupt its ithread?

An interrupt per packet would drown a host (receive livelock); an interrupt
per N packets would strand the last few of a burst.  NICs therefore
moderate: interrupt after ``rx_frames`` packets *or* ``rx_usecs`` after the
first packet not yet signalled, whichever comes first (``ethtool -C
rx-frames/rx-usecs``; Intel's ITR).  Once raised, the interrupt stays masked
until the ithread re-arms it (MSI-X auto-mask): while masked nothing is
raised, however much arrives.  At re-arm, if packets still wait in the ring,
an interrupt follows at once, which closes the race between the ithread's
last look at the ring and its re-arm.  A polling driver (NAPI) simply keeps
the queue masked while it polls and re-arms only when the ring is empty.

This class keeps that logic with no I/O and no clock: time comes in as
``now_ns``; the caller (the NIC) delivers the interrupts it returns and
learns of re-arms from the shared control block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["ModerationConfig", "Moderation", "REASONS"]

#: Why an interrupt was raised (counter names).
REASONS: Final = ("frames", "timer", "rearm")


@dataclass(frozen=True, slots=True)
class ModerationConfig:
    """``rx_frames``: interrupt once this many packets are unsignalled (>= 1; 1 means
    every packet); ``rx_usecs``: or this long after the first unsignalled one (0:
    at once, i.e. no time-based holding)."""

    rx_frames: int = 32
    rx_usecs: float = 50.0

    def __post_init__(self) -> None:
        if isinstance(self.rx_frames, bool) or not isinstance(self.rx_frames, int) \
                or self.rx_frames < 1:
            raise ValueError(f"rx_frames={self.rx_frames!r} invalid: valid values are "
                             f"integers >= 1")
        if not isinstance(self.rx_usecs, int | float) or not self.rx_usecs >= 0:
            raise ValueError(f"rx_usecs={self.rx_usecs!r} invalid: valid values are "
                             f"numbers >= 0 (microseconds)")


class Moderation:
    """Per-queue moderation state for `nqueues` rx queues.

    The caller reports packets (:meth:`on_packets`), polls the timers
    (:meth:`poll_timers`) by :meth:`next_deadline`, and reports re-arms
    (:meth:`rearm`).  Every method that may raise returns the queues to
    interrupt now; the queue is then masked until re-armed.
    """

    __slots__ = ("config", "nqueues", "_frames", "_usecs_ns", "_count", "_first",
                 "_masked", "_disabled", "raised", "reasons")

    def __init__(self, nqueues: int, config: ModerationConfig | None = None) -> None:
        if isinstance(nqueues, bool) or not isinstance(nqueues, int) or nqueues < 1:
            raise ValueError(f"nqueues={nqueues!r} invalid: valid values are integers >= 1")
        self.config = config = config or ModerationConfig()
        self.nqueues = nqueues
        self._frames = config.rx_frames
        self._usecs_ns = int(round(config.rx_usecs * 1000))
        self._count = [0] * nqueues  # unsignalled packets
        self._first = [0] * nqueues  # arrival of the first unsignalled packet (valid if count)
        self._masked = [False] * nqueues
        self._disabled = [False] * nqueues
        #: interrupts raised per queue
        self.raised = [0] * nqueues
        #: interrupts raised by reason ("frames", "timer", "rearm")
        self.reasons = dict.fromkeys(REASONS, 0)

    def _fire(self, q: int, reason: str) -> None:
        self._count[q] = 0
        self._masked[q] = True
        self.raised[q] += 1
        self.reasons[reason] += 1

    def on_packets(self, q: int, n: int, now_ns: int) -> bool:
        """`n` packets landed in queue `q`'s ring at `now_ns`. True: interrupt `q` now."""
        if n <= 0:
            return False
        c = self._count[q]
        if c == 0:
            self._first[q] = now_ns
        c += n
        self._count[q] = c
        if self._masked[q] or self._disabled[q]:
            return False
        if c >= self._frames or self._usecs_ns == 0:
            self._fire(q, "frames")
            return True
        if now_ns - self._first[q] >= self._usecs_ns:
            self._fire(q, "timer")
            return True
        return False

    def poll_timers(self, now_ns: int) -> list[int]:
        """Queues whose rx_usecs expired (and are armed): interrupt them now."""
        out = []
        us = self._usecs_ns
        for q in range(self.nqueues):
            if self._count[q] and not self._masked[q] and not self._disabled[q] \
                    and now_ns - self._first[q] >= us:
                self._fire(q, "timer")
                out.append(q)
        return out

    def next_deadline(self) -> int | None:
        """Earliest ``now_ns`` at which :meth:`poll_timers` would raise something (None: none
        armed with packets waiting)."""
        best: int | None = None
        us = self._usecs_ns
        for q in range(self.nqueues):
            if self._count[q] and not self._masked[q] and not self._disabled[q]:
                t = self._first[q] + us
                if best is None or t < best:
                    best = t
        return best

    def rearm(self, q: int, now_ns: int, *, backlog: int = 0) -> bool:
        """The ithread re-armed `q`; `backlog` packets still wait in its ring.

        True: interrupt `q` now (packets are pending, so the interrupt follows
        promptly).  With no backlog the queue starts afresh.
        """
        self._masked[q] = False
        if self._disabled[q]:
            return False
        if backlog > 0:
            self._fire(q, "rearm")
            return True
        self._count[q] = 0
        return False

    def set_disabled(self, q: int, disabled: bool, now_ns: int, *, backlog: int = 0) -> bool:
        """Disable (polling) or enable queue `q`'s interrupt; enabling with a backlog while
        not masked raises at once (returns True)."""
        self._disabled[q] = bool(disabled)
        if not disabled and not self._masked[q]:
            if backlog > 0:
                self._fire(q, "rearm")
                return True
            self._count[q] = 0
        return False

    def masked(self, q: int) -> bool:
        """An interrupt is out on `q` and not re-armed yet."""
        return self._masked[q]

    def disabled(self, q: int) -> bool:
        return self._disabled[q]

    def unsignalled(self, q: int) -> int:
        """Packets that arrived on `q` since its last interrupt."""
        return self._count[q]
