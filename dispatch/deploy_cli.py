"""`dispatch keys` and `dispatch agent`: what a deployment across containers and hosts runs.

`dispatch keys DIR` writes the CURVE key pairs a tcp:// deployment needs
(z85 files made by zmq.auth: server.key, server.key_secret, client.key,
client.key_secret); give the directory to every process with
DISPATCH_KEYS=DIR, or the keys themselves with the DISPATCH_*_PUBLIC/SECRET
variables (`--env` prints them). A remote generator needs only server.key
and the client pair; the host's roles need all four.

`dispatch agent --role R --index N --controller tcp://HOST:PORT` is one
attached role: it waits for a controller, serves it, and on release waits
for the next one (docker compose starts these; a controller started later
with DISPATCH_ATTACH=all finds them). `--index auto` derives the index from
the container's name (compose replicas are named PROJECT-SERVICE-N).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

HEALTH_FILE = "/tmp/dispatch-agent.alive"
HEALTH_MAX_AGE_S = 10.0


def add_deploy_commands(sub: Any) -> None:
    """Register `keys` and `agent` on the dispatch CLI's subparsers."""
    keys = sub.add_parser("keys", help="write CURVE key pairs for tcp:// across hosts")
    keys.add_argument("dir", metavar="DIR", help="directory to write the keys into")
    keys.add_argument("--force", action="store_true", help="overwrite existing keys")
    keys.add_argument("--env", action="store_true",
                      help="also print the keys as DISPATCH_* environment assignments")
    keys.set_defaults(func=keys_command)
    env = os.environ
    ag = sub.add_parser("agent", help="run one role that attaches to controllers by address")
    ag.add_argument("--controller", default=env.get("DISPATCH_CONTROLLER"),
                    help="controller endpoint, e.g. tcp://ctl:5550 (env DISPATCH_CONTROLLER)")
    ag.add_argument("--role", default=env.get("DISPATCH_ROLE"),
                    help="nic, ithread, netisr, user, txthread or trafgen (env DISPATCH_ROLE)")
    ag.add_argument("--index", default=env.get("DISPATCH_INDEX", "0"),
                    help="instance number, or 'auto' from the container name "
                         "(env DISPATCH_INDEX)")
    ag.add_argument("--health-file", default=env.get("DISPATCH_HEALTH_FILE", HEALTH_FILE),
                    help="file the heartbeat touches, for healthchecks")
    ag.add_argument("--check-health", action="store_true",
                    help="exit 0 if this container's agent beat within "
                         f"{HEALTH_MAX_AGE_S:g} s, else 1 (a healthcheck)")
    ag.add_argument("--make-keys", action="store_true",
                    help="first write CURVE keys into $DISPATCH_KEYS unless it holds them "
                         "(in compose, nic does this in the shared /dev/shm)")
    ag.add_argument("--sessions", type=int, default=None,
                    help="serve this many controllers, then exit (default: forever)")
    ag.set_defaults(func=agent_command)


def write_keys(directory: str | os.PathLike[str], *, force: bool = False) -> dict[str, str]:
    """Write server and client key pairs into `directory`; returns their z85 strings."""
    import zmq.auth

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    existing = [p.name for p in (d / n for n in ("server.key", "server.key_secret",
                                                 "client.key", "client.key_secret"))
                if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{d} already holds {', '.join(existing)}: pass --force to "
                              "replace them (every process must then get the new keys)")
    out: dict[str, str] = {}
    for name in ("server", "client"):
        public_f, secret_f = zmq.auth.create_certificates(str(d), name)
        os.chmod(secret_f, 0o600)
        os.chmod(public_f, 0o644)
        pub, sec = zmq.auth.load_certificate(secret_f)
        assert sec is not None
        out[f"DISPATCH_{name.upper()}_PUBLIC"] = pub.decode()
        out[f"DISPATCH_{name.upper()}_SECRET"] = sec.decode()
    return out


def keys_command(args: argparse.Namespace) -> int:
    try:
        keys = write_keys(args.dir, force=args.force)
    except (FileExistsError, OSError) as e:
        print(f"dispatch keys: {e}", file=sys.stderr)
        return 2
    print(f"wrote server.key, server.key_secret, client.key, client.key_secret in {args.dir}; "
          f"use DISPATCH_KEYS={args.dir}", file=sys.stderr)
    if args.env:
        for k, v in keys.items():
            print(f"{k}={v}")
    return 0


def nameserver() -> str:
    """The first nameserver of /etc/resolv.conf (Docker's embedded DNS in a container)."""
    try:
        with open("/etc/resolv.conf") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    return parts[1]
    except OSError:
        pass
    raise OSError("no nameserver in /etc/resolv.conf")


