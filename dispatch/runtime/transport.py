"""Endpoints and their security: ipc:// on one host, tcp:// with CURVE across hosts.

Every queue and control channel of the runtime has a name (``ctl``,
``netisr0``, ``wire``...). On one host they are ``ipc://`` paths in the run
directory (the default, and the fastest). Across containers and hosts they
are ``tcp://HOST:PORT``: each name has a fixed port offset from a base, HOST
is the address of the process that binds it (it says so in its hello), and
that process binds ``tcp://*:PORT`` (or a given interface) instead.

Off loopback, tcp:// is authenticated and encrypted with ZeroMQ CURVE by
default: binders are CURVE servers (the host's server key) and run a ZAP
handler that accepts only the client public keys it was given; connectors
are CURVE clients. Plain tcp:// on a non-loopback address is refused unless
the explicit ``plain_tcp`` flag is set. A client refused by the ZAP handler
is counted (:func:`zap_counts`) and logged. Keys come from ``dispatch keys``
(z85 files written by zmq.auth), found by directory or environment variable.

Configuration is read from the environment (:meth:`TransportConfig.from_env`),
so that local children, containers and remote agents share one vocabulary;
see the README's table of ``DISPATCH_*`` variables.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.utils import z85 as Z85

log = logging.getLogger("dispatch.transport")

KINDS = ("ipc", "tcp")
DEFAULT_PORT_BASE = 5550
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
BIND_RETRY_S = 3.0  # how long a bind waits for a port its previous holder releases

# Environment variables (the README lists them with their defaults).
ENV_TRANSPORT = "DISPATCH_TRANSPORT"  # ipc | tcp
ENV_PORT_BASE = "DISPATCH_PORT_BASE"  # first port of the tcp layout
ENV_ADVERTISE = "DISPATCH_ADVERTISE"  # the address others reach this process at
ENV_BIND = "DISPATCH_BIND"  # the interface binders bind (default all: *)
ENV_KEYS = "DISPATCH_KEYS"  # a directory written by `dispatch keys`
ENV_PLAIN_TCP = "DISPATCH_PLAIN_TCP"  # 1: allow plain tcp off loopback
ENV_SERVER_PUBLIC = "DISPATCH_SERVER_PUBLIC"  # z85 keys, instead of (or over) the directory
ENV_SERVER_SECRET = "DISPATCH_SERVER_SECRET"
ENV_CLIENT_PUBLIC = "DISPATCH_CLIENT_PUBLIC"
ENV_CLIENT_SECRET = "DISPATCH_CLIENT_SECRET"
ENV_ALLOWED_CLIENTS = "DISPATCH_ALLOWED_CLIENTS"  # comma-separated z85 client public keys


class TransportError(ValueError):
    """A bad endpoint or a refused transport: the message names it and what is valid."""


# ------------------------------------------------------------------ the port layout
_FIXED = {"ctl": 0, "heartbeat": 1, "wire": 2, "reply": 3, "doorbell": 4, "reply1": 5,
          "txq": 6}
_INDEXED = {"irq": (10, 16), "netisr": (30, 64), "user": (100, 64),
            # generator g > 0: its port-0 and port-1 receiving ends (g 0 has reply, reply1)
            "reply-g": (200, 16), "reply1-g": (220, 16)}


def port_offset(what: str) -> int:
    """The port of endpoint `what` relative to the base (ctl is the base itself)."""
    if what in _FIXED:
        return _FIXED[what]
    for prefix, (first, count) in _INDEXED.items():
        rest = what[len(prefix):]
        if what.startswith(prefix) and rest.isdigit() and int(rest) < count:
            return first + int(rest)
    raise TransportError(f"no endpoint named {what!r}: valid are {', '.join(_FIXED)}, "
                         "irq0-15, netisr0-63, user0-63, reply-g1-15, reply1-g1-15")


def binder_of(what: str) -> str:
    """The role instance that binds endpoint `what` ("controller" for ctl/heartbeat)."""
    port_offset(what)  # validates the name
    if what in ("ctl", "heartbeat"):
        return "controller"
    if what in ("wire", "doorbell"):
        return "nic0"
    if what in ("reply", "reply1"):
        return "trafgen0"
    if what.startswith(("reply-g", "reply1-g")):
        return "trafgen" + what.rsplit("g", 1)[1]
    if what == "txq":
        return "txthread0"
    if what.startswith("irq"):
        return "ithread" + what[3:]
    return what  # netisrN, userN


def make_endpoint(what: str, *, kind: str, rundir: str = "", host: str = "127.0.0.1",
                  port_base: int = DEFAULT_PORT_BASE) -> str:
    """The endpoint of queue/channel `what`: ipc:// in `rundir`, or tcp://HOST:PORT."""
    if kind == "ipc":
        if not rundir:
            raise TransportError("an ipc:// endpoint needs a run directory")
        return f"ipc://{rundir}/{what}"
    if kind == "tcp":
        return f"tcp://{_host_part(host)}:{port_base + port_offset(what)}"
    raise TransportError(f"transport {kind!r} is not valid: one of {', '.join(KINDS)}")


