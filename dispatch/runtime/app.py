"""The application in a user thread: what it sends, for the tx and rr workloads.

The receive workload's application only reads (`UserRole.receive_once`). In
`tx` it is a sender: it writes `msg_size`-byte messages on its sockets at
its share of the offered rate (or as fast as the send path takes them),
through the real send path: copyin into mbufs (sosend), the transport's
output, ip_output, ether_output and the driver handoff, all in this thread
(FreeBSD's output path runs in the sending thread). In `rr` it answers:
every request read from a socket is answered with a `response`-byte message
on the same socket.

UDP datagrams carry the generator's stamp layout (magic, sequence number,
send time) in their first 16 bytes, so the generator can tell order and
measure latency from the payload as well as from the wire's stamp. TCP goes
through the stack's sender (send buffer, windows, retransmission), see
`dispatch.stages.tcp_output`.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable
from typing import Any

from dispatch.stages import base as S
from dispatch.stages.base import Ctx, Routed, declare_reasons
from dispatch.stages.socket import sosend_copyin, sosend_stage
from dispatch.stages.socktab import IPPROTO_TCP, P_PF, Q_DELIVERED, Q_DELIVERED_PKTS
from nicemu.trafgen.flows import STAMP, STAMP_LEN, STAMP_MAGIC

APP_DROPS = declare_reasons(
    S.SOSEND,
    ("nobufs", "sos_snd_nobufs", "datagrams the application could not send: no mbufs "
                                 "(ENOBUFS)"),
)

Dispatch = Callable[[Routed, int], None]


class App:
    """One user thread's application: its sockets, what it has sent and answered."""

    def __init__(self, ctx: Ctx, run_output: Dispatch, *, index: int,
                 cfg: dict[str, Any], lock: Any = None) -> None:
        self.ctx = ctx
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.run_output = run_output  # runs output stages and hands on what leaves them
        self.index = index
        self.cfg = cfg
        self.tab = ctx.sockets
        self.msg_size = int(cfg.get("msg_size", 1448))
        req, resp = (int(x) for x in str(cfg.get("rr", "64:64")).split(":"))
        self.request, self.response = req, resp
        self.seq = 0
        self.sent_msgs = 0  # messages the application handed to send()
        self.sent_bytes = 0
        self.refused = 0  # datagrams refused (ENOBUFS / send buffer full): counted drops
        self.answered: dict[int, int] = {}  # rr: socket -> requests answered
        self.blocked = 0  # TCP sends that found the send buffer full (EWOULDBLOCK)

    # ------------------------------------------------------------- sockets
    def my_sockets(self) -> list[int]:
        tab = self.tab
        return [i for i in tab.indices() if tab.user_of(i) == self.index
                and tab.w[(i << 7) + P_PF] != 0]

    def is_tcp(self, sid: int) -> bool:
        return (self.tab.w[(sid << 7) + P_PF] & 0xFF) == IPPROTO_TCP

    # ----------------------------------------------------------------- UDP
    def payload(self, n: int, now: int, *, stamp: bool = True) -> bytes:
        if n < STAMP_LEN or not stamp:
            return bytes(n)
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return STAMP.pack(STAMP_MAGIC, self.seq, now) + bytes(n - STAMP_LEN)

    def send_datagrams(self, sids: list[int], size: int, now: int, *,
                       stamp: bool = True) -> int:
        """One datagram of `size` payload bytes on each socket in `sids`, as one batch
        through sosend -> udp_output -> ... -> if_transmit. Returns how many went.
        `stamp`: begin each with the generator's stamp layout (rr answers carry
        none: the generator would take a stamp for an echo of its request's)."""
        ctx = self.ctx
        hs: list[int] = []
        for sid in sids:
            m = sosend_copyin(ctx, sid, self.payload(size, now, stamp=stamp))
            if not m:
                ctx.stats.drop(APP_DROPS.nobufs)
                self.refused += 1
                continue
            hs.append(m)
        self.sent_msgs += len(sids)
        self.sent_bytes += size * len(sids)
        if hs:
            routed = sosend_stage(ctx, hs)
            self.run_output(routed, now)
        return len(hs)

    # ------------------------------------------------------------------ rr
    def answer(self, sids: set[int], now: int) -> int:
        """rr: answer every request that completed on these sockets since last time
        (UDP: one per datagram read; TCP: one per `request` bytes read)."""
        tab = self.tab
        due_udp: list[int] = []
        n = 0
        for sid in sids:
            if self.is_tcp(sid):
                got = tab.q[(sid << 6) + Q_DELIVERED] // self.request
            else:
                got = tab.q[(sid << 6) + Q_DELIVERED_PKTS]
            k = got - self.answered.get(sid, 0)
            if k <= 0:
                continue
            self.answered[sid] = got
            n += k
            if self.is_tcp(sid):
                for _ in range(k):
                    self.tcp_write(sid, bytes(self.response), now)
            else:
                due_udp.extend([sid] * k)
        if due_udp:
            self.send_datagrams(due_udp, self.response, now, stamp=False)
        return n

    # ----------------------------------------------------------------- TCP
    def tcp_write(self, sid: int, data: bytes, now: int) -> int:
        """send(2) on a TCP socket, non-blocking: what the send buffer took (bytes)."""
        from dispatch.stages.tcp_output import tcp_send

        with self.lock:
            self.ctx.now = now
            try:
                routed = tcp_send(self.ctx, sid, data)
            except BlockingIOError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.ENOBUFS):
                    self.blocked += 1
                    return 0
                raise
            self.sent_bytes += len(data)
            self.sent_msgs += 1
            self.run_output(routed, now)
        return len(data)

    def report(self) -> dict[str, Any]:
        return {"app_msgs": self.sent_msgs, "app_bytes": self.sent_bytes,
                "app_refused": self.refused, "app_blocked": self.blocked,
                "rr_answered": sum(self.answered.values())}
