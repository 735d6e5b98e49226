"""Tests for nicemu.trafgen.pacing: real short runs, and exact ones on a fake clock."""

from __future__ import annotations

import time

import numpy as np
import pytest

from nicemu.trafgen.dist import Constant, Poisson
from nicemu.trafgen.pacing import Batch, Pacer


class FakeClock:
    """A clock that advances only by sleeping, spinning (1 us per read) or working."""

    def __init__(self, oversleep_ns: int = 60_000) -> None:
        self.t = 1_000_000_000
        self.oversleep_ns = oversleep_ns
        self.sleeps: list[float] = []

    def clock(self) -> int:
        self.t += 1000
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += int(s * 1e9) + self.oversleep_ns

    def work(self, ns: int) -> None:
        self.t += ns


def fake_pacer(source, fc: FakeClock, **kw) -> Pacer:  # type: ignore[no-untyped-def]
    return Pacer(source, clock=fc.clock, sleep=fc.sleep, **kw)


# -- real clock: short runs, generous bounds (shared 2-core machines) ------------------


@pytest.mark.parametrize("rate", [10_000, 50_000])
def test_real_run_achieves_rate(rate: int) -> None:
    pacer = Pacer(Constant(rate), batch=32)
    sent: list[int] = []
    t0 = time.monotonic_ns()
    st = pacer.run(lambda b: sent.append(b.count), duration_s=0.3)
    wall = time.monotonic_ns() - t0
    assert st.frames == sum(sent) == int(rate * 0.3)
    assert 0.95 <= st.ratio <= 1.0 + 1e-9
    assert st.achieved_pps == pytest.approx(rate, rel=0.05)
    # the run took the scheduled time, not much less, not much more
    assert 0.29e9 <= wall <= 0.3e9 / 0.95 + 5e6
    assert st.target_pps == pytest.approx(rate, rel=1e-6)


def test_real_run_poisson() -> None:
    pacer = Pacer(Poisson(20_000, seed=3), batch=16)
    st = pacer.run(lambda b: None, frames=5000)
    assert st.frames == 5000
    assert st.ratio >= 0.95
    assert pacer.target_pps == 20_000


# -- fake clock: exact behaviour ---------------------------------------------------------


def test_never_releases_before_target() -> None:
    fc = FakeClock()
    pacer = fake_pacer(Poisson(200_000, seed=1), fc, batch=8)
    pacer.start()
    assert pacer.start_ns is not None
    start = pacer.start_ns
    sched = np.cumsum(Poisson(200_000, seed=1).gaps(10_000))
    for _ in range(500):
        b = pacer.release()
        last_target = start + int(sched[b.first + b.count - 1])
        assert b.released_ns >= last_target
        assert b.released_ns >= b.deadline_ns
        assert 1 <= b.count <= 8


def test_batches_full_at_high_rate_small_at_low_rate() -> None:
    fc = FakeClock()
    hi = fake_pacer(Constant(1_000_000), fc, batch=32)  # 32 frames span 31 us < 100 us
    sizes = [hi.release().count for _ in range(50)]
    assert sizes == [32] * 50
    fc = FakeClock()
    lo = fake_pacer(Constant(10_000), fc, batch=32, max_delay_ns=100_000)  # 100 us gap
    b = lo.release()
    # the first frame is held at most max_delay: the batch holds frames 1 and 2
    assert b.count == 2
    assert b.deadline_ns - lo.start_ns == 200_000  # type: ignore[operator]


def test_sleep_then_spin() -> None:
    fc = FakeClock()
    pacer = fake_pacer(Constant(100), fc, batch=1, spin_ns=100_000)  # 10 ms gaps
    b = pacer.release()
    # one sleep covering all but the spin window, then spinning to the deadline
    assert len(fc.sleeps) == 1 and fc.sleeps[0] == pytest.approx(0.0099, abs=2e-6)
    assert 0 <= b.lag_ns <= 2000


def test_slow_sender_falls_behind_and_catches_up() -> None:
    fc = FakeClock()
    pacer = fake_pacer(Constant(100_000), fc, batch=32, lag_warn_ns=1_000_000)
    # 20 us of work per frame against a 10 us budget: cannot keep up.
    st = pacer.run(lambda b: fc.work(20_000 * b.count), frames=20_000)
    assert st.behind and st.fell_behind and pacer.behind
    assert st.late_batches > 0
    assert st.ratio == pytest.approx(0.5, rel=0.05)
    assert st.mean_batch == pytest.approx(32, rel=0.01)  # catching up with full batches


def test_brief_stall_is_caught_up() -> None:
    fc = FakeClock()
    pacer = fake_pacer(Constant(100_000), fc, batch=32)
    stalled = False

    def send(b: Batch) -> None:
        nonlocal stalled
        fc.work(500 * b.count)
        if b.first > 5000 and not stalled:
            stalled = True
            fc.work(5_000_000)  # a 5 ms hiccup
    st = pacer.run(send, frames=30_000)
    assert st.fell_behind and not st.behind  # it was behind, and is no longer
    assert st.ratio > 0.99


def test_max_backlog_shifts_schedule() -> None:
    fc = FakeClock()
    pacer = fake_pacer(Constant(100_000), fc, batch=32, max_backlog_ns=2_000_000)
    pacer.start()
    pacer.release()
    fc.work(50_000_000)  # 50 ms stall
    b = pacer.release()
    assert b.lag_ns < 2_000_000
    assert pacer.stats().skipped_ns > 40_000_000


def test_finite_schedule_and_frame_limit() -> None:
    fc = FakeClock()
    pacer = fake_pacer([1000] * 10 + [50_000] * 5, fc, batch=4)
    counts: list[int] = []
    st = pacer.run(lambda b: counts.append(b.count))
    assert st.frames == 15 == sum(counts)
    assert pacer.release().count == 0
    assert pacer.next_batch_deadline() is None
    fc = FakeClock()
    pacer = fake_pacer(Constant(1_000_000), fc, batch=32)
    assert pacer.run(lambda b: None, frames=100).frames == 100
    fc = FakeClock()
    pacer = fake_pacer(Constant(1_000_000), fc, batch=32)
    assert pacer.run(lambda b: None, duration_s=0.001).frames == 1000


def test_callable_source_and_validation() -> None:
    fc = FakeClock()
    pacer = fake_pacer(lambda n: np.full(n, 2000, dtype=np.int64), fc, batch=10)
    assert pacer.release().count == 10
    with pytest.raises(ValueError, match="batch"):
        Pacer(Constant(1), batch=0)
    with pytest.raises(ValueError, match="frames= or duration_s="):
        Pacer(Constant(1)).run(lambda b: None)
    with pytest.raises(ValueError, match="negative gap"):
        fake_pacer([5, -1], FakeClock()).release()


def test_lag_histogram() -> None:
    fc = FakeClock()
    pacer = fake_pacer(Constant(100_000), fc, batch=32)
    pacer.start()
    pacer.release()
    fc.work(2_000_000)
    pacer.release()
    st = pacer.stats()
    assert sum(st.lag_buckets) == st.batches == 2
    assert st.lag_buckets[0] == 1 and st.lag_buckets[3] == 1  # on time; 1-10 ms late
    assert st.on_time_fraction() == 0.5 and st.on_time_fraction(10_000_000) == 1.0
    with pytest.raises(ValueError, match="within_ns"):
        st.on_time_fraction(5)
