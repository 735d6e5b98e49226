"""The traffic generator: load that a receive path can be measured against.

A dispatch model is only as well measured as the load driven through it, and
that load has to be three things at once: *fast* (a Python sender that cannot
outrun the host under test measures itself), *honest* (frames a real stack
would accept, with every length and checksum right unless an impairment says
otherwise, and a pacer that reports when it could not keep the rate instead
of quietly sending less), and *repeatable* (the same ``seed`` gives the same
bytes, so two models are compared on the same traffic).

The trade-off made here: frames are built from templates, once per flow and
size, and only the fields that change are written per frame (the latency
stamp, and for TCP the sequence numbers), with checksums patched
incrementally.  UDP batches are built whole in numpy, directly in the wire's
packed form, so that generating a frame costs a fraction of a microsecond;
TCP streams, impairments and captures take a per-frame Python path, because
their state is per frame.

Modules: ``dist`` (sizes, arrivals, rates), ``pacing`` (the Pacer),
``flows`` (flow sets and the latency stamp), ``tcpstream`` (a sending TCP),
``impair`` (reorder/loss/dup/badsum/truncate), ``generator`` (the engine and
its config), ``replay`` (pcap/pcapng replay), ``rr`` (request/response).
The CLI is ``nicemu trafgen``; the wire is :mod:`nicemu.wire`.
"""

from nicemu.trafgen.flows import (
    STAMP,
    STAMP_LEN,
    STAMP_MAGIC,
    Flow,
    FlowSpec,
    make_flows,
    parse_stamp,
)
from nicemu.trafgen.generator import Generator, GeneratorConfig, GenStats
from nicemu.trafgen.impair import ImpairConfig, Impairer
from nicemu.trafgen.replay import ReplayConfig, Replayer, fix_checksums
from nicemu.trafgen.rr import RequestResponse, RRConfig, RRStats
from nicemu.trafgen.tcpstream import TcpConfig, TcpStream, hostless_segments

__all__ = [
    "STAMP",
    "STAMP_LEN",
    "STAMP_MAGIC",
    "Flow",
    "FlowSpec",
    "make_flows",
    "parse_stamp",
    "Generator",
    "GeneratorConfig",
    "GenStats",
    "ImpairConfig",
    "Impairer",
    "ReplayConfig",
    "Replayer",
    "fix_checksums",
    "RequestResponse",
    "RRConfig",
    "RRStats",
    "TcpConfig",
    "TcpStream",
    "hostless_segments",
]
