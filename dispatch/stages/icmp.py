"""ICMP and ICMPv6 input (echo reply), and the ICMP errors ip_forward can send.

``icmp_input`` sees both families (ip_input sends protocol 1 here and
ip6_input protocol 58; the version nibble tells them apart). It checks the
length and the checksum (in software unless the NIC verified the transport
checksum: CSUM_L4_CALC | CSUM_L4_VALID with csum_data 0xffff), answers an
echo request by turning the very same mbuf into the reply (addresses
swapped, IP options and IPv6 extension headers dropped, type changed with an
RFC 1624 incremental checksum update) and sending it to ip_output /
ip6_output, as FreeBSD's icmp_reflect does. Every other message would go to
raw sockets, which the emulator does not have: a counted drop.

`icmp_error` builds a new ICMP (or ICMPv6) error about a packet, as
FreeBSD's icmp_error / icmp6_error: not for ICMP errors, non-first
fragments, or link or IP broadcasts and multicasts. The caller still owns
(and drops) the original.
"""

from __future__ import annotations

import ipaddress

from dispatch.mbuf import layout as L
from dispatch.packet.checksum import in_cksum, incr_update16, pseudo_header_sum_v6
from dispatch.packet.icmp import (
    ICMP6_ECHO_REPLY,
    ICMP6_ECHO_REQUEST,
    ICMP_ECHO,
    ICMP_ECHOREPLY,
    ICMP_MINLEN,
)
from dispatch.packet.ipv4 import IPPROTO_ICMP, IPPROTO_ICMPV6
from dispatch.stages.base import (
    ICMP_INPUT,
    IP6_OUTPUT,
    IP_OUTPUT,
    Ctx,
    Routed,
    declare_reasons,
    stage,
)
from dispatch.stages.ip import chain_sum
from dispatch.stages.route import interfaces

__all__ = ["ICMP_DROPS", "icmp_input", "icmp_error"]

ICMP_DROPS = declare_reasons(
    ICMP_INPUT,
    ("tooshort", "icps_tooshort", "messages with bad code fields or shorter than minimum"),
    ("badsum", "icps_checksum", "bad checksums"),
    ("bmcastecho", "icps_bmcastecho", "echo requests to broadcast/multicast ignored"),
    ("noraw", "icps_inhist", "messages for raw sockets (there are none)"),
    ("tooshort6", "icp6s_tooshort", "ICMPv6 messages shorter than minimum"),
    ("badsum6", "icp6s_checksum", "ICMPv6 messages with bad checksums"),
    ("noraw6", "icp6s_inhist", "ICMPv6 messages for raw sockets (there are none)"),
)

_M = 0xFFFF
_L4_OK = L.CSUM_L4_CALC | L.CSUM_L4_VALID
# ICMPv4 types that are not errors (FreeBSD ICMP_INFOTYPE)
_INFOTYPES = frozenset({0, 8, 9, 10, 13, 14, 15, 16, 17, 18})
_ERR_ROOM = 64  # leading space left in an error's cluster for the link header
_ICMP6_ERR_MAX = 1280 - 40 - 8  # an ICMPv6 error fits the minimum MTU


def _l4_verified(w: memoryview, b: int) -> bool:
    return (w[b + L.W_CSUM_FLAGS] & _L4_OK) == _L4_OK and w[b + L.W_CSUM_DATA] == 0xFFFF


