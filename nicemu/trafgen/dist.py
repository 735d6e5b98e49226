"""Seedable frame-size distributions and arrival processes for the traffic generator.

A load test is only comparable if it is repeatable: every generator here draws
from its own numpy ``Generator`` built from a seed (or handed in), so the same
seed gives the same sizes and the same gaps, run after run.

Conventions (stated once, used everywhere):

- **Frame sizes in the Python API exclude the 4-byte FCS**: they are the bytes
  the generator builds and the pcap files hold (Ethernet header + payload,
  60..9212).  Minimum Ethernet frame: 60 here = 64 on the wire with FCS.
- **Size strings (``parse_size_spec``) are RFC 2544 frame sizes, including
  the FCS**, as test equipment quotes them: ``"64"`` means a 60-byte frame
  here; Simple IMIX ``"64:7,594:4,1518:1"`` means 60/590/1514.
- **On-wire bits per frame** = (frame + FCS 4 + preamble/SFD 8 + IFG 12) * 8,
  i.e. (frame + 24) * 8 for a frame as the API counts it.  A 64-byte frame
  (60 here) is 672 bits: 10 Gbit/s is 14.88 Mpps of them.
- Gaps are int64 nanoseconds; ``gaps(n)[0]`` is the time from the start (or
  the previous call's last frame) to the first frame of this call.
"""

from __future__ import annotations

import math
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "FCS_LEN",
    "WIRE_OVERHEAD",
    "MIN_FRAME",
    "MAX_FRAME",
    "SeedLike",
    "make_rng",
    "wire_bits",
    "SizeDist",
    "FixedSize",
    "Imix",
    "Bimodal",
    "Custom",
    "parse_size_spec",
    "ArrivalProcess",
    "Constant",
    "Poisson",
    "OnOff",
    "Rate",
    "parse_rate",
]

FCS_LEN: Final = 4
#: Bytes on the wire per frame beyond the frame as counted here: FCS 4 +
#: preamble and SFD 8 + inter-frame gap 12.
WIRE_OVERHEAD: Final = FCS_LEN + 8 + 12
#: Smallest / largest frame (without FCS): 64 / 9216 bytes on the wire.
MIN_FRAME: Final = 60
MAX_FRAME: Final = 9216 - FCS_LEN

#: What generators accept as a source of randomness.
SeedLike = int | np.random.Generator | random.Random | None


