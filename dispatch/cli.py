"""Command-line entry point for `dispatch`.

Exit codes: 0 ok, 1 a failed run or check, 2 a usage error (argparse's own).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from dispatch import __version__

Handler = Callable[[argparse.Namespace], int]


def _netstat(args: argparse.Namespace) -> int:
    from dispatch.mbuf import MbufPool, PoolError
    from dispatch.netstat import format_mbuf

    if not args.m:
        print("dispatch netstat: name a view: -m (mbuf pool)", file=sys.stderr)
        return 2
    if not args.pool:
        print("dispatch netstat -m: --pool NAME is required (the pool of a running host)",
              file=sys.stderr)
        return 2
    try:
        pool = MbufPool.attach(args.pool, owner="netstat")
    except PoolError as e:
        print(f"dispatch netstat: {e}", file=sys.stderr)
        return 1
    try:
        print(format_mbuf(pool.stats()))
    finally:
        pool.close()
    return 0


def _pool_clean(args: argparse.Namespace) -> int:
    from dispatch.mbuf import PoolError, remove_stale
    from dispatch.mbuf.segment import segment_owner_alive

    status = 0
    for name in args.names:
        try:
            alive = segment_owner_alive(name)
            if alive is None:
                print(f"{name}: no such segment")
            elif alive:
                print(f"{name}: in use by a live process; left alone")
                status = 1
            elif remove_stale(name):
                print(f"{name}: stale (creator gone); removed")
        except PoolError as e:
            print(f"{name}: {e}", file=sys.stderr)
            status = 2
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dispatch", description=(
        "Run and compare network-stack dispatch models (direct, deferred, hybrid, "
        "polling, toe) as real processes."))
    p.add_argument("--version", action="version", version=f"dispatch-emu {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    ns = sub.add_parser("netstat", help="show statistics in FreeBSD netstat layouts")
    ns.add_argument("-m", action="store_true", help="mbuf pool statistics (netstat -m)")
    ns.add_argument("--pool", help="name of a live pool (a /dev/shm segment)")
    ns.set_defaults(func=_netstat)
    pool = sub.add_parser("pool", help="manage pool segments")
    psub = pool.add_subparsers(dest="pool_command", metavar="ACTION", required=True)
    clean = psub.add_parser("clean", help="remove segments whose creator has died")
    clean.add_argument("names", nargs="+", metavar="NAME")
    clean.set_defaults(func=_pool_clean)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return func(args)


if __name__ == "__main__":
    raise SystemExit(main())
