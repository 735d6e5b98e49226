"""Tests for nicemu.wire: batch encoding, ipc round trips, end-of-stream confirmation, shaping."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path

import pytest

from nicemu.wire import WireError, WireRx, WireTx, decode_batch, encode_batch


def _frames(n: int, base: int = 0) -> list[bytes]:
    return [bytes([(base + i) & 0xFF]) * (60 + (i % 7) * 100) for i in range(n)]


def test_encode_decode_round_trip() -> None:
    frames = _frames(10)
    msg = encode_batch(frames, list(range(10, 20)), seq=3)
    assert isinstance(msg, bytes)  # one part: header, stamps, lengths, payload
    got, stamps = decode_batch(msg)
    assert [bytes(f) for f in got] == frames
    assert stamps is not None and list(stamps) == list(range(10, 20))
    got, stamps = decode_batch(encode_batch(frames[:3]))
    assert [bytes(f) for f in got] == frames[:3] and stamps is None
    for one in (frames[4], bytearray(frames[4]), memoryview(frames[4])):  # (packed at once)
        got, stamps = decode_batch(encode_batch([one], [77], seq=9))
        assert [bytes(f) for f in got] == [frames[4]] and list(stamps or []) == [77]
        got, stamps = decode_batch(encode_batch([one]))
        assert [bytes(f) for f in got] == [frames[4]] and stamps is None
    got2, st2 = decode_batch(encode_batch([]))
    assert got2 == [] and st2 is None


def test_decode_rejects_garbage() -> None:
    msg = encode_batch(_frames(3))
    with pytest.raises(WireError, match="magic"):
        decode_batch(b"junk" + msg[4:])
    with pytest.raises(WireError, match="shorter"):
        decode_batch(msg[:10])
    with pytest.raises(WireError, match="payload"):
        decode_batch(msg[:-1])
    with pytest.raises(WireError, match="lengths"):
        decode_batch(msg[:30])
    with pytest.raises(ValueError):
        encode_batch(_frames(2), [1])


def test_a_multipart_message_is_refused_by_name(tmp_path: Path) -> None:
    import zmq

    ep = f"ipc://{tmp_path}/old"
    rx = WireRx(ep)
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    try:
        s.connect(ep)
        s.send_multipart([b"a", b"b", b"c"])
        with pytest.raises(WireError, match="3 parts"):
            rx.recv_batch(2000)
    finally:
        s.close(0)
        ctx.term()
        rx.close()


def test_bad_endpoint() -> None:
    with pytest.raises(ValueError, match="ipc://"):
        WireTx("/tmp/nowhere")


def _drain(rx: WireRx, frames: list[bytes], stamps: list[int]) -> None:
    while not rx.ended:
        got = rx.recv_batch(2000)
        if got is None:
            continue
        frames.extend(bytes(f) for f in got[0])
        if got[1] is not None:
            stamps.extend(got[1])


def test_in_process_round_trip_and_confirm(tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/wire"
    rx = WireRx(ep)
    tx = WireTx(ep)
    sent = [_frames(50, b) for b in range(20)]
    result: list[bool] = []

    def sender() -> None:
        for k, batch in enumerate(sent):
            tx.send_batch(batch, [k] * len(batch) if k % 2 else None)
        result.append(tx.close(confirm=True))

    th = threading.Thread(target=sender)
    th.start()
    got: list[bytes] = []
    stamps: list[int] = []
    _drain(rx, got, stamps)
    th.join()
    rx.close()
    assert got == [f for b in sent for f in b]
    assert len(stamps) == 50 * 10 and set(stamps) == set(range(1, 20, 2))
    assert result == [True] and tx.acked == 1000
    assert rx.stats().frames == 1000 and rx.stats().eos == 1


def test_recv_waits_timed_untimed_and_not_at_all(tmp_path: Path) -> None:
    """A timed receive blocks with the socket's timeout (set when it changes): it
    returns None after about that long, a batch sent during the wait as it comes,
    and an untimed receive after a timed one blocks again (the timeout reset)."""
    ep = f"ipc://{tmp_path}/wire"
    with WireRx(ep) as rx, WireTx(ep) as tx:
        assert rx.recv_batch(0) is None  # nothing queued: no wait
        t = time.monotonic()
        assert rx.recv_batch(60) is None
        assert 0.05 <= time.monotonic() - t < 2.0
        timer = threading.Timer(0.05, lambda: tx.send_batch(_frames(2)))
        timer.start()
        got = rx.recv_batch(5000)
        timer.join()
        assert got is not None and [bytes(f) for f in got[0]] == _frames(2)
        timer = threading.Timer(0.15, lambda: tx.send_batch(_frames(1, 7)))
        timer.start()
        got = rx.recv_batch()  # untimed: waits past the 60 ms set before
        timer.join()
        assert got is not None and [bytes(f) for f in got[0]] == _frames(1, 7)
        tx.send_batch(_frames(3))
        deadline = time.monotonic() + 5
        while (got := rx.recv_batch(0)) is None and time.monotonic() < deadline:
            time.sleep(0.001)  # (crossing ZeroMQ's I/O threads)
        assert got is not None and len(got[0]) == 3
        tx.close(confirm=False)


def test_recv_timeout_and_packed(tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/wire"
    with WireRx(ep) as rx:
        assert rx.recv_batch(10) is None
        tx = WireTx(ep)
        tx.send_batch(_frames(4))
        got = rx.recv_packed(2000)
        assert got is not None
        lengths, payload, stamps = got
        assert list(lengths) == [len(f) for f in _frames(4)] and stamps is None
        assert bytes(payload) == b"".join(_frames(4))
        th = threading.Thread(target=lambda: tx.close(confirm=True))
        th.start()
        while not rx.ended:
            rx.recv_batch(100)
        th.join()


def test_close_unconfirmed_times_out(tmp_path: Path) -> None:
    tx = WireTx(f"ipc://{tmp_path}/nobody")
    t = time.monotonic()
    assert tx.close(confirm=True, timeout_ms=100) is False
    assert time.monotonic() - t < 2
    with pytest.raises(WireError):
        tx.send_batch(_frames(1))


def _child_sender(ep: str, batches: int, q: mp.Queue) -> None:  # type: ignore[type-arg]
    tx = WireTx(ep)
    for b in range(batches):
        tx.send_batch(_frames(64, b))
    q.put(tx.close(confirm=True))


def test_cross_process_tail_not_lost(tmp_path: Path) -> None:
    """The sender exits right after its last batch: the confirmation keeps the tail."""
    ep = f"ipc://{tmp_path}/wire"
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    with WireRx(ep) as rx:
        p = ctx.Process(target=_child_sender, args=(ep, 200, q))
        p.start()
        got: list[bytes] = []
        _drain(rx, got, [])
        p.join(10)
    assert p.exitcode == 0 and q.get(timeout=5) is True
    q.close()
    q.join_thread()
    assert len(got) == 200 * 64
    assert got[-1] == _frames(64, 199)[-1]


def test_line_rate_and_delay(tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/wire"
    with WireRx(ep) as rx:
        # 100 frames of 1000 bytes at 10 Mbit/s: 100 * 1024 * 8 bits = 81.92 ms
        tx = WireTx(ep, line_rate_bps=10e6)
        t0 = time.monotonic()
        for _ in range(10):
            tx.send_batch([b"\0" * 1000] * 10)
        tx.flush()
        n = 0
        while n < 100:
            got = rx.recv_batch(2000)
            assert got is not None
            n += len(got[0])
        assert 0.075 < time.monotonic() - t0 < 1.0
        tx.close(confirm=False)
        tx2 = WireTx(ep, delay_ns=30_000_000)
        t0 = time.monotonic()
        tx2.send_batch([b"x" * 60])
        assert rx.recv_batch(5) is None  # held for the propagation delay
        tx2.flush()
        assert rx.recv_batch(2000) is not None
        assert time.monotonic() - t0 >= 0.029
        tx2.close(confirm=False)