def make_rng(seed: SeedLike = None) -> np.random.Generator:
    """A numpy Generator from an int seed, a Generator (used as is), a
    ``random.Random`` (seeded from 128 of its bits) or None (OS entropy)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, random.Random):
        return np.random.default_rng(seed.getrandbits(128))
    if seed is None or (isinstance(seed, int) and not isinstance(seed, bool)):
        return np.random.default_rng(seed)
    raise TypeError(f"seed must be int, numpy Generator, random.Random or None, not {seed!r}")


def wire_bits(frame_len: float) -> float:
    """On-wire bits for a frame of ``frame_len`` bytes (without FCS)."""
    return (frame_len + WIRE_OVERHEAD) * 8


def _check_frame(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise TypeError(f"frame size must be an int, got {size!r}")
    if not MIN_FRAME <= size <= MAX_FRAME:
        raise ValueError(
            f"frame size {size} out of range: valid are {MIN_FRAME}..{MAX_FRAME} bytes "
            f"without FCS ({MIN_FRAME + FCS_LEN}..{MAX_FRAME + FCS_LEN} on the wire)"
        )
    return int(size)


# -- frame sizes ---------------------------------------------------------------


class SizeDist(ABC):
    """A frame-size distribution: ``sample(n)`` returns n sizes (int64, no FCS)."""

    @abstractmethod
    def sample(self, n: int) -> npt.NDArray[np.int64]: ...

    @property
    @abstractmethod
    def mean(self) -> float:
        """Expected frame size in bytes (without FCS)."""

    @property
    @abstractmethod
    def spec(self) -> str:
        """The size string (``parse_size_spec`` form) that builds this distribution."""

    @property
    def mean_wire_bits(self) -> float:
        """Expected on-wire bits per frame (see module conventions)."""
        return wire_bits(self.mean)


class _Weighted(SizeDist):
    """Discrete distribution over (size, weight) pairs."""

    def __init__(self, pairs: Sequence[tuple[int, float]], seed: SeedLike) -> None:
        if not pairs:
            raise ValueError("need at least one (size, weight) pair")
        sizes = [_check_frame(s) for s, _ in pairs]
        weights = [float(w) for _, w in pairs]
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all 0, got {weights}")
        total = sum(weights)
        self.sizes: tuple[int, ...] = tuple(sizes)
        self.weights: tuple[float, ...] = tuple(weights)
        self.probs: tuple[float, ...] = tuple(w / total for w in weights)
        self._sizes = np.array(sizes, dtype=np.int64)
        self._cdf = np.cumsum(np.array(self.probs))
        self._cdf[-1] = 1.0
        self._rng = make_rng(seed)

    def sample(self, n: int) -> npt.NDArray[np.int64]:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if len(self._sizes) == 1:
            return np.full(n, self._sizes[0], dtype=np.int64)
        idx = np.searchsorted(self._cdf, self._rng.random(n), side="right")
        return self._sizes[np.minimum(idx, len(self._sizes) - 1)]

    @property
    def mean(self) -> float:
        return float(sum(s * p for s, p in zip(self.sizes, self.probs)))

    def _pairs_spec(self) -> str:
        return ",".join(f"{s + FCS_LEN}:{w:g}" for s, w in zip(self.sizes, self.weights))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


class FixedSize(_Weighted):
    """Every frame ``size`` bytes (without FCS; 60 = the 64-byte minimum)."""

    def __init__(self, size: int, *, seed: SeedLike = None) -> None:
        super().__init__([(size, 1.0)], seed)
        self.size = self.sizes[0]

    @property
    def spec(self) -> str:
        return str(self.size + FCS_LEN)


class Imix(_Weighted):
    """Simple IMIX: 64/594/1518-byte frames (with FCS) at 7:4:1, i.e. 60/590/1514
    bytes here; mean 4294/12 = 357.83 bytes without FCS (361.83 with)."""

    SIZES: Final = ((60, 7), (590, 4), (1514, 1))

    def __init__(self, *, seed: SeedLike = None) -> None:
        super().__init__(self.SIZES, seed)

    @property
    def spec(self) -> str:
        return "imix"


class Bimodal(_Weighted):
    """TCP-like mix: ACK-sized ``small`` frames and MSS-sized ``large`` frames.

    ``ratio`` is the fraction of frames that are small (0..1).  Defaults: a
    bare ACK (14 + 20 + 20 = 54 bytes, padded to the 60-byte minimum) and a
    full 1460-byte MSS segment (1514 bytes), half and half.
    """

    def __init__(
        self,
        small: int = MIN_FRAME,
        large: int = 1514,
        ratio: float = 0.5,
        *,
        seed: SeedLike = None,
    ) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(
                f"bimodal ratio (fraction of small frames) must be in 0..1, got {ratio}"
            )
        super().__init__([(small, ratio), (large, 1.0 - ratio)], seed)
        self.small, self.large, self.ratio = _check_frame(small), _check_frame(large), ratio

    @property
    def spec(self) -> str:
        if (self.small, self.large) == (MIN_FRAME, 1514):
            return f"bimodal:{self.ratio:g}"
        return f"{self.small + FCS_LEN}:{self.ratio:g},{self.large + FCS_LEN}:{1 - self.ratio:g}"


class Custom(_Weighted):
    """Any discrete mix: ``Custom([(size, weight), ...])``, sizes without FCS."""

    def __init__(self, pairs: Sequence[tuple[int, float]], *, seed: SeedLike = None) -> None:
        super().__init__(pairs, seed)

    @property
    def spec(self) -> str:
        return self._pairs_spec()


_SIZE_FORMS: Final = (
    "valid forms: a frame size with FCS like '64' or '1518' (64..9216); 'imix'; "
    "'bimodal' or 'bimodal:R' (R = fraction of 64-byte ACK frames vs 1518-byte "
    "data frames, 0..1); or 'SIZE:WEIGHT,...' like '64:7,594:4,1518:1'"
)


def parse_size_spec(spec: str, *, seed: SeedLike = None) -> SizeDist:
    """Build a size distribution from a CLI string (sizes there include the FCS).

    ``"64"`` -> FixedSize(60); ``"imix"`` -> Imix(); ``"bimodal"`` /
    ``"bimodal:0.3"`` -> Bimodal(ratio=...); ``"64:7,594:4,1518:1"`` -> Custom.
    Raises ValueError naming the valid forms.
    """
    s = spec.strip().lower()
    if not s:
        raise ValueError(f"empty frame size spec; {_SIZE_FORMS}")
    if s == "imix":
        return Imix(seed=seed)
    if s == "bimodal" or s.startswith("bimodal:"):
        if s == "bimodal":
            return Bimodal(seed=seed)
        rtxt = s.split(":", 1)[1]
        try:
            ratio = float(rtxt)
        except ValueError:
            raise ValueError(f"bad bimodal ratio {rtxt!r} in {spec!r}; {_SIZE_FORMS}") from None
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"bimodal ratio {ratio} not in 0..1 in {spec!r}; {_SIZE_FORMS}")
        return Bimodal(ratio=ratio, seed=seed)

    def wire_size(txt: str) -> int:
        if not re.fullmatch(r"\d+", txt):
            raise ValueError(f"bad frame size {txt!r} in {spec!r}; {_SIZE_FORMS}")
        size = int(txt)
        if not MIN_FRAME + FCS_LEN <= size <= MAX_FRAME + FCS_LEN:
            raise ValueError(
                f"frame size {size} out of range in {spec!r}: sizes include the FCS and must "
                f"be {MIN_FRAME + FCS_LEN}..{MAX_FRAME + FCS_LEN}; {_SIZE_FORMS}"
            )
        return size - FCS_LEN

    if ":" not in s and "," not in s:
        return FixedSize(wire_size(s), seed=seed)
    pairs: list[tuple[int, float]] = []
    for part in s.split(","):
        if part.count(":") != 1:
            raise ValueError(f"bad entry {part!r} in {spec!r}; {_SIZE_FORMS}")
        stxt, wtxt = part.split(":")
        try:
            weight = float(wtxt)
        except ValueError:
            raise ValueError(f"bad weight {wtxt!r} in {spec!r}; {_SIZE_FORMS}") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight {wtxt!r} must be >= 0 in {spec!r}; {_SIZE_FORMS}")
        pairs.append((wire_size(stxt.strip()), weight))
    if sum(w for _, w in pairs) <= 0:
        raise ValueError(f"weights are all zero in {spec!r}; {_SIZE_FORMS}")
    return Custom(pairs, seed=seed)


# -- arrival processes -----------------------------------------------------------


def _check_rate(rate_pps: float) -> float:
    r = float(rate_pps)
    if not math.isfinite(r) or r <= 0:
        raise ValueError(f"rate must be a finite number of packets/s > 0, got {rate_pps!r}")
    return r


class ArrivalProcess(ABC):
    """Inter-arrival gaps: ``gaps(n)`` returns the next n gaps in ns (int64, >= 0).

    Successive calls continue the same stream; ``rate_pps`` is the long-run
    mean rate.
    """

    rate_pps: float

    @abstractmethod
    def gaps(self, n: int) -> npt.NDArray[np.int64]: ...

    @property
    def mean_gap_ns(self) -> float:
        return 1e9 / self.mean_rate_pps

    @property
    def mean_rate_pps(self) -> float:
        """Long-run mean rate (differs from ``rate_pps`` for OnOff)."""
        return self.rate_pps


class Constant(ArrivalProcess):
    """Evenly spaced frames at ``rate_pps``.

    Gaps are whole ns, with the fraction carried so the schedule never drifts:
    frame k is due at round-down(k * 1e9 / rate) ns.
    """

    def __init__(self, rate_pps: float) -> None:
        self.rate_pps = _check_rate(rate_pps)
        # period = 1e9 / rate exactly, as a fraction num/den of ns
        r = Fraction(self.rate_pps)
        self._num, self._den = 10**9 * r.denominator, r.numerator
        self._period = self._num / self._den
        self._k = 0  # frames scheduled so far
        self._t = 0  # ns of the last scheduled frame (relative to start)

    def gaps(self, n: int) -> npt.NDArray[np.int64]:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        # t_k = floor(k * period), exactly: exact integer/fraction at the batch
        # start, float64 only over one batch's span.
        frac = (self._k * self._num % self._den) / self._den
        j = np.arange(1, n + 1, dtype=np.float64)
        t = self._t + np.floor(j * self._period + frac).astype(np.int64)
        gaps = np.diff(t, prepend=self._t)
        self._k += n
        self._t = (self._k * self._num) // self._den
        return gaps


class Poisson(ArrivalProcess):
    """Poisson arrivals at ``rate_pps``: exponential gaps with mean 1/rate."""

    def __init__(self, rate_pps: float, *, seed: SeedLike = None) -> None:
        self.rate_pps = _check_rate(rate_pps)
        self._rng = make_rng(seed)
        self._scale = 1e9 / self.rate_pps
        self._carry = 0.0

    def gaps(self, n: int) -> npt.NDArray[np.int64]:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        # Keep the exact (float) arrival times and round those, so rounding to
        # whole ns never biases the mean rate.
        t = np.cumsum(self._rng.exponential(self._scale, n)) + self._carry
        ti = np.floor(t).astype(np.int64)
        gaps = np.diff(ti, prepend=0)
        if n:
            self._carry = float(t[-1] - ti[-1])
        return gaps


class OnOff(ArrivalProcess):
    """Bursts: frames at ``rate_pps`` for ``on_s`` seconds, then silence for ``off_s``.

    Mean rate = rate * on / (on + off).  With ``random_durations`` the on and
    off periods are exponential with those means (a Markov-modulated source)
    instead of fixed.  The stream starts at the beginning of an on period.
    """

    def __init__(
        self,
        rate_pps: float,
        on_s: float,
        off_s: float,
        *,
        random_durations: bool = False,
        seed: SeedLike = None,
    ) -> None:
        self.rate_pps = _check_rate(rate_pps)
        if not (math.isfinite(on_s) and on_s > 0):
            raise ValueError(f"on_s must be > 0 seconds, got {on_s!r}")
        if not (math.isfinite(off_s) and off_s >= 0):
            raise ValueError(f"off_s must be >= 0 seconds, got {off_s!r}")
        self.on_s, self.off_s = float(on_s), float(off_s)
        self.random_durations = random_durations
        self._rng = make_rng(seed)
        self._period = 1e9 / self.rate_pps
        # "On-time" u counts only time spent in on periods; frame k (1-based)
        # sits at u = k * period.  Real time = u + total off time before it.
        # Cycles drawn but not yet passed are kept (never re-drawn or dropped),
        # so the stream does not depend on how it is chunked.
        self._k = 0
        self._last_real = 0
        self._ends: list[float] = []  # on-time at which each known on period ends
        self._offs: list[float] = []  # off time accumulated before each on period
        self._next_off = 0.0  # off time before the next cycle to be drawn

    @property
    def mean_rate_pps(self) -> float:
        return self.rate_pps * self.on_s / (self.on_s + self.off_s)

    @property
    def duty_cycle(self) -> float:
        return self.on_s / (self.on_s + self.off_s)

    _BLOCK: Final = 256  # cycles drawn at a time

    def _extend(self) -> None:
        m = self._BLOCK
        if self.random_durations:
            on = self._rng.exponential(self.on_s * 1e9, m)
            off = self._rng.exponential(self.off_s * 1e9, m) if self.off_s else np.zeros(m)
        else:
            on = np.full(m, self.on_s * 1e9)
            off = np.full(m, self.off_s * 1e9)
        last_end = self._ends[-1] if self._ends else 0.0
        self._ends.extend((last_end + np.cumsum(on)).tolist())
        before = self._next_off + np.concatenate(([0.0], np.cumsum(off)))
        self._offs.extend(before[:-1].tolist())
        self._next_off = float(before[-1])

    def gaps(self, n: int) -> npt.NDArray[np.int64]:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        u = np.arange(self._k + 1, self._k + n + 1, dtype=np.float64) * self._period
        while not self._ends or self._ends[-1] < u[-1]:
            self._extend()
        # A frame exactly at an on period's end belongs to that period.
        cyc = np.searchsorted(np.array(self._ends), u, side="left")
        real = np.floor(u + np.array(self._offs)[cyc]).astype(np.int64)
        gaps = np.diff(real, prepend=self._last_real)
        c = int(cyc[-1])
        del self._ends[:c], self._offs[:c]
        self._k += n
        self._last_real = int(real[-1])
        return gaps


# -- rates -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    """A parsed rate: ``unit`` is ``'pps'``, ``'bps'`` (bits/s on the wire) or
    ``'max'`` (as fast as possible; ``value`` is inf)."""

    value: float
    unit: Literal["pps", "bps", "max"]

    @property
    def is_max(self) -> bool:
        return self.unit == "max"

    def pps(self, mean_frame: float | None = None) -> float:
        """Packets/s; a bit/s rate needs the mean frame size (bytes, no FCS).

        pps = bps / ((mean_frame + 24) * 8)  (FCS + preamble/SFD + IFG).
        """
        if self.unit == "pps" or self.unit == "max":
            return self.value
        if mean_frame is None:
            raise ValueError("a bit/s rate needs the mean frame size to convert to packets/s")
        return self.value / wire_bits(mean_frame)

    def bps(self, mean_frame: float) -> float:
        """On-wire bits/s for frames of ``mean_frame`` bytes (no FCS)."""
        if self.unit == "bps" or self.unit == "max":
            return self.value
        return self.value * wire_bits(mean_frame)


_RATE_FORMS: Final = (
    "valid forms: packets/s as NUMBER[k|M|G][pps] (e.g. '1000', '100k', '1.5Mpps'), "
    "bits/s on the wire as NUMBER[k|M|G](bps|bit/s|b/s) (e.g. '10Mbps', '1Gbit/s'), or 'max'"
)
_RATE_RE: Final = re.compile(
    r"^\s*(?P<num>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<mult>[kKmMgG]?)\s*"
    r"(?P<unit>pps|p/s|bps|bit/s|bits/s|b/s|Bps|B/s)?\s*$"
)
_MULT: Final = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_rate(text: str) -> Rate:
    """Parse a rate string: ``'100k'``, ``'1M'``, ``'10Mbps'``, ``'1Gbit/s'``, ``'max'``.

    Multipliers are decimal (k = 1000) and case-insensitive; no unit means
    packets/s.  Raises ValueError naming the valid forms.
    """
    t = text.strip()
    if t.lower() == "max":
        return Rate(math.inf, "max")
    m = _RATE_RE.match(t)
    if m is None:
        raise ValueError(f"bad rate {text!r}; {_RATE_FORMS}")
    unit_txt = m.group("unit") or "pps"
    if unit_txt in ("Bps", "B/s"):
        raise ValueError(f"bad rate {text!r}: bytes/s is ambiguous, give bits/s; {_RATE_FORMS}")
    value = float(m.group("num")) * _MULT[m.group("mult").lower()]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"bad rate {text!r}: must be > 0; {_RATE_FORMS}")
    return Rate(value, "pps" if unit_txt in ("pps", "p/s") else "bps")
