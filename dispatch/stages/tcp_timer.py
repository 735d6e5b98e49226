"""The sender's timers: retransmission, persist (zero-window probes) and TIME_WAIT.

Why it exists: stages never read the clock, so a timer is a deadline written
in the connection's record (Q_REXMT_AT, Q_PERSIST_AT, Q_TIMEWAIT_AT: ctx.now
values, 0 = off) and a periodic call that compares them with ctx.now, as
FreeBSD's callouts (tcp_timer.c) fire tcp_timer_rexmt / tcp_timer_persist /
tcp_timer_2msl. tcp_input.tcp_timers calls `tcp_sender_timers`; it walks
only the connections this process armed a timer on (ctx.extra, see
tcp_output.timer_socks), because a connection's sender runs in one process.

- Retransmission timeout: back off (Q_RXTSHIFT + 1, the RTO doubles), cwnd to
  one segment and ssthresh to half the flight (tcp_cc.cc_rto), stop RTT
  timing (Karn), go back to snd_una and send again; a SYN_SENT socket resends
  its SYN. After TCP_MAXRXTSHIFT (12) timeouts in a row the connection is
  dropped (tcps_timeoutdrop) and its send buffer freed.
- Persist: data waits, nothing is in flight, and the window is zero (or too
  small for a segment): send a probe (tcp_output.tcp_window_probe) when it
  is zero, else force out what the window takes; back off like the RTO,
  clamped to [PERSMIN, PERSMAX].
- TIME_WAIT: after 2 MSL the connection is CLOSED and leaves the hash.
"""

from __future__ import annotations

from dispatch.stages.base import Ctx, Routed
from dispatch.stages.sndbuf import sb_snd_flush
from dispatch.stages.socktab import (
    P_SND_NXT,
    P_SND_UNA,
    P_SND_WND,
    P_STATE,
    P_TFLAGS,
    Q_PERSIST_AT,
    Q_REXMT_AT,
    Q_RTT_START,
    Q_RXTCOUNT,
    Q_RXTSHIFT,
    Q_SNDBUF_CC,
    Q_TIMEWAIT_AT,
    SocketTable,
)
from dispatch.stages.tcp_cc import cc_rto
from dispatch.stages.tcp_output import (
    arm_persist,
    arm_rexmt,
    send_syn,
    tcp_output_sock,
    tcp_window_probe,
    timer_socks,
)
from dispatch.stages.tcp_reass import tcp_reass_flush
from dispatch.stages.tcp_var import (
    TCP_MAXRXTSHIFT,
    TCPS_CLOSED,
    TCPS_SYN_SENT,
    TCPS_TIME_WAIT,
    TF_PERSIST,
    seq_diff,
    tcp_param,
)

DELACK_KEY = "tcp_delack_pending"  # ctx.extra: connections owing a delayed ACK here


def tcp_close(ctx: Ctx, tab: SocketTable, i: int) -> None:
    """The connection is gone: CLOSED, reassembly queue and send buffer freed, out of
    the hash, no timers."""
    tab.w[(i << 7) + P_STATE] = TCPS_CLOSED
    tcp_reass_flush(ctx, tab, i)
    sb_snd_flush(ctx, tab, i)
    qb = i << 6
    tab.q[qb + Q_REXMT_AT] = tab.q[qb + Q_PERSIST_AT] = tab.q[qb + Q_TIMEWAIT_AT] = 0
    tab.w[(i << 7) + P_TFLAGS] &= ~TF_PERSIST
    tab.unlink(i)
    ctx.extra.get(DELACK_KEY, set()).discard(i)
    timer_socks(ctx).discard(i)


def start_timewait(ctx: Ctx, tab: SocketTable, i: int) -> None:
    """Enter TIME_WAIT: no retransmissions any more, CLOSED after 2 MSL."""
    qb = i << 6
    tab.w[(i << 7) + P_STATE] = TCPS_TIME_WAIT
    tab.q[qb + Q_REXMT_AT] = tab.q[qb + Q_PERSIST_AT] = 0
    tab.w[(i << 7) + P_TFLAGS] &= ~TF_PERSIST
    tab.q[qb + Q_TIMEWAIT_AT] = max(1, ctx.now + 2 * tcp_param(ctx, "tcp_msl_ns"))
    timer_socks(ctx).add(i)
    ctx.stats.counters["tcp.tcps_timewait"] += 1


