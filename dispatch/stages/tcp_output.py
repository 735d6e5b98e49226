"""tcp_output: building TCP segments, for the receive side's ACKs and for a sender.

Why it exists: tcp_input must answer (SYN-ACK, ACKs, FIN, RST) and a socket
that sends must have its data cut into segments; both are "make a TCP
segment for this pcb", which FreeBSD keeps in tcp_output.c / tcp_subr.c.

A segment is a new packet-header mbuf holding the IP and TCP headers in its
internal data (MHLEN = 120 bytes: IPv6 + TCP with 40 bytes of options fits),
with the payload, if any, chained behind it by m_copym, which shares the
send buffer's clusters (refcount) instead of copying them: copyin stays the
one software copy on send. The packet leaves for "ip_output" (IPv4) or
"ip6_output" (IPv6) with m_data at a complete IP header (IPv4: version, IHL
5, total length, DF, TTL 64, protocol, addresses; identification and header
checksum are ip_output's; IPv6: the whole fixed header, hop limit 64) and
W_HDRLENS = l3hlen << 8 | l4hlen << 24.

Checksums: computed in software, or, with the txcsum offload, left to the
NIC as FreeBSD does it: csum_flags CSUM_TCP / CSUM_TCP_IPV6, th_sum holding
the pseudo-header sum, csum_data = 16 (offsetof(struct tcphdr, th_sum)).
With the tso offload a send is cut into segments of up to 64 KiB marked
CSUM_TSO with the MSS in W_VTAG's high 16 bits (tso_segsz), th_sum then
being the pseudo-header sum without the length.

Offload switches are read from ``ctx.config.txcsum`` / ``ctx.config.tso`` if
the StackConfig has them, else from ``ctx.extra["txcsum"]`` /
``ctx.extra["tso"]`` (default off).

The sender (issue 8). A connection's data stays in its send buffer
(sndbuf.py: an mbuf chain off the socket record) until acknowledged;
`tcp_output_sock` cuts segments from it at snd_nxt, as much as
min(snd_wnd, cwnd) allows (tcp_cc.py: RFC 6928 initial window, RFC 5681
slow start / congestion avoidance with RFC 3465 byte counting, NewReno fast
recovery, RFC 6298 RTO); tcp_input's ACK processing frees acknowledged data,
counts duplicate ACKs and calls back here; tcp_timer.py retransmits on
timeout and probes a zero window. The application's calls, each returning
the segments to hand to ip_output / ip6_output (a Routed):

- ``tcp_attach(ctx, laddr, lport, faddr, fport) -> sid``: a CLOSED socket.
- ``tcp_connect(ctx, sid) -> Routed``: active open (SYN_SENT; tcp_input
  completes it on the SYN-ACK).
- ``tcp_send(ctx, sid, data) -> Routed``: sosend (copyin; EWOULDBLOCK past the
  send buffer's high-water mark) then output.
- ``tcp_shutdown(ctx, sid) -> Routed``: our FIN after the buffered data.
- ``tcp_input.tcp_timers(ctx) -> Routed``: delayed ACKs, retransmissions,
  window probes, TIME_WAIT expiry.
- ``tcp_send_done(tab, sid) -> bool`` and ``tcp_send_info(tab, sid) -> dict``:
  "all sent and acknowledged?" and the per-socket byte counts.

The "tcp_output" stage itself takes sosend's request chains (W_SOCKID set),
appends them to their sockets' send buffers and runs tcp_output_sock for
each socket; a request for a socket that cannot send is dropped (nosock).
Only the process running a connection's sender may call these for it: the
send buffer and the sender's words of the record have a single writer.

tcpstat: sndtotal, sndpack / sndbyte (new data), sndrexmitpack /
sndrexmitbyte, sndacks, sndctrl, sndprobe; per socket Q_SNDPACK, Q_SNDBYTE,
Q_SNDREXMITPACK, Q_SNDREXMITBYTE, Q_SND_ACKED.
"""

from __future__ import annotations

import errno
import struct

