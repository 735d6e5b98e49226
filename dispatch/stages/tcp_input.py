"""tcp_input: TCP's receive side, from an IP packet to bytes in a socket.

Why it exists: it is the heart of the receive path the emulator measures
(FreeBSD's tcp_input.c): checksum, pcb lookup with wildcard listeners, the
passive side's state machine, sequence-window checks, reassembly of
out-of-order data, in-order data appended to the socket, and the ACKs.

Input: packets from ip_input / ip6_input with m_data at the IP header,
W_HDRLENS = l2hlen | l3hlen << 8 | l4hlen << 24 (l3hlen: offset of the TCP
header from the IP header, IPv6 extension headers included), the IP version
in the first nibble, csum_flags as the NIC set them. Output: payload-only
packets to "soreceive" (W_SOCKID set), ACK / SYN-ACK / FIN / RST segments to
"ip_output" / "ip6_output". Every other packet is dropped with a reason
(tcp_var.TCP_DROPS) or consumed: control segments that carry no data (pure
ACKs, SYNs, FINs, RSTs acted on) are counted as ``absorbed.tcp_input`` (as Ctx.absorb does), which the
conservation check adds to delivered + drops; out-of-order segments wait in
the reassembly queue (in flight: tcp_reass.reass_held).

State machine (the passive side): LISTEN -(SYN / SYN-ACK)-> SYN_RECEIVED
-(ACK of our SYN)-> ESTABLISHED -(FIN / ACK)-> CLOSE_WAIT; the emulated
application closes as soon as the FIN has been delivered, so our FIN goes
out with that ACK: LAST_ACK -(ACK of our FIN)-> CLOSED. RSTs follow RFC 5961:
exactly at rcv_nxt resets, elsewhere in the window draws a challenge ACK,
outside is ignored; a SYN on a synchronized connection draws a challenge
ACK. Segments with no socket get a RST (tcp_dropwithreset).

Window checks as tcp_input's: data before rcv_nxt is trimmed (partial
duplicates) or the segment dropped (complete duplicates, after its ACK is
processed); data past rcv_nxt + rcv_wnd is trimmed or dropped
(tcps_rcvpackafterwin / tcps_rcvbyteafterwin), rcv_wnd being what the
socket buffer has room for and never less than what was advertised.

The sender's side (issue 8): a socket opened by tcp_output.tcp_connect is
SYN_SENT until a SYN-ACK acknowledging its SYN arrives (options negotiated:
MSS, window scale, timestamps; cwnd set to the initial window; the
handshake's RTT sampled; our ACK sent); a RST acknowledging the SYN refuses
the connection. On every synchronized connection the ACK field is processed
in `_ack_input`: the send window from newer segments only (snd_wl1 / wl2),
acknowledged data freed from the send buffer (sndbuf.sb_snd_drop), RTT
samples (Karn), cwnd growth, duplicate ACKs to fast retransmit and NewReno
recovery (tcp_cc.py), the retransmission timer restarted or stopped, and
whatever the window now allows sent (tcp_output.tcp_output_sock) at the end
of the batch, its segments carrying the ACK. Active close: FIN_WAIT_1 -(ACK
of our FIN)-> FIN_WAIT_2 -(FIN)-> TIME_WAIT (CLOSED after 2 MSL, tcp_timer),
or FIN_WAIT_1 -(FIN)-> CLOSING -(ACK)-> TIME_WAIT; data is still accepted in
FIN_WAIT_1/2 (half close). A passive connection whose peer closes while our
data is still in its send buffer sends its FIN after that data.

ACKs: immediate for out-of-order data (a duplicate ACK), for a FIN, for a
duplicate; delayed otherwise (config.tcp_delack): the first in-order segment
owes an ACK (TF_DELACK), the next one sends it, as FreeBSD's DELAY_ACK does,
so a stream of full-sized segments is ACKed every second segment. ACKs are
sent at the end of the batch, at most one per connection per batch, which
is exactly FreeBSD's behaviour at batch 1 and what LRO does with a batch.
A delayed ACK that no second segment collects is sent by `tcp_timers`, which
also fires the senders' retransmission, persist and TIME_WAIT timers.

Auto sockets (config.auto_sockets) turn the host into a passive observer for
replay and analysis: a packet with no matching socket creates one (local =
its destination), already ESTABLISHED, with irs = the SYN's sequence number
or, without a SYN, the first sequence number seen minus one, so that a
capture that starts mid-stream is delivered from its first byte. Auto
sockets send nothing (the capture holds the other side's own ACKs) and skip
ACK processing; both directions of a conversation get a socket each.
"""

from __future__ import annotations

import struct

import numpy as np

