"""Flows (who talks to whom) and the latency stamp that generated frames carry.

A load test spreads its frames over F flows so that RSS has something to
spread over queues; which flows exist must be easy to state on a command line
(address and port ranges or lists) and identical run after run.  This module
turns such specs into an ordered tuple of :class:`Flow` and defines the stamp
format that both the generator (writer) and the receiving side (reader) use.

**Flow enumeration.**  ``--src``/``--dst``/``--sport``/``--dport`` each give
a set of values (comma-separated items, each a value or an inclusive range
``LO-HI``).  Flow ``i`` is the ``i``-th element of their cartesian product in
mixed radix, source port varying fastest, then destination port, source
address, destination address.  More flows than distinct 4-tuples is an error.
All addresses of a flow set are of one family (IPv4 or IPv6).

**Latency stamp.**  Every generated data frame carries, in the first 16 bytes
of its UDP or TCP payload, in network byte order (struct ``'>IIQ'``)::

    offset 0  u32  magic 0x6E656D75 ('nemu')
    offset 4  u32  per-flow sequence number (0, 1, 2... per flow, wrapping)
    offset 8  u64  send time, CLOCK_MONOTONIC ns (time.monotonic_ns())

The generator takes one clock reading per batch, so all frames of a batch
carry the same send time.  :func:`parse_stamp` finds and reads it (untagged,
802.1Q or QinQ Ethernet; IPv4 without fragmentation or IPv6 with TCP/UDP as
the next header); a receiver on the same host subtracts it from its own
``time.monotonic_ns()`` for the one-way latency.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from dispatch.packet.errors import BytesLike
from dispatch.packet.frames import DEFAULT_DST_MAC, DEFAULT_SRC_MAC

__all__ = [
    "STAMP",
    "STAMP_LEN",
    "STAMP_MAGIC",
    "Flow",
    "FlowSpec",
    "ValueSet",
    "parse_addr_spec",
    "parse_port_spec",
    "make_flows",
    "parse_stamp",
    "l4_offsets",
    "flows_version",
]

STAMP_MAGIC: Final = 0x6E656D75
STAMP: Final = struct.Struct(">IIQ")
STAMP_LEN: Final = STAMP.size  # 16

_ADDR_FORMS: Final = (
    "valid forms: an address (192.0.2.1 or 2001:db8::1), a range LO-HI of one family "
    "(10.0.0.1-10.0.0.200), or a comma-separated list of those"
)
_PORT_FORMS: Final = (
    "valid forms: a port 0..65535, a range LO-HI (1024-2047), or a comma-separated list of those"
)


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow as the generator sends it (addresses as packed bytes)."""

    src_ip: bytes
    dst_ip: bytes
    src_port: int
    dst_port: int
    src_mac: bytes = DEFAULT_SRC_MAC
    dst_mac: bytes = DEFAULT_DST_MAC

    @property
    def version(self) -> int:
        return 4 if len(self.src_ip) == 4 else 6

    def reversed(self) -> Flow:
        """The same flow seen from the other end (addresses, ports and MACs swapped)."""
        return Flow(self.dst_ip, self.src_ip, self.dst_port, self.src_port,
                    self.dst_mac, self.src_mac)  # fmt: skip

    @property
    def key(self) -> tuple[bytes, bytes, int, int]:
        """(src_ip, dst_ip, src_port, dst_port)."""
        return (self.src_ip, self.dst_ip, self.src_port, self.dst_port)

    def __str__(self) -> str:
        s, d = ipaddress.ip_address(self.src_ip), ipaddress.ip_address(self.dst_ip)
        if self.version == 6:
            return f"[{s}]:{self.src_port} -> [{d}]:{self.dst_port}"
        return f"{s}:{self.src_port} -> {d}:{self.dst_port}"


@dataclass(frozen=True, slots=True)
class ValueSet:
    """An ordered set of ints given as (first, count) runs: addresses or ports."""

    runs: tuple[tuple[int, int], ...]
    version: int = 0  # 4 or 6 for addresses, 0 for ports

    def __len__(self) -> int:
        return sum(c for _, c in self.runs)

    def __getitem__(self, i: int) -> int:
        if i < 0:
            raise IndexError(i)
        for first, count in self.runs:
            if i < count:
                return first + i
            i -= count
        raise IndexError("value set index out of range")


def parse_addr_spec(text: str) -> ValueSet:
    """``'10.0.0.1'``, ``'10.0.0.1-10.0.0.9'``, ``'2001:db8::1,2001:db8::5'``...
    Raises ValueError naming the valid forms."""
    runs: list[tuple[int, int]] = []
    version = 0
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise ValueError(f"empty address in {text!r}; {_ADDR_FORMS}")
    for item in items:
        lo_t, sep, hi_t = item.partition("-")
        try:
            lo = ipaddress.ip_address(lo_t.strip())
            hi = ipaddress.ip_address(hi_t.strip()) if sep else lo
        except ValueError:
            raise ValueError(f"bad address {item!r} in {text!r}; {_ADDR_FORMS}") from None
        if lo.version != hi.version or (version and lo.version != version):
            raise ValueError(f"mixed IPv4 and IPv6 in {text!r}: one family per set; {_ADDR_FORMS}")
        version = lo.version
        if int(hi) < int(lo):
            raise ValueError(f"range {item!r} runs backwards; {_ADDR_FORMS}")
        runs.append((int(lo), int(hi) - int(lo) + 1))
    return ValueSet(tuple(runs), version)


