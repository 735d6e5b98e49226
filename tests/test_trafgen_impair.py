"""Tests for nicemu.trafgen.impair: rates within statistical bounds, effects, determinism."""

from __future__ import annotations

import math

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from nicemu.trafgen.generator import Generator, GeneratorConfig
from nicemu.trafgen.impair import IMPAIRMENTS, ImpairConfig, Impairer


def _frames(n: int) -> list[bytes]:
    return Generator(GeneratorConfig(seed=3, flows=_fs())).frames(n, now_ns=1)


def _fs():  # type: ignore[no-untyped-def]
    from nicemu.trafgen.flows import FlowSpec

    return FlowSpec(count=4)


def _within(k: int, n: int, p: float) -> bool:
    """k successes of n trials at p, within 5 standard deviations."""
    sd = math.sqrt(n * p * (1 - p))
    return abs(k - n * p) <= 5 * sd + 1


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="0..1"):
        ImpairConfig(loss=1.5)
    with pytest.raises(ValueError, match="one of"):
        ImpairConfig(badsum_target="tcp")
    assert not ImpairConfig().active and ImpairConfig(dup=0.1).active


def test_rates_within_bounds() -> None:
    n = 20_000
    cfg = ImpairConfig(reorder=0.02, loss=0.03, dup=0.04, badsum=0.05, truncate=0.01)
    imp = Impairer(cfg, seed=11)
    frames = _frames(n)
    out = imp.apply(frames) + imp.flush()
    for kind in IMPAIRMENTS:
        p = getattr(cfg, kind)
        survivors = n - imp.counts["loss"]
        trials = n if kind == "loss" else survivors
        assert _within(imp.counts[kind], trials, p), (kind, imp.counts[kind])
    assert len(out) == n - imp.counts["loss"] + imp.counts["dup"]


def test_effects() -> None:
    frames = _frames(200)
    bad = Impairer(ImpairConfig(badsum=1.0), seed=1).apply(frames)
    for f in bad:
        p = Ether(f)
        c = p[UDP].chksum
        del p[UDP].chksum
        assert Ether(bytes(p))[UDP].chksum != c and c != 0
    badip = Impairer(ImpairConfig(badsum=1.0, badsum_target="ip"), seed=1).apply(frames)
    for f in badip:
        p = Ether(f)
        c = p[IP].chksum
        del p[IP].chksum
        assert Ether(bytes(p))[IP].chksum != c
    cut = Impairer(ImpairConfig(truncate=1.0), seed=1).apply(frames)
    assert all(14 <= len(c) < len(f) for c, f in zip(cut, frames))
    dup = Impairer(ImpairConfig(dup=1.0), seed=1).apply(frames[:3])
    assert dup == [frames[0], frames[0], frames[1], frames[1], frames[2], frames[2]]
    assert Impairer(ImpairConfig(loss=1.0), seed=1).apply(frames) == []


def test_reorder_by_gap() -> None:
    frames = [bytes([i]) * 60 for i in range(10)]
    imp = Impairer(ImpairConfig(reorder=1e-9, reorder_gap=2), seed=0)
    imp.config = ImpairConfig(reorder=1.0, reorder_gap=2)
    first = imp.apply(frames[:1])  # held
    assert first == [] and imp.held == 1
    imp.config = ImpairConfig(reorder_gap=2)
    out = imp.apply(frames[1:4]) + imp.flush()
    assert out == [frames[1], frames[2], frames[0], frames[3]]


def test_deterministic_and_batch_invariant() -> None:
    cfg = ImpairConfig(reorder=0.1, loss=0.1, dup=0.1, badsum=0.1, truncate=0.1)
    frames = _frames(1000)
    a = Impairer(cfg, seed=5)
    whole = a.apply(frames) + a.flush()
    b = Impairer(cfg, seed=5)
    parts: list[bytes] = []
    for i in range(0, 1000, 37):
        parts += b.apply(frames[i : i + 37])
    parts += b.flush()
    assert whole == parts and a.counts == b.counts
    c = Impairer(cfg, seed=6)
    assert c.apply(frames) + c.flush() != whole
