"""The contract every protocol stage keeps, and the one runner that executes them.

A stage is a plain function ``fn(ctx, batch) -> Routed``: it takes a batch
of mbuf handles (a list of ints, in arrival order) and returns, for every
packet it does not drop or consume, the name of the stage that must see it
next (``{"ip_input": [h, ...], ...}``). A drop goes through ``ctx.drop``,
which counts it under a Reason declared once per stage module and frees the
chain: nothing is ever discarded silently. A stage never imports zmq, starts
a process or reads the clock: time arrives as ``ctx.now``.

The `Runner` executes a set of stages that live in one process. Handed a
batch for one of them, it runs stage after stage until every packet is
dropped, consumed, or routed to a stage that is not local; those leave as
its result. With every stage local it is the inline reference runner that
each dispatch model is held against; with some stages local it is what a
role process (ithread, netisr worker, user thread) runs between its queues.
That is how "a dispatch model is a placement" stays true in code: there is
one runner, and the placement only decides which stages are local where.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatch.mbuf import MbufPool

# Stage names: each maps one to one onto the string used in placements and reports.
ETHER_INPUT = "ether_input"
IP_INPUT = "ip_input"
IP6_INPUT = "ip6_input"
ICMP_INPUT = "icmp_input"
UDP_INPUT = "udp_input"
TCP_INPUT = "tcp_input"
IP_FORWARD = "ip_forward"
SORECEIVE = "soreceive"  # the user thread's receive and copyout
SOSEND = "sosend"  # the user thread's send and copyin
TCP_OUTPUT = "tcp_output"
UDP_OUTPUT = "udp_output"
IP_OUTPUT = "ip_output"
IP6_OUTPUT = "ip6_output"
ETHER_OUTPUT = "ether_output"
IF_TRANSMIT = "if_transmit"  # the driver's transmit ring: leaves the host's stack

INPUT_STAGES = (ETHER_INPUT, IP_INPUT, IP6_INPUT, ICMP_INPUT, UDP_INPUT, TCP_INPUT, IP_FORWARD,
                SORECEIVE)
OUTPUT_STAGES = (SOSEND, TCP_OUTPUT, UDP_OUTPUT, IP_OUTPUT, IP6_OUTPUT, ETHER_OUTPUT)

Routed = dict[str, list[int]]
StageFn = Callable[["Ctx", list[int]], Routed]
#: a batch as a role hands it over: a list of handles, or a 1-D integer array of them
#: (as decoded off a message or popped off a ring); stages registered with
#: ``arrays=True`` and fused paths take either, the others get a list
Batch = Any


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a packet was dropped: declared once, counted every time."""

    stage: str  # the stage that drops, e.g. "ip_input"
    name: str  # a short machine name, e.g. "badsum"
    stat: str  # the FreeBSD statistic it feeds, e.g. "ips_badsum"
    text: str  # the netstat -s wording, e.g. "bad header checksums"

    @property
    def key(self) -> str:
        return f"{self.stage}.{self.name}"


REASONS: dict[str, Reason] = {}


class Reasons:
    """The drop reasons of one stage, by attribute: ``IP_DROPS.badsum``."""

    def __init__(self, stage: str, items: Iterable[tuple[str, str, str]]) -> None:
        self.stage = stage
        self._all: dict[str, Reason] = {}
        for name, stat, text in items:
            r = Reason(stage, name, stat, text)
            if r.key in REASONS and REASONS[r.key] != r:
                raise ValueError(f"drop reason {r.key} declared twice, differently")
            REASONS[r.key] = r
            self._all[name] = r

    def __getattr__(self, name: str) -> Reason:
        try:
            return self._all[name]
        except KeyError:
            raise AttributeError(f"{self.stage} has no drop reason {name!r}; "
                                 f"declared: {sorted(self._all)}") from None

    def __iter__(self) -> Iterator[Reason]:
        return iter(self._all.values())


def declare_reasons(stage: str, *items: tuple[str, str, str]) -> Reasons:
    """Declare a stage's drop reasons as (name, FreeBSD stat, netstat -s text)."""
    return Reasons(stage, items)


