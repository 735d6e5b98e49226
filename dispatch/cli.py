"""Command-line entry point for `dispatch`.

Exit codes: 0 ok; 1 a failed run or conservation check, or nothing to show
(`top` / `netstat --watch` with no running experiment); 2 a usage error (a bad
option or value, an unknown model, a missing or bad file, a bad key in an
experiment file).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
    if args.watch is not None:
        from dispatch.liveview import netstat_views, watch

        if args.result or args.pool:
            return _fail_usage("netstat", "--watch reads a running experiment; "
                                          "it takes no --result or --pool")
        if args.interval <= 0:
            return _fail_usage("netstat", "--interval must be positive")
        return watch(lambda st: netstat_views(st, m=args.m, q=args.Q, s=args.s),
                     args.watch or None, once=args.once, interval_s=args.interval,
                     iterations=args.iterations)
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
    from dispatch.runtime.config import IRQ_MODES, SCHEDS, TX_DISPATCH, WORKLOADS

    p.add_argument("--workload", default="rx", choices=WORKLOADS,
                   help="rx: generator -> sockets; tx: user threads send to the generator; "
                        "rr: request/response; forward: the host routes port 0 -> port 1")
    p.add_argument("--tx-dispatch", default="direct", choices=TX_DISPATCH,
                   help="direct: the sender posts to the tx ring; deferred: a transmit "
                        "thread drains a driver queue")
    p.add_argument("--txq-limit", type=int, default=1024, metavar="N",
                   help="deferred tx: the driver queue's limit (packets)")
    p.add_argument("--rr", default="64:64", metavar="REQ:RESP",
                   help="rr: request and response payload bytes")
    p.add_argument("--msg-size", type=int, default=1448, metavar="BYTES",
                   help="tx: bytes per send (TCP) or per datagram (UDP)")
    p.add_argument("--no-txcsum", action="store_true", help="turn tx checksum offload off")
    p.add_argument("--tso", action="store_true", help="turn TCP segmentation offload on")
    p.add_argument("--trafgens", type=int, default=1, metavar="G",
                   help="generators driving the host (rx, forward): each sends its share "
                        "of the flows and the rate")
    p.add_argument("--irq-frames", type=int, default=32, metavar="N",
                   help="interrupt moderation: interrupt after N packets (ethtool rx-frames)")
    p.add_argument("--irq-usecs", type=int, default=50, metavar="US",
                   help="or by time (ethtool rx-usecs; 0: at once), as --irq-mode says")
    p.add_argument("--irq-mode", default="itr", choices=IRQ_MODES,
                   help="itr: US is the least interval between interrupts (Intel's "
                        "throttle: a packet on a quiet queue interrupts at once); delay: "
                        "the interrupt goes US after the first packet not yet signalled")
    p.add_argument("--impair", metavar="NAME=RATE,...",
                   help="damage on the wire (loss, reorder, dup, badsum, truncate), e.g. "
                        "loss=0.01,reorder=0.02: the generator's frames (rx, forward) or "
                        "the host's (tx)")
    p.add_argument("--capture", metavar="DIR",
                   help="the generator writes what it receives on each port as pcap here")
    p.add_argument("--source", default=None, choices=SOURCES,
                   help="traffic from the NIC's internal template source or the generator "
                        "(default: internal for rx, trafgen for the other workloads)")
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
    p.add_argument("--flow-control", action="store_true",
                   help="with --source internal --rate max: the NIC's line pauses while the "
                        "host's queues are full (finds a model's peak without overload; "
                        "without it, max overruns netisr queues: receive livelock)")
    p.add_argument("--sched", default="other", choices=SCHEDS,
                   help="every role's scheduling policy: other (the default), or batch "
                        "(SCHED_BATCH: no wakeup preemption; more throughput, less latency)")
    p.add_argument("--seed", type=int, default=1)


def config_from_args(args: argparse.Namespace, model: str) -> RunConfig:
    from dispatch.runtime.config import RunConfig

    duration = args.duration
    if duration is None and args.count is None and args.replay is None:
        duration = 2.0
    source = args.source or ("internal" if args.workload == "rx" and not args.replay
                             else "trafgen")
    return RunConfig(
        model=model, netisr=args.netisr, users=args.users, rxq=args.rxq, policy=args.policy,
        qlimit=args.qlimit, batch=args.batch, quota=args.quota, source=source,
        workload=args.workload, tx_dispatch=args.tx_dispatch, txq_limit=args.txq_limit,
        rr=args.rr, msg_size=args.msg_size, txcsum=not args.no_txcsum, tso=args.tso,
        capture=args.capture, impair=args.impair, irq_frames=args.irq_frames,
        trafgens=args.trafgens,
        irq_usecs=args.irq_usecs, irq_mode=args.irq_mode,
        proto=args.proto, rate=args.rate, duration=duration, count=args.count, size=args.size,
        flows=args.flows, replay=args.replay, fixcsum=args.fixcsum,
        sockets_auto=args.sockets == "auto", digest=args.digest, rxcsum=not args.no_rxcsum,
        lro=args.lro, cpus=tuple(args.cpu), bindthreads=args.bindthreads,
        ithread_prio=args.ithread_prio, sched=args.sched, flow_control=args.flow_control,
        seed=args.seed,
    ).validate()


def _fail_usage(cmd: str, msg: object) -> int:
    print(f"dispatch {cmd}: {msg}", file=sys.stderr)
    return 2


def _stamp(doc: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Record the software version and the experiment file (if any) in a document."""
    doc.setdefault("software", {"dispatch_emu": __version__})
    exp = getattr(args, "_experiment", None)
    if exp:
        doc["experiment"] = exp
    return doc


