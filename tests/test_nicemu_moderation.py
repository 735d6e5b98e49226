"""Tests for nicemu.moderation: interrupts by count, by time, masking and re-arm."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nicemu.moderation import Moderation, ModerationConfig

US = 1000


def test_delay_fires_by_count():
    m = Moderation(1, ModerationConfig(rx_frames=4, rx_usecs=100, mode="delay"))
    assert not m.on_packets(0, 3, 0)
    assert m.on_packets(0, 1, 10)
    assert m.masked(0) and m.raised == [1] and m.reasons["frames"] == 1


def test_delay_fires_by_time_and_deadline():
    m = Moderation(2, ModerationConfig(rx_frames=100, rx_usecs=50, mode="delay"))
    assert m.next_deadline() is None
    assert not m.on_packets(1, 1, 1000)
    assert not m.on_packets(1, 1, 20 * US)  # the clock runs from the first unsignalled one
    assert m.next_deadline() == 1000 + 50 * US
    assert m.poll_timers(1000 + 50 * US - 1) == []
    assert m.poll_timers(1000 + 50 * US) == [1]
    assert m.reasons["timer"] == 1 and m.next_deadline() is None


def test_delay_late_arrival_past_the_deadline_fires_on_arrival():
    m = Moderation(1, ModerationConfig(rx_frames=100, rx_usecs=10, mode="delay"))
    m.on_packets(0, 1, 0)
    assert m.on_packets(0, 1, 11 * US)


def test_delay_masked_queue_raises_nothing_until_rearmed_then_at_once_if_backlog():
    m = Moderation(1, ModerationConfig(rx_frames=2, rx_usecs=10, mode="delay"))
    assert m.on_packets(0, 2, 0)
    assert not m.on_packets(0, 50, 1)
    assert m.poll_timers(10**9) == []
    assert m.next_deadline() is None
    assert m.rearm(0, 2 * US, backlog=3)  # packets wait: interrupt follows promptly
    assert m.reasons["rearm"] == 1 and m.masked(0)
    assert not m.rearm(0, 3 * US, backlog=0)  # ring empty: start afresh
    assert not m.masked(0) and m.unsignalled(0) == 0


@pytest.mark.parametrize("mode", ["itr", "delay"])
def test_zero_usecs_means_every_batch(mode):
    m = Moderation(1, ModerationConfig(rx_frames=64, rx_usecs=0, mode=mode))
    assert m.on_packets(0, 1, 0)
    assert m.rearm(0, 1, backlog=2)  # and a re-arm with a backlog at once


def test_itr_lone_packet_on_a_quiet_queue_fires_at_once():
    m = Moderation(1, ModerationConfig(rx_frames=100, rx_usecs=50))
    assert m.config.mode == "itr"  # the default, as FreeBSD's Intel drivers program it
    assert m.on_packets(0, 1, 5 * US)
    assert m.reasons["timer"] == 1 and m.masked(0)
    assert not m.rearm(0, 6 * US, backlog=0)
    # the next one, 200 us after the last interrupt: the interval has run out
    assert m.on_packets(0, 1, 205 * US)


def test_itr_holds_packets_within_the_interval_since_the_last_interrupt():
    m = Moderation(2, ModerationConfig(rx_frames=100, rx_usecs=50))
    assert m.on_packets(1, 1, 1000)
    assert not m.rearm(1, 2000, backlog=0)
    assert not m.on_packets(1, 1, 10 * US)  # 9 us after the interrupt: held
    assert not m.on_packets(1, 2, 30 * US)
    # due when the interval since the interrupt runs out, not 50 us after the first held
    assert m.next_deadline() == 1000 + 50 * US
    assert m.poll_timers(1000 + 50 * US - 1) == []
    assert m.poll_timers(1000 + 50 * US) == [1]
    assert m.reasons["timer"] == 2 and m.next_deadline() is None and m.raised == [0, 2]


def test_itr_frames_still_fire_within_the_interval():
    m = Moderation(1, ModerationConfig(rx_frames=4, rx_usecs=50))
    assert m.on_packets(0, 1, 0)
    assert not m.rearm(0, 1, backlog=0)
    assert not m.on_packets(0, 3, 2 * US)
    assert m.on_packets(0, 1, 3 * US)
    assert m.reasons["frames"] == 1


def test_itr_rearm_with_backlog_waits_for_the_interval():
    m = Moderation(1, ModerationConfig(rx_frames=100, rx_usecs=50))
    assert m.on_packets(0, 1, 0)
    # re-armed 20 us after the interrupt with 3 packets left: they wait for the interval
    assert not m.rearm(0, 20 * US, backlog=3)
    assert not m.masked(0) and m.unsignalled(0) == 3
    assert m.next_deadline() == 50 * US
    assert m.poll_timers(50 * US) == [0]
    # re-armed past the interval with a backlog: at once
    assert m.rearm(0, 120 * US, backlog=1)
    assert m.reasons["rearm"] == 1
    # enabling interrupts again after polling follows the same rule
    m2 = Moderation(1, ModerationConfig(rx_frames=100, rx_usecs=50))
    assert m2.on_packets(0, 1, 0)
    m2.set_disabled(0, True, 1 * US)
    assert not m2.rearm(0, 2 * US, backlog=4)  # disabled: nothing
    assert not m2.set_disabled(0, False, 10 * US, backlog=4)
    assert m2.poll_timers(50 * US) == [0]


@pytest.mark.parametrize("mode", ["itr", "delay"])
def test_disabled_queue_polling_mode(mode):
    m = Moderation(1, ModerationConfig(rx_frames=1, rx_usecs=0, mode=mode))
    m.set_disabled(0, True, 0)
    assert not m.on_packets(0, 5, 0)
    assert m.poll_timers(10**9) == []
    assert not m.rearm(0, 1, backlog=5)
    assert m.set_disabled(0, False, 2, backlog=5)  # enabled with a backlog: raise


@pytest.mark.parametrize("kw, msg", [
    ({"rx_frames": 0}, "rx_frames"), ({"rx_usecs": -1}, "rx_usecs"),
    ({"rx_frames": 1.5}, "rx_frames"), ({"mode": "adaptive"}, "itr, delay"),
])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ModerationConfig(**kw)
    with pytest.raises(ValueError, match="nqueues"):
        Moderation(0)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["itr", "delay"]), st.integers(1, 8), st.integers(0, 30),
       st.lists(st.tuples(st.sampled_from(["pkt", "poll", "rearm"]), st.integers(0, 5),
                          st.integers(0, 20)), max_size=80))
def test_never_raises_while_masked_and_never_strands_packets(mode, frames, usecs, ops):
    m = Moderation(1, ModerationConfig(rx_frames=frames, rx_usecs=usecs, mode=mode))
    now = 0
    backlog = 0  # packets in the ring; the "ithread" drains all before re-arming
    last: int | None = None  # the last interrupt
    for op, n, dt in ops:
        now += dt * US
        was_masked = m.masked(0)
        frames_before = m.reasons["frames"]
        if op == "pkt":
            fired = m.on_packets(0, n, now)
            backlog += n
        elif op == "poll":
            fired = bool(m.poll_timers(now))
        else:
            backlog = 0 if was_masked else backlog
            fired = m.rearm(0, now, backlog=backlog) if was_masked else False
        if was_masked and op != "rearm":
            assert not fired
        if fired:  # itr: two interrupts within the interval only by the packet count
            if mode == "itr" and last is not None and now - last < usecs * US:
                assert m.reasons["frames"] == frames_before + 1
            last = now
    # finally: drain and re-arm; any packets left make a prompt interrupt or a timer
    if m.masked(0):
        m.rearm(0, now, backlog=0)
    if m.unsignalled(0):
        dl = m.next_deadline()
        assert dl is not None and m.poll_timers(dl) == [0]
