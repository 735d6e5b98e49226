"""The tx workload's user-thread loop: send at a rate, then finish cleanly.

A user thread in `tx` is the run's source. It sends `msg_size`-byte
messages round-robin over its sockets, at its share of `--rate` (messages
per second; `max` sends a batch every turn), for `--duration` or its share
of `--count`, running its own output path to the driver handoff. TCP
sockets are first connected (an active open to the generator, which acts
as the receiver) and, once the last message is written, closed (FIN); the
thread keeps running TCP's timers (retransmission) until every byte it
wrote has been acknowledged, or a deadline passes, and only then reports
`source_done` with what it sent. The bytes written on each TCP socket are
a fixed pseudo-random pattern, hashed as they are accepted, so the
generator's digest of what arrived in order can be compared with it.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dispatch.runtime.agent import Agent
    from dispatch.runtime.roles import UserRole

CONNECT_TIMEOUT_S = 5.0
FINISH_TIMEOUT_S = 20.0  # after the last write: all acknowledged, or give up
IDLE_WAIT_S = 0.0005


def _pattern(seed: int, index: int) -> bytes:
    rng = np.random.default_rng([seed, index])
    return rng.integers(0, 256, size=1 << 16, dtype=np.uint8).tobytes()


def send_loop(role: UserRole, agent: Agent) -> None:
    cfg = role.cfg
    app = role.app
    users = max(1, role.nusers)
    rate = cfg["rate"]
    pps = float("inf") if rate == "max" else float(rate) / users
    count = cfg.get("count")
    my_count = None if count is None else (count // users +
                                           (1 if role.agent.index < count % users else 0))
    duration = cfg.get("duration")
    socks = app.my_sockets()
    tcp = cfg.get("proto") == "tcp"
    size = app.msg_size
    batch = role.batch
    pattern = _pattern(int(cfg.get("seed", 1)), role.agent.index)
    digests: dict[int, Any] = {}
    offsets: dict[int, int] = {}
    stopped = False

    def control() -> bool:
        nonlocal stopped
        if not stopped and agent.poll_control():
            stopped = True
        return stopped

    def tick() -> None:
        role.timers(time.monotonic_ns(), force=tcp)
        role.reclaim_tx()

    if tcp:
        from dispatch.runtime import tcpapp

        socks = tcpapp.connect_all(role)
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not tcpapp.all_established(role, socks) and time.monotonic() < deadline:
            if control():
                return
            tick()
            time.sleep(IDLE_WAIT_S)
        socks = [i for i in socks if tcpapp.established(role, i)]
        for i in socks:
            digests[i] = hashlib.sha256()
            offsets[i] = 0
    t0 = time.monotonic_ns()
    end = t0 + int(float(duration) * 1e9) if duration else None
    sent = 0
    k = 0  # round-robin position
    while socks and not control():
        now = time.monotonic_ns()
        if (end is not None and now >= end) or (my_count is not None and sent >= my_count):
            break
        due = batch if pps == float("inf") else \
            min(batch, int((now - t0) * pps / 1e9) + 1 - sent)
        if my_count is not None:
            due = min(due, my_count - sent)
        if due > 0:
            if tcp:
                for _ in range(due):
                    sid = socks[k % len(socks)]
                    off = offsets[sid] % len(pattern)
                    data = (pattern[off:] + pattern)[:size]
                    n = app.tcp_write(sid, data, now)
                    if n == 0:
                        break  # send buffer full: wait for ACKs (a blocking send would)
                    digests[sid].update(data[:n])
                    offsets[sid] += n
                    k += 1
                    sent += 1
            else:
                sids = [socks[(k + j) % len(socks)] for j in range(due)]
                app.send_datagrams(sids, size, now)
                k += due
                sent += due
        tick()
        if due <= 0 or (tcp and app.blocked):
            time.sleep(IDLE_WAIT_S)
    if tcp and not stopped:
        from dispatch.runtime import tcpapp

        tcpapp.close_all(role, socks)
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while not tcpapp.all_acked(role, socks) and time.monotonic() < deadline:
            if control():
                break
            tick()
            time.sleep(IDLE_WAIT_S)
    report: dict[str, Any] = {"offered": 0, "sent_msgs": app.sent_msgs,
                              "sent_bytes": app.sent_bytes, "refused": app.refused,
                              "blocked": app.blocked, "sockets": len(socks)}
    if tcp:
        from dispatch.runtime import tcpapp

        report["unacked_sockets"] = sum(1 for i in socks if not tcpapp.acked(role, i))
        role.tx_streams = tcpapp.describe(role, socks,
                                          {i: d.hexdigest() for i, d in digests.items()},
                                          dict(offsets))
    agent.send({"type": "source_done", "role": agent.name, "data": report})
    while not stopped and not control():  # until drained: keep the timers running
        tick()
        time.sleep(0.002)
    if agent.draining:
        role.reclaim_tx()