from dispatch.mbuf import layout as L
from dispatch.packet.checksum import ones_sum
from dispatch.packet.ipv4 import IPV4_HDR
from dispatch.packet.ipv6 import IPV6_HDR
from dispatch.packet.tcp import (
    TCP_HDR,
    TH_ACK,
    TH_FIN,
    TH_PUSH,
    TH_RST,
    TH_SYN,
    build_tcp_options,
)
from dispatch.stages.base import (
    IP6_OUTPUT,
    IP_OUTPUT,
    TCP_OUTPUT,
    Ctx,
    Routed,
    declare_reasons,
    stage,
)
from dispatch.stages.sndbuf import sb_snd_append, sb_snd_copy
from dispatch.stages.socket import sosend
from dispatch.stages.socktab import (
    AF_INET6,
    P_FADDR,
    P_FPORT,
    P_ISS,
    P_LADDR,
    P_LPORT,
    P_MAXSEG,
    P_PF,
    P_RCV_ADV,
    P_RCV_NXT,
    P_SB_HIWAT,
    P_SCALE,
    P_SND_CWND,
    P_SND_MAX,
    P_SND_NXT,
    P_SND_SSTHRESH,
    P_SND_UNA,
    P_SND_WND,
    P_STATE,
    P_TFLAGS,
    P_TS_RECENT,
    Q_FASTREXMT,
    Q_PERSIST_AT,
    Q_REXMT_AT,
    Q_RTO,
    Q_RTT_SEQ,
    Q_RTT_START,
    Q_RXTCOUNT,
    Q_RXTSHIFT,
    Q_SB_APPENDED,
    Q_SB_REMOVED,
    Q_SND_ACKED,
    Q_SND_MAXWND,
    Q_SND_REMOVED,
    Q_SNDBUF_CC,
    Q_SNDBYTE,
    Q_SNDPACK,
    Q_SNDREXMITBYTE,
    Q_SNDREXMITPACK,
    Q_SRTT,
    REC_BYTES,
    SocketTable,
    addr_int,
    pf_of,
)
from dispatch.stages.tcp_cc import cc_conn_init, rxtcur, smss
from dispatch.stages.tcp_var import (
    SEQ_MASK,
    TCP_DEFAULT_TTL,
    TCP_MAXWIN,
    TCPS_CLOSE_WAIT,
    TCPS_CLOSED,
    TCPS_CLOSING,
    TCPS_ESTABLISHED,
    TCPS_FIN_WAIT_1,
    TCPS_LAST_ACK,
    TCPS_LISTEN,
    TCPS_SYN_RECEIVED,
    TCPS_SYN_SENT,
    TCPTV_PERSMAX_NS,
    TCPTV_PERSMIN_NS,
    TF_ACKNOW,
    TF_DELACK,
    TF_NEEDFIN,
    TF_PERSIST,
    TF_RCVD_TSTMP,
    TF_REQ_SCALE,
    TF_REQ_TSTMP,
    TF_SENTFIN,
    rcv_scale_for,
    seq_diff,
    state_name,
    tcp_iss,
    tcp_param,
)

OUT_DROPS = declare_reasons(
    TCP_OUTPUT,
    ("nosock", "tcps_snd_nosock", "send requests without a connection"),
    ("nobufs", "tcps_sndnobufs", "send requests cut short: no mbufs"),
)

IPPROTO_TCP = 6
#: states in which a connection may send data or its FIN
SEND_STATES = frozenset((TCPS_ESTABLISHED, TCPS_CLOSE_WAIT, TCPS_FIN_WAIT_1, TCPS_CLOSING,
                         TCPS_LAST_ACK))
TIMER_KEY = "tcp_sender_timers"  # ctx.extra: connections with a sender timer armed here
TCPOLEN_TSTAMP_APPA = 12  # NOP NOP TS(10): the usual timestamp layout
_TS_APPA = struct.Struct("!BBBBII")
_IP_DF = 0x4000
TSO_MAX = 65535


def offload(ctx: Ctx, name: str) -> bool:
    """An interface capability (txcsum, tso): StackConfig field if any, else ctx.extra."""
    v = getattr(ctx.config, name, None)
    if v is None:
        v = ctx.extra.get(name, False)
    return bool(v)


