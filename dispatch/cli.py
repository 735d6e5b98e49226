"""Command-line entry point for `dispatch`.

Exit codes: 0 ok, 1 a failed run or check, 2 a usage error (argparse's own).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from dispatch import __version__

if TYPE_CHECKING:
    from dispatch.runtime.config import RunConfig

Handler = Callable[[argparse.Namespace], int]


def _netstat(args: argparse.Namespace) -> int:
    import json

    from dispatch.mbuf import MbufPool, PoolError
    from dispatch.netstat import (
        format_mbuf,
        format_netisr,
        format_protocols,
        stats_from_doc,
    )

    if not (args.m or args.Q or args.s):
        print("dispatch netstat: name a view: -m (mbuf pool), -Q (netisr), -s (protocols)",
              file=sys.stderr)
        return 2
    if args.result:
        try:
            with open(args.result) as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            print(f"dispatch netstat: cannot read result document {args.result}: {e}",
                  file=sys.stderr)
            return 2
        if "runs" in doc:  # a compare document: the last run
            doc = list(doc["runs"].values())[0][-1]
        views = []
        if args.m:
            views.append(format_mbuf(stats_from_doc(doc["mbuf"])))
        if args.Q:
            views.append(format_netisr(doc))
        if args.s:
            views.append(format_protocols(doc))
        print("\n\n".join(views))
        return 0
    if not args.m:
        print("dispatch netstat: -Q and -s read a result document: --result FILE",
              file=sys.stderr)
        return 2
    if not args.pool:
        print("dispatch netstat -m: give --pool NAME (a running host's pool) or --result FILE",
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


def _rate(text: str) -> float:
    if text == "max":
        return math.inf
    try:
        from nicemu.trafgen.dist import parse_rate

        r = parse_rate(text)
        if r.unit != "pps":
            raise ValueError("give packets per second here (e.g. 100k), or 'max'")
        return float(r.pps())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"bad rate {text!r}: {e}") from None


def _cpu_spec(text: str) -> tuple[str, tuple[int, ...]]:
    role, eq, cpus = text.partition("=")
    try:
        if not eq:
            raise ValueError
        return role, tuple(int(c) for c in cpus.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad --cpu {text!r}: give ROLE=CPU[,CPU...], e.g. ithread=0") from None


def add_workload_options(p: argparse.ArgumentParser) -> None:
    """Options shared by run, compare and sweep (one place, one meaning)."""
    from dispatch.runtime.config import PROTOS, SOURCES
    from dispatch.runtime.netisr import POLICIES

    p.add_argument("--netisr", type=int, default=1, metavar="N", help="netisr worker threads")
    p.add_argument("--users", type=int, default=1, metavar="M", help="user threads")
    p.add_argument("--rxq", type=int, default=1, metavar="Q", help="NIC rx queues (ithreads)")
    p.add_argument("--policy", default="flow", choices=POLICIES, help="netisr placement policy")
    p.add_argument("--qlimit", type=int, default=256, help="netisr queue limit (max 10240)")
    p.add_argument("--batch", type=int, default=32, help="handles per message and per round")
    p.add_argument("--quota", type=int, default=64, help="polling: packets per poll round")
    p.add_argument("--source", default="internal", choices=SOURCES,
                   help="traffic from the NIC's internal template source or the generator")
    p.add_argument("--proto", default="udp", choices=PROTOS)
    p.add_argument("--rate", type=_rate, default=math.inf, help="packets/s (100k, 1M) or max")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--duration", type=float, default=None, metavar="S")
    g.add_argument("--count", type=int, default=None, metavar="N")
    p.add_argument("--size", default="64", help="frame size in bytes incl. FCS, imix, bimodal")
    p.add_argument("--flows", type=int, default=4)
    p.add_argument("--replay", metavar="FILE", help="replay a pcap/pcapng capture")
    p.add_argument("--fixcsum", action="store_true", help="recompute checksums on replay")
    p.add_argument("--sockets", choices=["auto", "bound"], default="bound",
                   help="auto: every address is the host's and new 4-tuples get sockets")
    p.add_argument("--digest", action="store_true", help="sha256 of each socket's bytes")
    p.add_argument("--no-rxcsum", action="store_true", help="turn rx checksum offload off")
    p.add_argument("--lro", action="store_true", help="turn large receive offload on")
    p.add_argument("--cpu", action="append", default=[], metavar="ROLE=CPUS", type=_cpu_spec,
                   help="pin every instance of a role to CPUs, e.g. ithread=0 netisr=0,1 "
                        "(repeatable; not the default: pinning cost 10-40 %% here)")
    p.add_argument("--bindthreads", action="store_true",
                   help="net.isr.bindthreads: netisr worker i on CPU i")
    p.add_argument("--ithread-prio", action="store_true",
                   help="run ithreads at higher priority (SCHED_FIFO where permitted)")
    p.add_argument("--seed", type=int, default=1)


def config_from_args(args: argparse.Namespace, model: str) -> RunConfig:
    from dispatch.runtime.config import RunConfig

    duration = args.duration
    if duration is None and args.count is None and args.replay is None:
        duration = 2.0
    return RunConfig(
        model=model, netisr=args.netisr, users=args.users, rxq=args.rxq, policy=args.policy,
        qlimit=args.qlimit, batch=args.batch, quota=args.quota, source=args.source,
        proto=args.proto, rate=args.rate, duration=duration, count=args.count, size=args.size,
        flows=args.flows, replay=args.replay, fixcsum=args.fixcsum,
        sockets_auto=args.sockets == "auto", digest=args.digest, rxcsum=not args.no_rxcsum,
        lro=args.lro, cpus=tuple(args.cpu), bindthreads=args.bindthreads,
        ithread_prio=args.ithread_prio, seed=args.seed,
    ).validate()


def _run(args: argparse.Namespace) -> int:
    import json

    from dispatch.runtime.config import ConfigError
    from dispatch.runtime.controller import RunFailed, run_sync
    from dispatch.runtime.summary import format_summary

    try:
        cfg = config_from_args(args, args.model)
    except ConfigError as e:
        print(f"dispatch run: {e}", file=sys.stderr)
        return 2
    try:
        doc = run_sync(cfg)
    except RunFailed as e:
        print(f"dispatch run: FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dispatch run: interrupted; everything stopped and cleaned up", file=sys.stderr)
        return 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    if not args.quiet:
        print(format_summary(doc))
    return 0 if doc["conservation"]["ok"] else 1


def _compare(args: argparse.Namespace) -> int:
    import json

    from dispatch.compare import compare, format_table, write_csv
    from dispatch.runtime.config import ConfigError
    from dispatch.runtime.controller import RunFailed, _asyncio_run
    from dispatch.runtime.placement import MODELS

    models = args.models or ["direct", "deferred"]
    bad = [m for m in models if m not in MODELS]
    if bad:
        print(f"dispatch compare: unknown model {bad[0]!r}; valid: {', '.join(MODELS)}",
              file=sys.stderr)
        return 2
    if args.repeat < 1:
        print("dispatch compare: --repeat must be at least 1", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args, models[0])
    except ConfigError as e:
        print(f"dispatch compare: {e}", file=sys.stderr)
        return 2

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"  {msg}", file=sys.stderr, flush=True)

    try:
        out = _asyncio_run(compare(cfg, models, args.repeat, progress))
    except RunFailed as e:
        print(f"dispatch compare: FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dispatch compare: interrupted; everything stopped and cleaned up",
              file=sys.stderr)
        return 1
    summary = out["summary"]
    print(format_table(summary, args.repeat))
    public = {k: v for k, v in summary.items() if not k.startswith("_")}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"schema_version": 1, "runs": out["runs"], "summary": public}, f,
                      indent=1)
    if args.csv:
        write_csv(args.csv, public)
    return 0 if summary["conservation_ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dispatch", description=(
        "Run and compare network-stack dispatch models (direct, deferred, hybrid, "
        "polling, toe) as real processes."))
    p.add_argument("--version", action="version", version=f"dispatch-emu {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    from dispatch.runtime.placement import MODELS

    run = sub.add_parser("run", help="run one dispatch model and print its figures")
    run.add_argument("--model", default="direct", choices=list(MODELS))
    add_workload_options(run)
    run.add_argument("--json", metavar="FILE", help="write the result document here")
    run.add_argument("--quiet", action="store_true")
    run.set_defaults(func=_run)
    cmp_ = sub.add_parser("compare", help="compare dispatch models side by side")
    cmp_.add_argument("models", nargs="*", metavar="MODEL",
                      help=f"models to compare (default: direct deferred); valid: "
                           f"{', '.join(MODELS)}")
    add_workload_options(cmp_)
    cmp_.add_argument("--repeat", type=int, default=3, help="runs per model, interleaved")
    cmp_.add_argument("--json", metavar="FILE", help="every run's document plus the summary")
    cmp_.add_argument("--csv", metavar="FILE", help="the summary table as CSV")
    cmp_.add_argument("--quiet", action="store_true")
    cmp_.set_defaults(func=_compare, rate=20_000.0, duration=None)
    ns = sub.add_parser("netstat", help="show statistics in FreeBSD netstat layouts")
    ns.add_argument("-m", action="store_true", help="mbuf pool statistics (netstat -m)")
    ns.add_argument("-Q", action="store_true", help="netisr configuration and workstreams")
    ns.add_argument("-s", action="store_true", help="per-protocol statistics and drops")
    ns.add_argument("--pool", help="name of a live pool (a /dev/shm segment)")
    ns.add_argument("--result", metavar="FILE", help="a result document (dispatch run --json)")
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