def parse_port_spec(text: str) -> ValueSet:
    """``'5201'``, ``'1024-2047'``, ``'80,443,8000-8009'``.  Raises ValueError."""
    runs: list[tuple[int, int]] = []
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise ValueError(f"empty port in {text!r}; {_PORT_FORMS}")
    for item in items:
        lo_t, sep, hi_t = item.partition("-")
        try:
            lo = int(lo_t.strip(), 10)
            hi = int(hi_t.strip(), 10) if sep else lo
        except ValueError:
            raise ValueError(f"bad port {item!r} in {text!r}; {_PORT_FORMS}") from None
        if not (0 <= lo <= 0xFFFF and 0 <= hi <= 0xFFFF):
            raise ValueError(f"port out of range in {item!r}; {_PORT_FORMS}")
        if hi < lo:
            raise ValueError(f"range {item!r} runs backwards; {_PORT_FORMS}")
        runs.append((lo, hi - lo + 1))
    return ValueSet(tuple(runs))


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """F flows over address/port sets (CLI strings, see :func:`parse_addr_spec`)
    or an explicit tuple of flows (``explicit``, which then wins)."""

    count: int = 1
    src: str = "10.0.0.1"
    dst: str = "10.0.0.2"
    sport: str = "1024-65535"
    dport: str = "5201"
    src_mac: bytes = DEFAULT_SRC_MAC
    dst_mac: bytes = DEFAULT_DST_MAC
    explicit: tuple[Flow, ...] = ()

    def flows(self) -> tuple[Flow, ...]:
        if self.explicit:
            fams = {f.version for f in self.explicit}
            for f in self.explicit:
                if len(f.src_ip) != len(f.dst_ip):
                    raise ValueError(f"flow {f}: src and dst of different families")
            if len(fams) != 1:
                raise ValueError("explicit flows must all be IPv4 or all IPv6")
            return self.explicit
        return make_flows(
            self.count, src=self.src, dst=self.dst, sport=self.sport, dport=self.dport,
            src_mac=self.src_mac, dst_mac=self.dst_mac,
        )  # fmt: skip


def make_flows(
    count: int,
    *,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    sport: str = "1024-65535",
    dport: str = "5201",
    src_mac: bytes = DEFAULT_SRC_MAC,
    dst_mac: bytes = DEFAULT_DST_MAC,
) -> tuple[Flow, ...]:
    """The first ``count`` flows of the product of the sets (module docstring)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"flow count must be an integer >= 1, got {count!r}")
    s, d = parse_addr_spec(src), parse_addr_spec(dst)
    sp, dp = parse_port_spec(sport), parse_port_spec(dport)
    if s.version != d.version:
        raise ValueError(f"src is IPv{s.version} but dst is IPv{d.version}: use one family")
    ns, nd, nsp, ndp = len(s), len(d), len(sp), len(dp)
    total = ns * nd * nsp * ndp
    if count > total:
        raise ValueError(
            f"{count} flows asked for but the address and port sets give only {total} "
            "distinct 4-tuples: widen --src/--dst/--sport/--dport"
        )
    alen = 4 if s.version == 4 else 16
    out: list[Flow] = []
    for i in range(count):
        q, a = divmod(i, nsp)
        q, b = divmod(q, ndp)
        q, c = divmod(q, ns)
        e = q % nd
        out.append(Flow(
            s[c].to_bytes(alen, "big"), d[e].to_bytes(alen, "big"), sp[a], dp[b],
            src_mac, dst_mac,
        ))  # fmt: skip
    return tuple(out)


def l4_offsets(frame: BytesLike) -> tuple[int, int, int, int] | None:
    """(l3 offset, IP version, L4 protocol, L4 offset) of an Ethernet/IP frame, or None.

    A fast walk for tools on the hot side (stamps, impairments): VLAN tags are
    skipped; IPv4 non-first fragments and IPv6 extension headers give None.
    """
    b = frame
    n = len(b)
    if n < 14:
        return None
    et = (b[12] << 8) | b[13]
    off = 14
    while et in (0x8100, 0x88A8) and n >= off + 4:
        et = (b[off + 2] << 8) | b[off + 3]
        off += 4
    if et == 0x0800:
        if n < off + 20 or b[off] >> 4 != 4:
            return None
        if ((b[off + 6] & 0x1F) << 8) | b[off + 7]:
            return None  # non-first fragment
        return off, 4, b[off + 9], off + (b[off] & 0x0F) * 4
    if et == 0x86DD:
        if n < off + 40 or b[off] >> 4 != 6:
            return None
        return off, 6, b[off + 6], off + 40
    return None


def parse_stamp(frame: BytesLike) -> tuple[int, int] | None:
    """(flow sequence number, send time ns) from a generated frame, or None when
    the frame carries no stamp (other traffic, too short, not TCP/UDP)."""
    loc = l4_offsets(frame)
    if loc is None:
        return None
    _l3, _v, proto, l4 = loc
    if proto == 17:
        p = l4 + 8
    elif proto == 6:
        if len(frame) < l4 + 20:
            return None
        p = l4 + (frame[l4 + 12] >> 4) * 4
    else:
        return None
    if len(frame) < p + STAMP_LEN:
        return None
    magic, seq, t = STAMP.unpack_from(frame, p)
    if magic != STAMP_MAGIC:
        return None
    return seq, t


def flows_version(flows: Sequence[Flow]) -> int:
    """The IP version shared by all ``flows`` (ValueError if mixed or empty)."""
    fams = {f.version for f in flows}
    if len(fams) != 1:
        raise ValueError("flows must be non-empty and of one IP family")
    return fams.pop()
