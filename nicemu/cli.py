"""Command-line entry point for ``nicemu``: the hardware side's tools.

Subcommands (one function registers each on the shared subparsers, so others
can be added without touching the rest; ``trafgen`` is expected next):

- ``rss-hash``: where does a flow land?  Prints the Toeplitz hash, its
  M_HASHTYPE and the rx queue for a given key and queue count.

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


#: (name, register function) for every subcommand.  A new subcommand (e.g.
#: ``trafgen``) adds a ``_register_x(sub)`` that calls ``sub.add_parser`` and
#: ``set_defaults(func=handler)`` where ``handler(args) -> int``.
SUBCOMMANDS: list[
    tuple[str, Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]
] = [
    ("rss-hash", _register_rss_hash),
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