class Stats:
    """Process-local counters: per-layer statistics and drops by stage and reason.

    Keys are "layer.stat" (``ip.ips_total``, ``tcp.tcps_rcvpack``). Role
    processes ship `snapshot()` to the controller, which `merge`s them.
    """

    __slots__ = ("counters", "drops")

    def __init__(self) -> None:
        self.counters: defaultdict[str, int] = defaultdict(int)
        self.drops: defaultdict[str, defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int))

    def add(self, key: str, n: int = 1) -> None:
        self.counters[key] += n

    def drop(self, reason: Reason, n: int = 1) -> None:
        self.drops[reason.stage][reason.name] += n

    def total_drops(self) -> int:
        return sum(sum(d.values()) for d in self.drops.values())

    def snapshot(self) -> dict[str, Any]:
        """Plain ints (a stage may have added numpy integers), ready for msgpack."""
        return {"counters": {k: int(v) for k, v in self.counters.items()},
                "drops": {s: {r: int(n) for r, n in d.items()}
                          for s, d in self.drops.items() if d}}

    def merge(self, snap: Mapping[str, Any]) -> None:
        for k, v in snap.get("counters", {}).items():
            self.counters[k] += v
        for s, d in snap.get("drops", {}).items():
            for r, v in d.items():
                self.drops[s][r] += v


@dataclass(frozen=True, slots=True)
class StackConfig:
    """The host's protocol configuration (what sysctl and ifconfig would set)."""

    local_v4: tuple[str, ...] = ("10.0.0.1",)
    local_v6: tuple[str, ...] = ("fd00::1",)
    mac: str = "02:00:00:00:00:02"
    auto_sockets: bool = False  # every address is ours; a new 4-tuple gets a socket
    forwarding: bool = False  # net.inet.ip.forwarding
    icmp_time_exceeded: bool = False  # generate ICMP time-exceeded on TTL expiry
    tcp_mss: int = 1460
    tcp_reass_maxseg: int = 256  # per-connection reassembly queue limit (segments)
    tcp_delack: bool = True  # delayed ACK: every second full-sized segment
    sb_hiwat: int = 2 * 1024 * 1024  # socket receive buffer high-water mark, bytes
    so_snd_hiwat: int = 2 * 1024 * 1024  # send buffer high-water mark, bytes
    digest: bool = False  # keep a running sha256 of each socket's delivered bytes


@dataclass
class Ctx:
    """What a stage may use: the pool, the time, the configuration, the counters.

    `sockets`, `routes` and `neighbors` are the host's tables (shared memory
    in a multi-process run, local in tests); `tx` is where output stages
    leave packets for the driver. `now` is set by the runner per batch.
    """

    pool: MbufPool
    config: StackConfig = field(default_factory=StackConfig)
    stats: Stats = field(default_factory=Stats)
    now: int = 0
    sockets: Any = None
    routes: Any = None
    neighbors: Any = None
    role: str = "inline"  # who runs this context (for timestamps and reports)
    extra: dict[str, Any] = field(default_factory=dict)

    def drop(self, m: int, reason: Reason) -> None:
        """Count a drop under its reason and free the chain."""
        self.stats.drops[reason.stage][reason.name] += 1
        self.pool.freem(m)

    def absorb(self, m: int, stage: str) -> None:
        """The stage took the packet for itself (a SYN, a pure ACK, an echo request):
        not delivered, not dropped. Counted as ``absorbed.<stage>`` and freed, so
        that every run can prove offered = delivered + dropped + absorbed + sent on."""
        self.stats.counters[f"absorbed.{stage}"] += 1
        self.pool.freem(m)

    def drop_many(self, ms: Batch, reason: Reason) -> None:
        if len(ms):
            self.stats.drops[reason.stage][reason.name] += len(ms)
            self.pool.freem_batch(ms)


_REGISTRY: dict[str, StageFn] = {}
_ARRAYS: set[StageFn] = set()  # stage functions that take array batches too


def as_list(batch: Batch) -> list[int]:
    """A batch as a list of handles (a list is returned as is)."""
    return batch if type(batch) is list else batch.tolist()


def _cat(a: Batch, b: Batch) -> list[int]:
    return as_list(a) + as_list(b)


def stage(name: str, *, arrays: bool = False) -> Callable[[StageFn], StageFn]:
    """Register a stage function under its name (one name, one function). With
    `arrays`, the function takes a batch as a list or as an integer array (see
    Batch), so that a batch handed over as an array reaches its compiled path without
    a conversion (about 3 us for 32 handles here); the others are given lists."""

    def deco(fn: StageFn) -> StageFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"stage {name!r} registered twice")
        _REGISTRY[name] = fn
        if arrays:
            _ARRAYS.add(fn)
        return fn

    return deco


