"""Command-line entry point for ``nicemu``: the hardware side's tools.

Subcommands (one function registers each on the shared subparsers, so others
can be added without touching the rest; ``trafgen`` is expected next):

- ``rss-hash``: where does a flow land?  Prints the Toeplitz hash, its
  M_HASHTYPE and the rx queue for a given key and queue count.
- ``trafgen``: the traffic generator (UDP flows, TCP streams, pcap replay,
  request/response) sending on a wire; prints a summary (or ``--json``).

Exit status: 0 on success, 2 on bad usage or bad input (with a message that
names the problem and what is valid), like argparse itself.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from collections.abc import Callable, Sequence

from nicemu.rss import (
    INDIRECTION_SIZE,
    IPPROTO_TCP,
    IPPROTO_UDP,
    KEY_LEN,
    MS_KEY,
    Rss,
    hashtype_name,
)

__all__ = ["build_parser", "main", "SUBCOMMANDS"]

Handler = Callable[[argparse.Namespace], int]


# -- argument types (raise ArgumentTypeError: argparse reports them, exit 2) ---


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid address: give an IPv4 (e.g. 192.0.2.1) "
            "or IPv6 (e.g. 2001:db8::1) address"
        ) from None


def _port(text: str) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port number: valid ports are 0..65535"
        ) from None
    if not 0 <= port <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"port {port} out of range: valid ports are 0..65535")
    return port


def _key(text: str) -> bytes:
    t = text.strip()
    if t.lower().startswith("0x"):
        t = t[2:]
    t = re.sub(r"[\s:_-]", "", t)
    try:
        key = bytes.fromhex(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"key is not hexadecimal: give {KEY_LEN} bytes as {2 * KEY_LEN} hex digits "
            "(':' or '-' between bytes allowed)"
        ) from None
    if len(key) != KEY_LEN:
        raise argparse.ArgumentTypeError(
            f"key is {len(key)} bytes: an RSS key must be exactly {KEY_LEN} bytes "
            f"({2 * KEY_LEN} hex digits)"
        )
    return key


def _queues(text: str) -> int:
    try:
        n = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: queues must be >= 1") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"queues must be >= 1, got {n}")
    return n


# -- rss-hash ------------------------------------------------------------------


def _register_rss_hash(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "rss-hash",
        help="Toeplitz RSS hash of a flow, its hash type and rx queue",
        description=(
            "Compute the Microsoft Toeplitz RSS hash of a flow as a NIC does, and the rx "
            f"queue it lands in (indirection table of {INDIRECTION_SIZE} entries, "
            "round-robin over --queues). With both ports and --proto tcp (or udp), the "
            "4-tuple is hashed; otherwise the 2-tuple of addresses."
        ),
    )
    p.add_argument("--src", required=True, type=_address, help="source IPv4/IPv6 address")
    p.add_argument("--dst", required=True, type=_address, help="destination address")
    p.add_argument("--sport", type=_port, help="source port (0..65535)")
    p.add_argument("--dport", type=_port, help="destination port (0..65535)")
    p.add_argument(
        "--proto",
        choices=("tcp", "udp"),
        default="tcp",
        help="transport protocol (default tcp)",
    )
    p.add_argument(
        "--no-udp-hash",
        action="store_true",
        help="NIC without UDP 4-tuple hashing: UDP flows hash on addresses only",
    )
    p.add_argument(
        "--key",
        type=_key,
        default=MS_KEY,
        help=f"{KEY_LEN}-byte key in hex (default: Microsoft's verification key)",
    )
    p.add_argument(
        "--queues", type=_queues, default=1, help="number of rx queues, >= 1 (default 1)"
    )
    p.set_defaults(func=_cmd_rss_hash, parser=p)


def _cmd_rss_hash(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if (args.sport is None) != (args.dport is None):
        parser.error("give both --sport and --dport, or neither (2-tuple hash)")
    if args.src.version != args.dst.version:
        parser.error(
            f"--src is IPv{args.src.version} but --dst is IPv{args.dst.version}: "
            "both must be the same family"
        )
    rss = Rss(args.key, queues=args.queues, udp=not args.no_udp_hash)
    proto = IPPROTO_TCP if args.proto == "tcp" else IPPROTO_UDP
    h, htype = rss.hash_tuple(args.src, args.dst, args.sport, args.dport, proto=proto)
    entry = h & (INDIRECTION_SIZE - 1)
    print(f"hash:  0x{h:08x}")
    print(f"type:  {hashtype_name(htype)} (0x{htype:02x})")
    print(f"queue: {rss.queue_of(h)} of {args.queues} (indirection entry {entry})")
    return 0


# -- trafgen -------------------------------------------------------------------


def _checked(fn: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type from a parser that raises ValueError with a good message."""

    def conv(text: str) -> object:
        try:
            return fn(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    conv.__name__ = getattr(fn, "__name__", "value")
    return conv


def _prob(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rate: give a probability per frame in 0..1 (e.g. 0.01)"
        )
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text, 10)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: give seconds > 0")
    return v