from dispatch.mbuf import layout as L
from dispatch.packet.checksum import fold, in_cksum, verify_batch
from dispatch.packet.errors import PacketError
from dispatch.packet.tcp import (
    TCP_HDR,
    TH_ACK,
    TH_FIN,
    TH_PUSH,
    TH_RST,
    TH_SYN,
    build_tcp_options,
    parse_tcp_options,
)
from dispatch.stages import kernels as _k
from dispatch.stages.base import SORECEIVE, TCP_INPUT, Ctx, Routed, stage
from dispatch.stages.sndbuf import sb_snd_drop
from dispatch.stages.socket import sbappend
from dispatch.stages.socktab import (
    AF_INET6,
    P_FINSEQ,
    P_IRS,
    P_ISS,
    P_MAXSEG,
    P_RCV_ADV,
    P_RCV_NXT,
    P_REASS_HEAD,
    P_SB_HIWAT,
    P_SCALE,
    P_SFLAGS,
    P_SND_MAX,
    P_SND_NXT,
    P_SND_UNA,
    P_SND_WND,
    P_STATE,
    P_TFLAGS,
    P_TS_RECENT,
    Q_DELACK_SINCE,
    Q_DROPS,
    Q_DUPACKS,
    Q_DUPBYTES,
    Q_FASTREXMT,
    Q_OOPACK,
    Q_REXMT_AT,
    Q_RTT_SEQ,
    Q_RTT_START,
    Q_SB_APPENDED,
    Q_SB_REMOVED,
    Q_SND_MAXWND,
    Q_SND_RECOVER,
    Q_SND_WL1,
    Q_SND_WL2,
    Q_SNDBUF_CC,
    SF_AUTO,
    SF_LISTEN,
    SocketTable,
)
from dispatch.stages.tcp_cc import (
    cc_ack_received,
    cc_conn_init,
    cc_dupack_in_recovery,
    cc_enter_recovery,
    cc_partial_ack,
    cc_post_recovery,
    rtt_sample,
)
from dispatch.stages.tcp_output import (
    arm_rexmt,
    count_ctrl,
    out_stage,
    tcp_output_sock,
    tcp_respond,
    tcp_rexmit_head,
    tcp_rst,
)
from dispatch.stages.tcp_reass import (
    REASS_DUP,
    REASS_FULL,
    tcp_reass_deliver,
    tcp_reass_flush,  # noqa: F401 (re-exported: tcp_input.tcp_reass_flush)
    tcp_reass_insert,
)
from dispatch.stages.tcp_timer import DELACK_KEY, start_timewait, tcp_close, tcp_sender_timers
from dispatch.stages.tcp_var import (
    SEQ_MASK,
    TCP_DROPS,
    TCP_MAX_WINSHIFT,
    TCP_REXMT_THRESH,
    TCPS_CLOSE_WAIT,
    TCPS_CLOSED,
    TCPS_CLOSING,
    TCPS_ESTABLISHED,
    TCPS_FIN_WAIT_1,
    TCPS_FIN_WAIT_2,
    TCPS_LAST_ACK,
    TCPS_SYN_RECEIVED,
    TCPS_SYN_SENT,
    TCPS_TIME_WAIT,
    TCPTV_DELACK_NS,
    TF_ACKNOW,
    TF_DELACK,
    TF_FASTRECOVERY,
    TF_FIN_PENDING,
    TF_NEEDFIN,
    TF_RCVD_SCALE,
    TF_RCVD_TSTMP,
    TF_REQ_SCALE,
    TF_REQ_TSTMP,
    TF_SACK_PERMIT,
    TF_SENTFIN,
    rcv_scale_for,  # noqa: F401 (re-exported: tcp_input.rcv_scale_for)
    seq_diff,
    tcp_iss,
)

D = TCP_DROPS
_H = struct.Struct("!H")
_II = struct.Struct("!II")
_TS_APPA = struct.Struct("!III")  # NOP NOP 8 10, TSval, TSecr
_TS_APPA_WORD = 0x0101080A
_VALID = L.CSUM_DATA_VALID
_PSEUDO = L.CSUM_PSEUDO_HDR
_BATCH_SUM_MIN = 4  # below this many software checksums, per packet is cheaper
_DELACK_KEY = DELACK_KEY
_RCV_DATA_STATES = (TCPS_ESTABLISHED, TCPS_FIN_WAIT_1, TCPS_FIN_WAIT_2)
_WL_SET = 1 << 32  # Q_SND_WL1 / Q_SND_WL2 hold (1 << 32) | seq once set
_MIRRORED = (D.noport, D.badsyn, D.noack, D.badack, D.badrst, D.afterclose, D.memdrop,
             D.flushed)


class _Out:
    """What one tcp_input batch produces."""

    __slots__ = ("rcv", "tx", "acknow", "consumed", "kick")

    def __init__(self) -> None:
        self.rcv: list[int] = []
        self.tx: Routed = {}
        self.acknow: dict[int, None] = {}
        self.consumed: list[int] = []
        self.kick: dict[int, None] = {}  # senders to run tcp_output for (ACKs, windows)


def _addr_bytes(fam: int, a: int) -> bytes:
    return a.to_bytes(16 if fam == AF_INET6 else 4, "big")


# Header prediction for a whole batch (kernels.tcp4_input): in-order data on
# established connections, as FreeBSD's tcp_input fast path takes it; any other
# batch goes segment by segment below. From 2 segments on (a lone segment gains
# little over the per-segment code).
_FAST_MIN = 2


def _tcp_input_fast(ctx: Ctx, batch: list[int]) -> Routed | None:
    """The compiled header-prediction path; None (nothing changed) for a batch it
    does not take. Exactly what the per-segment code does with such a batch."""
    n = len(batch)
    sc = ctx.extra.get("_tcp_fast_scratch")
    if sc is None or len(sc[0]) < n:
        k = max(n, 64)
        sc = ctx.extra["_tcp_fast_scratch"] = (np.empty(k, np.intp), np.empty(k + 1, np.intp),
                                                np.empty((k, 6), np.int64))
    sids, uniq, cs = sc
    pool = ctx.pool
    tab: SocketTable = ctx.sockets
    cfg = ctx.config
    total = _k.tcp4_input(pool.headers, pool.stamps64, pool.segment, pool.segment64,
                          pool.cluster_base,
                          np.array(batch, dtype=np.intp), tab.np_w, tab.np_q, tab.np_buckets,
                          tab.np_mask, cfg.sb_hiwat, 1 if cfg.tcp_delack else 0, ctx.now,
                          sids, uniq, cs)
    if total < 0:
        return None
    st = ctx.stats.counters
    st["tcp.tcps_rcvtotal"] += n
    st["tcp.tcps_rcvpack"] += n
    st["tcp.tcps_rcvbyte"] += total
    ctx.stats.drops[TCP_INPUT]  # noqa: B018 - the per-segment path creates the entry too
    out = _Out()
    q = 0
    owed: list[tuple[int, int]] = []
    while uniq[q] != -2:
        i = int(uniq[q])
        owes = int(cs[q, 5])
        if owes & 1:
            ctx.extra.setdefault(_DELACK_KEY, set()).add(i)
        if owes & 2:
            owed.append((owes >> 8, i))
        q += 1
    for _, i in sorted(owed):  # in the order the segments made them owed, as
        out.acknow[i] = None  # the per-segment path sends them
    _send_acks(ctx, tab, out)
    out.tx[SORECEIVE] = list(batch)
    return out.tx


