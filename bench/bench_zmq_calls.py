"""Benchmark: ZeroMQ calls per rr transaction, by role, and the CPU each call costs.

On this VM most of a role's CPU in an rr run goes into ZeroMQ calls (a poll
that sleeps, a send that wakes an I/O thread), and a bare relay pays one
blocking receive and one send per hop. This runs `dispatch run --workload rr`
with every role process's pyzmq calls counted and timed in thread CPU (a
`sitecustomize` hook wraps `Socket.send/recv/get/setsockopt` and
`Poller.poll`), and prints per role: calls per transaction and CPU per call.
(A role's look at its control channel is a one-socket `Poller.poll(0)`;
the ithread, netisr and user threads and the generator make no other poll.) The hook adds well under a microsecond a call; the counts
are what this is for.

    python bench/bench_zmq_calls.py [--model direct] [--batch 1] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: what the hook wraps: module, class, method
WRAPPED = (("zmq.sugar.socket", "Socket", "send"), ("zmq.sugar.socket", "Socket", "recv"),
           ("zmq.sugar.socket", "Socket", "get"), ("zmq.sugar.socket", "Socket", "setsockopt"),
           ("zmq.sugar.poll", "Poller", "poll"))

HOOK = '''
import atexit, importlib, json, os, sys, time
_OUT = os.environ.get("BENCH_ZMQ_CALLS_DIR")
if _OUT:  # (sys.argv is not set yet here: the role processes are told apart at exit)
    _acc = {}
    def _wrap(mod, cls, meth):
        c = getattr(importlib.import_module(mod), cls)
        fn = getattr(c, meth)
        key = f"{cls}.{meth}"
        e = _acc.setdefault(key, [0, 0])
        clock = time.thread_time_ns
        def w(*a, **k):
            t = clock()
            try:
                return fn(*a, **k)
            finally:
                e[0] += 1
                e[1] += clock() - t
        setattr(c, meth, w)
    for m, c, f in json.loads(os.environ["BENCH_ZMQ_CALLS_WRAP"]):
        _wrap(m, c, f)
    def _dump():
        if "--role" not in sys.argv:  # (the role processes: python -m ...agent --role R)
            return
        with open(os.path.join(_OUT, f"{os.getpid()}.json"), "w") as f:
            json.dump({"argv": sys.argv, "calls": _acc}, f)
    atexit.register(_dump)
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="direct")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hook = Path(tmp, "hook")
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(HOOK)
        out = Path(tmp, "out")
        out.mkdir()
        doc_path = Path(tmp, "run.json")
        env = dict(os.environ, BENCH_ZMQ_CALLS_DIR=str(out),
                   BENCH_ZMQ_CALLS_WRAP=json.dumps(WRAPPED),
                   PYTHONPATH=os.pathsep.join(
                       [str(hook)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        subprocess.run([sys.executable, "-m", "dispatch.cli", "run", "--model", args.model,
                        "--workload", "rr", "--rr", "64:64", "--duration", str(args.seconds),
                        "--flows", "1", "--batch", str(args.batch), "--quiet",
                        "--json", str(doc_path)], env=env, check=True)
        doc = json.loads(doc_path.read_text())
        fig = doc["egress"]["figures"]
        n = max(1, int(fig["transactions"]))
        print(f"# rr 64:64, {args.model}, batch {args.batch}: {n} transactions, RTT p50 "
              f"{fig['rtt_us']['p50']:.0f} us; per role: calls per transaction "
              f"(thread CPU per call, us)")
        for f in sorted(out.glob("*.json")):
            d = json.loads(f.read_text())
            argv = d["argv"]
            role = argv[argv.index("--role") + 1] + argv[argv.index("--index") + 1]
            cells = [f"{k} {c / n:5.2f} ({ns / c / 1e3:5.1f})"
                     for k, (c, ns) in sorted(d["calls"].items()) if c]
            print(f"{role:10s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