def _endpoint(text: str) -> str:
    if not re.match(r"^(ipc|tcp)://.+", text):
        raise argparse.ArgumentTypeError(
            f"bad endpoint {text!r}: valid forms are ipc://PATH (same host) or tcp://HOST:PORT"
        )
    return text


def _register_trafgen(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from nicemu.trafgen.dist import parse_rate, parse_size_spec
    from nicemu.trafgen.flows import parse_addr_spec, parse_port_spec
    from nicemu.trafgen.generator import parse_arrival
    from nicemu.trafgen.rr import parse_rr

    p = sub.add_parser(
        "trafgen",
        help="traffic generator: UDP flows, TCP streams, pcap replay, request/response",
        description=(
            "Generate stamped UDP flows or TCP streams (or replay a capture, or run a "
            "netperf-style request/response test) and send them on a wire to a NIC. "
            "Deterministic given --seed. Sizes include the FCS (64 = minimum frame)."
        ),
    )
    p.add_argument("--wire", required=True, type=_endpoint, help="wire endpoint to send on")
    p.add_argument("--reply", type=_endpoint, help="wire endpoint on which replies come back")
    p.add_argument("--bind", action="store_true", help="bind the endpoints (default: connect)")
    p.add_argument("--proto", choices=("udp", "tcp"), default="udp", help="default udp")
    p.add_argument(
        "--rate",
        type=_checked(parse_rate),
        default=parse_rate("max"),
        help="PPS (100k), bit/s (1Gbps) or max (default)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--duration", type=_seconds, help="seconds to run (default 10 s)")
    g.add_argument("--count", type=_positive_int, help="frames (transactions with --rr)")
    p.add_argument(
        "--size",
        type=_checked(parse_size_spec),
        default=None,
        help="BYTES (64), imix, bimodal[:R], or SIZE:WEIGHT,... (default 64 for udp, 1518 for tcp)",
    )
    p.add_argument("--flows", type=_positive_int, default=1, help="number of flows (default 1)")
    p.add_argument(
        "--src",
        type=_checked(parse_addr_spec),
        default=parse_addr_spec("10.0.0.1"),
        help="source ADDR[-ADDR][,...] (default 10.0.0.1)",
    )
    p.add_argument(
        "--dst",
        type=_checked(parse_addr_spec),
        default=parse_addr_spec("10.0.0.2"),
        help="destination ADDR[-ADDR][,...] (default 10.0.0.2)",
    )
    p.add_argument(
        "--sport",
        type=_checked(parse_port_spec),
        default=parse_port_spec("1024-65535"),
        help="source P[-P][,...]",
    )
    p.add_argument(
        "--dport",
        type=_checked(parse_port_spec),
        default=parse_port_spec("5201"),
        help="destination P[-P][,...] (default 5201)",
    )
    p.add_argument(
        "--arrival",
        type=_checked(parse_arrival),
        default=("constant", 0.0, 0.0),
        help="constant (default), poisson, or onoff:ON:OFF (seconds)",
    )
    for name in ("reorder", "loss", "dup", "badsum", "truncate"):
        p.add_argument(f"--{name}", type=_prob, default=0.0, help=f"{name} rate per frame, 0..1")
    p.add_argument("--replay", metavar="FILE", help="replay a pcap/pcapng capture")
    p.add_argument("--fixcsum", action="store_true", help="replay: recompute checksums")
    p.add_argument("--loop", type=_positive_int, default=1, help="replay: times over (default 1)")
    p.add_argument(
        "--timing",
        choices=("capture", "rate", "max"),
        default=None,
        help="replay timing (default: capture, or rate when --rate is given)",
    )
    p.add_argument("--capture", metavar="FILE", help="write what is sent and received to pcap")
    p.add_argument(
        "--rr",
        type=_checked(parse_rr),
        metavar="REQ:RESP",
        help="request/response mode, payload bytes (e.g. 1:1)",
    )
    p.add_argument(
        "--handshake",
        choices=("await", "assume", "none"),
        default=None,
        help="TCP handshake (default assume; none with --rr)",
    )
    p.add_argument("--mss", type=_positive_int, default=1460, help="TCP MSS (default 1460)")
    p.add_argument("--batch", type=_positive_int, default=256, help="most frames per wire message")
    p.add_argument("--timeout-ms", type=_positive_int, default=1000, help="rr: per transaction")
    p.add_argument(
        "--line-rate",
        type=_checked(parse_rate),
        default=None,
        help="shape the wire to this bit/s (e.g. 10Gbps)",
    )
    p.add_argument("--delay-us", type=float, default=0.0, help="wire propagation delay, us")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_trafgen, parser=p)