@stage(TCP_INPUT)
def tcp_input(ctx: Ctx, batch: list[int]) -> Routed:
    if len(batch) >= _FAST_MIN:
        r = _tcp_input_fast(ctx, batch)
        if r is not None:
            return r
    pool = ctx.pool
    w, buf = pool.w, pool.buf
    cl_base, mbuf_off = pool.cl_base, pool.mbuf_off
    st = ctx.stats.counters
    st["tcp.tcps_rcvtotal"] += len(batch)
    parsed: list[tuple[int, int, int, int, int, int, int] | None] = []
    sw_at: list[int] = []
    sw_bufs: list[memoryview | bytes] = []
    sw_init: list[int] = []
    nshort = nbadoff = nbadsum = 0
    for m in batch:
        b = m << 6
        l3 = (w[b + L.W_HDRLENS] >> 8) & 0xFFFF
        pktlen = w[b + L.W_PKTLEN]
        if pktlen < l3 + 20:
            ctx.drop(m, D.short)
            nshort += 1
            continue
        if w[b + L.W_LEN] < l3 + 20:
            m = pool.pullup(m, min(pktlen, l3 + 60))
            if not m:
                ctx.stats.drop(D.short)
                nshort += 1
                continue
            b = m << 6
        e = w[b + L.W_EXT]
        off = (cl_base[e] if e else mbuf_off + (m << 8)) + w[b + L.W_DATA]
        if buf[off] >> 4 == 6:
            fam = 6
            tlen = 40 + _H.unpack_from(buf, off + 4)[0] - l3
            src = int.from_bytes(buf[off + 8 : off + 24], "big")
            dst = int.from_bytes(buf[off + 24 : off + 40], "big")
            ps = src % 0xFFFF + dst % 0xFFFF + 6 + tlen
        else:
            fam = 4
            tlen = _H.unpack_from(buf, off + 2)[0] - l3
            src, dst = _II.unpack_from(buf, off + 12)
            ps = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + 6 + tlen
        if tlen < 20 or pktlen < l3 + tlen:
            ctx.drop(m, D.short)
            nshort += 1
            continue
        thoff = (buf[off + l3 + 12] >> 4) << 2
        if thoff < 20 or thoff > tlen:
            ctx.drop(m, D.badoff)
            nbadoff += 1
            continue
        if w[b + L.W_LEN] < l3 + thoff:
            m = pool.pullup(m, l3 + thoff)
            if not m:
                ctx.stats.drop(D.short)
                nshort += 1
                continue
            b = m << 6
            e = w[b + L.W_EXT]
            off = (cl_base[e] if e else mbuf_off + (m << 8)) + w[b + L.W_DATA]
        cf = w[b + L.W_CSUM_FLAGS]
        if cf & _VALID:
            if cf & _PSEUDO:
                ok = w[b + L.W_CSUM_DATA] == 0xFFFF
            else:
                ok = fold(w[b + L.W_CSUM_DATA] + ps) == 0xFFFF
            if not ok:
                ctx.drop(m, D.badsum)
                nbadsum += 1
                continue
        else:
            sw_at.append(len(parsed))
            if w[b + L.W_LEN] >= l3 + tlen:
                sw_bufs.append(buf[off + l3 : off + l3 + tlen])
            else:
                sw_bufs.append(pool.copydata(m, l3, tlen))
            sw_init.append(ps)
        parsed.append((m, off, l3, tlen, fam, src, dst))
    if sw_bufs:
        if len(sw_bufs) >= _BATCH_SUM_MIN:
            oks = verify_batch(sw_bufs, sw_init).tolist()
        else:
            oks = [in_cksum(x, s) == 0 for x, s in zip(sw_bufs, sw_init)]
        sw_bufs.clear()
        for j, ok in zip(sw_at, oks):
            if not ok:
                ctx.drop(parsed[j][0], D.badsum)  # type: ignore[index]
                nbadsum += 1
                parsed[j] = None
    if nshort:
        st["tcp.tcps_rcvshort"] += nshort
    if nbadoff:
        st["tcp.tcps_rcvbadoff"] += nbadoff
    if nbadsum:
        st["tcp.tcps_rcvbadsum"] += nbadsum
    out = _Out()
    tab: SocketTable = ctx.sockets
    drops = ctx.stats.drops[TCP_INPUT]
    before = [drops.get(r.name, 0) for r in _MIRRORED]
    for p in parsed:
        if p is not None:
            _segment(ctx, tab, out, *p)
    _send_acks(ctx, tab, out)
    for r, n0 in zip(_MIRRORED, before):  # drops that have no explicit tcpstat update
        d = drops.get(r.name, 0) - n0
        if d:
            st["tcp." + r.stat] += d
    if out.consumed:
        st["absorbed.tcp_input"] += len(out.consumed)
        pool.freem_batch(out.consumed)
    if out.rcv:
        out.tx[SORECEIVE] = out.rcv
    return out.tx


def _strip(pool: object, m: int, n: int) -> None:
    """m_adj(m, n) for the headers, inline for a single mbuf."""
    w = pool.w  # type: ignore[attr-defined]
    b = m << 6
    if w[b + L.W_LEN] >= n:
        w[b + L.W_DATA] += n
        w[b + L.W_LEN] -= n
        w[b + L.W_PKTLEN] -= n
    else:
        pool.adj(m, n)  # type: ignore[attr-defined]


def _emit(ctx: Ctx, out: _Out, seg: int, fam: int, flags: int) -> None:
    if seg:
        out.tx.setdefault(out_stage(fam), []).append(seg)
        count_ctrl(ctx, flags)


def _close(ctx: Ctx, tab: SocketTable, i: int) -> None:
    tcp_close(ctx, tab, i)


