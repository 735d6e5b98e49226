"""Tests for dispatch.runtime.roles' queue receive: a counted receive that begins
with the message a role's wait already took (the roles themselves run in every
runtime test)."""

from __future__ import annotations

from array import array

import numpy as np
import zmq

from dispatch.runtime.roles import QUEUE_WAIT_MS, receive_counted


def _pair(ctx: zmq.Context, name: str) -> tuple[zmq.Socket, zmq.Socket]:
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVTIMEO, QUEUE_WAIT_MS)
    pull.bind(f"inproc://{name}")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"inproc://{name}")
    return push, pull


def test_counted_receive_begins_with_the_waits_message_and_keeps_order():
    ctx = zmq.Context()
    push, pull = _pair(ctx, "counted")
    try:
        batches = [[1, 2, 3], [4, 5], [6]]
        for b in batches:
            push.send(array("I", b).tobytes())
        first = pull.recv()  # what the role's wait took
        hs = receive_counted(pull, pending=6, most=100, first=first)
        assert hs.dtype == np.uint32 and hs.tolist() == [1, 2, 3, 4, 5, 6]
        # `most` bounds it (in whole messages): the rest stays queued
        for b in batches:
            push.send(array("I", b).tobytes())
        first = pull.recv()
        assert receive_counted(pull, pending=6, most=4, first=first).tolist() == [1, 2, 3, 4, 5]
        assert receive_counted(pull, pending=1, most=4).tolist() == [6]
        # a counted message that never comes ends the wait at the receive timeout
        assert receive_counted(pull, pending=2, most=4).tolist() == []
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()


def test_counted_receive_staged_with_the_first_part_taken():
    ctx = zmq.Context()
    push, pull = _pair(ctx, "staged")
    try:
        push.send(b"ip_input", zmq.SNDMORE)
        push.send(array("I", [7, 8]).tobytes())
        push.send(b"udp_input", zmq.SNDMORE)
        push.send(array("I", [9]).tobytes())
        first = pull.recv()  # the first message's stage part
        got = receive_counted(pull, pending=3, most=10, staged=True, first=first)
        assert [(s, a.tolist()) for s, a in got] == [("ip_input", [7, 8]), ("udp_input", [9])]
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()
