"""The wire: batches of Ethernet frames between a traffic generator and a NIC over ZeroMQ.

Frames cross between processes (and, over ``tcp://``, between hosts) here and
nowhere else, so the encoding is chosen for a Python data plane that must move
a million small frames a second: one single-part ZeroMQ message per **batch**,
never per frame, and no per-frame serialisation::

    header   struct '<4sBBHIQ': magic b'NWB1', version 2, kind
             (1 DATA, 2 EOS, 3 ACK), flags (1 = stamps present),
             count (frames in the batch), seq (DATA: batch number;
             EOS: frames sent in all; ACK: frames received in all)
    stamps   only with flag 1: array('Q'), one CLOCK_MONOTONIC ns per frame
    lengths  array('I') of the frame lengths (little-endian u32)
    payload  the frames concatenated, no padding between them

(Version 1 sent these as four parts of a multipart message: each part costs
a send and a receive, ~10 us apiece after a wakeup here, and a wire message
of a request/response transaction crosses twice; one part measured 35-50 us
less per round trip between two processes. Stamps come before the lengths
so that both stay aligned.)

Decoding (:meth:`WireRx.recv_batch`) yields memoryviews into the received
buffer: zero copies on the receiving side; :meth:`WireRx.recv_packed` does not
even split it.  Frames carry no FCS (as everywhere in the project).

Sockets: the sender is a DEALER and the receiver a ROUTER, i.e. PUSH/PULL
semantics (the sender blocks at the high-water mark, the receiver fair-queues
many senders) plus a way back to each sender.  That way back carries the one
control exchange the data plane needs: a PUSH-like socket on ``ipc://`` that
closes right after sending can lose its queued tail even with linger set, so
:meth:`WireTx.close` (``confirm=True``) sends an end-of-stream marker and waits
until the receiver acknowledges it, which it does as soon as its
``recv_batch`` reads the marker.  One WireTx is meant to feed one receiver
(with several connected peers batches are spread round-robin, like PUSH).

Shaping (optional, on the sending side): ``line_rate_bps`` serialises every
batch at that rate, counting ``(frame + 24) * 8`` bits per frame (FCS,
preamble/SFD and inter-frame gap; :mod:`nicemu.trafgen.dist`'s convention),
and ``delay_ns`` holds each batch for a propagation delay before it is handed
to ZeroMQ, without limiting throughput (batches in flight queue at the sender).

Socket options (security, buffer sizes...) go through ``sockopts`` (a mapping
applied with ``setsockopt``) or ``configure`` (a callable given the socket),
both applied before ``bind``/``connect``: this is where CURVE keys go.
The data plane is plain blocking pyzmq on purpose (DESIGN.md s. 10).
"""

from __future__ import annotations

import struct
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from types import TracebackType
from typing import Any, Final

import zmq

__all__ = [
    "DEFAULT_ENDPOINT_SCHEME",
    "HEADER",
    "MAGIC",
    "KIND_DATA",
    "KIND_EOS",
    "KIND_ACK",
    "FLAG_STAMPS",
    "WIRE_OVERHEAD",
    "WireError",
    "WireStats",
    "WireTx",
    "WireRx",
    "encode_batch",
    "decode_batch",
    "wire_bits_total",
]

DEFAULT_ENDPOINT_SCHEME: Final = "ipc://"
MAGIC: Final = b"NWB1"
VERSION: Final = 2
KIND_DATA: Final = 1
KIND_EOS: Final = 2
KIND_ACK: Final = 3
FLAG_STAMPS: Final = 1
#: header: magic, version, kind, flags, count, seq
HEADER: Final = struct.Struct("<4sBBHIQ")
#: the header, stamp and length of a one-frame batch, packed at once
_ONE_STAMPED: Final = struct.Struct("<4sBBHIQQI")
_ONE: Final = struct.Struct("<4sBBHIQI")
_ONE_TAIL_STAMPED: Final = struct.Struct("<QI")
_U32: Final = struct.Struct("<I")
#: FCS + preamble/SFD + inter-frame gap, in bytes (same as dist.WIRE_OVERHEAD)
WIRE_OVERHEAD: Final = 24
_LITTLE: Final = sys.byteorder == "little"

BufferLike = bytes | bytearray | memoryview


class WireError(RuntimeError):
    """A malformed wire message, or a wire used after close."""


def _u32(values: Iterable[int]) -> array[int]:
    a = array("I", values)
    if not _LITTLE:
        a.byteswap()
    return a


