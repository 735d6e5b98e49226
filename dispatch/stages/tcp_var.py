"""TCP's names in one place: states, pcb flags, timer constants, tcpstat keys.

tcp_input, tcp_reass, tcp_output and the socket table all speak about the
same connection; FreeBSD keeps that shared vocabulary in netinet/tcp_fsm.h
and tcp_var.h, and so do we, so that no module imports another just for a
constant. Everything here is a plain int or str (the pcb itself lives in the
shared-memory socket table, see socktab.py).
"""

from __future__ import annotations

import zlib

from dispatch.stages.base import TCP_INPUT, declare_reasons

# Connection states, numbered as FreeBSD's tcp_fsm.h.
TCPS_CLOSED = 0
TCPS_LISTEN = 1
TCPS_SYN_SENT = 2
TCPS_SYN_RECEIVED = 3
TCPS_ESTABLISHED = 4
TCPS_CLOSE_WAIT = 5
TCPS_FIN_WAIT_1 = 6
TCPS_CLOSING = 7
TCPS_LAST_ACK = 8
TCPS_FIN_WAIT_2 = 9
TCPS_TIME_WAIT = 10
TCP_STATE_NAMES = ("CLOSED", "LISTEN", "SYN_SENT", "SYN_RCVD", "ESTABLISHED", "CLOSE_WAIT",
                   "FIN_WAIT_1", "CLOSING", "LAST_ACK", "FIN_WAIT_2", "TIME_WAIT")


def state_name(state: int) -> str:
    return TCP_STATE_NAMES[state] if 0 <= state < len(TCP_STATE_NAMES) else f"?{state}"


# t_flags (a subset of FreeBSD's, same meanings)
TF_ACKNOW = 0x0001  # send an ACK now (out-of-order data, FIN, challenge)
TF_DELACK = 0x0002  # an ACK is owed: delayed
TF_SACK_PERMIT = 0x0004  # the peer offered SACK
TF_RCVD_SCALE = 0x0008  # the peer sent a window scale: both sides scale
TF_RCVD_TSTMP = 0x0010  # the peer sent timestamps: echo them
TF_FIN_PENDING = 0x0020  # a FIN was seen beyond rcv_nxt: P_FINSEQ says where
TF_SENTFIN = 0x0040  # we sent our FIN
TF_NEEDFIN = 0x0080  # the application closed: a FIN goes after the send buffer's data
TF_FASTRECOVERY = 0x0100  # in NewReno fast recovery (RFC 6582) until snd_una passes recover
TF_REQ_SCALE = 0x0200  # our SYN offered a window scale
TF_REQ_TSTMP = 0x0400  # our SYN offered timestamps
TF_PERSIST = 0x0800  # the persist timer (not the retransmission timer) is running

# Sequence-space arithmetic (mod 2**32), as SEQ_LT and friends.
SEQ_MASK = 0xFFFFFFFF


def seq_lt(a: int, b: int) -> bool:
    return ((a - b) & SEQ_MASK) >= 0x80000000


def seq_leq(a: int, b: int) -> bool:
    return a == b or ((a - b) & SEQ_MASK) >= 0x80000000


def seq_diff(a: int, b: int) -> int:
    """a - b as a signed 32-bit distance."""
    d = (a - b) & SEQ_MASK
    return d - 0x100000000 if d >= 0x80000000 else d


# Timers (ns). FreeBSD's TCPTV_DELACK is hz/25 = 40 ms.
TCPTV_DELACK_NS = 40_000_000
TCPTV_RTOBASE_NS = 1_000_000_000  # RFC 6298 2.1: the initial RTO, 1 s
TCPTV_MIN_NS = 200_000_000  # the RTO's floor (FreeBSD/Linux style; RFC 6298 says 1 s)
TCPTV_REXMTMAX_NS = 64_000_000_000  # the RTO's ceiling (RFC 6298 2.5 allows >= 60 s)
TCPTV_PERSMIN_NS = 200_000_000  # persist timer bounds
TCPTV_PERSMAX_NS = 60_000_000_000
TCPTV_MSL_NS = 30_000_000_000  # TIME_WAIT lasts 2 MSL
TCP_MAXRXTSHIFT = 12  # retransmission timeouts before the connection is dropped
TCP_RTT_GRANULARITY_NS = 1_000_000  # G of RFC 6298 2.2-2.3
TCP_IW_SEGMENTS = 10  # RFC 6928 initial window
TCP_ABC_L = 2  # RFC 3465 appropriate byte counting limit in slow start (segments)
TCP_REXMT_THRESH = 3  # duplicate ACKs that trigger fast retransmit (RFC 5681 3.2)

