"""Tests for nicemu.trafgen.dist: sizes, arrival processes, rate parsing."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from nicemu.trafgen.dist import (
    MAX_FRAME,
    MIN_FRAME,
    Bimodal,
    Constant,
    Custom,
    FixedSize,
    Imix,
    OnOff,
    Poisson,
    Rate,
    make_rng,
    parse_rate,
    parse_size_spec,
    wire_bits,
)

N = 200_000


def _within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """Binomial count within `sigmas` standard deviations of n*p."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


# -- sizes -----------------------------------------------------------------------


def test_imix_sizes_and_ratio() -> None:
    s = Imix(seed=1).sample(N)
    assert s.dtype == np.int64 and len(s) == N
    assert set(np.unique(s).tolist()) == {60, 590, 1514}  # 64/594/1518 with FCS
    for size, w in ((60, 7), (590, 4), (1514, 1)):
        assert _within(int((s == size).sum()), N, w / 12)
    assert Imix().mean == pytest.approx((7 * 60 + 4 * 590 + 1514) / 12)
    assert abs(s.mean() - Imix().mean) < 5


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_bimodal_ratio(ratio: float) -> None:
    s = Bimodal(ratio=ratio, seed=3).sample(N)
    assert set(np.unique(s).tolist()) == {60, 1514}
    assert _within(int((s == 60).sum()), N, ratio)


def test_bimodal_extremes_and_custom_sizes() -> None:
    assert set(Bimodal(ratio=1.0, seed=1).sample(1000).tolist()) == {60}
    assert set(Bimodal(ratio=0.0, seed=1).sample(1000).tolist()) == {1514}
    b = Bimodal(small=66, large=9014, ratio=0.25, seed=2)
    s = b.sample(N)
    assert _within(int((s == 66).sum()), N, 0.25)
    assert b.mean == pytest.approx(0.25 * 66 + 0.75 * 9014)


def test_fixed_and_custom() -> None:
    assert FixedSize(60).sample(5).tolist() == [60] * 5
    assert FixedSize(60).mean == 60
    c = Custom([(100, 1), (200, 3)], seed=5)
    s = c.sample(N)
    assert _within(int((s == 100).sum()), N, 0.25)
    assert c.mean == 175
    assert len(c.sample(0)) == 0


@pytest.mark.parametrize(
    "make",
    [lambda s: Imix(seed=s), lambda s: Bimodal(seed=s), lambda s: Custom([(60, 1), (61, 1)], seed=s)],
)
def test_size_determinism(make) -> None:  # type: ignore[no-untyped-def]
    a, b, c = make(42), make(42), make(43)
    sa = np.concatenate([a.sample(100), a.sample(900)])
    sb = b.sample(1000)
    assert np.array_equal(sa, sb)  # same seed, same stream, however it is chunked
    assert not np.array_equal(sb, c.sample(1000))


def test_seed_forms() -> None:
    g = np.random.default_rng(9)
    assert make_rng(g) is g
    a = Imix(seed=random.Random(5)).sample(100)
    b = Imix(seed=random.Random(5)).sample(100)
    assert np.array_equal(a, b)
    with pytest.raises(TypeError):
        make_rng("seed")  # type: ignore[arg-type]


def test_size_validation() -> None:
    with pytest.raises(ValueError, match=f"{MIN_FRAME}..{MAX_FRAME}"):
        FixedSize(59)
    with pytest.raises(ValueError, match="out of range"):
        FixedSize(MAX_FRAME + 1)
    with pytest.raises(ValueError, match="0..1"):
        Bimodal(ratio=1.5)
    with pytest.raises(ValueError, match="weights"):
        Custom([(60, 0), (100, 0)])
    with pytest.raises(ValueError, match="at least one"):
        Custom([])


def test_parse_size_spec() -> None:
    f = parse_size_spec("64")
    assert isinstance(f, FixedSize) and f.size == 60 and f.spec == "64"
    assert parse_size_spec("1518").sample(3).tolist() == [1514] * 3
    assert isinstance(parse_size_spec(" IMIX "), Imix)
    b = parse_size_spec("bimodal")
    assert isinstance(b, Bimodal) and b.ratio == 0.5
    b = parse_size_spec("bimodal:0.3")
    assert isinstance(b, Bimodal) and b.ratio == 0.3 and b.spec == "bimodal:0.3"
    c = parse_size_spec("64:7,594:4,1518:1")
    assert isinstance(c, Custom)
    assert c.sizes == (60, 590, 1514) and c.spec == "64:7,594:4,1518:1"
    assert c.mean == pytest.approx(Imix().mean)
    # same seed: a custom IMIX draws exactly what Imix draws
    assert np.array_equal(parse_size_spec("64:7,594:4,1518:1", seed=1).sample(500),
                          Imix(seed=1).sample(500))


@pytest.mark.parametrize(
    "spec", ["", "63", "9217", "abc", "64:x", "64:-1", "64:0,128:0", "bimodal:2", "bimodal:x",
             "64:1:2", "64,,128", "1e3"],
)
def test_parse_size_spec_errors(spec: str) -> None:
    with pytest.raises(ValueError, match="valid forms") as info:
        parse_size_spec(spec)
    assert "imix" in str(info.value) and "bimodal" in str(info.value)