def _u64(values: Iterable[int]) -> array[int]:
    a = array("Q", values)
    if not _LITTLE:
        a.byteswap()
    return a


def wire_bits_total(lengths: Iterable[int]) -> int:
    """On-wire bits of frames of these lengths (each + 24 bytes of overhead)."""
    n = 0
    total = 0
    for ln in lengths:
        total += ln
        n += 1
    return (total + WIRE_OVERHEAD * n) * 8


_SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_RCVTIMEO = int(zmq.RCVTIMEO)


def _recv_message(sock: zmq.Socket[Any], ident: zmq.Frame | None = None
                  ) -> tuple[zmq.Frame, zmq.Frame]:
    """(identity, body) of a message at a ROUTER end, read frame by frame asking each
    whether more follow (pyzmq's recv_multipart asks getsockopt(RCVMORE) through its
    flag enums); a message of another shape is read whole and refused. `ident`: its
    first frame, already received."""
    if ident is None:
        ident = sock.recv(copy=False)
    if not ident.more:
        raise WireError("wire message without an identity frame (not from a DEALER)")
    body = sock.recv(copy=False)
    if body.more:
        n = 1
        while sock.recv(copy=False).more:
            n += 1
        raise WireError(f"wire message of {n + 1} parts after the identity: version "
                        f"{VERSION} sends one (an older peer?)")
    return ident, body


def encode_batch(
    frames: Sequence[BufferLike], stamps: Sequence[int] | None = None, *, seq: int = 0
) -> bytes:
    """The message for a batch (see the module docstring)."""
    if stamps is not None and len(stamps) != len(frames):
        raise ValueError(f"{len(stamps)} stamps for {len(frames)} frames")
    if len(frames) == 1:  # (a request/response transaction's: no arrays to build)
        f = frames[0]
        if stamps is not None:
            return _ONE_STAMPED.pack(MAGIC, VERSION, KIND_DATA, FLAG_STAMPS, 1, seq,
                                     stamps[0], len(f)) + f
        return _ONE.pack(MAGIC, VERSION, KIND_DATA, 0, 1, seq, len(f)) + f
    flags = FLAG_STAMPS if stamps is not None else 0
    head = HEADER.pack(MAGIC, VERSION, KIND_DATA, flags, len(frames), seq)
    if stamps is not None:
        return b"".join((head, _u64(stamps), _u32(map(len, frames)), *frames))
    return b"".join((head, _u32(map(len, frames)), *frames))


def _lengths_view(buf: BufferLike, count: int) -> Sequence[int]:
    if len(buf) != 4 * count:
        raise WireError(f"lengths are {len(buf)} bytes for {count} frames")
    if _LITTLE:
        return memoryview(buf).cast("B").cast("I")
    a = array("I", bytes(buf))
    a.byteswap()
    return a


def _stamps_view(buf: BufferLike, count: int) -> Sequence[int]:
    if len(buf) != 8 * count:
        raise WireError(f"stamps are {len(buf)} bytes for {count} frames")
    if _LITTLE:
        return memoryview(buf).cast("B").cast("Q")
    a = array("Q", bytes(buf))
    a.byteswap()
    return a


def decode_batch(msg: BufferLike) -> tuple[list[memoryview], Sequence[int] | None]:
    """Frames (memoryviews into ``msg``) and stamps of a DATA message."""
    kind, flags, count, _seq = _check_header(msg)
    if kind != KIND_DATA:
        raise WireError(f"not a data message (kind {kind})")
    return _split(msg, flags, count)


def _check_header(msg: BufferLike) -> tuple[int, int, int, int]:
    if len(msg) < HEADER.size:
        raise WireError(f"message is {len(msg)} bytes, shorter than the {HEADER.size}-byte "
                        "header")
    magic, version, kind, flags, count, seq = HEADER.unpack_from(msg)
    if magic != MAGIC or version != VERSION:
        raise WireError(f"bad magic/version {magic!r}/{version} (expected {MAGIC!r}/{VERSION})")
    return kind, flags, count, seq


def _payload_bytes(msg_len: int, flags: int, count: int) -> int:
    """Bytes of frames in a DATA message of `msg_len` bytes (what follows the header,
    the stamps and the lengths)."""
    return msg_len - HEADER.size - (12 if flags & FLAG_STAMPS else 4) * count