def _reset_for(ctx: Ctx, out: _Out, fam: int, src: int, dst: int, sport: int, dport: int,
               seq: int, ack: int, thflags: int, plen: int) -> None:
    """tcp_dropwithreset: answer a segment that has no connection with a RST."""
    if thflags & TH_RST:
        return
    if thflags & TH_ACK:
        rseq, rack, fl = ack, 0, TH_RST
    else:
        rseq = 0
        rack = (seq + plen + (1 if thflags & TH_SYN else 0) + (1 if thflags & TH_FIN else 0))
        fl = TH_RST | TH_ACK
    seg = tcp_rst(ctx, family=fam, src=_addr_bytes(fam, dst), dst=_addr_bytes(fam, src),
                  sport=dport, dport=sport, seq=rseq, ack=rack, flags=fl)
    _emit(ctx, out, seg, fam, fl)


def _auto_socket(ctx: Ctx, tab: SocketTable, key: tuple[int, int, int, int, int], seq: int,
                 syn: bool) -> int:
    irs = seq if syn else (seq - 1) & SEQ_MASK
    cfg = ctx.config

    def init(t: SocketTable, i: int) -> None:
        tw = t.w
        b = i << 7
        tw[b + P_STATE] = TCPS_ESTABLISHED
        tw[b + P_IRS] = irs
        tw[b + P_RCV_NXT] = tw[b + P_RCV_ADV] = (irs + 1) & SEQ_MASK
        tw[b + P_MAXSEG] = cfg.tcp_mss

    i, _ = tab.insert_key(key, sflags=SF_AUTO, now=ctx.now, sb_hiwat=cfg.sb_hiwat,
                          snd_hiwat=cfg.so_snd_hiwat, init=init)
    return i


def _listen_input(ctx: Ctx, tab: SocketTable, out: _Out, li: int, m: int, key: tuple,
                  fam: int, src: int, dst: int, sport: int, dport: int, seq: int, ack: int,
                  thflags: int, win: int, th: int, thoff: int, plen: int) -> None:
    """A segment for a listening socket: a SYN makes a SYN_RECEIVED child (syncache)."""
    if thflags & TH_RST:
        ctx.drop(m, D.badrst)
        return
    if thflags & TH_ACK or not thflags & TH_SYN or thflags & TH_FIN:
        ctx.drop(m, D.badsyn)
        if thflags & TH_ACK:
            _reset_for(ctx, out, fam, src, dst, sport, dport, seq, ack, thflags, plen)
        return
    try:
        opts = parse_tcp_options(bytes(ctx.pool.buf[th + 20 : th + thoff])) if thoff > 20 \
            else None
    except PacketError:
        opts = None
    cfg = ctx.config
    hiwat = tab.w[(li << 7) + P_SB_HIWAT] or cfg.sb_hiwat
    our_mss = cfg.tcp_mss - (20 if fam == AF_INET6 else 0)
    peer_mss = opts.mss if opts is not None and opts.mss else (1220 if fam == AF_INET6 else 536)
    iss = tcp_iss(key, ctx.now)
    tflags = 0
    scale = 0
    ts_recent = 0
    if opts is not None:
        if opts.sack_permitted:
            tflags |= TF_SACK_PERMIT
        if opts.wscale is not None:
            tflags |= TF_RCVD_SCALE
            scale = min(opts.wscale, TCP_MAX_WINSHIFT) | (rcv_scale_for(hiwat) << 8)
        if opts.timestamp is not None:
            tflags |= TF_RCVD_TSTMP
            ts_recent = opts.timestamp[0]

    def init(t: SocketTable, i: int) -> None:
        tw = t.w
        b = i << 7
        tw[b + P_STATE] = TCPS_SYN_RECEIVED
        tw[b + P_IRS] = seq
        tw[b + P_RCV_NXT] = tw[b + P_RCV_ADV] = (seq + 1) & SEQ_MASK
        tw[b + P_ISS] = tw[b + P_SND_UNA] = iss
        tw[b + P_SND_NXT] = tw[b + P_SND_MAX] = (iss + 1) & SEQ_MASK
        tw[b + P_SND_WND] = win
        tw[b + P_TFLAGS] = tflags
        tw[b + P_SCALE] = scale
        tw[b + P_MAXSEG] = min(our_mss, peer_mss)
        tw[b + P_TS_RECENT] = ts_recent

    i, _ = tab.insert_key(key, now=ctx.now, parent=li, sb_hiwat=hiwat,
                          snd_hiwat=cfg.so_snd_hiwat, init=init)
    if i < 0:
        ctx.drop(m, D.memdrop)
        return
    out.consumed.append(m)
    _send_synack(ctx, out, tab, i, fam)