def heartbeat_endpoint(ctl_endpoint: str) -> str:
    """The heartbeat channel beside a controller endpoint (tcp: the next port)."""
    if ctl_endpoint.startswith("tcp://"):
        host, port = split_tcp(ctl_endpoint)
        return f"tcp://{_host_part(host)}:{port + 1}"
    if ctl_endpoint.startswith("ipc://"):
        return ctl_endpoint + ".hb"
    raise TransportError(f"controller endpoint {ctl_endpoint!r} is not valid: "
                         "ipc://PATH or tcp://HOST:PORT")


def _host_part(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def split_tcp(endpoint: str) -> tuple[str, int]:
    """(host, port) of tcp://HOST:PORT (IPv6 hosts in brackets)."""
    if not endpoint.startswith("tcp://"):
        raise TransportError(f"{endpoint!r} is not a tcp:// endpoint")
    rest = endpoint[len("tcp://"):]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise TransportError(f"endpoint {endpoint!r} is not valid: tcp://HOST:PORT "
                             "with a port from 1 to 65535")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost (names are resolved)."""
    if host in ("localhost", "ip6-localhost"):
        return True
    if host in ("*", "0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


# ------------------------------------------------------------------------- keys
@dataclass(frozen=True)
class Keys:
    """CURVE keys of one process: a server pair to bind, a client pair to connect."""

    server_public: bytes | None = None
    server_secret: bytes | None = None
    client_public: bytes | None = None
    client_secret: bytes | None = None
    allowed_clients: frozenset[bytes] = frozenset()

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> Keys:
        """Keys from a directory written by `dispatch keys` (server.key[_secret],
        client.key[_secret]); every *.key public file there is an allowed client,
        except the server's own."""
        import zmq.auth

        d = Path(path)
        if not d.is_dir():
            raise TransportError(f"key directory {str(d)!r} does not exist: "
                                 "make one with `dispatch keys DIR`")

        def pair(name: str) -> tuple[bytes | None, bytes | None]:
            secret_f, public_f = d / f"{name}.key_secret", d / f"{name}.key"
            if secret_f.exists():
                pub, sec = zmq.auth.load_certificate(secret_f)
                return pub, sec
            if public_f.exists():
                pub, _ = zmq.auth.load_certificate(public_f)
                return pub, None
            return None, None

        spub, ssec = pair("server")
        cpub, csec = pair("client")
        allowed = set()
        for f in sorted(d.glob("*.key")):
            if f.stem == "server":
                continue
            pub, _ = zmq.auth.load_certificate(f)
            allowed.add(pub)
        return cls(spub, ssec, cpub, csec, frozenset(allowed))

    def with_env(self, env: Mapping[str, str]) -> Keys:
        """These keys with any z85 key given in the environment taking precedence."""

        def z85(name: str, current: bytes | None) -> bytes | None:
            v = env.get(name, "").strip()
            if not v:
                return current
            if len(v) != 40:
                raise TransportError(f"{name} must be a 40-character z85 key, got {len(v)} "
                                     "characters")
            return v.encode()

        allowed = set(self.allowed_clients)
        extra = [k.strip() for k in env.get(ENV_ALLOWED_CLIENTS, "").split(",") if k.strip()]
        for k in extra:
            if len(k) != 40:
                raise TransportError(f"{ENV_ALLOWED_CLIENTS} holds {k!r}: not a 40-character "
                                     "z85 key")
            allowed.add(k.encode())
        cpub = z85(ENV_CLIENT_PUBLIC, self.client_public)
        if cpub is not None and not extra and not allowed:
            allowed.add(cpub)
        return Keys(z85(ENV_SERVER_PUBLIC, self.server_public),
                    z85(ENV_SERVER_SECRET, self.server_secret), cpub,
                    z85(ENV_CLIENT_SECRET, self.client_secret), frozenset(allowed))

    @property
    def any(self) -> bool:
        return any((self.server_public, self.server_secret, self.client_public,
                    self.client_secret))

    def can_serve(self) -> bool:
        return bool(self.server_public and self.server_secret)

    def can_connect(self) -> bool:
        return bool(self.server_public and self.client_public and self.client_secret)


# ------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class TransportConfig:
    """How this process makes, binds and connects endpoints."""

    kind: str = "ipc"
    port_base: int = DEFAULT_PORT_BASE
    advertise: str | None = None  # the address others reach this process at (None: auto)
    bind_interface: str = "*"
    plain_tcp: bool = False
    keys: Keys = field(default_factory=Keys)

    def validate(self) -> TransportConfig:
        if self.kind not in KINDS:
            raise TransportError(f"{ENV_TRANSPORT}={self.kind!r} is not valid: one of "
                                 f"{', '.join(KINDS)}")
        if not 1 <= self.port_base <= 65535 - 200:
            raise TransportError(f"{ENV_PORT_BASE}={self.port_base} is not valid: a port "
                                 "from 1 to 65335 (the layout uses 200 ports above it)")
        return self

    def to_env(self) -> dict[str, str]:
        """This configuration as DISPATCH_* variables, for the processes a launcher
        starts (`from_env` of the result gives it back)."""
        k = self.keys
        env = {ENV_TRANSPORT: self.kind, ENV_PORT_BASE: str(self.port_base),
               ENV_ADVERTISE: self.advertise or "", ENV_BIND: self.bind_interface,
               ENV_PLAIN_TCP: "1" if self.plain_tcp else "0", ENV_KEYS: "",
               ENV_ALLOWED_CLIENTS: ",".join(sorted(c.decode() for c in k.allowed_clients))}
        for name, value in ((ENV_SERVER_PUBLIC, k.server_public),
                            (ENV_SERVER_SECRET, k.server_secret),
                            (ENV_CLIENT_PUBLIC, k.client_public),
                            (ENV_CLIENT_SECRET, k.client_secret)):
            env[name] = value.decode() if value else ""
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TransportConfig:
        e = os.environ if env is None else env
        raw_base = e.get(ENV_PORT_BASE, str(DEFAULT_PORT_BASE))
        try:
            base = int(raw_base)
        except ValueError:
            raise TransportError(f"{ENV_PORT_BASE}={raw_base!r} is not valid: a port "
                                 "number") from None
        plain = e.get(ENV_PLAIN_TCP, "0").strip().lower()
        if plain not in ("", "0", "1", "no", "yes", "false", "true"):
            raise TransportError(f"{ENV_PLAIN_TCP}={plain!r} is not valid: 1 or 0")
        keys = Keys.from_dir(e[ENV_KEYS]) if e.get(ENV_KEYS) else Keys()
        return cls(kind=e.get(ENV_TRANSPORT, "ipc").strip() or "ipc", port_base=base,
                   advertise=e.get(ENV_ADVERTISE) or None,
                   bind_interface=e.get(ENV_BIND) or "*",
                   plain_tcp=plain in ("1", "yes", "true"),
                   keys=keys.with_env(e)).validate()


_current: TransportConfig | None = None
_current_lock = threading.Lock()


def current() -> TransportConfig:
    """This process's transport configuration (from the environment, read once)."""
    global _current
    with _current_lock:
        if _current is None:
            _current = TransportConfig.from_env()
        return _current


def set_current(cfg: TransportConfig | None) -> None:
    """Replace this process's configuration (None: read the environment again)."""
    global _current
    with _current_lock:
        _current = cfg.validate() if cfg is not None else None


def local_address(towards: str | None = None) -> str:
    """The address of this host on the route towards `towards` (or the default route)."""
    for target in ([towards] if towards else []) + ["192.0.2.1"]:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((socket.gethostbyname(target), 9))  # sends nothing
                return s.getsockname()[0]
        except OSError:
            continue
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


# ------------------------------------------------------------- bind and connect
def bind(sock: zmq.Socket[Any], endpoint: str, cfg: TransportConfig | None = None) -> None:
    """Bind `sock` to `endpoint`; tcp:// binds the interface and applies CURVE."""
    if not endpoint.startswith("tcp://"):
        sock.bind(endpoint)
        return
    cfg = cfg or current()
    host, port = split_tcp(endpoint)
    iface = host if is_loopback(host) else cfg.bind_interface
    if cfg.keys.can_serve():
        _start_zap(sock.context, cfg.keys.allowed_clients)
        sock.setsockopt(zmq.ZAP_DOMAIN, b"dispatch")
        sock.setsockopt(zmq.CURVE_SECRETKEY, cfg.keys.server_secret)  # type: ignore[arg-type]
        sock.setsockopt(zmq.CURVE_SERVER, 1)
    elif not is_loopback(iface) and not cfg.plain_tcp:
        raise TransportError(
            f"refusing to bind {endpoint} as plain tcp off loopback (interface {iface}): "
            f"give CURVE keys ({ENV_KEYS}=DIR from `dispatch keys DIR`), or set "
            f"{ENV_PLAIN_TCP}=1 to allow unauthenticated tcp")
    addr = f"tcp://{_host_part(iface)}:{port}"
    deadline = time.monotonic() + BIND_RETRY_S
    while True:
        try:
            sock.bind(addr)
            return
        except zmq.ZMQError as e:
            # a re-planned role binds the port its previous socket held, which ZeroMQ
            # releases asynchronously after close: wait for it, briefly
            if e.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise TransportError(f"cannot bind {addr} (for {endpoint}): {e.strerror}; "
                                     f"is another run using ports from {ENV_PORT_BASE}?"
                                     ) from e
            time.sleep(0.02)


def connect(sock: zmq.Socket[Any], endpoint: str, cfg: TransportConfig | None = None) -> None:
    """Connect `sock` to `endpoint`; tcp:// applies CURVE client keys."""
    if not endpoint.startswith("tcp://"):
        sock.connect(endpoint)
        return
    cfg = cfg or current()
    host, _ = split_tcp(endpoint)
    k = cfg.keys
    if k.can_connect():
        sock.setsockopt(zmq.CURVE_SERVERKEY, k.server_public)  # type: ignore[arg-type]
        sock.setsockopt(zmq.CURVE_PUBLICKEY, k.client_public)  # type: ignore[arg-type]
        sock.setsockopt(zmq.CURVE_SECRETKEY, k.client_secret)  # type: ignore[arg-type]
    elif k.any:
        raise TransportError(f"cannot connect {endpoint} with CURVE: need the server public "
                             "key and a client key pair (server.key, client.key_secret from "
                             "`dispatch keys`)")
    elif not is_loopback(host) and not cfg.plain_tcp:
        raise TransportError(
            f"refusing to connect {endpoint} as plain tcp off loopback: give CURVE keys "
            f"({ENV_KEYS}=DIR from `dispatch keys DIR`), or set {ENV_PLAIN_TCP}=1 to allow "
            "unauthenticated tcp")
    sock.connect(endpoint)


# ------------------------------------------------------------------ ZAP handler
_zap_lock = threading.Lock()
_zap_handlers: dict[int, ZapHandler] = {}
_counts = {"accepted": 0, "refused": 0}


def zap_counts() -> dict[str, int]:
    """CURVE clients accepted and refused by this process's ZAP handlers."""
    with _zap_lock:
        return dict(_counts)


class ZapHandler(threading.Thread):
    """ZeroMQ's authentication protocol (RFC 27) for one context: accepts CURVE
    clients whose public key is allowed, refuses (counts and logs) the others."""

    def __init__(self, ctx: zmq.Context[Any], allowed: frozenset[bytes]) -> None:
        super().__init__(name="dispatch-zap", daemon=True)
        self.allowed = allowed
        self.sock = zmq.Context.shadow(ctx.underlying).socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)

    def run(self) -> None:
        try:
            while True:
                try:
                    frames = self.sock.recv_multipart()
                except zmq.ContextTerminated:
                    return
                try:
                    reply = self.answer(frames)
                except Exception as e:  # a malformed request is refused, never fatal
                    log.warning("refused a malformed ZAP request: %r", e)
                    reply = [b"1.0", frames[1] if len(frames) > 1 else b"", b"500",
                             b"internal error", b"", b""]
                self.sock.send_multipart(reply)
        except zmq.ZMQError:
            return
        finally:
            self.sock.close(0)

    def answer(self, frames: list[bytes]) -> list[bytes]:
        version, request_id = frames[0], frames[1]
        address, mechanism = frames[3].decode(errors="replace"), frames[5]
        key = frames[6] if mechanism == b"CURVE" and len(frames) > 6 else b""
        z85 = Z85.encode(key).decode() if len(key) == 32 else ""
        ok = mechanism == b"CURVE" and z85.encode() in self.allowed
        with _zap_lock:
            _counts["accepted" if ok else "refused"] += 1
        if ok:
            return [version, request_id, b"200", b"OK", z85.encode(), b""]
        log.warning("refused %s client %s from %s: key not allowed", mechanism.decode(),
                    z85 or "(none)", address)
        return [version, request_id, b"400", b"client key not allowed", b"", b""]


def _start_zap(ctx: zmq.Context[Any], allowed: frozenset[bytes]) -> None:
    with _zap_lock:
        key = ctx.underlying
        h = _zap_handlers.get(key)
        if h is not None and h.is_alive():
            return
        h = ZapHandler(ctx, allowed)
        _zap_handlers[key] = h
    h.start()