def _show_config(args: argparse.Namespace, cfg: RunConfig, **extra: Any) -> int:
    import json

    print(json.dumps({"command": args.command, **extra, "config": cfg.as_dict(),
                      **({"experiment": args._experiment} if getattr(args, "_experiment", None)
                         else {})}, indent=1, default=str))
    return 0


def _write_json(path: str, doc: dict[str, Any]) -> None:
    import json

    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def _run(args: argparse.Namespace) -> int:
    from dispatch.liveview import Progress
    from dispatch.runtime.config import ConfigError
    from dispatch.runtime.controller import RunFailed, run_sync
    from dispatch.runtime.summary import format_summary

    try:
        cfg = config_from_args(args, args.model)
    except ConfigError as e:
        return _fail_usage("run", e)
    if args.show_config:
        return _show_config(args, cfg)
    try:
        with Progress(quiet=args.quiet):
            doc = run_sync(cfg)
    except RunFailed as e:
        print(f"dispatch run: FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dispatch run: interrupted; everything stopped and cleaned up", file=sys.stderr)
        return 1
    _stamp(doc, args)
    if args.json:
        _write_json(args.json, doc)
    if not args.quiet:
        print(format_summary(doc))
    return 0 if doc["conservation"]["ok"] else 1


def _models(text: str) -> list[str]:
    from dispatch.runtime.placement import MODELS

    ms = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in ms if m not in MODELS]
    if bad or not ms:
        raise argparse.ArgumentTypeError(
            f"unknown model {bad[0] if bad else text!r}; valid: {', '.join(MODELS)}")
    return ms