def _unpack(
    msg: BufferLike, flags: int, count: int
) -> tuple[Sequence[int], memoryview, Sequence[int] | None]:
    """(lengths, payload, stamps) of a DATA message, as views into it (a one-frame
    batch, a request/response transaction's, read with one struct: no views cast);
    the lengths checked against the payload."""
    mv = memoryview(msg).cast("B")
    o = HEADER.size
    if _payload_bytes(len(mv), flags, count) < 0:
        raise WireError(f"message is {len(mv)} bytes, too short for the stamps and "
                        f"lengths of {count} frames")
    if count == 1:
        if flags & FLAG_STAMPS:
            stamp, n = _ONE_TAIL_STAMPED.unpack_from(mv, o)
            lengths: Sequence[int] = (n,)
            stamps: Sequence[int] | None = (stamp,)
            o += 12
        else:
            lengths, stamps = _U32.unpack_from(mv, o), None
            o += 4
        payload = mv[o:]
        total = lengths[0]
    else:
        stamps = None
        if flags & FLAG_STAMPS:
            stamps = _stamps_view(mv[o : o + 8 * count], count)
            o += 8 * count
        lengths = _lengths_view(mv[o : o + 4 * count], count)
        payload = mv[o + 4 * count :]
        total = sum(lengths)
    if total != len(payload):
        raise WireError(f"payload is {len(payload)} bytes, lengths sum to {total}")
    return lengths, payload, stamps


def _split(
    msg: BufferLike, flags: int, count: int
) -> tuple[list[memoryview], Sequence[int] | None]:
    lengths, payload, stamps = _unpack(msg, flags, count)
    if count == 1:
        return [payload], stamps
    starts = [0, *accumulate(lengths)][:-1]
    return [payload[s : s + n] for s, n in zip(starts, lengths)], stamps


@dataclass(frozen=True, slots=True)
class WireStats:
    """Counters of one end of a wire."""

    frames: int
    bytes: int
    batches: int
    eos: int


def _make_socket(
    ctx: zmq.Context[Any],
    kind: int,
    endpoint: str,
    *,
    bind: bool,
    hwm: int,
    sockopts: Mapping[int, int | bytes],
    configure: Callable[[zmq.Socket[Any]], None] | None,
) -> zmq.Socket[Any]:
    if "://" not in endpoint:
        raise ValueError(
            f"endpoint {endpoint!r} has no transport: use ipc://PATH (default, same host) "
            "or tcp://HOST:PORT (another host)"
        )
    sock = ctx.socket(kind)
    try:
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.LINGER, 0)
        for opt, value in sockopts.items():
            sock.setsockopt(opt, value)
        if configure is not None:
            configure(sock)
        # tcp://: the process's CURVE keys (dispatch.runtime.transport), and no plain
        # tcp off loopback unless allowed; ipc:// and inproc:// as they are
        from dispatch.runtime import transport

        if bind:
            transport.bind(sock, endpoint)
        else:
            transport.connect(sock, endpoint)
    except BaseException:
        sock.close(0)
        raise
    return sock