def _send_synack(ctx: Ctx, out: _Out, tab: SocketTable, i: int, fam: int) -> None:
    b = i << 7
    tw = tab.w
    tf = tw[b + P_TFLAGS]
    cfg = ctx.config
    opts = build_tcp_options(
        mss=cfg.tcp_mss - (20 if fam == AF_INET6 else 0),
        wscale=(tw[b + P_SCALE] >> 8) if tf & TF_RCVD_SCALE else None,
        sack_permitted=bool(tf & TF_SACK_PERMIT),
        timestamp=((ctx.now // 1_000_000) & SEQ_MASK, tw[b + P_TS_RECENT])
        if tf & TF_RCVD_TSTMP else None)
    seg = tcp_respond(ctx, i, TH_SYN | TH_ACK, seq=tw[b + P_ISS], options=opts, syn=True)
    _emit(ctx, out, seg, fam, TH_SYN | TH_ACK)


def _segment(ctx: Ctx, tab: SocketTable, out: _Out, m: int, off: int, l3: int, tlen: int,
             fam: int, src: int, dst: int) -> None:
    """One checksummed segment through lookup and the state machine."""
    pool = ctx.pool
    w, buf = pool.w, pool.buf
    st = ctx.stats.counters
    th = off + l3
    sport, dport, seq, ack, offx, fl, win, _sum, _urp = TCP_HDR.unpack_from(buf, th)
    thoff = (offx >> 4) << 2
    thflags = fl | ((offx & 1) << 8)
    plen = tlen - thoff
    mb = m << 6
    excess = w[mb + L.W_PKTLEN] - (l3 + tlen)
    if excess > 0:  # link-layer padding past the IP datagram
        pool.adj(m, -excess)
    key = (6 | (fam << 8), dst, dport, src, sport)
    i = tab.lookup_key(key)
    tw, tq = tab.w, tab.q
    if i < 0 or (tw[i << 7] & SF_LISTEN and ctx.config.auto_sockets):
        if not ctx.config.auto_sockets:
            ctx.drop(m, D.noport)
            _reset_for(ctx, out, fam, src, dst, sport, dport, seq, ack, thflags, plen)
            return
        i = _auto_socket(ctx, tab, key, seq, bool(thflags & TH_SYN))
        if i < 0:
            ctx.drop(m, D.memdrop)
            return
        if thflags & TH_SYN:
            seq = (seq + 1) & SEQ_MASK
            thflags &= ~TH_SYN
    b = i << 7
    sflags = tw[b + P_SFLAGS]
    if sflags & SF_LISTEN:
        _listen_input(ctx, tab, out, i, m, key, fam, src, dst, sport, dport, seq, ack,
                      thflags, win, th, thoff, plen)
        return
    quiet = sflags & SF_AUTO
    state = tw[b + P_STATE]
    tf = tw[b + P_TFLAGS]
    if tf & TF_RCVD_TSTMP and thoff == 32:
        word, tsval, _tsecr = _TS_APPA.unpack_from(buf, th + 20)
        if word == _TS_APPA_WORD:
            tw[b + P_TS_RECENT] = tsval
    if state == TCPS_SYN_SENT:
        _syn_sent_input(ctx, tab, out, i, m, fam, src, dst, sport, dport, seq, ack, thflags,
                        win, th, thoff, plen)
        return
    if state == TCPS_SYN_RECEIVED:
        if thflags & TH_RST:
            if seq == tw[b + P_RCV_NXT]:
                _close(ctx, tab, i)
                st["tcp.tcps_conndrops"] += 1
                out.consumed.append(m)
            else:
                ctx.drop(m, D.badrst)
            return
        if thflags & TH_SYN:
            if seq == tw[b + P_IRS]:  # the SYN again: our SYN-ACK was lost
                out.consumed.append(m)
                _send_synack(ctx, out, tab, i, fam)
            else:
                ctx.drop(m, D.badsyn)
            return
        if not thflags & TH_ACK:
            ctx.drop(m, D.noack)
            return
        if ack != tw[b + P_SND_NXT]:
            ctx.drop(m, D.badack)
            _reset_for(ctx, out, fam, src, dst, sport, dport, seq, ack, thflags, plen)
            return
        tw[b + P_STATE] = state = TCPS_ESTABLISHED
        tw[b + P_SND_UNA] = ack
        tab.q[(i << 6) + Q_SND_WL1] = _WL_SET | ((seq - 1) & SEQ_MASK)
        tab.q[(i << 6) + Q_SND_WL2] = _WL_SET | ack
        cc_conn_init(ctx, tab, i)
        st["tcp.tcps_accepts"] += 1
    rcv_nxt = tw[b + P_RCV_NXT]
    if thflags & TH_SYN:
        if quiet:
            if seq == tw[b + P_IRS]:
                ctx.drop(m, D.duppack)
                st["tcp.tcps_rcvduppack"] += 1
                return
            # a new connection on the same 4-tuple
            _close(ctx, tab, i)
            i = _auto_socket(ctx, tab, key, seq, True)
            if i < 0:
                ctx.drop(m, D.memdrop)
                return
            b = i << 7
            rcv_nxt = tw[b + P_RCV_NXT]
            seq = (seq + 1) & SEQ_MASK
            thflags &= ~TH_SYN
            state = TCPS_ESTABLISHED
        else:
            out.acknow[i] = None  # RFC 5961 challenge ACK
            ctx.drop(m, D.badsyn)
            return
    if thflags & TH_RST:
        d = seq_diff(seq, rcv_nxt)
        if d == 0:
            _close(ctx, tab, i)
            st["tcp.tcps_drops"] += 1
            out.consumed.append(m)
        else:
            if not quiet and 0 < d < max(1, _rcv_wnd(tab, i, ctx.config.sb_hiwat)) and \
                    state != TCPS_TIME_WAIT:
                out.acknow[i] = None  # challenge ACK
            ctx.drop(m, D.badrst)
        return
    if not quiet and not thflags & TH_ACK:
        ctx.drop(m, D.noack)
        return
    # the segment's payload only from here on
    _strip(pool, m, l3 + thoff)
    todrop = seq_diff(rcv_nxt, seq)
    if todrop > 0:
        if todrop > plen or (todrop == plen and not thflags & TH_FIN):
            st["tcp.tcps_rcvduppack"] += 1
            st["tcp.tcps_rcvdupbyte"] += plen
            tq[(i << 6) + Q_DUPBYTES] += plen
            if not quiet:
                out.acknow[i] = None
                if _ack_input(ctx, tab, out, i, m, ack, win, thflags, seq=seq):
                    return
            ctx.drop(m, D.duppack)
            return
        st["tcp.tcps_rcvpartduppack"] += 1
        st["tcp.tcps_rcvpartdupbyte"] += todrop
        tq[(i << 6) + Q_DUPBYTES] += todrop
        pool.adj(m, todrop)
        seq = rcv_nxt
        plen -= todrop
    if plen > 0:
        if state not in _RCV_DATA_STATES:  # data after the peer's FIN
            tq[(i << 6) + Q_DROPS] += 1
            ctx.drop(m, D.afterclose)
            return
        rcv_wnd = _rcv_wnd(tab, i, ctx.config.sb_hiwat)
        over = seq_diff((seq + plen) & SEQ_MASK, (rcv_nxt + rcv_wnd) & SEQ_MASK)
        if over > 0:
            st["tcp.tcps_rcvpackafterwin"] += 1
            if over >= plen:
                st["tcp.tcps_rcvbyteafterwin"] += plen
                if rcv_wnd == 0 and seq == rcv_nxt:
                    st["tcp.tcps_rcvwinprobe"] += 1
                if not quiet:
                    out.acknow[i] = None
                    _ack_input(ctx, tab, out, i, 0, ack, win, thflags, seq=seq)
                tq[(i << 6) + Q_DROPS] += 1
                ctx.drop(m, D.afterwin)
                return
            st["tcp.tcps_rcvbyteafterwin"] += over
            pool.adj(m, -over)
            plen -= over
            thflags &= ~(TH_FIN | TH_PUSH)
    if not quiet and _ack_input(ctx, tab, out, i, m, ack, win, thflags, plen, seq=seq):
        return
    if plen > 0:
        if seq == rcv_nxt and not tw[b + P_REASS_HEAD]:
            tw[b + P_RCV_NXT] = (rcv_nxt + plen) & SEQ_MASK
            st["tcp.tcps_rcvpack"] += 1
            st["tcp.tcps_rcvbyte"] += plen
            sbappend(ctx, tab, i, m, plen)
            out.rcv.append(m)
            if not quiet:
                if ctx.config.tcp_delack and plen <= tw[b + P_MAXSEG] and \
                        not tw[b + P_TFLAGS] & TF_DELACK:
                    tw[b + P_TFLAGS] |= TF_DELACK
                    tq[(i << 6) + Q_DELACK_SINCE] = ctx.now
                    ctx.extra.setdefault(_DELACK_KEY, set()).add(i)
                else:
                    out.acknow[i] = None
        else:
            r = tcp_reass_insert(ctx, tab, i, m, seq, plen)
            if not quiet:
                out.acknow[i] = None
            if r == REASS_FULL:
                tq[(i << 6) + Q_DROPS] += 1
                ctx.drop(m, D.memdrop)
                return
            if r == REASS_DUP:
                ctx.stats.drop(D.reassdup)
            elif seq != rcv_nxt:
                tq[(i << 6) + Q_OOPACK] += 1
                st["tcp.tcps_rcvoopack"] += 1
                st["tcp.tcps_rcvoobyte"] += plen
            if seq == rcv_nxt:
                for q in tcp_reass_deliver(ctx, tab, i):
                    n = w[(q << 6) + L.W_PKTLEN]
                    st["tcp.tcps_rcvpack"] += 1
                    st["tcp.tcps_rcvbyte"] += n
                    sbappend(ctx, tab, i, q, n)
                    out.rcv.append(q)
    else:
        out.consumed.append(m)
    if thflags & TH_FIN:
        fin_seq = (seq + plen) & SEQ_MASK
        if seq_diff(fin_seq, tw[b + P_RCV_NXT]) >= 0:  # remembered until the data before it
            tw[b + P_FINSEQ] = fin_seq
            tw[b + P_TFLAGS] |= TF_FIN_PENDING
    if tw[b + P_TFLAGS] & TF_FIN_PENDING and tw[b + P_FINSEQ] == tw[b + P_RCV_NXT]:
        _fin(ctx, tab, out, i)


def _rcv_wnd(tab: SocketTable, i: int, default_hiwat: int = 2 * 1024 * 1024) -> int:
    """max(sbspace, rcv_adv - rcv_nxt), as tcp_input computes rcv_wnd."""
    tw, tq = tab.w, tab.q
    b, qb = i << 7, i << 6
    space = (tw[b + P_SB_HIWAT] or default_hiwat) - (tq[qb + Q_SB_APPENDED] - tq[qb + Q_SB_REMOVED])
    adv = seq_diff(tw[b + P_RCV_ADV], tw[b + P_RCV_NXT])
    return max(space, adv, 0)


def _ack_input(ctx: Ctx, tab: SocketTable, out: _Out, i: int, m: int, ack: int, win: int,
               thflags: int, plen: int = 0, *, seq: int | None = None) -> bool:
    """The ACK field of a segment on a synchronized connection. Returns True when the
    segment is finished with: m (if given) was consumed or dropped here.

    The send window is taken from segments newer than the last that set it
    (RFC 793's snd_wl1 / snd_wl2). New data acknowledged is freed from the send
    buffer; the RTT sample, cwnd growth, NewReno partial / full ACKs and the
    retransmission timer follow (tcp_cc). A duplicate ACK (nothing new acked,
    no data, no FIN, the window unchanged, data outstanding) counts toward
    fast retransmit on the third (RFC 5681 3.2) and inflates cwnd in recovery.
    Our FIN acknowledged moves FIN_WAIT_1 -> FIN_WAIT_2, CLOSING -> TIME_WAIT,
    LAST_ACK -> CLOSED.
    """
    tw, tq = tab.w, tab.q
    b, qb = i << 7, i << 6
    st = ctx.stats.counters
    smax = tw[b + P_SND_MAX]
    if seq_diff(ack, smax) > 0:
        st["tcp.tcps_rcvacktoomuch"] += 1
        out.acknow[i] = None
        if m:
            ctx.drop(m, D.acktoomuch)
            return True
        return False
    una = tw[b + P_SND_UNA]
    acked = seq_diff(ack, una)
    oldwnd = tw[b + P_SND_WND]
    newwnd = win << (tw[b + P_SCALE] & 0xFF)
    wl1, wl2 = tq[qb + Q_SND_WL1], tq[qb + Q_SND_WL2]
    if seq is None or not wl1 or seq_diff(seq, wl1 & SEQ_MASK) > 0 or (
            seq == wl1 & SEQ_MASK and seq_diff(ack, wl2 & SEQ_MASK) >= 0):
        if newwnd != oldwnd and acked <= 0 and oldwnd < newwnd:
            st["tcp.tcps_rcvwinupd"] += 1
        tw[b + P_SND_WND] = newwnd
        if seq is not None:
            tq[qb + Q_SND_WL1] = _WL_SET | seq
            tq[qb + Q_SND_WL2] = _WL_SET | ack
        if newwnd > tq[qb + Q_SND_MAXWND]:
            tq[qb + Q_SND_MAXWND] = newwnd
        if newwnd > oldwnd:
            out.kick[i] = None
    else:
        newwnd = oldwnd
    cc = tq[qb + Q_SNDBUF_CC]
    if acked > 0:
        tw[b + P_SND_UNA] = ack
        if seq_diff(tw[b + P_SND_NXT], ack) < 0:
            tw[b + P_SND_NXT] = ack
        st["tcp.tcps_rcvackpack"] += 1
        st["tcp.tcps_rcvackbyte"] += acked
        if cc:
            sb_snd_drop(ctx, tab, i, min(acked, cc))
        if tq[qb + Q_RTT_START] and seq_diff(ack, tq[qb + Q_RTT_SEQ] & SEQ_MASK) > 0:
            rtt_sample(ctx, tab, i, ctx.now - tq[qb + Q_RTT_START])
            tq[qb + Q_RTT_START] = 0
        if tw[b + P_TFLAGS] & TF_FASTRECOVERY:
            if seq_diff(ack, tq[qb + Q_SND_RECOVER] & SEQ_MASK) < 0:
                cc_partial_ack(tab, i, acked)  # NewReno: the next hole goes now
                st["tcp.tcps_newreno_partial"] += 1
                tcp_rexmit_head(ctx, i, out.tx)
            else:
                cc_post_recovery(tab, i)
        else:
            tq[qb + Q_DUPACKS] = 0
            if cc:
                cc_ack_received(ctx, tab, i, min(acked, cc))
        if tq[qb + Q_REXMT_AT]:
            if ack == smax:
                tq[qb + Q_REXMT_AT] = 0
            else:
                arm_rexmt(ctx, tab, i)
        if cc or tw[b + P_TFLAGS] & TF_NEEDFIN:
            out.kick[i] = None
        state = tw[b + P_STATE]
        if ack == smax and tw[b + P_TFLAGS] & TF_SENTFIN:
            if state == TCPS_FIN_WAIT_1:
                tw[b + P_STATE] = TCPS_FIN_WAIT_2
                st["tcp.tcps_finwait2"] += 1
            elif state == TCPS_CLOSING:
                start_timewait(ctx, tab, i)
        if state == TCPS_LAST_ACK and ack == smax:
            _close(ctx, tab, i)
            st["tcp.tcps_closed"] += 1
            out.acknow.pop(i, None)
            out.kick.pop(i, None)
            if m and plen:
                ctx.drop(m, D.afterclose)
                return True
            if m:
                out.consumed.append(m)
                return True
    elif acked == 0 and m and not plen and not thflags & TH_FIN and \
            tw[b + P_SND_UNA] != smax:
        st["tcp.tcps_rcvdupack"] += 1  # only while something is outstanding
        if cc and newwnd == oldwnd:
            _dupack(ctx, tab, out, i, ack)
    return False


def _dupack(ctx: Ctx, tab: SocketTable, out: _Out, i: int, ack: int) -> None:
    """A duplicate ACK for a sender: fast retransmit on the third, inflation after."""
    tq = tab.q
    qb = i << 6
    n = tq[qb + Q_DUPACKS] + 1
    tq[qb + Q_DUPACKS] = n
    if tab.w[(i << 7) + P_TFLAGS] & TF_FASTRECOVERY:
        cc_dupack_in_recovery(tab, i)
        out.kick[i] = None
    elif n == TCP_REXMT_THRESH and seq_diff(ack, tq[qb + Q_SND_RECOVER] & SEQ_MASK) > 0:
        cc_enter_recovery(ctx, tab, i)
        ctx.stats.counters["tcp.tcps_fastrexmt"] += 1
        tq[qb + Q_FASTREXMT] += 1
        tcp_rexmit_head(ctx, i, out.tx)
        arm_rexmt(ctx, tab, i)
        out.kick[i] = None


def _syn_sent_input(ctx: Ctx, tab: SocketTable, out: _Out, i: int, m: int, fam: int,
                    src: int, dst: int, sport: int, dport: int, seq: int, ack: int,
                    thflags: int, win: int, th: int, thoff: int, plen: int) -> None:
    """Active open: our SYN is out; a SYN-ACK acknowledging it makes the connection
    ESTABLISHED (options negotiated, cwnd = IW, RTT sampled, our ACK sent)."""
    tw, tq = tab.w, tab.q
    b, qb = i << 7, i << 6
    st = ctx.stats.counters
    ack_ok = bool(thflags & TH_ACK) and seq_diff(ack, tw[b + P_ISS]) > 0 and \
        seq_diff(ack, tw[b + P_SND_MAX]) <= 0
    if thflags & TH_ACK and not ack_ok:
        ctx.drop(m, D.badack)
        _reset_for(ctx, out, fam, src, dst, sport, dport, seq, ack, thflags, plen)
        return
    if thflags & TH_RST:
        if ack_ok:  # connection refused
            st["tcp.tcps_conndrops"] += 1
            _close(ctx, tab, i)
            out.consumed.append(m)
        else:
            ctx.drop(m, D.badrst)
        return
    if not thflags & TH_SYN or not ack_ok:  # simultaneous open is not supported
        ctx.drop(m, D.badsyn if thflags & TH_SYN else D.noack)
        return
    try:
        opts = parse_tcp_options(bytes(ctx.pool.buf[th + 20 : th + thoff])) if thoff > 20 \
            else None
    except PacketError:
        opts = None
    tf = tw[b + P_TFLAGS]
    if opts is not None and opts.wscale is not None and tf & TF_REQ_SCALE:
        tf |= TF_RCVD_SCALE
        tw[b + P_SCALE] = min(opts.wscale, TCP_MAX_WINSHIFT) | (tw[b + P_SCALE] & 0xFF00)
    else:
        tw[b + P_SCALE] = 0
    if opts is not None and opts.timestamp is not None and tf & TF_REQ_TSTMP:
        tf |= TF_RCVD_TSTMP
        tw[b + P_TS_RECENT] = opts.timestamp[0]
    if opts is not None and opts.sack_permitted:
        tf |= TF_SACK_PERMIT
    tw[b + P_TFLAGS] = tf & ~(TF_REQ_SCALE | TF_REQ_TSTMP)
    peer_mss = opts.mss if opts is not None and opts.mss else (1220 if fam == AF_INET6 else 536)
    tw[b + P_MAXSEG] = min(tw[b + P_MAXSEG], peer_mss)
    tw[b + P_IRS] = seq
    tw[b + P_RCV_NXT] = tw[b + P_RCV_ADV] = (seq + 1) & SEQ_MASK
    tw[b + P_SND_UNA] = ack
    tw[b + P_SND_WND] = win  # a SYN's window is never scaled
    tq[qb + Q_SND_MAXWND] = win
    tq[qb + Q_SND_WL1] = _WL_SET | seq
    tq[qb + Q_SND_WL2] = _WL_SET | ack
    tw[b + P_STATE] = TCPS_ESTABLISHED
    if tq[qb + Q_RTT_START]:
        rtt_sample(ctx, tab, i, ctx.now - tq[qb + Q_RTT_START])
        tq[qb + Q_RTT_START] = 0
    tq[qb + Q_REXMT_AT] = 0
    cc_conn_init(ctx, tab, i)
    st["tcp.tcps_connects"] += 1
    out.acknow[i] = None
    out.kick[i] = None
    if plen:
        ctx.drop(m, D.syndata)
    else:
        out.consumed.append(m)


def _fin(ctx: Ctx, tab: SocketTable, out: _Out, i: int) -> None:
    """The peer's FIN is in order. ESTABLISHED -> CLOSE_WAIT, and (not auto) the
    application closes at once: our FIN goes with the ACK (LAST_ACK), after any
    data still in the send buffer. FIN_WAIT_1 -> CLOSING, FIN_WAIT_2 -> TIME_WAIT
    (an active close)."""
    tw = tab.w
    b = i << 7
    tw[b + P_TFLAGS] &= ~TF_FIN_PENDING
    state = tw[b + P_STATE]
    if state in (TCPS_FIN_WAIT_1, TCPS_FIN_WAIT_2):
        tw[b + P_RCV_NXT] = (tw[b + P_RCV_NXT] + 1) & SEQ_MASK
        out.acknow[i] = None
        if state == TCPS_FIN_WAIT_1:
            tw[b + P_STATE] = TCPS_CLOSING
        else:
            start_timewait(ctx, tab, i)
        return
    if state not in (TCPS_ESTABLISHED, TCPS_SYN_RECEIVED):
        return
    tw[b + P_RCV_NXT] = (tw[b + P_RCV_NXT] + 1) & SEQ_MASK
    tw[b + P_STATE] = TCPS_CLOSE_WAIT
    if tw[b + P_SFLAGS] & SF_AUTO:
        return
    tw[b + P_STATE] = TCPS_LAST_ACK
    if tab.q[(i << 6) + Q_SNDBUF_CC] or tw[b + P_SND_UNA] != tw[b + P_SND_MAX]:
        tw[b + P_TFLAGS] |= TF_NEEDFIN  # our FIN follows the data still to send
    out.acknow[i] = None


def _send_acks(ctx: Ctx, tab: SocketTable, out: _Out) -> None:
    """Senders whose window opened or whose data was acked send what they may now
    (their segments carry the ACK); then one ACK per connection that still owes
    one (FIN|ACK in LAST_ACK)."""
    tw = tab.w
    for i in out.kick:
        if tw[(i << 7) + P_STATE] != TCPS_CLOSED and tcp_output_sock(ctx, i, out.tx):
            out.acknow.pop(i, None)
    pending = ctx.extra.get(_DELACK_KEY)
    for i in out.acknow:
        b = i << 7
        if tw[b + P_SFLAGS] & SF_AUTO or tw[b + P_STATE] == TCPS_CLOSED:
            continue
        _ack_now(ctx, tab, out, i)
        if pending is not None:
            pending.discard(i)


def _ack_now(ctx: Ctx, tab: SocketTable, out: _Out, i: int) -> None:
    tw = tab.w
    b = i << 7
    fam = tw[b + 1] >> 8
    if tw[b + P_TFLAGS] & TF_NEEDFIN and tcp_output_sock(ctx, i, out.tx):
        return  # data and / or our FIN went out, carrying the ACK
    tw[b + P_TFLAGS] &= ~(TF_ACKNOW | TF_DELACK)
    if tw[b + P_STATE] == TCPS_LAST_ACK and not tw[b + P_TFLAGS] & TF_NEEDFIN:
        if not tw[b + P_TFLAGS] & TF_SENTFIN:
            seq = tw[b + P_SND_NXT]
            tw[b + P_SND_NXT] = tw[b + P_SND_MAX] = (seq + 1) & SEQ_MASK
            tw[b + P_TFLAGS] |= TF_SENTFIN
        else:
            seq = (tw[b + P_SND_MAX] - 1) & SEQ_MASK
        seg = tcp_respond(ctx, i, TH_FIN | TH_ACK, seq=seq)
        _emit(ctx, out, seg, fam, TH_FIN | TH_ACK)
    else:
        seg = tcp_respond(ctx, i, TH_ACK)
        _emit(ctx, out, seg, fam, TH_ACK)


def tcp_timers(ctx: Ctx) -> Routed:
    """The TCP timers: delayed ACKs owed for longer than TCPTV_DELACK (40 ms), then
    the senders' retransmission, persist and TIME_WAIT timers (tcp_timer.py).

    tcp_input cannot read the clock, so the runtime calls this periodically
    (every few ms) with ctx.now set, in each process that runs tcp_input or a
    sender: it only looks at connections this process left an ACK owing or a
    sender timer armed on, and skips delayed ACKs another runner has since
    sent. Returns the segments for ip_output / ip6_output.
    """
    pending: set[int] | None = ctx.extra.get(_DELACK_KEY)
    out = _Out()
    if pending:
        tab: SocketTable = ctx.sockets
        tw, tq = tab.w, tab.q
        for i in list(pending):
            b = i << 7
            if not tw[b + P_TFLAGS] & TF_DELACK or tw[b + P_STATE] == TCPS_CLOSED:
                pending.discard(i)
                continue
            if ctx.now - tq[(i << 6) + Q_DELACK_SINCE] >= TCPTV_DELACK_NS:
                pending.discard(i)
                _ack_now(ctx, tab, out, i)
                ctx.stats.counters["tcp.tcps_delack"] += 1
    if ctx.extra.get("tcp_sender_timers"):
        tcp_sender_timers(ctx, out.tx)
    return out.tx