# -- arrivals ----------------------------------------------------------------------


def test_constant_exact_schedule() -> None:
    c = Constant(3)
    g = np.concatenate([c.gaps(2), c.gaps(1), c.gaps(3)])
    assert np.cumsum(g).tolist() == [(k * 10**9) // 3 for k in range(1, 7)]
    c = Constant(1_000_000)
    assert set(c.gaps(10_000).tolist()) == {1000}
    # no drift over many chunks
    c = Constant(7919)
    total = sum(int(c.gaps(1000).sum()) for _ in range(100))
    assert total == (100_000 * 10**9) // 7919


def test_poisson_mean_and_cv() -> None:
    p = Poisson(100_000, seed=11)
    g = np.concatenate([p.gaps(50_000) for _ in range(4)])
    assert g.dtype == np.int64 and (g >= 0).all()
    mean = g.mean()
    cv = g.std() / mean
    # mean 10_000 ns; standard error 10_000/sqrt(2e5) = 22 ns
    assert abs(mean - 10_000) < 150
    assert abs(cv - 1.0) < 0.02  # exponential: CV 1


def test_onoff_duty_cycle_fixed() -> None:
    o = OnOff(100_000, on_s=0.001, off_s=0.003)
    g = np.concatenate([o.gaps(37) for _ in range(2000)])
    t = np.cumsum(g)
    assert o.duty_cycle == 0.25
    assert len(g) / t[-1] * 1e9 == pytest.approx(25_000, rel=0.01)
    # Bursts: 100 frames 10 us apart, then a 3 ms + 10 us gap.
    assert set(np.unique(g).tolist()) == {10_000, 3_010_000}
    assert g[:99].tolist() == [10_000] * 99 and g[100] == 3_010_000
    # the fraction of time spent on: frames*period over elapsed
    busy = (g == 10_000).sum() * 10_000
    assert busy / t[-1] == pytest.approx(0.25, rel=0.02)


def test_onoff_random_durations() -> None:
    o = OnOff(1_000_000, on_s=0.0005, off_s=0.0005, random_durations=True, seed=4)
    g = o.gaps(400_000)
    rate = len(g) / g.sum() * 1e9
    # 200 s of ... no: 0.8 s of traffic, ~800 on/off cycles: rate within 10 %
    assert rate == pytest.approx(o.mean_rate_pps, rel=0.1)
    assert (g >= 1000).all()
    assert (g > 1000).sum() > 100  # many off periods


@pytest.mark.parametrize(
    "make",
    [
        lambda s: Poisson(50_000, seed=s),
        lambda s: OnOff(50_000, 0.0001, 0.0002, random_durations=True, seed=s),
    ],
)
def test_arrival_determinism(make) -> None:  # type: ignore[no-untyped-def]
    a, b, c = make(1), make(1), make(2)
    ga = np.concatenate([a.gaps(10), a.gaps(990)])
    gb = b.gaps(1000)
    # chunked or not, the arrival times agree within the ns rounding
    assert np.abs(np.cumsum(ga) - np.cumsum(gb)).max() <= 1
    assert np.array_equal(make(1).gaps(1000), make(1).gaps(1000))
    assert not np.array_equal(gb, c.gaps(1000))


def test_arrival_validation() -> None:
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError, match="rate"):
            Constant(bad)
    with pytest.raises(ValueError, match="on_s"):
        OnOff(1000, 0, 1)
    with pytest.raises(ValueError, match="off_s"):
        OnOff(1000, 1, -1)
    assert len(Poisson(10, seed=1).gaps(0)) == 0


# -- rates --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100k", Rate(100_000, "pps")),
        ("1M", Rate(1_000_000, "pps")),
        ("2.5Mpps", Rate(2_500_000, "pps")),
        ("1000", Rate(1000, "pps")),
        ("10Mbps", Rate(10_000_000, "bps")),
        ("1Gbit/s", Rate(1e9, "bps")),
        ("100 kb/s", Rate(100_000, "bps")),
        ("10gbps", Rate(1e10, "bps")),
    ],
)
def test_parse_rate(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


def test_parse_rate_max_and_conversion() -> None:
    m = parse_rate("max")
    assert m.is_max and m.value == math.inf
    # 64-byte frames (60 here) at 10 Gbit/s: 14.88 Mpps; wire bits = (60+4+8+12)*8
    assert wire_bits(60) == 672
    assert parse_rate("10Gbps").pps(60) == pytest.approx(14_880_952.38, rel=1e-9)
    assert parse_rate("1Gbit/s").pps(1514) == pytest.approx(81_274.38, rel=1e-6)
    assert parse_rate("100k").pps() == 100_000
    assert parse_rate("100k").bps(60) == 100_000 * 672
    with pytest.raises(ValueError, match="mean frame size"):
        parse_rate("1Gbps").pps()


@pytest.mark.parametrize("text", ["", "fast", "10 Mbps/s", "-5k", "0", "10MBps", "1T", "k"])
def test_parse_rate_errors(text: str) -> None:
    with pytest.raises(ValueError, match="valid forms"):
        parse_rate(text)