class WireTx:
    """The sending end of a wire: ``send_batch(frames)``; ``close(confirm=True)``.

    ``hwm`` is in batches (messages), not frames.  ``bind`` makes this end bind
    the endpoint (default: connect to a receiver that binds).  ``line_rate_bps``
    and ``delay_ns`` shape the wire (see the module docstring).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = False,
        hwm: int = 1000,
        line_rate_bps: float | None = None,
        delay_ns: int = 0,
        max_in_flight: int = 4096,
        sockopts: Mapping[int, int | bytes] | None = None,
        configure: Callable[[zmq.Socket[Any]], None] | None = None,
        context: zmq.Context[Any] | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if line_rate_bps is not None and not line_rate_bps > 0:
            raise ValueError(f"line_rate_bps must be > 0, got {line_rate_bps}")
        if delay_ns < 0:
            raise ValueError(f"delay_ns must be >= 0, got {delay_ns}")
        self.endpoint = endpoint
        self.line_rate_bps = line_rate_bps
        self.delay_ns = int(delay_ns)
        self._own_ctx = context is None
        self._ctx: zmq.Context[Any] = zmq.Context() if context is None else context
        try:
            self._sock: zmq.Socket[Any] | None = _make_socket(
                self._ctx, zmq.DEALER, endpoint, bind=bind, hwm=hwm,
                sockopts=sockopts or {}, configure=configure,
            )  # fmt: skip
        except BaseException:
            if self._own_ctx:
                self._ctx.term()
            raise
        self._clock = clock
        self._line_free = 0
        self._pending: deque[tuple[int, bytes, int, int]] = deque()
        self._max_in_flight = max(1, max_in_flight)
        self.frames = 0
        self.bytes = 0
        self.batches = 0
        self.acked: int | None = None

    # -- sending ---------------------------------------------------------------
    def send_batch(self, frames: Sequence[BufferLike], stamps: Sequence[int] | None = None) -> None:
        """Send frames (bytes-like) as one message; ``stamps``: one ns value per frame."""
        if not frames:
            return
        msg = encode_batch(frames, stamps, seq=self.batches)
        n = len(frames)
        self._submit(msg, n, _payload_bytes(len(msg), FLAG_STAMPS if stamps is not None
                                            else 0, n))

    def send_packed(
        self,
        lengths: BufferLike | Any,
        payload: BufferLike | Any,
        stamps: BufferLike | Any | None = None,
    ) -> None:
        """Send an already packed batch: ``lengths`` a buffer of little-endian u32
        (array('I') or a numpy uint32 array), ``payload`` the frames concatenated,
        ``stamps`` a buffer of u64 ns or None.  No per-frame work at all."""
        lv = memoryview(lengths).cast("B")
        count = len(lv) // 4
        if count == 0:
            return
        pv = memoryview(payload).cast("B")
        flags = FLAG_STAMPS if stamps is not None else 0
        head = HEADER.pack(MAGIC, VERSION, KIND_DATA, flags, count, self.batches)
        if stamps is not None:
            msg = b"".join((head, memoryview(stamps).cast("B"), lv, pv))
        else:
            msg = b"".join((head, lv, pv))
        self._submit(msg, count, len(pv))

    def _submit(self, msg: bytes, count: int, nbytes: int) -> None:
        sock = self._sock
        if sock is None:
            raise WireError("wire is closed")
        self.frames += count
        self.bytes += nbytes
        self.batches += 1
        if self.line_rate_bps is None and not self.delay_ns:
            sock.send(msg, 0, copy=False)
            return
        now = self._clock()
        due = now
        if self.line_rate_bps is not None:
            bits = (nbytes + WIRE_OVERHEAD * count) * 8
            start = max(now, self._line_free)
            self._line_free = start + int(bits * 1e9 / self.line_rate_bps)
            due = self._line_free
        due += self.delay_ns
        self._pending.append((due, msg, count, nbytes))
        self._drain(block_all=len(self._pending) > self._max_in_flight)

    def _drain(self, *, block_all: bool = False, everything: bool = False) -> None:
        sock = self._sock
        assert sock is not None
        pend = self._pending
        while pend:
            due = pend[0][0]
            now = self._clock()
            if now < due:
                if not (everything or block_all):
                    return
                _wait_until(due, self._clock)
                block_all = False if len(pend) <= self._max_in_flight else block_all
            sock.send(pend.popleft()[1], 0, copy=False)

    def flush(self) -> None:
        """Hand every batch held by shaping to ZeroMQ (waiting until each is due)."""
        if self._sock is not None:
            self._drain(everything=True)

    # -- closing ---------------------------------------------------------------
    def close(self, *, confirm: bool = True, timeout_ms: int = 5000) -> bool:
        """Flush, then (``confirm``) send the end-of-stream marker and wait up to
        ``timeout_ms`` for the receiver's acknowledgement.  Returns True when
        acknowledged (``acked`` then holds the receiver's total frame count),
        False when not confirmed.  Closes the socket (and the context it made)."""
        if self._sock is None:
            return self.acked is not None
        ok = False
        try:
            self.flush()
            if confirm:
                sock = self._sock
                sock.send(HEADER.pack(MAGIC, VERSION, KIND_EOS, 0, 0, self.frames))
                deadline = time.monotonic() + timeout_ms / 1000
                while True:
                    left = int((deadline - time.monotonic()) * 1000)
                    if left <= 0 or not sock.poll(left, zmq.POLLIN):
                        break
                    msg = sock.recv_multipart()
                    try:
                        kind, _f, _c, seq = _check_header(msg[0])
                    except WireError:
                        continue
                    if kind == KIND_ACK:
                        self.acked = seq
                        ok = True
                        break
        finally:
            # without a confirmation, give ZeroMQ a moment to flush (no guarantee)
            self._sock.close(0 if ok or confirm else 1000)
            self._sock = None
            if self._own_ctx:
                self._ctx.term()
        return ok

    def stats(self) -> WireStats:
        return WireStats(self.frames, self.bytes, self.batches, 0)

    def __enter__(self) -> WireTx:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(confirm=exc_type is None)


def _wait_until(t_ns: int, clock: Callable[[], int]) -> None:
    now = clock()
    while now < t_ns:
        rem = t_ns - now
        if rem > 200_000:
            time.sleep((rem - 100_000) / 1e9)
        now = clock()


class WireRx:
    """The receiving end of a wire (binds by default).

    ``recv_batch(timeout_ms)`` returns ``(frames, stamps)`` for the next data
    batch (frames are memoryviews into the message; stamps None unless sent),
    or None on timeout or when the message was an end-of-stream marker (which
    it acknowledges).  ``ended`` turns True once ``senders`` markers arrived.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = True,
        hwm: int = 1000,
        senders: int = 1,
        sockopts: Mapping[int, int | bytes] | None = None,
        configure: Callable[[zmq.Socket[Any]], None] | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.senders = senders
        self._own_ctx = context is None
        self._ctx: zmq.Context[Any] = zmq.Context() if context is None else context
        try:
            self._sock: zmq.Socket[Any] | None = _make_socket(
                self._ctx, zmq.ROUTER, endpoint, bind=bind, hwm=hwm,
                sockopts=sockopts or {}, configure=configure,
            )  # fmt: skip
        except BaseException:
            if self._own_ctx:
                self._ctx.term()
            raise
        self._rcvtimeo = -1  # the socket's receive timeout now (ms; -1: none)
        self.frames = 0
        self.bytes = 0
        self.batches = 0
        self.eos = 0

    @property
    def ended(self) -> bool:
        """True once every expected sender has sent its end-of-stream marker."""
        return self.eos >= self.senders

    @property
    def socket(self) -> zmq.Socket[Any]:
        """The underlying socket (for a poller)."""
        if self._sock is None:
            raise WireError("wire is closed")
        return self._sock

    def _recv(self, timeout_ms: int | None) -> tuple[Any, int, int] | None:
        sock = self._sock
        if sock is None:
            raise WireError("wire is closed")
        # A wait is a blocking receive with the socket's timeout set, not a ZeroMQ
        # poll and then a receive: a poll asks the socket's ZMQ_EVENTS (a system
        # call or two) before and after it sleeps, ~20 us more CPU per wakeup here.
        # No wait at all asks ZMQ_EVENTS once (a failed non-blocking receive raises).
        first = None
        if timeout_ms is not None and timeout_ms <= 0:
            if not sock.get(_EVENTS) & _POLLIN:
                return None
        else:
            t = -1 if timeout_ms is None else timeout_ms
            if t != self._rcvtimeo:
                sock.setsockopt(_RCVTIMEO, t)
                self._rcvtimeo = t
            if t >= 0:
                try:
                    first = sock.recv(copy=False)
                except zmq.Again:
                    return None
        ident, body = _recv_message(sock, first)
        msg = body.buffer
        kind, flags, count, _seq = _check_header(msg)
        if kind == KIND_EOS:
            self.eos += 1
            sock.send(ident, _SNDMORE, copy=True)
            sock.send(HEADER.pack(MAGIC, VERSION, KIND_ACK, 0, 0, self.frames))
            return None
        if kind != KIND_DATA:
            raise WireError(f"unexpected message kind {kind}")
        self.frames += count
        self.batches += 1
        self.bytes += max(0, _payload_bytes(len(msg), flags, count))
        return msg, flags, count

    def recv_batch(
        self, timeout_ms: int | None = None
    ) -> tuple[list[memoryview], Sequence[int] | None] | None:
        """Next batch as (frames, stamps); None on timeout or end-of-stream."""
        r = self._recv(timeout_ms)
        if r is None:
            return None
        msg, flags, count = r
        return _split(msg, flags, count)

    def recv_packed(
        self, timeout_ms: int | None = None
    ) -> tuple[Sequence[int], memoryview, Sequence[int] | None] | None:
        """Next batch unsplit: (lengths, payload, stamps); None on timeout or end-of-stream."""
        r = self._recv(timeout_ms)
        if r is None:
            return None
        msg, flags, count = r
        return _unpack(msg, flags, count)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
            if self._own_ctx:
                self._ctx.term()

    def stats(self) -> WireStats:
        return WireStats(self.frames, self.bytes, self.batches, self.eos)

    def __enter__(self) -> WireRx:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
