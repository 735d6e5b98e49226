"""A user thread's TCP connections in the tx workload: open, close, account.

The tx workload's TCP streams are actively opened by the host (connect(2)
to the generator, which listens as a real receiver): flow i belongs to user
thread i mod M, which attaches the socket, sends the SYN, and later closes
it with a FIN after its last write. These helpers wrap the stack's socket
calls (`dispatch.stages.tcp_output`) for the user role and describe each
stream for the result document under the name the generator's receiver
uses for it ("host:port>peer:port"), so the two sides can be compared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dispatch.runtime.workload import flows
from dispatch.stages.socktab import P_STATE
from dispatch.stages.tcp_var import TCPS_ESTABLISHED

if TYPE_CHECKING:
    from dispatch.runtime.roles import UserRole


def connect_all(role: UserRole) -> list[int]:
    """Attach and connect this user's flows; returns their socket indices."""
    from dispatch.runtime.config import RunConfig
    from dispatch.stages.tcp_output import tcp_attach, tcp_connect

    cfg = RunConfig.from_dict(role.cfg)
    me, users = role.agent.index, max(1, role.nusers)
    out = []
    with role.tcp_lock:
        role.ctx.now = _now()
        for k, f in enumerate(flows(cfg)):
            if k % users != me:
                continue
            i = tcp_attach(role.ctx, f.dst, f.dport, f.src, f.sport, user=me)
            role.app.run_output(tcp_connect(role.ctx, i), role.ctx.now)
            out.append(i)
    return out


def established(role: UserRole, i: int) -> bool:
    return role.sockets.w[(i << 7) + P_STATE] >= TCPS_ESTABLISHED


def all_established(role: UserRole, socks: list[int]) -> bool:
    return all(established(role, i) for i in socks)


def close_all(role: UserRole, socks: list[int]) -> None:
    from dispatch.stages.tcp_output import tcp_shutdown

    with role.tcp_lock:
        role.ctx.now = _now()
        for i in socks:
            role.app.run_output(tcp_shutdown(role.ctx, i), role.ctx.now)


def acked(role: UserRole, i: int) -> bool:
    from dispatch.stages.tcp_output import tcp_send_done

    return tcp_send_done(role.sockets, i)


def all_acked(role: UserRole, socks: list[int]) -> bool:
    return all(acked(role, i) for i in socks)


def stream_name(role: UserRole, i: int) -> str:
    info = role.sockets.info(i)
    return f"{info.local}>{info.remote}"


def describe(role: UserRole, socks: list[int], digests: dict[int, str],
             written: dict[int, int]) -> dict[str, dict[str, Any]]:
    """Per stream: what the application wrote (bytes, sha256) and the sender's figures."""
    from dispatch.stages.tcp_output import tcp_send_info

    info = role.sockets.info
    out = {}
    for i in socks:
        s = info(i)
        out[f"{s.local}>{s.remote}"] = {
            "local": s.local, "remote": s.remote, "written": written.get(i, 0),
            "sha256": digests.get(i), "acked": acked(role, i),
            "sender": tcp_send_info(role.sockets, i)}
    return out


def _now() -> int:
    import time

    return time.monotonic_ns()