def registry() -> dict[str, StageFn]:
    """Every registered stage (importing dispatch.stages registers them all)."""
    return dict(_REGISTRY)


# A fusion runs a chain of consecutive stages over a whole batch in one pass, or
# returns None having changed nothing (the batch is not its common case): then
# the stages run one by one, with the same results. fn(ctx, batch, entry).
FusedFn = Callable[["Ctx", list[int], str], "Routed | None"]
_FUSIONS: list[tuple[tuple[str, ...], FusedFn]] = []
FUSED_MIN = 1  # a fused path pays from one packet on (1 packet: 17 us, stage by stage 31)


def fusion(*chain: str) -> Callable[[FusedFn], FusedFn]:
    """Register a fused fast path for the stage chain (entered at any of its stages
    but the last, when that stage and every later one are local to the runner)."""

    def deco(fn: FusedFn) -> FusedFn:
        if (chain, fn) not in _FUSIONS:
            _FUSIONS.append((chain, fn))
        return fn

    return deco


def _fusions_for(local: Mapping[str, StageFn]) -> dict[str, FusedFn]:
    """entry stage -> fused path, for the chains whose stages (from the entry on) are
    the registered stage functions and all local."""
    out: dict[str, FusedFn] = {}
    for chain, fn in _FUSIONS:
        for k in range(len(chain) - 1):
            tail = chain[k:]
            if all(s in local and local[s] is _REGISTRY.get(s) for s in tail):
                out.setdefault(chain[k], fn)
    return out


class Runner:
    """Runs the stages local to one process; returns what leaves for elsewhere.

    Order is kept: packets move between stages as whole batches, and a
    stage's batch is handled in list order, so per-flow order holds.
    """

    def __init__(self, ctx: Ctx, local: Mapping[str, StageFn], *,
                 clock: Callable[[], int] | None = None, fuse: bool = True) -> None:
        self.ctx = ctx
        self.local = dict(local)
        self.clock = clock
        #: entry stage -> fused fast path over it and the local stages after it
        #: (fuse=False: always stage by stage, as a benchmark's reference)
        self.fused = _fusions_for(self.local) if fuse else {}

    def run(self, entry: str, batch: Batch, now: int) -> Routed:
        """Run `batch` (a list, or an integer array: see Batch) from stage `entry`;
        returns {stage: handles} for non-local stages (a list, or the array itself
        where a batch went through unsplit).

        With a `clock` (a role process gives one; the inline reference does not),
        ctx.now is refreshed before each stage after the first, so timestamps taken
        by later stages show the work of the earlier ones. The stages themselves
        still never read the clock.
        """
        ctx = self.ctx
        ctx.now = now
        clock = self.clock
        out: Routed = {}
        work: list[tuple[str, Batch]] = [(entry, batch)]
        local = self.local
        first = True
        fz = self.fused.get(entry)
        if fz is not None and len(batch) >= FUSED_MIN:
            if clock is not None:  # the fused path stamps the socket append
                ctx.now = clock()
            routed = fz(ctx, batch, entry)
            if routed is not None:
                first = False
                work = [(nxt, hs) for nxt, hs in routed.items() if len(hs)]
        while work:
            name, hs = work.pop(0)
            fn = local.get(name)
            if fn is None:
                cur = out.get(name)
                out[name] = hs if cur is None else _cat(cur, hs)
                continue
            if clock is not None and not first:
                ctx.now = clock()
            first = False
            routed = fn(ctx, hs if fn in _ARRAYS else as_list(hs))
            for nxt, hs2 in routed.items():
                if not len(hs2):
                    continue
                for i, (pending, phs) in enumerate(work):
                    if pending == nxt:  # coalesce into the batch already waiting
                        work[i] = (pending, _cat(phs, hs2))
                        break
                else:
                    work.append((nxt, hs2))
        return out


def inline_runner(ctx: Ctx, stages: Mapping[str, StageFn] | None = None) -> Runner:
    """The reference: every registered stage in this one process."""
    return Runner(ctx, stages if stages is not None else registry())