def endpoints(ctx: Ctx, tab: SocketTable, i: int) -> tuple[int, bytes, bytes, int, int]:
    """(family, local addr, foreign addr, local port, foreign port) of pcb i, cached."""
    cache = ctx.extra.setdefault("tcp_endpoints", {})
    ep = cache.get(i)
    if ep is None:
        b = i << 7
        o = tab.rec_off + i * REC_BYTES
        fam = tab.w[b + P_PF] >> 8
        la = bytes(tab.buf[o + 4 * P_LADDR : o + 4 * P_LADDR + 16])
        fa = bytes(tab.buf[o + 4 * P_FADDR : o + 4 * P_FADDR + 16])
        if fam != AF_INET6:
            la, fa = la[12:], fa[12:]
        ep = cache[i] = (fam, la, fa, tab.w[b + P_LPORT], tab.w[b + P_FPORT])
    return ep


def rcv_window(tab: SocketTable, i: int, *, syn: bool = False,
               default_hiwat: int = 2 * 1024 * 1024) -> int:
    """The window field to advertise (scaled unless `syn`); updates rcv_adv.

    The space is sb_hiwat - sb_cc, never shrinking what was advertised.
    """
    w, q = tab.w, tab.q
    b = i << 7
    qb = i << 6
    space = (w[b + P_SB_HIWAT] or default_hiwat) - (q[qb + Q_SB_APPENDED] - q[qb + Q_SB_REMOVED])
    scale = 0 if syn else (w[b + P_SCALE] >> 8) & 0xFF
    rcv_nxt = w[b + P_RCV_NXT]
    adv = seq_diff(w[b + P_RCV_ADV], rcv_nxt)
    if space < adv:
        space = adv
    if space < 0:
        space = 0
    top = TCP_MAXWIN << scale
    if space > top:
        space = top
    field = space >> scale
    w[b + P_RCV_ADV] = (rcv_nxt + (field << scale)) & SEQ_MASK
    return field


