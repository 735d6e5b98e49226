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

Room for the sender to come: the stage below segments whatever sosend hands
it at snd_nxt and frees the request (the clusters live on in the segments).
Congestion control, the peer's window, retransmission and a send buffer
kept until acknowledged belong to a later issue; they plug in at
`tcp_output` (what may be sent now) and at tcp_input's ACK processing.
"""

from __future__ import annotations

import struct

from dispatch.mbuf import layout as L
from dispatch.packet.checksum import ones_sum
from dispatch.packet.ipv4 import IPV4_HDR
from dispatch.packet.ipv6 import IPV6_HDR
from dispatch.packet.tcp import TCP_HDR, TH_ACK, TH_FIN, TH_PUSH, TH_RST
from dispatch.stages.base import (
    IP6_OUTPUT,
    IP_OUTPUT,
    TCP_OUTPUT,
    Ctx,
    Routed,
    declare_reasons,
    stage,
)
from dispatch.stages.socktab import (
    AF_INET6,
    P_FADDR,
    P_FPORT,
    P_LADDR,
    P_LPORT,
    P_MAXSEG,
    P_PF,
    P_RCV_ADV,
    P_RCV_NXT,
    P_SB_HIWAT,
    P_SCALE,
    P_SND_MAX,
    P_SND_NXT,
    P_TFLAGS,
    P_TS_RECENT,
    Q_SB_APPENDED,
    Q_SB_REMOVED,
    Q_SND_REMOVED,
    Q_SNDBYTE,
    Q_SNDPACK,
    REC_BYTES,
    SocketTable,
)
from dispatch.stages.tcp_var import (
    SEQ_MASK,
    TCP_DEFAULT_TTL,
    TCP_MAXWIN,
    TF_RCVD_TSTMP,
    seq_diff,
)

OUT_DROPS = declare_reasons(
    TCP_OUTPUT,
    ("nosock", "tcps_snd_nosock", "send requests without a connection"),
    ("nobufs", "tcps_sndnobufs", "send requests cut short: no mbufs"),
)

IPPROTO_TCP = 6
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
    """Segment send requests (payload chains from sosend) at snd_nxt: to the MSS, or
    in TSO chunks of up to 64 KiB when the tso offload is on."""
    pool = ctx.pool
    w = pool.w
    tab: SocketTable = ctx.sockets
    tw, tq = tab.w, tab.q
    tso = offload(ctx, "tso")
    out: Routed = {}
    npk = nbytes = 0
    for m in batch:
        sid = w[(m << 6) + L.W_SOCKID] - 1
        if sid < 0:
            ctx.drop(m, OUT_DROPS.nosock)
            continue
        fam, la, fa, lp, fp = endpoints(ctx, tab, sid)
        b = sid << 7
        opts = ts_option(ctx, tab, sid)
        mss = max(1, tw[b + P_MAXSEG] - len(opts))
        hdrs = (40 if fam == AF_INET6 else 20) + 20 + len(opts)
        chunk = max(mss, (TSO_MAX - hdrs) // mss * mss) if tso else mss
        total = w[(m << 6) + L.W_PKTLEN]
        dest = out.setdefault(out_stage(fam), [])
        pos = 0
        while pos < total:
            k = min(chunk, total - pos)
            p = pool.copym(m, pos, k)
            seg = 0
            if p:
                last = pos + k >= total
                seq = tw[b + P_SND_NXT]
                seg = build_segment(ctx, family=fam, src=la, dst=fa, sport=lp, dport=fp,
                                    seq=seq, ack=tw[b + P_RCV_NXT],
                                    flags=TH_ACK | (TH_PUSH if last else 0),
                                    win=rcv_window(tab, sid, default_hiwat=ctx.config.sb_hiwat),
                                    options=opts, payload=p, plen=k,
                                    tso_segsz=mss if tso and k > mss else 0)
            if not seg:
                ctx.stats.drop(OUT_DROPS.nobufs)
                break
            nxt = (seq + k) & SEQ_MASK
            tw[b + P_SND_NXT] = nxt
            if seq_diff(nxt, tw[b + P_SND_MAX]) > 0:
                tw[b + P_SND_MAX] = nxt
            dest.append(seg)
            pos += k
            npk += 1
            nbytes += k
            tq[(sid << 6) + Q_SNDPACK] += 1
            tq[(sid << 6) + Q_SNDBYTE] += k
        tq[(sid << 6) + Q_SND_REMOVED] += total
        pool.freem(m)
    st = ctx.stats.counters
    st["tcp.tcps_sndtotal"] += npk
    st["tcp.tcps_sndpack"] += npk
    st["tcp.tcps_sndbyte"] += nbytes
    return {k: v for k, v in out.items() if v}


def count_ctrl(ctx: Ctx, flags: int) -> None:
    """tcpstat for a control segment we sent."""
    st = ctx.stats.counters
    st["tcp.tcps_sndtotal"] += 1
    if flags & (TH_FIN | TH_RST) or flags & 0x02:
        st["tcp.tcps_sndctrl"] += 1
    else:
        st["tcp.tcps_sndacks"] += 1
