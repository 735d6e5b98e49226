"""TCP congestion control (NewReno) and the retransmission timeout, over the socket record.

Why it exists: how much a sender may have in flight, and how long it waits
before it sends again, are the two rules that make a TCP sender a good
citizen of a lossy network; FreeBSD keeps them in cc_newreno.c and
tcp_timer.c/tcp_input.c (tcp_xmit_timer). Every value lives in the
connection's record in the shared socket table (P_SND_CWND, P_SND_SSTHRESH,
Q_SRTT, Q_RTTVAR, Q_RTO, Q_RXTSHIFT, ...), none in Python objects.

The rules, and which RFC each follows:

- Initial window: RFC 6928, IW = min(10 * SMSS, max(2 * SMSS, 14600)) bytes
  (``tcp_iw_segments`` sets the 10); after an idle period no reset (RFC 5681
  4.1 is not applied: the emulated applications do not idle mid-stream).
- Slow start while cwnd < ssthresh: cwnd += min(bytes acked, L * SMSS) per ACK
  with L = 2, RFC 3465's appropriate byte counting (as FreeBSD's abc_l_var):
  with an ACK per segment or per two segments cwnd doubles each round trip.
- Congestion avoidance: cwnd += SMSS once per cwnd's worth of acknowledged
  bytes (RFC 5681 3.1's byte counting).
- Fast retransmit on the third duplicate ACK (RFC 5681 3.2):
  ssthresh = max(FlightSize / 2, 2 * SMSS), cwnd = ssthresh + 3 * SMSS,
  inflated by SMSS for every further duplicate; NewReno (RFC 6582): recover =
  snd_max, a partial ACK retransmits the next hole and deflates cwnd by the
  amount acked (plus SMSS back), a full ACK ends recovery with
  cwnd = min(ssthresh, FlightSize + SMSS).
- A retransmission timeout (RFC 5681 3.1, eq. 4-5): ssthresh = max(FlightSize
  / 2, 2 * SMSS), cwnd = 1 SMSS (the loss window), recovery abandoned.
- RTO (RFC 6298): the first sample R sets SRTT = R, RTTVAR = R / 2; later ones
  RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|, SRTT = 7/8 SRTT + 1/8 R; RTO = SRTT +
  max(G, 4 RTTVAR) with G = 1 ms, clamped to [tcp_rto_min_ns (200 ms, as
  FreeBSD and Linux; RFC 6298 says 1 s), tcp_rto_max_ns (64 s)]; 1 s before any
  sample. Karn's rule: a retransmitted segment is never timed (the sender
  stops timing when it retransmits); the timer backs off x2 per expiry
  (Q_RXTSHIFT) and the backoff is cleared by the next valid sample.
"""

from __future__ import annotations

from dispatch.stages.base import Ctx
from dispatch.stages.socktab import (
    P_MAXSEG,
    P_SND_CWND,
    P_SND_MAX,
    P_SND_SSTHRESH,
    P_SND_UNA,
    P_TFLAGS,
    Q_BYTES_ACKED,
    Q_DUPACKS,
    Q_RTO,
    Q_RTT_START,
    Q_RTTVAR,
    Q_RXTSHIFT,
    Q_SND_RECOVER,
    Q_SRTT,
    SocketTable,
)
from dispatch.stages.tcp_var import (
    TCP_ABC_L,
    TCP_RTT_GRANULARITY_NS,
    TF_FASTRECOVERY,
    TF_RCVD_TSTMP,
    seq_diff,
    tcp_param,
)

SSTHRESH_INF = 0xFFFFFFFF  # "no threshold yet": u32 maximum
_TS_OPTLEN = 12


def smss(tab: SocketTable, i: int) -> int:
    """The sender's maximum segment size: t_maxseg less the timestamp option if used."""
    b = i << 7
    m = tab.w[b + P_MAXSEG] - (_TS_OPTLEN if tab.w[b + P_TFLAGS] & TF_RCVD_TSTMP else 0)
    return max(1, m)


def flight_size(tab: SocketTable, i: int) -> int:
    b = i << 7
    return max(0, seq_diff(tab.w[b + P_SND_MAX], tab.w[b + P_SND_UNA]))


def initial_window(ctx: Ctx, mss: int) -> int:
    """RFC 6928: min(IW segments * SMSS, max(2 * SMSS, 14600))."""
    return min(tcp_param(ctx, "tcp_iw_segments") * mss, max(2 * mss, 14600))


def cc_conn_init(ctx: Ctx, tab: SocketTable, i: int) -> None:
    """A connection became established: cwnd = IW, ssthresh = infinity."""
    b, qb = i << 7, i << 6
    tab.w[b + P_SND_CWND] = initial_window(ctx, smss(tab, i))
    tab.w[b + P_SND_SSTHRESH] = SSTHRESH_INF
    tab.q[qb + Q_BYTES_ACKED] = 0
    tab.q[qb + Q_DUPACKS] = 0
    tab.q[qb + Q_SND_RECOVER] = tab.w[b + P_SND_UNA]
    if not tab.q[qb + Q_RTO]:
        tab.q[qb + Q_RTO] = tcp_param(ctx, "tcp_rto_init_ns")


def _set_cwnd(tab: SocketTable, i: int, v: int) -> None:
    tab.w[(i << 7) + P_SND_CWND] = max(1, min(v, SSTHRESH_INF))


