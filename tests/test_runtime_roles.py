"""Pieces of the role processes that are plain functions (dispatch.runtime.roles);
the roles themselves are exercised as processes by test_runtime_run.py."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.runtime.result import HIST_MAX_NS, new_histogram
from dispatch.runtime.roles import record_durations


def _three_digits(v: int) -> int:
    """v rounded down to 3 significant digits, in integers only (the reference)."""
    q = 1
    while v // q >= 1000:
        q *= 10
    return v // q * q


durations = st.lists(st.one_of(st.integers(1, 10**12),
                               st.sampled_from([10**k for k in range(13)]),
                               st.sampled_from([10**k - 1 for k in range(1, 13)])),
                     max_size=300)


@given(durations)
@settings(max_examples=200, deadline=None)
def test_durations_are_recorded_at_three_significant_digits(ds):
    h = new_histogram()
    record_durations(h, np.array(ds, dtype=np.int64))
    ref = new_histogram()
    for v, c in Counter(_three_digits(min(d, HIST_MAX_NS)) for d in ds).items():
        ref.record_value(v, c)
    assert h.get_total_count() == len(ds)
    for p in (0, 1, 25, 50, 75, 90, 99, 99.9, 100):
        assert h.get_value_at_percentile(p) == ref.get_value_at_percentile(p)
    assert h.get_max_value() == ref.get_max_value()
    assert h.get_min_value() == ref.get_min_value()


def test_a_duration_beyond_the_range_is_counted_at_the_top():
    h = new_histogram()
    record_durations(h, np.array([HIST_MAX_NS * 3, 10], dtype=np.int64))
    assert h.get_total_count() == 2
    assert h.get_max_value() >= HIST_MAX_NS


def test_recording_adds_to_what_is_there():
    h = new_histogram()
    record_durations(h, np.array([5, 1234, 1234], dtype=np.int64))
    record_durations(h, np.array([], dtype=np.int64))
    record_durations(h, np.array([1239, 7], dtype=np.int64))
    assert h.get_total_count() == 5
    assert h.get_count_at_value(1230) == 3
    assert h.get_min_value() == 5