# Sender parameters a test or the runtime may override (StackConfig field if it has
# one, else ctx.extra[name], else the default): see tcp_param.
TCP_PARAMS: dict[str, int | bool] = {
    "tcp_rto_min_ns": TCPTV_MIN_NS,
    "tcp_rto_init_ns": TCPTV_RTOBASE_NS,
    "tcp_rto_max_ns": TCPTV_REXMTMAX_NS,
    "tcp_msl_ns": TCPTV_MSL_NS,
    "tcp_iw_segments": TCP_IW_SEGMENTS,
    "tcp_timestamps": True,  # offer RFC 7323 timestamps on active open
    "tcp_wscale": True,  # offer a window scale on active open
}


def tcp_param(ctx: object, name: str) -> int:
    """A sender parameter: ctx.config.<name> if the StackConfig has it, else
    ctx.extra[name], else TCP_PARAMS[name]. An unknown name is an error naming the
    valid ones."""
    if name not in TCP_PARAMS:
        raise KeyError(f"unknown TCP parameter {name!r}; valid: {sorted(TCP_PARAMS)}")
    v = getattr(getattr(ctx, "config", None), name, None)
    if v is None:
        v = getattr(ctx, "extra", {}).get(name, TCP_PARAMS[name])
    return int(v)
TCP_MAX_WINSHIFT = 14
TCP_MAXWIN = 65535
TCP_DEFAULT_TTL = 64

def tcp_iss(key: tuple[int, ...], now: int) -> int:
    """A deterministic initial send sequence: a hash of the 4-tuple plus a 4 us clock
    (RFC 6528's shape without the secret; runs must be reproducible)."""
    return (zlib.crc32(repr(key).encode()) + (now >> 12)) & SEQ_MASK


def rcv_scale_for(hiwat: int) -> int:
    """The window scale that lets a receive buffer of `hiwat` bytes be advertised."""
    s = 0
    while s < TCP_MAX_WINSHIFT and (TCP_MAXWIN << s) < hiwat:
        s += 1
    return s


# tcpstat keys used by the TCP stages ("tcp." + FreeBSD's field name).
TCPSTAT_KEYS = (
    "tcps_rcvtotal", "tcps_rcvpack", "tcps_rcvbyte", "tcps_rcvduppack", "tcps_rcvdupbyte",
    "tcps_rcvpartduppack", "tcps_rcvpartdupbyte", "tcps_rcvoopack", "tcps_rcvoobyte",
    "tcps_rcvbadsum", "tcps_rcvpackafterwin", "tcps_rcvbyteafterwin", "tcps_rcvshort",
    "tcps_rcvbadoff", "tcps_rcvmemdrop", "tcps_rcvafterclose", "tcps_rcvackpack",
    "tcps_rcvackbyte", "tcps_rcvacktoomuch", "tcps_rcvdupack", "tcps_rcvwinprobe",
    "tcps_delack", "tcps_sndacks", "tcps_sndctrl", "tcps_sndtotal", "tcps_sndpack",
    "tcps_sndbyte", "tcps_accepts", "tcps_connects", "tcps_drops", "tcps_conndrops",
    "tcps_closed", "tcps_badsyn", "tcps_badrst", "tcps_rcvreassfull",
    "tcps_sndrexmitpack", "tcps_sndrexmitbyte", "tcps_rexmttimeo", "tcps_fastrexmt",
    "tcps_fastrecovery", "tcps_newreno_partial", "tcps_sndprobe", "tcps_persisttimeo",
    "tcps_rttupdated", "tcps_timeoutdrop", "tcps_connattempt", "tcps_sndwinup",
    "tcps_rcvwinupd", "tcps_finwait2", "tcps_timewait",
)

# tcp_input's drop reasons, declared here so that tcp_reass (which tcp_input
# imports) counts under the same names.
TCP_DROPS = declare_reasons(
    TCP_INPUT,
    ("short", "tcps_rcvshort", "packets too short"),
    ("badoff", "tcps_rcvbadoff", "discarded for bad header offset fields"),
    ("badsum", "tcps_rcvbadsum", "discarded for bad checksums"),
    ("noport", "tcps_noport", "segments for no socket (reset sent unless a reset)"),
    ("badsyn", "tcps_badsyn", "bogus SYNs and premature ACKs to a listener"),
    ("noack", "tcps_rcvnoack", "segments without ACK in a synchronized state"),
    ("badack", "tcps_rcvbadack", "bad ACKs completing a handshake (reset sent)"),
    ("acktoomuch", "tcps_rcvacktoomuch", "acks for unsent data"),
    ("badrst", "tcps_badrst", "ignored RSTs (out of window or challenged)"),
    ("duppack", "tcps_rcvduppack", "completely duplicate packets"),
    ("reassdup", "tcps_rcvduppack", "duplicates of queued out-of-order data"),
    ("afterwin", "tcps_rcvpackafterwin", "packets with data after window"),
    ("afterclose", "tcps_rcvafterclose", "packets received after close"),
    ("memdrop", "tcps_rcvmemdrop", "discarded due to memory problems (reassembly or "
     "socket table full)"),
    ("flushed", "tcps_reassflush", "queued out-of-order segments freed at reset or close"),
    ("syndata", "tcps_rcvsyndata", "data on a SYN-ACK (not accepted; the peer resends)"),
)
