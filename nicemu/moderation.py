"""Interrupt moderation per rx queue, sans-IO: when does the NIC interrupt its ithread?

An interrupt per packet would drown a host (receive livelock); an interrupt
per N packets would strand the last few of a burst.  NICs therefore
moderate, by a packet count (``ethtool -C rx-frames``) and by time
(``rx-usecs``), and hardware does the time part in one of two ways:

- ``itr`` (Intel's Interrupt Throttle Rate, what FreeBSD's em/igb/ix and
  Linux's igb/ixgbe program from rx-usecs): ``rx_usecs`` is the *least
  interval between two interrupts*.  A packet that arrives when the last
  interrupt is at least that long ago is signalled at once; one that comes
  sooner waits for the interval to run out.  A lone request on a quiet link
  pays no delay, and under load the interrupt rate is capped at one per
  interval.
- ``delay`` (an absolute receive delay timer: e1000's RADV, the completion
  queue period of NICs that start it at the first event): the interrupt
  goes ``rx_usecs`` after the first packet not yet signalled, however long
  the link was quiet, so every lone packet waits the whole timer.

Either way ``rx_frames`` unsignalled packets raise at once.  Once raised,
the interrupt stays masked until the ithread re-arms it (MSI-X auto-mask):
while masked nothing is raised, however much arrives.  At re-arm, if
packets still wait in the ring, an interrupt follows (at once under
``delay``; under ``itr`` once the interval since the last one has run out),
which closes the race between the ithread's last look at the ring and its
re-arm.  A polling driver (NAPI) simply keeps the queue masked while it
polls and re-arms only when the ring is empty.

This class keeps that logic with no I/O and no clock: time comes in as
``now_ns``; the caller (the NIC) delivers the interrupts it returns and
learns of re-arms from the shared control block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["ModerationConfig", "Moderation", "REASONS", "MODES"]

#: Why an interrupt was raised (counter names): "timer" is the time condition of
#: either mode (the delay ran out, or the throttle interval had).
REASONS: Final = ("frames", "timer", "rearm")

#: How ``rx_usecs`` is applied (see the module's docstring).
MODES: Final = ("itr", "delay")


@dataclass(frozen=True, slots=True)
class ModerationConfig:
    """``rx_frames``: interrupt once this many packets are unsignalled (>= 1; 1 means
    every packet); ``rx_usecs``: the time condition (0: at once, i.e. no time-based
    holding), which ``mode`` reads as the least interval between interrupts
    (``itr``) or as the delay after the first unsignalled packet (``delay``)."""

    rx_frames: int = 32
    rx_usecs: float = 50.0
    mode: str = "itr"

    def __post_init__(self) -> None:
        if isinstance(self.rx_frames, bool) or not isinstance(self.rx_frames, int) \
                or self.rx_frames < 1:
            raise ValueError(f"rx_frames={self.rx_frames!r} invalid: valid values are "
                             f"integers >= 1")
        if not isinstance(self.rx_usecs, int | float) or not self.rx_usecs >= 0:
            raise ValueError(f"rx_usecs={self.rx_usecs!r} invalid: valid values are "
                             f"numbers >= 0 (microseconds)")
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} invalid: valid values are "
                             f"{', '.join(MODES)}")


class Moderation:
    """Per-queue moderation state for `nqueues` rx queues.

    The caller reports packets (:meth:`on_packets`), polls the timers
    (:meth:`poll_timers`) by :meth:`next_deadline`, and reports re-arms
    (:meth:`rearm`).  Every method that may raise returns the queues to
    interrupt now; the queue is then masked until re-armed.
    """

    __slots__ = ("config", "nqueues", "_frames", "_usecs_ns", "_itr", "_count", "_first",
                 "_last", "_masked", "_disabled", "raised", "reasons")

    def __init__(self, nqueues: int, config: ModerationConfig | None = None) -> None:
        if isinstance(nqueues, bool) or not isinstance(nqueues, int) or nqueues < 1:
            raise ValueError(f"nqueues={nqueues!r} invalid: valid values are integers >= 1")
        self.config = config = config or ModerationConfig()
        self.nqueues = nqueues
        self._frames = config.rx_frames
        self._usecs_ns = int(round(config.rx_usecs * 1000))
        self._itr = config.mode == "itr"
        self._count = [0] * nqueues  # unsignalled packets
        self._first = [0] * nqueues  # arrival of the first unsignalled packet (valid if count)
        # the last interrupt (itr: the interval runs from it); none yet: long ago
        self._last = [-(1 << 62)] * nqueues
        self._masked = [False] * nqueues
        self._disabled = [False] * nqueues
        #: interrupts raised per queue
        self.raised = [0] * nqueues
        #: interrupts raised by reason ("frames", "timer", "rearm")
        self.reasons = dict.fromkeys(REASONS, 0)

    def _fire(self, q: int, reason: str, now_ns: int) -> None:
        self._count[q] = 0
        self._masked[q] = True
        self._last[q] = now_ns
        self.raised[q] += 1
        self.reasons[reason] += 1

    def _due(self, q: int) -> int:
        """When the time condition of queue `q` (with packets unsignalled) is met."""
        return (self._last[q] if self._itr else self._first[q]) + self._usecs_ns

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
            self._fire(q, "frames", now_ns)
            return True
        if now_ns >= self._due(q):
            self._fire(q, "timer", now_ns)
            return True
        return False

    def poll_timers(self, now_ns: int) -> list[int]:
        """Queues whose time condition is met (and are armed): interrupt them now."""
        out = []
        for q in range(self.nqueues):
            if self._count[q] and not self._masked[q] and not self._disabled[q] \
                    and now_ns >= self._due(q):
                self._fire(q, "timer", now_ns)
                out.append(q)
        return out

    def next_deadline(self) -> int | None:
        """Earliest ``now_ns`` at which :meth:`poll_timers` would raise something (None: none
        armed with packets waiting)."""
        best: int | None = None
        for q in range(self.nqueues):
            if self._count[q] and not self._masked[q] and not self._disabled[q]:
                t = self._due(q)
                if best is None or t < best:
                    best = t
        return best

    def _armed_with(self, q: int, now_ns: int, backlog: int) -> bool:
        """Queue `q` is armed again with `backlog` packets in its ring: True if that
        raises now (delay: at once; itr: if the interval since the last interrupt has
        run out, else the packets wait for it as unsignalled ones)."""
        if backlog <= 0:
            self._count[q] = 0
            return False
        if self._itr and now_ns < self._last[q] + self._usecs_ns:
            if self._count[q] < backlog:
                self._count[q] = backlog
            return False
        self._fire(q, "rearm", now_ns)
        return True

    def rearm(self, q: int, now_ns: int, *, backlog: int = 0) -> bool:
        """The ithread re-armed `q`; `backlog` packets still wait in its ring.

        True: interrupt `q` now (packets are pending, so the interrupt follows
        promptly: at once, or under ``itr`` when the interval allows, by
        :meth:`poll_timers`).  With no backlog the queue starts afresh.
        """
        self._masked[q] = False
        if self._disabled[q]:
            return False
        return self._armed_with(q, now_ns, backlog)

    def set_disabled(self, q: int, disabled: bool, now_ns: int, *, backlog: int = 0) -> bool:
        """Disable (polling) or enable queue `q`'s interrupt; enabling with a backlog while
        not masked raises (as a re-arm does: True if now)."""
        self._disabled[q] = bool(disabled)
        if not disabled and not self._masked[q]:
            return self._armed_with(q, now_ns, backlog)
        return False

    def masked(self, q: int) -> bool:
        """An interrupt is out on `q` and not re-armed yet."""
        return self._masked[q]

    def disabled(self, q: int) -> bool:
        return self._disabled[q]

    def unsignalled(self, q: int) -> int:
        """Packets that arrived on `q` since its last interrupt."""
        return self._count[q]
