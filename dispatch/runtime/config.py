"""A run's configuration: every option, validated before any process starts.

`RunConfig` is the one place a run's knobs live; the CLI, experiment files
and the compose deployment all build one, and the result document records it
whole (`as_dict`), so any run can be repeated. `validate()` raises
`ConfigError` naming the bad value and what is valid.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from dispatch.mbuf import PoolConfig
from dispatch.runtime.netisr import POLICIES, QLIMIT_MAX
from dispatch.runtime.placement import MODELS, ROLES
from nicemu.moderation import MODES as IRQ_MODES

SOURCES = ("internal", "trafgen")
PROTOS = ("udp", "tcp")
WORKLOADS = ("rx", "tx", "rr", "forward")
TX_DISPATCH = ("direct", "deferred")
#: the Linux scheduling policy of the host's and NIC's roles (every thread): "other" is
#: the default time-sharing policy; "batch" (SCHED_BATCH) gives up wakeup preemption,
#: so a role woken by another's handoff waits for the running one's slice instead of
#: preempting it: fewer context switches, more throughput, less latency when cores
#: are all busy (see docs/BENCHMARKS.md)
SCHEDS = ("other", "batch")
TXQ_LIMIT_MAX = 16384


class ConfigError(ValueError):
    """A bad option: the message names it and what is valid."""


def parse_impair(text: str) -> Any:
    """"loss=0.01,reorder=0.02" -> an ImpairConfig (names: reorder, loss, dup,
    badsum, truncate; values are probabilities per frame)."""
    from nicemu.trafgen.impair import IMPAIRMENTS, ImpairConfig

    kw: dict[str, float] = {}
    for part in text.split(","):
        name, eq, val = part.strip().partition("=")
        if not eq or name not in IMPAIRMENTS:
            raise ValueError(f"give NAME=RATE[,NAME=RATE...] with NAME one of "
                             f"{', '.join(IMPAIRMENTS)}; got {part.strip()!r}")
        try:
            kw[name] = float(val)
        except ValueError:
            raise ValueError(f"{name}: {val!r} is not a number") from None
    return ImpairConfig(**kw)


@dataclass(frozen=True)
class RunConfig:
    model: str = "direct"
    netisr: int = 1
    users: int = 1
    rxq: int = 1
    policy: str = "flow"
    qlimit: int = 256
    batch: int = 32
    quota: int = 64
    source: str = "internal"
    proto: str = "udp"
    rate: float = math.inf  # packets per second; inf = as fast as possible
    duration: float | None = 2.0
    count: int | None = None
    size: str = "64"
    flows: int = 4
    replay: str | None = None
    fixcsum: bool = False
    sockets_auto: bool = False
    digest: bool = False
    rxcsum: bool = True
    txcsum: bool = True
    tso: bool = False
    lro: bool = False
    ring_size: int = 1024
    irq_frames: int = 32  # interrupt moderation: packets
    irq_usecs: int = 50  # interrupt moderation: microseconds
    irq_mode: str = "itr"  # how irq_usecs applies (IRQ_MODES): itr, the least interval
    # between interrupts; delay, after the first packet not yet signalled
    cpus: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (role, CPUs): pin every instance
    bindthreads: bool = False  # net.isr.bindthreads: netisr worker i on CPU i % ncpu
    ithread_prio: bool = False  # ithreads at higher priority (SCHED_FIFO, else nice -10)
    sched: str = "other"  # every role's scheduling policy (SCHEDS); --ithread-prio still wins
    seed: int = 1
    workload: str = "rx"  # rx: generator -> sockets; tx: users send; rr: request/response;
    # forward: the host routes between its two ports
    tx_dispatch: str = "direct"  # direct: the sender posts to the tx ring; deferred: a
    # transmit thread drains a driver queue (iflib's mp_ring) and posts
    txq_limit: int = 1024  # deferred tx: the driver queue's exact limit (packets)
    rr: str = "64:64"  # rr: request and response payload bytes
    msg_size: int = 1448  # tx: bytes per send() call (TCP) or datagram payload (UDP)
    capture: str | None = None  # a folder: the generator writes what it receives as pcap
    trafgens: int = 1  # generators driving the host, each with its share of flows and rate
    impair: str | None = None  # damage on the wire, e.g. "loss=0.01,reorder=0.02": on the
    # generator's frames (rx, forward), on the host's (tx: what reaches the generator)
    flow_control: bool = False  # internal source at max: pause while host queues are full
    netisr_delay_us: float = 0.0  # slow every netisr worker by this per packet (a teaching knob)
    pool: PoolConfig = field(default_factory=lambda: PoolConfig(
        nmbufs=32768, nclusters=16384, njumbop=256, njumbo9=64, njumbo16=32))

    def validate(self) -> RunConfig:
        def bad(opt: str, val: object, valid: str) -> ConfigError:
            return ConfigError(f"--{opt} {val!r} is not valid: {valid}")

        if self.model not in MODELS:
            raise bad("model", self.model, f"one of {', '.join(MODELS)}")
        if self.policy not in POLICIES:
            raise bad("policy", self.policy, f"one of {', '.join(POLICIES)}")
        if self.workload not in WORKLOADS:
            raise bad("workload", self.workload, f"one of {', '.join(WORKLOADS)}")
        if self.tx_dispatch not in TX_DISPATCH:
            raise bad("tx-dispatch", self.tx_dispatch, f"one of {', '.join(TX_DISPATCH)}")
        if self.workload != "rx" and self.source != "trafgen":
            raise ConfigError(f"--workload {self.workload} needs --source trafgen: the "
                              f"generator is the peer that answers, receives or routes")
        if self.workload != "rx" and self.model == "toe":
            raise ConfigError(f"--workload {self.workload} is not available with the toe "
                              f"model (its NIC runs only the receive path); valid: rx")
        if self.tx_dispatch == "deferred" and self.rxq + self.netisr + self.users > 32:
            raise ConfigError("--tx-dispatch deferred: at most 32 host threads "
                              "(rxq + netisr + users) may share the driver queue")
        try:
            from nicemu.trafgen.rr import parse_rr

            parse_rr(self.rr)
        except ValueError as e:
            raise ConfigError(f"--rr {self.rr!r} is not valid: {e}") from None
        if self.trafgens > 1:
            if self.source != "trafgen" or self.workload not in ("rx", "forward"):
                raise ConfigError(f"--trafgens {self.trafgens} needs --source trafgen and a "
                                  f"workload of rx or forward (tx and rr use one generator)")
            if self.replay is not None:
                raise ConfigError("--trafgens > 1 cannot replay one capture: give --trafgens 1")
            if self.count is not None and self.count < self.trafgens:
                raise ConfigError(f"--count {self.count} is fewer than --trafgens "
                                  f"{self.trafgens}: each generator needs a packet")
            if self.flows < self.trafgens:
                raise ConfigError(f"--flows {self.flows} is fewer than --trafgens "
                                  f"{self.trafgens}: each generator needs a flow")
        if self.impair is not None:
            try:
                parse_impair(self.impair)
            except ValueError as e:
                raise ConfigError(f"--impair {self.impair!r} is not valid: {e}") from None
            if self.workload == "rr" or self.source != "trafgen":
                raise ConfigError("--impair needs --source trafgen and a workload of rx, tx "
                                  "or forward")
        if self.irq_mode not in IRQ_MODES:
            raise bad("irq-mode", self.irq_mode, f"one of {', '.join(IRQ_MODES)}")
        if self.sched not in SCHEDS:
            raise bad("sched", self.sched, f"one of {', '.join(SCHEDS)}")
        if self.source not in SOURCES:
            raise bad("source", self.source, f"one of {', '.join(SOURCES)}")
        if self.proto not in PROTOS:
            raise bad("proto", self.proto, f"one of {', '.join(PROTOS)}")
        for opt, val, lo, hi in (("netisr", self.netisr, 1, 64), ("users", self.users, 1, 64),
                                 ("rxq", self.rxq, 1, 16), ("qlimit", self.qlimit, 1, QLIMIT_MAX),
                                 ("batch", self.batch, 1, 4096), ("quota", self.quota, 1, 65536),
                                 ("flows", self.flows, 1, 1 << 20),
                                 ("ring-size", self.ring_size, 8, 65536),
                                 ("txq-limit", self.txq_limit, 1, TXQ_LIMIT_MAX),
                                 ("irq-frames", self.irq_frames, 1, 65536),
                                 ("trafgens", self.trafgens, 1, 16),
                                 ("irq-usecs", self.irq_usecs, 0, 1_000_000),
                                 ("msg-size", self.msg_size, 1, 65000)):
            if not lo <= val <= hi:
                raise bad(opt, val, f"an integer from {lo} to {hi}")
        import os

        ncpu = os.cpu_count() or 1
        for role, cpus in self.cpus:
            if role not in ROLES:
                raise bad("cpu", role, f"a role: one of {', '.join(ROLES)}")
            if not cpus or any(not 0 <= c < ncpu for c in cpus):
                raise bad("cpu", f"{role}={','.join(map(str, cpus))}",
                          f"CPU numbers from 0 to {ncpu - 1}")
        if self.ring_size & (self.ring_size - 1):
            raise bad("ring-size", self.ring_size, "a power of two")
        if not (self.rate > 0):
            raise bad("rate", self.rate, "a positive packet rate, or 'max'")
        if self.duration is None and self.count is None and self.replay is None:
            raise ConfigError("give --duration S or --count N (or --replay FILE)")
        if self.duration is not None and not self.duration > 0:
            raise bad("duration", self.duration, "a positive number of seconds")
        if self.count is not None and self.count < 1:
            raise bad("count", self.count, "a positive number of packets")
        if self.flow_control and (self.source != "internal" or self.rate != math.inf):
            raise ConfigError("--flow-control needs --source internal and --rate max: it "
                              "paces the NIC's internal line by the host's queues")
        if self.replay is not None and self.source != "trafgen":
            raise ConfigError("--replay needs --source trafgen (the generator replays)")
        from nicemu.trafgen.dist import parse_size_spec

        try:
            parse_size_spec(self.size)
        except ValueError as e:
            raise ConfigError(f"--size {self.size!r} is not valid: {e}") from None
        return self

    def replace(self, **kw: Any) -> RunConfig:
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The inverse of `as_dict` (how a role rebuilds its run's configuration)."""
        c = dict(d)
        rate = c.pop("rate")
        c["pool"] = PoolConfig(**c["pool"])
        c["cpus"] = tuple((r, tuple(v)) for r, v in c.get("cpus", {}).items())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(rate=math.inf if rate == "max" else float(rate),
                   **{k: v for k, v in c.items() if k in known})

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rate"] = "max" if math.isinf(self.rate) else self.rate
        d["cpus"] = {role: list(c) for role, c in self.cpus}
        return d

    def cpus_of(self, role: str, index: int) -> list[int] | None:
        """The CPUs a role instance is pinned to, if any (--cpu, --bindthreads)."""
        import os

        for r, c in self.cpus:
            if r == role:
                return list(c)
        if self.bindthreads and role == "netisr":
            return [index % (os.cpu_count() or 1)]
        return None