def _spec_str(vs: object) -> str:
    """A ValueSet back to its CLI string (for FlowSpec)."""
    import ipaddress as ipa

    runs = vs.runs  # type: ignore[attr-defined]
    version = vs.version  # type: ignore[attr-defined]

    def one(v: int) -> str:
        return str(ipa.ip_address(v) if version == 4 else ipa.IPv6Address(v)) if version else str(v)

    return ",".join(one(a) if c == 1 else f"{one(a)}-{one(a + c - 1)}" for a, c in runs)


def _cmd_trafgen(args: argparse.Namespace) -> int:
    import json

    from nicemu.pcap import PcapWriter
    from nicemu.trafgen.flows import FlowSpec
    from nicemu.trafgen.generator import Generator, GeneratorConfig
    from nicemu.trafgen.impair import ImpairConfig
    from nicemu.trafgen.replay import ReplayConfig, Replayer
    from nicemu.trafgen.rr import RequestResponse, RRConfig
    from nicemu.trafgen.tcpstream import TcpConfig
    from nicemu.wire import WireRx, WireTx

    parser: argparse.ArgumentParser = args.parser
    if args.src.version != args.dst.version:
        parser.error(
            f"--src is IPv{args.src.version} but --dst is IPv{args.dst.version}: "
            "both must be the same family"
        )
    if args.replay and args.rr:
        parser.error("--replay and --rr are different modes: give one of them")
    if args.rr and args.reply is None:
        parser.error("--rr needs --reply ENDPOINT: responses come back on the reply wire")
    if args.handshake == "await" and args.reply is None:
        parser.error("--handshake await needs --reply ENDPOINT (the SYN-ACK comes back there)")
    if (args.fixcsum or args.loop != 1 or args.timing) and not args.replay:
        parser.error("--fixcsum, --loop and --timing apply to --replay FILE only")
    if args.delay_us < 0:
        parser.error("--delay-us must be >= 0")
    if args.line_rate is not None and args.line_rate.unit != "bps":
        parser.error("--line-rate is in bits/s, e.g. 10Gbps or 1e9bps")
    size_spec = (
        args.size.spec if args.size is not None else ("1518" if args.proto == "tcp" else "64")
    )
    duration = args.duration
    if duration is None and args.count is None and not args.replay:
        duration = 10.0
    flows = FlowSpec(
        count=args.flows,
        src=_spec_str(args.src),
        dst=_spec_str(args.dst),
        sport=_spec_str(args.sport),
        dport=_spec_str(args.dport),
    )
    kind, on, off = args.arrival
    arrival = kind if kind != "onoff" else f"onoff:{on}:{off}"
    try:
        flows.flows()
        handshake = args.handshake or ("none" if args.rr else "assume")
        tcp = TcpConfig(mss=args.mss, handshake=handshake)
        if args.rr:
            job: object = RequestResponse(RRConfig(
                proto=args.proto, request=args.rr[0], response=args.rr[1], flows=flows,
                count=args.count, duration_s=duration, timeout_ms=args.timeout_ms, tcp=tcp,
                seed=args.seed,
            ))  # fmt: skip
        elif args.replay:
            timing = args.timing or ("rate" if not args.rate.is_max else "capture")
            job = Replayer(
                ReplayConfig(
                    path=args.replay,
                    timing=timing,
                    rate=args.rate,
                    loop=args.loop,
                    fixcsum=args.fixcsum,
                    batch=args.batch,
                )
            )
        else:
            job = Generator(GeneratorConfig(
                proto=args.proto, rate=args.rate, count=args.count, duration_s=duration,
                size=size_spec, arrival=arrival, flows=flows, tcp=tcp, seed=args.seed,
                batch=args.batch,
                impair=ImpairConfig(reorder=args.reorder, loss=args.loss, dup=args.dup,
                                    badsum=args.badsum, truncate=args.truncate),
            ))  # fmt: skip
    except (ValueError, OSError) as e:
        parser.error(str(e))
    tx = WireTx(args.wire, bind=args.bind,
                line_rate_bps=args.line_rate.value if args.line_rate else None,
                delay_ns=int(args.delay_us * 1000))  # fmt: skip
    rx = WireRx(args.reply, bind=args.bind) if args.reply else None
    cap = PcapWriter(args.capture) if args.capture else None
    try:
        if isinstance(job, RequestResponse):
            assert rx is not None
            stats: object = job.run(tx, rx, capture=cap)
        else:
            stats = job.run(tx, reply=rx, capture=cap)  # type: ignore[attr-defined]
        confirmed = tx.close(confirm=True, timeout_ms=2000)
    finally:
        tx.close(confirm=False)
        if rx is not None:
            rx.close()
        if cap is not None:
            cap.close()
    d = stats.to_dict()  # type: ignore[attr-defined]
    d["confirmed"] = confirmed
    if args.json:
        print(json.dumps(d, default=str))
        return 0
    if isinstance(job, RequestResponse):
        print(
            f"transactions: {d['transactions']} in {d['elapsed_s']:.3f} s "
            f"({d['tps']:.0f}/s), timeouts {d['timeouts']}, stale {d['stale']}"
        )
        print("rtt us: p50 {:.1f}  p90 {:.1f}  p99 {:.1f}  p99.9 {:.1f}  max {:.1f}".format(
            *(d[k] / 1000 for k in ("rtt_p50_ns", "rtt_p90_ns", "rtt_p99_ns", "rtt_p999_ns",
                                    "rtt_max_ns"))))  # fmt: skip
    else:
        print(f"sent: {d['frames']} frames, {d['bytes']} bytes in {d['elapsed_s']:.3f} s")
        tgt = d["target_pps"]
        rate = f"achieved: {d['achieved_pps']:.0f} pps, {d['wire_bps'] / 1e6:.1f} Mbit/s on wire"
        if tgt:
            rate += f" (target {tgt:.0f} pps, ratio {d['ratio']:.3f})"
        print(rate)
        if d["rate_warning"]:
            print("warning: could not reach the target rate", file=sys.stderr)
        imp = {k: v for k, v in d["impairments"].items() if v}
        if imp:
            print("impairments: " + ", ".join(f"{k} {v}" for k, v in imp.items()))
        if d["syn"] or d["fin"]:
            print(
                f"tcp: syn {d['syn']}, handshakes {d['handshakes']}, fin {d['fin']}, "
                f"acks received {d['acks_received']}"
            )
        if d["replies"]:
            print(f"replies received: {d['replies']}")
    if not confirmed:
        print("warning: the receiver did not confirm the end of the stream", file=sys.stderr)
    return 0


#: (name, register function) for every subcommand.  A new subcommand (e.g.
#: ``trafgen``) adds a ``_register_x(sub)`` that calls ``sub.add_parser`` and
#: ``set_defaults(func=handler)`` where ``handler(args) -> int``.
SUBCOMMANDS: list[
    tuple[str, Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]
] = [
    ("rss-hash", _register_rss_hash),
    ("trafgen", _register_trafgen),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nicemu",
        description="nicemu: the hardware side of dispatch-emu (NIC, wire, traffic generator)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _name, register in SUBCOMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
        if getattr(args, "func", None) is None:
            parser.print_usage(sys.stderr)
            names = ", ".join(name for name, _ in SUBCOMMANDS)
            print(f"nicemu: error: a command is required: one of {names}", file=sys.stderr)
            return 2
        handler: Handler = args.func
        return handler(args)
    except SystemExit as e:  # argparse: --help (0) and usage errors (2)
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 2)


if __name__ == "__main__":
    raise SystemExit(main())