def _rates(text: str) -> list[float]:
    from dispatch.sweep import parse_rates

    try:
        return parse_rates(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _compare(args: argparse.Namespace) -> int:
    from dispatch.compare import compare, format_table, write_csv
    from dispatch.liveview import Progress
    from dispatch.runtime.config import ConfigError
    from dispatch.runtime.controller import RunFailed, _asyncio_run
    from dispatch.runtime.placement import MODELS

    models = args.models or ["direct", "deferred"]
    bad = [m for m in models if m not in MODELS]
    if bad:
        return _fail_usage("compare", f"unknown model {bad[0]!r}; valid: {', '.join(MODELS)}")
    if args.repeat < 1:
        return _fail_usage("compare", "--repeat must be at least 1")
    if args.plot and not args.plot.endswith((".png", ".svg", ".pdf")):
        return _fail_usage("compare", f"--plot {args.plot!r}: name a .png, .svg or .pdf file")
    try:
        cfg = config_from_args(args, models[0])
    except ConfigError as e:
        return _fail_usage("compare", e)
    if args.show_config:
        return _show_config(args, cfg, models=models, repeat=args.repeat)

    try:
        with Progress(quiet=args.quiet) as prog:
            out = _asyncio_run(compare(cfg, models, args.repeat, prog.step))
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
        _write_json(args.json, _stamp({"schema_version": 1, "kind": "compare",
                                       "runs": out["runs"], "summary": public}, args))
    if args.csv:
        write_csv(args.csv, public)
    if args.plot:
        from dispatch import plots

        fig = plots.compare_figure(public)
        plots.save(fig, args.plot)
        plots.close(fig)
    return 0 if summary["conservation_ok"] else 1


def _sweep(args: argparse.Namespace) -> int:
    import os

    from dispatch.liveview import Progress
    from dispatch.runtime.config import ConfigError
    from dispatch.runtime.controller import RunFailed, _asyncio_run
    from dispatch.sweep import format_table, sweep, write_csv

    if not args.rates:
        return _fail_usage("sweep", "give the offered rates: --rates 10k,20k,50k or "
                                    "--rates 10k:100k:5 (START:STOP:STEPS)")
    if not 0 <= args.loss_ratio < 1:
        return _fail_usage("sweep", f"--loss-ratio {args.loss_ratio}: a fraction in [0, 1)")
    if not 0 < args.tolerance < 1:
        return _fail_usage("sweep", f"--tolerance {args.tolerance}: a fraction in (0, 1)")
    if not 0 < args.collapse < 1:
        return _fail_usage("sweep", f"--collapse {args.collapse}: a fraction in (0, 1)")
    if args.workload == "rr":
        return _fail_usage("sweep", "--workload rr is closed-loop (one transaction "
                                    "outstanding per flow): there is no offered rate to "
                                    "sweep; sweep rx, tx or forward, or compare rr runs")
    models: list[str] = args.model
    if args.duration is None and args.count is None and args.replay is None:
        args.duration = 1.0  # a sweep has many points: one second each unless told
    try:
        cfg = config_from_args(args, models[0]).replace(rate=args.rates[0]).validate()
    except ConfigError as e:
        return _fail_usage("sweep", e)
    if args.show_config:
        return _show_config(args, cfg, models=models,
                            rates=[r if r != float("inf") else "max" for r in args.rates])
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    try:
        with Progress(quiet=args.quiet) as prog:
            doc = _asyncio_run(sweep(cfg, models, args.rates, ndr=not args.no_ndr,
                                     loss_ratio=args.loss_ratio, tolerance=args.tolerance,
                                     collapse_fraction=args.collapse, progress=prog.step))
    except RunFailed as e:
        print(f"dispatch sweep: FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dispatch sweep: interrupted; everything stopped and cleaned up", file=sys.stderr)
        return 1
    _stamp(doc, args)
    print(format_table(doc))
    json_path = args.json or (os.path.join(args.out, "sweep.json") if args.out else None)
    csv_path = args.csv or (os.path.join(args.out, "sweep.csv") if args.out else None)
    if json_path:
        _write_json(json_path, doc)
    if csv_path:
        write_csv(csv_path, doc)
    if args.out:
        from dispatch import plots

        for name, fig in plots.sweep_figures(doc).items():
            plots.save_both(fig, os.path.join(args.out, name))
            plots.close(fig)
        print(f"\nwrote {args.out}/: sweep.json, sweep.csv, delivered, latency and drops "
              f"(.png, .svg)")
    return 0 if doc["conservation_ok"] else 1


def _top(args: argparse.Namespace) -> int:
    from dispatch.liveview import format_top, watch

    if args.interval <= 0:
        return _fail_usage("top", "--interval must be positive")
    return watch(format_top, args.run_id, once=args.once, interval_s=args.interval,
                 iterations=args.iterations)


def _report(args: argparse.Namespace) -> int:
    from dispatch.report import ReportError, write

    try:
        write(args.documents, args.output)
    except ReportError as e:
        return _fail_usage("report", e)
    except OSError as e:
        return _fail_usage("report", f"cannot write {args.output}: {e}")
    if not args.quiet:
        print(f"wrote {args.output}")
    return 0


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
    run.add_argument("--quiet", action="store_true", help="no progress and no summary")
    _experiment_options(run)
    run.set_defaults(func=_run)
    cmp_ = sub.add_parser("compare", help="compare dispatch models side by side")
    cmp_.add_argument("models", nargs="*", metavar="MODEL",
                      help=f"models to compare (default: direct deferred); valid: "
                           f"{', '.join(MODELS)}")
    add_workload_options(cmp_)
    cmp_.add_argument("--repeat", type=int, default=3, help="runs per model, interleaved")
    cmp_.add_argument("--json", metavar="FILE", help="every run's document plus the summary")
    cmp_.add_argument("--csv", metavar="FILE", help="the summary table as CSV")
    cmp_.add_argument("--plot", metavar="FILE",
                      help="medians with their spread as a chart (.png, .svg or .pdf)")
    cmp_.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _experiment_options(cmp_)
    cmp_.set_defaults(func=_compare, rate=20_000.0, duration=None)
    sw = sub.add_parser("sweep", help="delivered and latency vs offered load; MLFRR, NDR, "
                                      "collapse")
    sw.add_argument("--model", type=_models, default=["direct", "deferred"], metavar="M[,M...]",
                    help=f"models, comma-separated (default direct,deferred); valid: "
                         f"{', '.join(MODELS)}")
    sw.add_argument("--rates", type=_rates, metavar="LIST|START:STOP:STEPS",
                    help="offered rates in pps: 10k,20k,max or 10k:100k:5")
    add_workload_options(sw)
    sw.add_argument("--no-ndr", action="store_true", help="skip the NDR binary search")
    sw.add_argument("--loss-ratio", type=float, default=0.0, metavar="R",
                    help="loss ratio the NDR search accepts (0: no drop; 0.005: a PDR)")
    sw.add_argument("--tolerance", type=float, default=0.05, metavar="F",
                    help="NDR search ends when the bracket is narrower than F x its top")
    sw.add_argument("--collapse", type=float, default=0.1, metavar="F",
                    help="flag a collapse when delivered falls more than F below its peak")
    sw.add_argument("--out", metavar="DIR",
                    help="write sweep.json, sweep.csv and the plots (PNG and SVG) here")
    sw.add_argument("--json", metavar="FILE", help="the sweep document (every run included)")
    sw.add_argument("--csv", metavar="FILE", help="one row per point")
    sw.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _experiment_options(sw)
    sw.set_defaults(func=_sweep)
    top = sub.add_parser("top", help="a running experiment's roles, refreshing like top")
    top.add_argument("run_id", nargs="?", metavar="RUN_ID",
                     help="which experiment (default: the most recently active)")
    _watch_options(top)
    top.set_defaults(func=_top)
    rep = sub.add_parser("report", help="result documents as one self-contained HTML page")
    rep.add_argument("documents", nargs="+", metavar="RESULT.json",
                     help="documents of dispatch run, compare or sweep (--json)")
    rep.add_argument("-o", "--output", default="report.html", metavar="FILE")
    rep.add_argument("--quiet", action="store_true")
    rep.set_defaults(func=_report)
    ns = sub.add_parser("netstat", help="show statistics in FreeBSD netstat layouts")
    ns.add_argument("-m", action="store_true", help="mbuf pool statistics (netstat -m)")
    ns.add_argument("-Q", action="store_true", help="netisr configuration and workstreams")
    ns.add_argument("-s", action="store_true", help="per-protocol statistics and drops")
    ns.add_argument("--pool", help="name of a live pool (a /dev/shm segment)")
    ns.add_argument("--result", metavar="FILE", help="a result document (dispatch run --json)")
    ns.add_argument("--watch", nargs="?", const="", metavar="RUN_ID",
                    help="re-print the view from a running experiment's live state")
    _watch_options(ns)
    ns.set_defaults(func=_netstat)
    pool = sub.add_parser("pool", help="manage pool segments")
    psub = pool.add_subparsers(dest="pool_command", metavar="ACTION", required=True)
    clean = psub.add_parser("clean", help="remove segments whose creator has died")
    clean.add_argument("names", nargs="+", metavar="NAME")
    clean.set_defaults(func=_pool_clean)
    from dispatch.deploy_cli import add_deploy_commands

    add_deploy_commands(sub)  # keys, agent: tcp:// across hosts, roles in containers
    return p


def _experiment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE",
                   help="take options from an experiment file (TOML); the command line "
                        "overrides it")
    p.add_argument("--show-config", action="store_true",
                   help="print the effective configuration as JSON and exit")


def _watch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="refresh period")
    p.add_argument("--iterations", type=int, default=None, metavar="N",
                   help="stop after N frames")


def main(argv: list[str] | None = None) -> int:
    from dispatch import experiment

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    if getattr(args, "config", None):
        explicit = experiment.explicit_dests(build_parser, argv)
        try:
            taken = experiment.apply(args, parser, args.command, args.config, explicit)
        except experiment.ExperimentError as e:
            return _fail_usage(args.command, e)
        args._experiment = experiment.provenance(args.config, taken, explicit)
    return func(args)


if __name__ == "__main__":
    raise SystemExit(main())
