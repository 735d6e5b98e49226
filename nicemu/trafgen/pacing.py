"""Release frames in batches at their scheduled times on CLOCK_MONOTONIC.

A traffic generator that sends one frame per wake-up cannot go fast in
Python, and one that sends as fast as it can is not a rate.  The pacer turns
an arrival process (gaps in ns) into a schedule of target times and releases
the frames in batches: it sleeps through long waits (``time.sleep``, which
oversleeps by tens of microseconds on Linux: timer slack) and busy-waits the
last ``spin_ns`` (default 100 us) so that a batch leaves on time.

Rules it keeps:

- No frame is released before its target time.  A batch is the next
  ``batch`` frames, released when the last of them is due, except that the
  first is never held more than ``max_delay_ns`` (default 100 us) past its own
  time, so low rates send small batches instead of waiting for 32 frames.
- When late (the sender took too long), every frame already due is released
  at once, up to ``batch``: the pacer catches up with full batches and the
  long-run rate is kept.  ``max_backlog_ns`` (off by default) bounds the
  catch-up: beyond it the schedule is shifted and the skipped time counted.
- It measures itself: achieved vs scheduled rate, lateness per batch, and
  raises the ``behind`` flag (never prints) while more than ``lag_warn_ns``
  behind; ``fell_behind`` stays set once it has happened.

No I/O other than sleeping; the clock and sleep functions can be injected.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["GapSource", "Batch", "PacerStats", "Pacer", "LAG_BUCKET_EDGES_NS"]

#: Upper edges of the release-lateness histogram in ``PacerStats.lag_buckets``:
#: < 10 us, < 100 us, < 1 ms, < 10 ms, and the last bucket >= 10 ms.
LAG_BUCKET_EDGES_NS: tuple[int, ...] = (10_000, 100_000, 1_000_000, 10_000_000)


@runtime_checkable
class GapSource(Protocol):
    """Anything with ``gaps(n) -> int64 ns array`` (every ArrivalProcess)."""

    def gaps(self, n: int) -> npt.NDArray[np.int64]: ...


@dataclass(frozen=True, slots=True)
class Batch:
    """Frames ``first .. first+count-1`` released at ``released_ns``.

    ``count`` is 0 only when a finite schedule is exhausted (or the frame
    limit reached).  ``deadline_ns`` is when the batch was due; times are
    ``time.monotonic_ns`` values.
    """

    first: int
    count: int
    deadline_ns: int
    released_ns: int

    @property
    def lag_ns(self) -> int:
        """How late the release was (>= 0; tens of us is normal)."""
        return self.released_ns - self.deadline_ns


@dataclass(frozen=True, slots=True)
class PacerStats:
    """What the pacer achieved since ``start``.

    ``target_pps``: frames over the scheduled time of the last released frame
    (what the schedule asked for).  ``achieved_pps``: frames over the real time
    from start to the last release.  ``ratio`` = achieved / target (1.0 is
    perfect; the pacer never runs ahead, so it is at most about 1).
    """

    frames: int
    batches: int
    elapsed_ns: int
    scheduled_ns: int
    target_pps: float
    achieved_pps: float
    ratio: float
    mean_batch: float
    max_lag_ns: int
    mean_lag_ns: float
    late_batches: int
    behind: bool
    fell_behind: bool
    skipped_ns: int
    sleeps: int
    lag_buckets: tuple[int, ...]

    def on_time_fraction(self, within_ns: int = 100_000) -> float:
        """Fraction of batches released less than ``within_ns`` late (a bucket edge)."""
        if within_ns not in LAG_BUCKET_EDGES_NS:
            raise ValueError(f"within_ns must be one of {LAG_BUCKET_EDGES_NS}")
        if not self.batches:
            return 1.0
        k = LAG_BUCKET_EDGES_NS.index(within_ns) + 1
        return sum(self.lag_buckets[:k]) / self.batches


class Pacer:
    """Paces batches of frames to the schedule given by ``source``.

    ``source``: an ArrivalProcess (anything with ``gaps(n)``), a callable
    ``n -> gaps``, or a finite array of gaps (e.g. pcap replay).  Typical use::

        pacer = Pacer(Poisson(100_000, seed=1), batch=32)
        pacer.start()
        while running:
            b = pacer.release()        # waits until due
            send(b.count)              # the sender's work
        print(pacer.stats())

    or ``pacer.run(send, duration_s=1.0)``.
    """

    def __init__(
        self,
        source: GapSource | Callable[[int], npt.ArrayLike] | npt.ArrayLike,
        *,
        batch: int = 32,
        max_delay_ns: int = 100_000,
        spin_ns: int = 100_000,
        lag_warn_ns: int = 1_000_000,
        max_backlog_ns: int | None = None,
        chunk: int = 4096,
        clock: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if max_delay_ns < 0 or spin_ns < 0 or lag_warn_ns < 0:
            raise ValueError("max_delay_ns, spin_ns and lag_warn_ns must be >= 0")
        if max_backlog_ns is not None and max_backlog_ns <= 0:
            raise ValueError(f"max_backlog_ns must be > 0 or None, got {max_backlog_ns}")
        self.batch = batch
        self.max_delay_ns = max_delay_ns
        self.spin_ns = spin_ns
        self.lag_warn_ns = lag_warn_ns
        self.max_backlog_ns = max_backlog_ns
        self._chunk = max(chunk, batch)
        self._clock = clock
        self._sleep = sleep
        self._pull: Callable[[int], npt.ArrayLike] | None = None
        self._finite: npt.NDArray[np.int64] | None = None
        if isinstance(source, GapSource):
            self._pull = source.gaps
        elif callable(source):
            self._pull = source
        else:
            finite = np.asarray(source, dtype=np.int64)
            if finite.ndim != 1:
                raise ValueError("a finite gap schedule must be a 1-d array of ns")
            self._finite = finite
        # Schedule window: target times relative to start, as Python ints.
        self._targets: list[int] = []
        self._pos = 0  # index into _targets of the next frame
        self._base = 0  # global index of _targets[0]
        self._t_last = 0  # scheduled time of the last frame appended
        self._exhausted = False
        self._start: int | None = None
        self._origin = 0  # start before any backlog shift, for elapsed time
        # statistics
        self._frames = 0
        self._batches = 0
        self._last_release = 0
        self._last_sched = 0
        self._lag_sum = 0
        self._lag_max = 0
        self._late = 0
        self._skipped = 0
        self._sleeps = 0
        self._buckets = [0] * (len(LAG_BUCKET_EDGES_NS) + 1)
        self.behind = False
        self.fell_behind = False

    # -- schedule --------------------------------------------------------------
    def _fill(self, need: int) -> None:
        """Make sure at least ``need`` frames are scheduled ahead (if any remain)."""
        while len(self._targets) - self._pos < need and not self._exhausted:
            if self._pos > 4 * self._chunk:  # drop consumed targets now and then
                del self._targets[: self._pos]
                self._base += self._pos
                self._pos = 0
            if self._finite is not None:
                g = self._finite
                self._finite = None
                self._exhausted = True
            else:
                assert self._pull is not None
                g = np.asarray(self._pull(self._chunk), dtype=np.int64)
                if len(g) == 0:
                    self._exhausted = True
                    return
            if len(g) and int(g.min()) < 0:
                raise ValueError("negative gap in the schedule")
            t = np.cumsum(g) + self._t_last
            if len(t):
                self._targets.extend(t.tolist())
                self._t_last = int(t[-1])

    @property
    def started(self) -> bool:
        return self._start is not None

    @property
    def start_ns(self) -> int | None:
        """Monotonic time of frame 0's time origin (None before ``start``)."""
        return self._start

    @property
    def next_index(self) -> int:
        """Global index of the next frame to release."""
        return self._base + self._pos

    def start(self, now_ns: int | None = None) -> None:
        """Set the schedule's time origin (default: now).  Implicit on first use."""
        self._start = self._clock() if now_ns is None else now_ns
        self._origin = self._start
        self._last_release = self._start

    def next_batch_deadline(self, *, max_count: int | None = None) -> int | None:
        """Monotonic ns at which the next batch (of at most ``batch`` or
        ``max_count`` frames) is due; None if the schedule is over."""
        if self._start is None:
            self.start()
        assert self._start is not None
        size = self.batch if max_count is None else max(1, min(self.batch, max_count))
        self._fill(size)
        avail = len(self._targets) - self._pos
        if avail <= 0:
            return None
        first = self._targets[self._pos]
        last = self._targets[self._pos + min(size, avail) - 1]
        return self._start + min(last, first + self.max_delay_ns)

    def wait_until(self, t_ns: int) -> int:
        """Sleep, then spin, until ``clock() >= t_ns``; returns that clock reading."""
        clock = self._clock
        now = clock()
        spin = self.spin_ns
        while now < t_ns:
            rem = t_ns - now
            if rem > spin:
                self._sleep((rem - spin) / 1e9)
                self._sleeps += 1
            else:
                while now < t_ns:
                    now = clock()
                return now
            now = clock()
        return now

    def release(self, *, max_count: int | None = None) -> Batch:
        """Wait until the next batch is due and release it.

        Returns the batch (``count`` 0 when the schedule is over).  If already
        late, releases every frame due now, up to ``batch`` (or ``max_count``).
        """
        deadline_abs = self.next_batch_deadline(max_count=max_count)
        assert self._start is not None
        if deadline_abs is None or (max_count is not None and max_count <= 0):
            now = self._clock()
            return Batch(self.next_index, 0, now if deadline_abs is None else deadline_abs, now)
        now = self.wait_until(deadline_abs)
        lag = now - deadline_abs
        if self.max_backlog_ns is not None and lag > self.max_backlog_ns:
            # Too far behind: shift the schedule rather than burst for ages.
            shift = now - (self._start + self._targets[self._pos])
            self._start += shift
            self._skipped += shift
            deadline_abs += shift
            lag = now - deadline_abs
        limit = self.batch if max_count is None else min(self.batch, max_count)
        due = now - self._start
        # The planned frames are certainly due; late ones may take more.
        end = self._pos + limit
        self._fill(limit)
        hi = min(end, len(self._targets))
        stop = bisect.bisect_right(self._targets, due, self._pos, hi)
        count = max(stop - self._pos, 1)
        first = self.next_index
        self._last_sched = self._targets[self._pos + count - 1]
        self._pos += count
        # bookkeeping
        self._frames += count
        self._batches += 1
        self._last_release = now
        self._lag_sum += lag
        if lag > self._lag_max:
            self._lag_max = lag
        self._buckets[bisect.bisect_right(LAG_BUCKET_EDGES_NS, lag)] += 1
        self.behind = lag > self.lag_warn_ns
        if self.behind:
            self._late += 1
            self.fell_behind = True
        return Batch(first, count, deadline_abs, now)

    def run(
        self,
        send: Callable[[Batch], object],
        *,
        frames: int | None = None,
        duration_s: float | None = None,
    ) -> PacerStats:
        """Release batches to ``send`` until ``frames`` are sent, the scheduled
        time passes ``duration_s``, or the schedule ends; returns ``stats()``."""
        if frames is None and duration_s is None and self._pull is not None:
            raise ValueError("an endless source needs frames= or duration_s=")
        if self._start is None:
            self.start()
        limit_ns = None if duration_s is None else int(duration_s * 1e9)
        while frames is None or self._frames < frames:
            cap = self.batch if frames is None else min(self.batch, frames - self._frames)
            if limit_ns is not None:
                self._fill(cap)
                hi = min(self._pos + cap, len(self._targets))
                cap = bisect.bisect_right(self._targets, limit_ns, self._pos, hi) - self._pos
                if cap <= 0:
                    break
            b = self.release(max_count=cap)
            if b.count == 0:
                break
            send(b)
        return self.stats()

    # -- measurement ---------------------------------------------------------------
    @property
    def target_pps(self) -> float | None:
        """The source's long-run mean rate, when it declares one."""
        src = getattr(self._pull, "__self__", None)
        rate = getattr(src, "mean_rate_pps", None)
        return float(rate) if rate is not None else None

    def stats(self) -> PacerStats:
        elapsed = self._last_release - self._origin if self._start is not None else 0
        sched = self._last_sched
        n = self._frames
        target = n / sched * 1e9 if sched > 0 else 0.0
        achieved = n / elapsed * 1e9 if elapsed > 0 else 0.0
        return PacerStats(
            frames=n,
            batches=self._batches,
            elapsed_ns=elapsed,
            scheduled_ns=sched,
            target_pps=target,
            achieved_pps=achieved,
            ratio=achieved / target if target > 0 else 0.0,
            mean_batch=n / self._batches if self._batches else 0.0,
            max_lag_ns=self._lag_max,
            mean_lag_ns=self._lag_sum / self._batches if self._batches else 0.0,
            late_batches=self._late,
            behind=self.behind,
            fell_behind=self.fell_behind,
            skipped_ns=self._skipped,
            sleeps=self._sleeps,
            lag_buckets=tuple(self._buckets),
        )