@stage(ICMP_INPUT)
def icmp_input(ctx: Ctx, batch: list[int]) -> Routed:
    """Check ICMP/ICMPv6 messages; reflect echo requests to ip_output / ip6_output."""
    pool = ctx.pool
    w = pool.w
    buf = pool.buf
    stats = ctx.stats
    D = ICMP_DROPS
    out4: list[int] = []
    out6: list[int] = []
    for m in batch:
        b = m << 6
        o = pool.data_offset(m)
        v6 = buf[o] >> 4 == 6
        hl = (w[b + L.W_HDRLENS] >> 8) & 0xFFFF or (40 if v6 else (buf[o] & 0xF) << 2)
        ilen = w[b + L.W_PKTLEN] - hl
        if ilen < ICMP_MINLEN:
            ctx.drop(m, D.tooshort6 if v6 else D.tooshort)
            continue
        if w[b + L.W_LEN] < hl + ICMP_MINLEN:
            m = pool.pullup(m, hl + ICMP_MINLEN)
            if not m:
                stats.drop(D.tooshort6 if v6 else D.tooshort)
                continue
            b = m << 6
            o = pool.data_offset(m)
        if not _l4_verified(w, b):
            s = chain_sum(pool, m, hl, ilen)
            if v6:
                s += pseudo_header_sum_v6(bytes(buf[o + 8 : o + 24]), bytes(buf[o + 24 : o + 40]),
                                          IPPROTO_ICMPV6, ilen)
            if s % _M:
                ctx.drop(m, D.badsum6 if v6 else D.badsum)
                continue
        t = buf[o + hl]
        if v6:
            stats.add(f"icmp6.icp6s_inhist.{t}")
            if t != ICMP6_ECHO_REQUEST:
                ctx.drop(m, D.noraw6)
                continue
            _reflect6(ctx, m, o, hl)
            stats.add("icmp6.icp6s_reflect")
            stats.add(f"icmp6.icp6s_outhist.{ICMP6_ECHO_REPLY}")
            out6.append(m)
            continue
        stats.add(f"icmp.icps_inhist.{t}")
        if t != ICMP_ECHO:
            ctx.drop(m, D.noraw)
            continue
        if w[b + L.W_FLAGS] & (L.M_BCAST | L.M_MCAST) or buf[o + 16] >= 224:
            ctx.drop(m, D.bmcastecho)
            continue
        _reflect4(ctx, m, o, hl)
        stats.add("icmp.icps_reflect")
        stats.add(f"icmp.icps_outhist.{ICMP_ECHOREPLY}")
        out4.append(m)
    out: Routed = {}
    if out4:
        out[IP_OUTPUT] = out4
    if out6:
        out[IP6_OUTPUT] = out6
    return out


def _reset_for_output(w: memoryview, b: int, l3hlen: int) -> None:
    w[b + L.W_CSUM_FLAGS] = 0
    w[b + L.W_CSUM_DATA] = 0
    w[b + L.W_AUX] = 0
    w[b + L.W_FLAGS] &= ~(L.M_BCAST | L.M_MCAST | L.M_VLANTAG)
    w[b + L.W_HDRLENS] = l3hlen << 8


def _reflect4(ctx: Ctx, m: int, o: int, hl: int) -> None:
    pool = ctx.pool
    buf = pool.buf
    ck = (buf[o + hl + 2] << 8) | buf[o + hl + 3]
    code = buf[o + hl + 1]
    ck = incr_update16(ck, (ICMP_ECHO << 8) | code, (ICMP_ECHOREPLY << 8) | code)
    buf[o + hl] = ICMP_ECHOREPLY
    buf[o + hl + 2] = ck >> 8
    buf[o + hl + 3] = ck & 0xFF
    src = bytes(buf[o + 12 : o + 16])
    buf[o + 12 : o + 16] = buf[o + 16 : o + 20]  # we answer from the address asked
    buf[o + 16 : o + 20] = src
    buf[o + 8] = 64
    if hl > 20:  # IP options are not reflected: move the fixed header up to the ICMP
        buf[o + hl - 20 : o + hl] = bytes(buf[o : o + 20])
        pool.adj(m, hl - 20)
        o += hl - 20
        buf[o] = 0x45
    _reset_for_output(pool.w, m << 6, 20)


def _reflect6(ctx: Ctx, m: int, o: int, hl: int) -> None:
    pool = ctx.pool
    buf = pool.buf
    ck = (buf[o + hl + 2] << 8) | buf[o + hl + 3]
    code = buf[o + hl + 1]
    # the pseudo-header does not change when the addresses swap places
    ck = incr_update16(ck, (ICMP6_ECHO_REQUEST << 8) | code, (ICMP6_ECHO_REPLY << 8) | code)
    buf[o + hl] = ICMP6_ECHO_REPLY
    buf[o + hl + 2] = ck >> 8
    buf[o + hl + 3] = ck & 0xFF
    src = bytes(buf[o + 8 : o + 24])
    buf[o + 8 : o + 24] = buf[o + 24 : o + 40]
    buf[o + 24 : o + 40] = src
    buf[o + 7] = 64
    if hl > 40:  # extension headers are not reflected
        buf[o + hl - 40 : o + hl] = bytes(buf[o : o + 40])
        pool.adj(m, hl - 40)
        o += hl - 40
    buf[o + 6] = IPPROTO_ICMPV6
    _reset_for_output(pool.w, m << 6, 40)