def ptr_lookup(ip: str, server: str, timeout_s: float = 2.0) -> str:
    """The PTR name of IPv4 `ip`, asked of DNS `server` directly (getaddrinfo would
    answer from /etc/hosts, which holds only the container's id)."""
    import struct

    qid = os.getpid() & 0xFFFF
    qname = b"".join(bytes([len(p)]) + p.encode() for p in
                     [*reversed(ip.split(".")), "in-addr", "arpa"]) + b"\0"
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 12, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        s.sendto(query, (server, 53))
        msg = s.recv(4096)
    rid, flags, qd, an = struct.unpack("!HHHH", msg[:8])
    if rid != qid or flags & 0xF or an == 0:
        raise OSError(f"no PTR record for {ip} (rcode {flags & 0xF})")

    def name_at(off: int) -> tuple[str, int]:
        labels: list[str] = []
        end = -1
        while True:
            n = msg[off]
            if n & 0xC0 == 0xC0:  # a compression pointer
                if end < 0:
                    end = off + 2
                off = ((n & 0x3F) << 8) | msg[off + 1]
                continue
            if n == 0:
                return ".".join(labels), (end if end >= 0 else off + 1)
            labels.append(msg[off + 1:off + 1 + n].decode(errors="replace"))
            off += 1 + n

    off = 12
    for _ in range(qd):
        off = name_at(off)[1] + 4
    for _ in range(an):
        off = name_at(off)[1]
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        off += 10
        if rtype == 12:
            return name_at(off)[0]
        off += rdlen
    raise OSError(f"no PTR record for {ip}")


def derive_index(wait_s: float = 10.0) -> int:
    """This container's replica number minus one, from its name (PROJECT-SERVICE-N) as
    Docker's DNS gives it for the container's address."""
    from dispatch.runtime.transport import local_address

    deadline = time.monotonic() + wait_s
    last = ""
    while True:
        try:
            name = ptr_lookup(local_address(), nameserver())
            last = name
            m = re.search(r"[-_](\d+)(?:\.|$)", name.split(".")[0] + ".")
            if m and int(m.group(1)) >= 1:
                return int(m.group(1)) - 1
        except OSError as e:
            last = repr(e)
        if time.monotonic() > deadline:
            raise ValueError(f"--index auto: cannot derive a replica number from this "
                             f"host's name ({last or 'none'}); give --index N or "
                             "DISPATCH_INDEX=N")
        time.sleep(0.5)


def make_keys_once(directory: str) -> None:
    """Write keys into `directory` unless a server secret key is already there."""
    if not directory:
        raise ValueError("--make-keys needs DISPATCH_KEYS=DIR (where to write the keys)")
    d = Path(directory)
    if (d / "server.key_secret").exists():
        return
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_keys(d, force=True)
    print(f"dispatch agent: wrote CURVE keys in {d}", file=sys.stderr, flush=True)


def check_health(path: str, max_age_s: float = HEALTH_MAX_AGE_S) -> bool:
    try:
        return time.time() - os.path.getmtime(path) <= max_age_s
    except OSError:
        return False


def agent_command(args: argparse.Namespace) -> int:
    if args.check_health:
        return 0 if check_health(args.health_file) else 1
    from dispatch.runtime.placement import ROLES
    from dispatch.runtime.transport import TransportError, current

    if not args.controller:
        print("dispatch agent: give --controller tcp://HOST:PORT (or DISPATCH_CONTROLLER)",
              file=sys.stderr)
        return 2
    if args.role not in ROLES:
        print(f"dispatch agent: --role {args.role!r} is not valid: one of {', '.join(ROLES)}",
              file=sys.stderr)
        return 2
    try:
        if args.make_keys:
            make_keys_once(os.environ.get("DISPATCH_KEYS", ""))
        index = derive_index() if args.index == "auto" else int(args.index)
        if index < 0:
            raise ValueError(f"--index {index} is not valid: a number from 0, or 'auto'")
        current()  # the transport configuration fails here, before anything starts
    except (ValueError, TransportError, OSError) as e:
        msg = str(e) if not str(e).startswith("invalid literal") else \
            f"--index {args.index!r} is not valid: a number from 0, or 'auto'"
        print(f"dispatch agent: {msg}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))
    from dispatch.runtime import hwroles, roles  # noqa: F401  (register the role factories)
    from dispatch.runtime.agent import attach_forever

    print(f"dispatch agent: {args.role}{index} attaching to {args.controller}",
          file=sys.stderr, flush=True)
    return attach_forever(args.controller, args.role, index, health_file=args.health_file,
                          sessions=args.sessions)