def ts_option(ctx: Ctx, tab: SocketTable, i: int) -> bytes:
    """NOP NOP TS(now in ms, ts_recent) if the peer uses timestamps, else b""."""
    b = i << 7
    if tab.w[b + P_TFLAGS] & TF_RCVD_TSTMP:
        return _TS_APPA.pack(1, 1, 8, 10, (ctx.now // 1_000_000) & SEQ_MASK,
                             tab.w[b + P_TS_RECENT])
    return b""


def build_segment(ctx: Ctx, *, family: int, src: bytes, dst: bytes, sport: int, dport: int,
                  seq: int, ack: int, flags: int, win: int, options: bytes = b"",
                  payload: int = 0, plen: int = 0, tso_segsz: int = 0) -> int:
    """A TCP/IP packet: headers in a new pkthdr mbuf, `payload` (a chain, plen bytes)
    behind it. Returns the handle, or 0 if the pool denies (payload then freed)."""
    pool = ctx.pool
    m = pool.gethdr()
    if not m:
        if payload:
            pool.freem(payload)
        return 0
    w = pool.w
    b = m << 6
    thl = 20 + len(options)
    tcplen = thl + plen
    v6 = family == AF_INET6
    l3 = 40 if v6 else 20
    hl = l3 + thl
    off = pool.data_offset(m)
    buf = pool.buf
    if v6:
        IPV6_HDR.pack_into(buf, off, 6 << 28, tcplen, IPPROTO_TCP, TCP_DEFAULT_TTL, src, dst)
    else:
        IPV4_HDR.pack_into(buf, off, 0x45, 0, l3 + tcplen, 0, _IP_DF, TCP_DEFAULT_TTL,
                           IPPROTO_TCP, 0, src, dst)
    t = off + l3
    TCP_HDR.pack_into(buf, t, sport, dport, seq & SEQ_MASK, ack & SEQ_MASK,
                      ((thl >> 2) << 4) | (flags >> 8), flags & 0xFF, win, 0, 0)
    if options:
        buf[t + 20 : t + thl] = options
    w[b + L.W_LEN] = hl
    w[b + L.W_PKTLEN] = hl + plen
    w[b + L.W_HDRLENS] = (l3 << 8) | ((thl & 0xFF) << 24)
    if payload:
        w[(payload << 6) + L.W_FLAGS] &= ~L.M_PKTHDR
        w[b + L.W_NEXT] = payload
    # pseudo-header ones sum (unfolded words are fine as an initial value)
    ps = int.from_bytes(src, "big") % 0xFFFF + int.from_bytes(dst, "big") % 0xFFFF + IPPROTO_TCP
    if tso_segsz:
        w[b + L.W_CSUM_FLAGS] = L.CSUM_TSO | (L.CSUM_TCP_IPV6 if v6 else L.CSUM_TCP)
        w[b + L.W_CSUM_DATA] = 16
        w[b + L.W_VTAG] = (w[b + L.W_VTAG] & 0xFFFF) | (tso_segsz << 16)
        s = ones_sum(b"", ps)
        buf[t + 16 : t + 18] = s.to_bytes(2, "big")
    elif offload(ctx, "txcsum"):
        w[b + L.W_CSUM_FLAGS] = L.CSUM_TCP_IPV6 if v6 else L.CSUM_TCP
        w[b + L.W_CSUM_DATA] = 16
        s = ones_sum(b"", ps + tcplen)
        buf[t + 16 : t + 18] = s.to_bytes(2, "big")
    else:
        s = ps + tcplen
        if plen:
            s = ones_sum(pool.copydata(payload, 0, plen), s)
        c = ~ones_sum(buf[t : t + thl], s) & 0xFFFF
        buf[t + 16 : t + 18] = c.to_bytes(2, "big")
    return m


def out_stage(family: int) -> str:
    return IP6_OUTPUT if family == AF_INET6 else IP_OUTPUT


def tcp_respond(ctx: Ctx, i: int, flags: int, *, seq: int | None = None,
                options: bytes | None = None, syn: bool = False) -> int:
    """A control segment for pcb i (ACK, SYN-ACK, FIN, RST): seq = snd_nxt unless
    given, ack = rcv_nxt, our current window, timestamps if in use."""
    tab: SocketTable = ctx.sockets
    fam, la, fa, lp, fp = endpoints(ctx, tab, i)
    b = i << 7
    w = tab.w
    if options is None:
        options = ts_option(ctx, tab, i)
    return build_segment(ctx, family=fam, src=la, dst=fa, sport=lp, dport=fp,
                         seq=w[b + P_SND_NXT] if seq is None else seq,
                         ack=w[b + P_RCV_NXT] if flags & TH_ACK else 0, flags=flags,
                         win=0 if flags & TH_RST else rcv_window(tab, i, syn=syn,
                                                            default_hiwat=ctx.config.sb_hiwat),
                         options=options)


def tcp_rst(ctx: Ctx, *, family: int, src: bytes, dst: bytes, sport: int, dport: int,
            seq: int, ack: int, flags: int) -> int:
    """A RST for a segment that has no connection (tcp_dropwithreset): our side is src."""
    return build_segment(ctx, family=family, src=src, dst=dst, sport=sport, dport=dport,
                         seq=seq, ack=ack, flags=flags, win=0)


@stage(TCP_OUTPUT)
def tcp_output(ctx: Ctx, batch: list[int]) -> Routed:
    """Send requests (payload chains from sosend) join their socket's send buffer,
    then each socket sends what its windows allow now (`tcp_output_sock`)."""
    pool = ctx.pool
    w = pool.w
    tab: SocketTable = ctx.sockets
    tw = tab.w
    out: Routed = {}
    socks: dict[int, None] = {}
    for m in batch:
        sid = w[(m << 6) + L.W_SOCKID] - 1
        if sid < 0 or tw[(sid << 7) + P_STATE] not in SEND_STATES \
                or tw[(sid << 7) + P_TFLAGS] & TF_NEEDFIN:
            if sid >= 0:  # sosend counted it into the send buffer: out again
                tab.q[(sid << 6) + Q_SND_REMOVED] += w[(m << 6) + L.W_PKTLEN]
            ctx.drop(m, OUT_DROPS.nosock)
            continue
        sb_snd_append(ctx, tab, sid, m)
        socks[sid] = None
    for sid in socks:
        tcp_output_sock(ctx, sid, out)
    return {k: v for k, v in out.items() if v}


def timer_socks(ctx: Ctx) -> set[int]:
    """The connections this process has sender timers armed on (tcp_timers walks them)."""
    return ctx.extra.setdefault(TIMER_KEY, set())


def arm_rexmt(ctx: Ctx, tab: SocketTable, i: int) -> None:
    """(Re)start the retransmission timer at now + the current RTO; stops persist."""
    qb = i << 6
    tab.q[qb + Q_REXMT_AT] = max(1, ctx.now + rxtcur(ctx, tab, i))
    tab.q[qb + Q_PERSIST_AT] = 0
    tab.w[(i << 7) + P_TFLAGS] &= ~TF_PERSIST
    timer_socks(ctx).add(i)


def arm_persist(ctx: Ctx, tab: SocketTable, i: int) -> None:
    """Start the persist timer: RTO << backoff, clamped to [PERSMIN, PERSMAX]."""
    v = min(max(rxtcur(ctx, tab, i), TCPTV_PERSMIN_NS), TCPTV_PERSMAX_NS)
    tab.q[(i << 6) + Q_PERSIST_AT] = max(1, ctx.now + v)
    tab.w[(i << 7) + P_TFLAGS] |= TF_PERSIST
    timer_socks(ctx).add(i)


def tcp_output_sock(ctx: Ctx, i: int, out: Routed, *, force: bool = False) -> int:
    """tcp_output for one connection: send, from snd_nxt, what the send buffer holds
    and min(snd_wnd, cwnd) allows (a FIN after the data once the application
    closed); returns the number of segments added to `out`.

    Sends a partial segment only when it empties the buffer (no Nagle: the
    emulated applications set TCP_NODELAY), is a retransmission, fills half
    the largest window the peer offered, or `force` (the persist timer) says
    so. Arms the retransmission timer when data leaves, the persist timer when
    data waits with nothing outstanding. Segments share the buffer's clusters.
    """
    tab: SocketTable = ctx.sockets
    tw, tq = tab.w, tab.q
    b, qb = i << 7, i << 6
    if tw[b + P_STATE] not in SEND_STATES:
        return 0
    if not tw[b + P_SND_CWND]:
        cc_conn_init(ctx, tab, i)
    fam, la, fa, lp, fp = endpoints(ctx, tab, i)
    opts = ts_option(ctx, tab, i)
    mss = max(1, tw[b + P_MAXSEG] - len(opts))
    tso = offload(ctx, "tso")
    hdrs = (40 if fam == AF_INET6 else 20) + 20 + len(opts)
    chunk = max(mss, (TSO_MAX - hdrs) // mss * mss) if tso else mss
    cc = tq[qb + Q_SNDBUF_CC]
    una = tw[b + P_SND_UNA]
    pool_fail = False
    sent = npk = nby = nrp = nrb = nctl = 0
    dest: list[int] | None = None
    win_hiwat = ctx.config.sb_hiwat
    while True:
        wnd = min(tw[b + P_SND_WND], tw[b + P_SND_CWND])
        nxt = tw[b + P_SND_NXT]
        smax = tw[b + P_SND_MAX]
        off = seq_diff(nxt, una)
        if off < 0:
            nxt, off = una, 0
        left = cc - off  # -1 once a FIN beyond the data was sent
        k = min(left, wnd - off)
        rexmit = seq_diff(nxt, smax) < 0
        if force and k <= 0 < left and not sent:
            k = min(left, mss, max(1, tw[b + P_SND_WND] - off))
        k = max(0, min(k, chunk))
        if 0 < k < mss and off + k < cc and not rexmit and not force and \
                k < tq[qb + Q_SND_MAXWND] // 2:
            break  # silly-window avoidance: wait for a full segment's room
        fin = bool(tw[b + P_TFLAGS] & TF_NEEDFIN) and left >= 0 and off + k == cc
        if k == 0 and not fin:
            break
        payload = 0
        if k:
            payload = sb_snd_copy(ctx, tab, i, off, k)
            if not payload:
                pool_fail = True
                break
        flags = TH_ACK | (TH_PUSH if k and off + k == cc else 0) | (TH_FIN if fin else 0)
        seg = build_segment(ctx, family=fam, src=la, dst=fa, sport=lp, dport=fp, seq=nxt,
                            ack=tw[b + P_RCV_NXT], flags=flags,
                            win=rcv_window(tab, i, default_hiwat=win_hiwat),
                            options=opts, payload=payload, plen=k,
                            tso_segsz=mss if tso and k > mss else 0)
        if not seg:
            pool_fail = True
            break
        if dest is None:
            dest = out.setdefault(out_stage(fam), [])
        dest.append(seg)
        sent += 1
        rex = min(k, max(0, seq_diff(smax, nxt)))
        if rex:
            nrp += 1
            nrb += rex
        if k - rex:
            npk += 1
            nby += k - rex
            if not tq[qb + Q_RTT_START]:
                tq[qb + Q_RTT_SEQ] = nxt
                tq[qb + Q_RTT_START] = ctx.now or 1
        elif not k:
            nctl += 1
        nnxt = (nxt + k + (1 if fin else 0)) & SEQ_MASK
        tw[b + P_SND_NXT] = nnxt
        if seq_diff(nnxt, smax) > 0:
            tw[b + P_SND_MAX] = nnxt
        tw[b + P_TFLAGS] &= ~(TF_ACKNOW | TF_DELACK)
        if fin:
            tw[b + P_TFLAGS] |= TF_SENTFIN
        if not tq[qb + Q_REXMT_AT]:
            arm_rexmt(ctx, tab, i)
        if fin or force:
            break
    if sent:
        st = ctx.stats.counters
        st["tcp.tcps_sndtotal"] += sent
        if npk:
            st["tcp.tcps_sndpack"] += npk
            st["tcp.tcps_sndbyte"] += nby
            tq[qb + Q_SNDPACK] += npk
            tq[qb + Q_SNDBYTE] += nby
        if nrp:
            st["tcp.tcps_sndrexmitpack"] += nrp
            st["tcp.tcps_sndrexmitbyte"] += nrb
            tq[qb + Q_SNDREXMITPACK] += nrp
            tq[qb + Q_SNDREXMITBYTE] += nrb
        if nctl:
            st["tcp.tcps_sndctrl"] += nctl
    if pool_fail:
        ctx.stats.drop(OUT_DROPS.nobufs)
    off = seq_diff(tw[b + P_SND_NXT], una)
    if cc > off and not tq[qb + Q_REXMT_AT] and not tw[b + P_TFLAGS] & TF_PERSIST:
        arm_persist(ctx, tab, i)
    return sent


def tcp_rexmit_head(ctx: Ctx, i: int, out: Routed) -> int:
    """Retransmit the first unacknowledged segment (fast retransmit, NewReno's partial
    ACK): tcp_output with snd_nxt = snd_una and cwnd = one SMSS, both restored after,
    as FreeBSD's tcp_do_fastretransmit does."""
    tab: SocketTable = ctx.sockets
    tw = tab.w
    b = i << 7
    onxt, cwnd = tw[b + P_SND_NXT], tw[b + P_SND_CWND]
    tw[b + P_SND_NXT] = tw[b + P_SND_UNA]
    tw[b + P_SND_CWND] = smss(tab, i)
    n = tcp_output_sock(ctx, i, out)
    tw[b + P_SND_CWND] = cwnd
    if seq_diff(onxt, tw[b + P_SND_NXT]) > 0:
        tw[b + P_SND_NXT] = onxt
    return n


def tcp_window_probe(ctx: Ctx, i: int, out: Routed) -> int:
    """A zero-window probe: an ACK at snd_una - 1 with no data (an old duplicate the
    peer must answer with an ACK carrying its current window, as Linux's probe)."""
    tab: SocketTable = ctx.sockets
    b = i << 7
    seg = tcp_respond(ctx, i, TH_ACK, seq=(tab.w[b + P_SND_UNA] - 1) & SEQ_MASK)
    if not seg:
        ctx.stats.drop(OUT_DROPS.nobufs)
        return 0
    out.setdefault(out_stage(tab.w[b + P_PF] >> 8), []).append(seg)
    count_ctrl(ctx, TH_ACK)
    ctx.stats.counters["tcp.tcps_sndprobe"] += 1
    return 1


# --------------------------------------------------------------- the application's calls
def tcp_attach(ctx: Ctx, laddr: str, lport: int, faddr: str, fport: int, *,
               user: int | None = None, sb_hiwat: int = 0, snd_hiwat: int = 0) -> int:
    """socket() + bind(): a CLOSED TCP socket with this exact 4-tuple, ready for
    `tcp_connect`. Raises OSError(EADDRINUSE) if the 4-tuple exists and
    OSError(ENOBUFS) if the socket table is full."""
    tab: SocketTable = ctx.sockets
    fam, la = addr_int(laddr)
    fam2, fa = addr_int(faddr)
    if fam != fam2:
        raise ValueError(f"local {laddr!r} and remote {faddr!r} are different families")
    i, created = tab.insert_key((pf_of(IPPROTO_TCP, fam), la, lport, fa, fport),
                                user=user, now=ctx.now, sb_hiwat=sb_hiwat,
                                snd_hiwat=snd_hiwat)
    if i < 0:
        raise OSError(errno.ENOBUFS, f"socket table full ({tab.capacity})")
    if not created:
        raise OSError(errno.EADDRINUSE, f"{laddr}:{lport} -> {faddr}:{fport} exists")
    return i


def _syn_options(ctx: Ctx, tab: SocketTable, i: int) -> bytes:
    b = i << 7
    tf = tab.w[b + P_TFLAGS]
    fam = tab.w[b + P_PF] >> 8
    return build_tcp_options(
        mss=ctx.config.tcp_mss - (20 if fam == AF_INET6 else 0),
        wscale=(tab.w[b + P_SCALE] >> 8) if tf & TF_REQ_SCALE else None,
        timestamp=((ctx.now // 1_000_000) & SEQ_MASK, 0) if tf & TF_REQ_TSTMP else None)


def send_syn(ctx: Ctx, i: int, out: Routed) -> int:
    """(Re)send our SYN at iss: MSS, window scale and timestamps as offered."""
    tab: SocketTable = ctx.sockets
    b = i << 7
    seg = tcp_respond(ctx, i, TH_SYN, seq=tab.w[b + P_ISS], options=_syn_options(ctx, tab, i),
                      syn=True)
    if not seg:
        ctx.stats.drop(OUT_DROPS.nobufs)
        return 0
    out.setdefault(out_stage(tab.w[b + P_PF] >> 8), []).append(seg)
    count_ctrl(ctx, TH_SYN)
    return 1


def tcp_connect(ctx: Ctx, i: int) -> Routed:
    """connect(): active open. CLOSED -> SYN_SENT, our SYN leaves (MSS; window scale
    and timestamps unless tcp_wscale / tcp_timestamps are off; no SACK), the
    retransmission timer runs (1 s, backing off). tcp_input completes it on the
    SYN-ACK (SYN_SENT -> ESTABLISHED, the ACK goes out). Returns the SYN, routed."""
    tab: SocketTable = ctx.sockets
    tw, tq = tab.w, tab.q
    b, qb = i << 7, i << 6
    if tw[b + P_STATE] != TCPS_CLOSED or (tw[b + P_PF] & 0xFF) != IPPROTO_TCP:
        raise OSError(errno.EISCONN, f"socket {i} is {state_name(tw[b + P_STATE])}, "
                      "not a CLOSED TCP socket")
    fam = tw[b + P_PF] >> 8
    iss = tcp_iss(tab.key_of(i), ctx.now)
    tw[b + P_ISS] = tw[b + P_SND_UNA] = iss
    tw[b + P_SND_NXT] = tw[b + P_SND_MAX] = (iss + 1) & SEQ_MASK
    tw[b + P_MAXSEG] = ctx.config.tcp_mss - (20 if fam == AF_INET6 else 0)
    tf = 0
    scale = 0
    if tcp_param(ctx, "tcp_wscale"):
        tf |= TF_REQ_SCALE
        scale = rcv_scale_for(tw[b + P_SB_HIWAT] or ctx.config.sb_hiwat) << 8
    if tcp_param(ctx, "tcp_timestamps"):
        tf |= TF_REQ_TSTMP
    tw[b + P_TFLAGS] = tf
    tw[b + P_SCALE] = scale
    tw[b + P_STATE] = TCPS_SYN_SENT
    tq[qb + Q_RTO] = tcp_param(ctx, "tcp_rto_init_ns")
    tq[qb + Q_RXTSHIFT] = 0
    tq[qb + Q_RTT_SEQ] = iss
    tq[qb + Q_RTT_START] = ctx.now or 1
    out: Routed = {}
    send_syn(ctx, i, out)
    arm_rexmt(ctx, tab, i)
    ctx.stats.counters["tcp.tcps_connattempt"] += 1
    return out


def tcp_send(ctx: Ctx, i: int, data: bytes | memoryview) -> Routed:
    """send(2) on a connected TCP socket, non-blocking and all or nothing: copy the
    data into the send buffer (sosend: EWOULDBLOCK past P_SND_HIWAT, counted as
    socket.snd_wouldblock; ENOBUFS when the pool denies; ENOTCONN unless
    ESTABLISHED / CLOSE_WAIT; EPIPE after tcp_shutdown), then send what may go now.
    Returns the segments, routed towards ip_output / ip6_output."""
    tab: SocketTable = ctx.sockets
    if tab.w[(i << 7) + P_TFLAGS] & TF_NEEDFIN:
        raise OSError(errno.EPIPE, "send after shutdown")
    r = sosend(ctx, i, data)
    reqs = r.pop(TCP_OUTPUT, [])
    out = tcp_output(ctx, reqs) if reqs else {}
    for k, v in r.items():
        out.setdefault(k, []).extend(v)
    return out


def tcp_shutdown(ctx: Ctx, i: int) -> Routed:
    """shutdown(SHUT_WR) / close(): our FIN goes after the data still in the send
    buffer. ESTABLISHED -> FIN_WAIT_1 (-> FIN_WAIT_2 when the FIN is acked ->
    TIME_WAIT on the peer's FIN, CLOSED 2 MSL later; CLOSING if the FINs cross),
    CLOSE_WAIT -> LAST_ACK; a SYN_SENT socket just closes. Returns the segments."""
    tab: SocketTable = ctx.sockets
    tw = tab.w
    b = i << 7
    state = tw[b + P_STATE]
    out: Routed = {}
    if tw[b + P_TFLAGS] & TF_NEEDFIN or state in (TCPS_CLOSED, TCPS_LISTEN):
        return out
    if state in (TCPS_SYN_SENT, TCPS_SYN_RECEIVED):
        from dispatch.stages.tcp_timer import tcp_close

        tcp_close(ctx, tab, i)
        return out
    if state == TCPS_ESTABLISHED:
        tw[b + P_STATE] = TCPS_FIN_WAIT_1
    elif state == TCPS_CLOSE_WAIT:
        tw[b + P_STATE] = TCPS_LAST_ACK
    else:
        return out
    tw[b + P_TFLAGS] |= TF_NEEDFIN
    tcp_output_sock(ctx, i, out)
    return out


def tcp_send_done(tab: SocketTable, i: int) -> bool:
    """True when everything the application sent on socket i has been sent and
    acknowledged (and, after tcp_shutdown, our FIN too): the end of a tx run."""
    b = i << 7
    w = tab.w
    if tab.q[(i << 6) + Q_SNDBUF_CC]:
        return False
    if w[b + P_STATE] in (TCPS_SYN_SENT, TCPS_SYN_RECEIVED):
        return False
    return w[b + P_STATE] == TCPS_CLOSED or w[b + P_SND_UNA] == w[b + P_SND_MAX]


def tcp_send_info(tab: SocketTable, i: int) -> dict[str, int | str]:
    """A sender's figures for socket i: bytes sent (new data), retransmitted,
    acknowledged, still buffered, and the congestion state."""
    b, qb = i << 7, i << 6
    w, q = tab.w, tab.q
    return {"state": state_name(w[b + P_STATE]), "sndbyte": q[qb + Q_SNDBYTE],
            "sndpack": q[qb + Q_SNDPACK], "sndrexmitbyte": q[qb + Q_SNDREXMITBYTE],
            "sndrexmitpack": q[qb + Q_SNDREXMITPACK], "acked": q[qb + Q_SND_ACKED],
            "unacked": q[qb + Q_SNDBUF_CC], "cwnd": w[b + P_SND_CWND],
            "ssthresh": w[b + P_SND_SSTHRESH], "snd_wnd": w[b + P_SND_WND],
            "srtt_ns": q[qb + Q_SRTT], "rto_ns": q[qb + Q_RTO],
            "rexmttimeo": q[qb + Q_RXTCOUNT], "fastrexmt": q[qb + Q_FASTREXMT]}


def count_ctrl(ctx: Ctx, flags: int) -> None:
    """tcpstat for a control segment we sent."""
    st = ctx.stats.counters
    st["tcp.tcps_sndtotal"] += 1
    if flags & (TH_FIN | TH_RST) or flags & 0x02:
        st["tcp.tcps_sndctrl"] += 1
    else:
        st["tcp.tcps_sndacks"] += 1