def _src_addr(ctx: Ctx, m: int, v6: bool) -> bytes | None:
    ifs = interfaces(ctx)
    rcvif = ctx.pool.w[(m << 6) + L.W_RCVIF]
    cands: list[str] = []
    if rcvif < len(ifs):
        cands += ifs[rcvif].addrs
    cands += ctx.config.local_v6 if v6 else ctx.config.local_v4
    for a in cands:
        p = ipaddress.ip_address(a).packed
        if len(p) == (16 if v6 else 4):
            return p
    return None


def icmp_error(ctx: Ctx, m: int, *, type: int, code: int) -> int:
    """A new ICMP error (ICMPv6 for an IPv6 packet) about packet m, ready for ip_output /
    ip6_output, or 0 if none may (or can) be sent. m_data of m is at its IP header."""
    pool = ctx.pool
    w = pool.w
    buf = pool.buf
    stats = ctx.stats
    b = m << 6
    o = pool.data_offset(m)
    v6 = buf[o] >> 4 == 6
    stats.add("icmp6.icp6s_error" if v6 else "icmp.icps_error")
    if w[b + L.W_FLAGS] & (L.M_BCAST | L.M_MCAST):
        return 0
    if v6:
        if buf[o + 8] == 0xFF or buf[o + 24] == 0xFF or buf[o + 8 : o + 24] == bytes(16):
            return 0
        if buf[o + 6] == IPPROTO_ICMPV6 and w[b + L.W_LEN] > 40 and buf[o + 40] < 128:
            stats.add("icmp6.icp6s_oldicmp6")
            return 0
        quote = min(w[b + L.W_PKTLEN], _ICMP6_ERR_MAX)
        hdr = 48
    else:
        hl = (buf[o] & 0xF) << 2
        if ((buf[o + 6] << 8) | buf[o + 7]) & 0x1FFF:
            return 0  # not the first fragment
        if buf[o + 12] >= 224 or buf[o + 12 : o + 16] in (b"\0\0\0\0", b"\xff\xff\xff\xff"):
            return 0
        if buf[o + 9] == IPPROTO_ICMP and w[b + L.W_LEN] > hl and buf[o + hl] not in _INFOTYPES:
            stats.add("icmp.icps_oldicmp")
            return 0
        quote = min(w[b + L.W_PKTLEN], hl + 8)
        hdr = 28
    src = _src_addr(ctx, m, v6)
    if src is None:
        return 0
    n = pool.getcl(L.MCLBYTES)
    if not n:
        return 0
    nb = n << 6
    w[nb + L.W_DATA] = _ERR_ROOM
    w[nb + L.W_LEN] = w[nb + L.W_PKTLEN] = hdr + quote
    w[nb + L.W_RCVIF] = w[b + L.W_RCVIF]
    d = pool.data_offset(n)
    pool.copydata_into(m, 0, quote, buf[d + hdr : d + hdr + quote])
    if v6:
        plen = 8 + quote
        buf[d : d + 8] = bytes((0x60, 0, 0, 0, plen >> 8, plen & 0xFF, IPPROTO_ICMPV6, 64))
        buf[d + 8 : d + 24] = src
        buf[d + 24 : d + 40] = buf[o + 8 : o + 24]
        buf[d + 40 : d + 48] = bytes((type, code, 0, 0, 0, 0, 0, 0))
        ph = pseudo_header_sum_v6(src, bytes(buf[o + 8 : o + 24]), IPPROTO_ICMPV6, plen)
        ck = in_cksum(buf[d + 40 : d + 48 + quote], ph)
        buf[d + 42] = ck >> 8
        buf[d + 43] = ck & 0xFF
        w[nb + L.W_HDRLENS] = 40 << 8
        stats.add(f"icmp6.icp6s_outhist.{type}")
    else:
        buf[d : d + 12] = bytes((0x45, 0, 0, 0, 0, 0, 0, 0, 64, IPPROTO_ICMP, 0, 0))
        buf[d + 12 : d + 16] = src
        buf[d + 16 : d + 20] = buf[o + 12 : o + 16]
        buf[d + 20 : d + 28] = bytes((type, code, 0, 0, 0, 0, 0, 0))
        ck = in_cksum(buf[d + 20 : d + 28 + quote])
        buf[d + 22] = ck >> 8
        buf[d + 23] = ck & 0xFF
        w[nb + L.W_HDRLENS] = 20 << 8
        stats.add(f"icmp.icps_outhist.{type}")
    return n