def _rexmt(ctx: Ctx, tab: SocketTable, i: int, out: Routed) -> None:
    tw, tq = tab.w, tab.q
    b, qb = i << 7, i << 6
    st = ctx.stats.counters
    tq[qb + Q_REXMT_AT] = 0
    shift = tq[qb + Q_RXTSHIFT] + 1
    if shift > TCP_MAXRXTSHIFT:
        st["tcp.tcps_timeoutdrop"] += 1
        tcp_close(ctx, tab, i)
        return
    tq[qb + Q_RXTSHIFT] = shift
    st["tcp.tcps_rexmttimeo"] += 1
    tq[qb + Q_RXTCOUNT] += 1
    tq[qb + Q_RTT_START] = 0  # Karn: nothing retransmitted is timed
    if tw[b + P_STATE] == TCPS_SYN_SENT:
        send_syn(ctx, i, out)
        arm_rexmt(ctx, tab, i)
        return
    cc_rto(tab, i)
    tw[b + P_SND_NXT] = tw[b + P_SND_UNA]
    tcp_output_sock(ctx, i, out)


def _persist(ctx: Ctx, tab: SocketTable, i: int, out: Routed) -> None:
    tw, tq = tab.w, tab.q
    b, qb = i << 7, i << 6
    tq[qb + Q_PERSIST_AT] = 0
    tw[b + P_TFLAGS] &= ~TF_PERSIST
    ctx.stats.counters["tcp.tcps_persisttimeo"] += 1
    left = tq[qb + Q_SNDBUF_CC] - max(0, seq_diff(tw[b + P_SND_NXT], tw[b + P_SND_UNA]))
    if left <= 0 or tq[qb + Q_REXMT_AT]:
        return  # nothing waits any more, or the retransmission timer took over
    tq[qb + Q_RXTSHIFT] = min(tq[qb + Q_RXTSHIFT] + 1, TCP_MAXRXTSHIFT)
    if tw[b + P_SND_WND] == 0:
        tcp_window_probe(ctx, i, out)
        arm_persist(ctx, tab, i)
    elif not tcp_output_sock(ctx, i, out, force=True):
        arm_persist(ctx, tab, i)


def tcp_sender_timers(ctx: Ctx, out: Routed) -> None:
    """Fire every sender timer of this process that is due at ctx.now; segments to
    send are added to `out`."""
    socks = ctx.extra.get("tcp_sender_timers")
    if not socks:
        return
    tab: SocketTable = ctx.sockets
    tw, tq = tab.w, tab.q
    now = ctx.now
    for i in sorted(socks):
        b, qb = i << 7, i << 6
        if tw[b + P_STATE] == TCPS_CLOSED:
            socks.discard(i)
            continue
        t = tq[qb + Q_TIMEWAIT_AT]
        if t and now >= t:
            tcp_close(ctx, tab, i)
            continue
        t = tq[qb + Q_REXMT_AT]
        if t and now >= t:
            _rexmt(ctx, tab, i, out)
        t = tq[qb + Q_PERSIST_AT]
        if t and now >= t and tw[b + P_STATE] != TCPS_CLOSED:
            _persist(ctx, tab, i, out)
        if not (tq[qb + Q_REXMT_AT] or tq[qb + Q_PERSIST_AT] or tq[qb + Q_TIMEWAIT_AT]):
            socks.discard(i)


def next_deadline(ctx: Ctx) -> int:
    """The earliest sender deadline armed in this process (0 if none): lets a caller
    with a virtual clock jump straight to it."""
    socks = ctx.extra.get("tcp_sender_timers")
    if not socks:
        return 0
    tq = ctx.sockets.q
    ts = [t for i in socks for t in (tq[(i << 6) + Q_REXMT_AT], tq[(i << 6) + Q_PERSIST_AT],
                                     tq[(i << 6) + Q_TIMEWAIT_AT]) if t]
    return min(ts) if ts else 0