def cc_ack_received(ctx: Ctx, tab: SocketTable, i: int, acked: int) -> None:
    """New data acknowledged outside fast recovery: open cwnd (slow start or
    congestion avoidance)."""
    b, qb = i << 7, i << 6
    mss = smss(tab, i)
    cwnd = tab.w[b + P_SND_CWND]
    if cwnd < tab.w[b + P_SND_SSTHRESH]:
        _set_cwnd(tab, i, cwnd + min(acked, TCP_ABC_L * mss))
        return
    ba = tab.q[qb + Q_BYTES_ACKED] + acked
    if ba >= cwnd:
        ba -= cwnd
        _set_cwnd(tab, i, cwnd + mss)
    tab.q[qb + Q_BYTES_ACKED] = ba


def _halve(tab: SocketTable, i: int) -> int:
    mss = smss(tab, i)
    ss = max(flight_size(tab, i) // 2, 2 * mss)
    tab.w[(i << 7) + P_SND_SSTHRESH] = ss
    tab.q[(i << 6) + Q_BYTES_ACKED] = 0
    return ss


def cc_enter_recovery(ctx: Ctx, tab: SocketTable, i: int) -> None:
    """The third duplicate ACK: ssthresh = FlightSize / 2, cwnd = ssthresh + 3 SMSS,
    recover = snd_max (the caller retransmits the first unacknowledged segment)."""
    b, qb = i << 7, i << 6
    ss = _halve(tab, i)
    _set_cwnd(tab, i, ss + 3 * smss(tab, i))
    tab.q[qb + Q_SND_RECOVER] = tab.w[b + P_SND_MAX]
    tab.w[b + P_TFLAGS] |= TF_FASTRECOVERY
    tab.q[qb + Q_RTT_START] = 0  # Karn: the retransmitted segment is not timed
    ctx.stats.counters["tcp.tcps_fastrecovery"] += 1


def cc_dupack_in_recovery(tab: SocketTable, i: int) -> None:
    """A further duplicate ACK in recovery: a segment left the network, cwnd += SMSS."""
    _set_cwnd(tab, i, tab.w[(i << 7) + P_SND_CWND] + smss(tab, i))


def cc_partial_ack(tab: SocketTable, i: int, acked: int) -> None:
    """RFC 6582 3.2 step 3: deflate by the amount acked, add back one SMSS."""
    mss = smss(tab, i)
    cwnd = tab.w[(i << 7) + P_SND_CWND]
    _set_cwnd(tab, i, max(mss, cwnd - acked + (mss if acked >= mss else 0)))


def cc_post_recovery(tab: SocketTable, i: int) -> None:
    """RFC 6582 3.2 step 4 (full ACK): cwnd = min(ssthresh, FlightSize + SMSS)."""
    b = i << 7
    tab.w[b + P_TFLAGS] &= ~TF_FASTRECOVERY
    _set_cwnd(tab, i, min(tab.w[b + P_SND_SSTHRESH], flight_size(tab, i) + smss(tab, i)))
    tab.q[(i << 6) + Q_DUPACKS] = 0


def cc_rto(tab: SocketTable, i: int) -> None:
    """A retransmission timeout: ssthresh = FlightSize / 2, cwnd = 1 SMSS."""
    b, qb = i << 7, i << 6
    _halve(tab, i)
    _set_cwnd(tab, i, smss(tab, i))
    tab.w[b + P_TFLAGS] &= ~TF_FASTRECOVERY
    tab.q[qb + Q_DUPACKS] = 0
    tab.q[qb + Q_SND_RECOVER] = tab.w[b + P_SND_MAX]


def rtt_sample(ctx: Ctx, tab: SocketTable, i: int, r: int) -> None:
    """tcp_xmit_timer: fold one RTT sample (ns) into SRTT / RTTVAR and the RTO, and
    clear the backoff (RFC 6298 2.2-2.4, 5.7)."""
    qb = i << 6
    q = tab.q
    r = max(1, r)
    srtt = q[qb + Q_SRTT]
    if not srtt:
        srtt, rttvar = r, r // 2
    else:
        rttvar = (3 * q[qb + Q_RTTVAR] + abs(srtt - r)) // 4
        srtt = (7 * srtt + r) // 8
    q[qb + Q_SRTT] = srtt
    q[qb + Q_RTTVAR] = rttvar
    rto = srtt + max(TCP_RTT_GRANULARITY_NS, 4 * rttvar)
    q[qb + Q_RTO] = min(max(rto, tcp_param(ctx, "tcp_rto_min_ns")),
                        tcp_param(ctx, "tcp_rto_max_ns"))
    q[qb + Q_RXTSHIFT] = 0
    ctx.stats.counters["tcp.tcps_rttupdated"] += 1


def rxtcur(ctx: Ctx, tab: SocketTable, i: int) -> int:
    """The retransmission timeout now in force: RTO << backoff, at most tcp_rto_max_ns."""
    qb = i << 6
    rto = tab.q[qb + Q_RTO] or tcp_param(ctx, "tcp_rto_init_ns")
    return min(rto << min(tab.q[qb + Q_RXTSHIFT], 30), tcp_param(ctx, "tcp_rto_max_ns"))
