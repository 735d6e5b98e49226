"""Ethernet II framing with 802.1Q VLAN tags (FreeBSD ``net/ethernet.h``).

Frames here never include the FCS: like a NIC that strips it, the emulator's
wire carries frames of 60..1514 bytes (plus 4 per VLAN tag), and the constants
below keep FreeBSD's names and values, with :data:`ETHER_MIN_LEN` counting the
FCS as it does there.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from dispatch.packet.errors import BytesLike, PacketError

__all__ = [
    "ETHER_ADDR_LEN",
    "ETHER_TYPE_LEN",
    "ETHER_CRC_LEN",
    "ETHER_HDR_LEN",
    "ETHER_MIN_LEN",
    "ETHER_MAX_LEN",
    "ETHER_MIN_LEN_NOFCS",
    "ETHERMTU",
    "ETHER_VLAN_ENCAP_LEN",
    "ETHERTYPE_IP",
    "ETHERTYPE_ARP",
    "ETHERTYPE_VLAN",
    "ETHERTYPE_QINQ",
    "ETHERTYPE_IPV6",
    "EVL_VLID_MASK",
    "ETHER_HDR",
    "VLAN_TAG",
    "BROADCAST",
    "EtherHeader",
    "mac_bytes",
    "mac_str",
    "build_ether",
    "parse_ether",
]

ETHER_ADDR_LEN = 6
ETHER_TYPE_LEN = 2
ETHER_CRC_LEN = 4
ETHER_HDR_LEN = ETHER_ADDR_LEN * 2 + ETHER_TYPE_LEN  # 14
ETHER_MIN_LEN = 64  # minimum frame length, FCS included
ETHER_MAX_LEN = 1518  # maximum frame length, FCS included, untagged
ETHER_MIN_LEN_NOFCS = ETHER_MIN_LEN - ETHER_CRC_LEN  # 60: what pad_to_min pads to
ETHERMTU = ETHER_MAX_LEN - ETHER_HDR_LEN - ETHER_CRC_LEN  # 1500
ETHER_VLAN_ENCAP_LEN = 4

ETHERTYPE_IP = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100  # 802.1Q tag
ETHERTYPE_QINQ = 0x88A8  # 802.1ad service tag (outer tag of Q-in-Q)
ETHERTYPE_IPV6 = 0x86DD

EVL_VLID_MASK = 0x0FFF

#: dst, src, ethertype.  ``ETHER_HDR.unpack_from(buf, 0) -> (dst6, src6, type)``.
ETHER_HDR = struct.Struct("!6s6sH")
#: One 802.1Q tag after its TPID: (TCI, encapsulated ethertype).  TCI = pcp<<13 | dei<<12 | vid.
VLAN_TAG = struct.Struct("!HH")

BROADCAST = b"\xff" * 6

_VLAN_TPIDS = (ETHERTYPE_VLAN, ETHERTYPE_QINQ)


def mac_bytes(mac: BytesLike | str) -> bytes:
    """A MAC address as 6 bytes, from bytes or ``'aa:bb:cc:dd:ee:ff'`` (``-`` also accepted)."""
    if isinstance(mac, str):
        parts = mac.replace("-", ":").split(":")
        if len(parts) != 6:
            raise ValueError(f"bad MAC address {mac!r}")
        try:
            return bytes(int(p, 16) for p in parts)
        except ValueError:
            raise ValueError(f"bad MAC address {mac!r}") from None
    b = bytes(mac)
    if len(b) != ETHER_ADDR_LEN:
        raise ValueError(f"a MAC address is 6 bytes, not {len(b)}")
    return b


def mac_str(mac: BytesLike) -> str:
    """``'aa:bb:cc:dd:ee:ff'`` for 6 bytes."""
    return ":".join(f"{x:02x}" for x in bytes(mac))


@dataclass(frozen=True, slots=True)
class EtherHeader:
    """A parsed Ethernet header, VLAN tags stripped.

    ``vlan``/``pcp``/``dei`` describe the outermost tag (the one FreeBSD puts in
    ``M_VLANTAG``); ``vlans`` lists every VLAN id, outermost first.
    ``ethertype`` is the type after the last tag and ``hdr_len`` the offset of
    the layer-3 header from the start of the Ethernet header (14 + 4 per tag).
    """

    dst: bytes
    src: bytes
    ethertype: int
    hdr_len: int
    vlan: int | None = None
    pcp: int = 0
    dei: bool = False
    vlans: tuple[int, ...] = ()


def build_ether(
    *,
    dst: BytesLike | str,
    src: BytesLike | str,
    ethertype: int,
    payload: BytesLike = b"",
    vlan: int | Sequence[int] | None = None,
    pcp: int = 0,
    dei: bool = False,
    outer_tpid: int = ETHERTYPE_VLAN,
) -> bytes:
    """An Ethernet II frame (no FCS, no padding: see ``frames.pad_to_min``).

    ``vlan`` is one VLAN id or a sequence of ids (outermost first, Q-in-Q);
    every tag gets ``pcp``/``dei``; the outermost tag's TPID is ``outer_tpid``
    (0x8100, or 0x88A8 for 802.1ad), inner tags use 0x8100.
    """
    if not 0 <= ethertype <= 0xFFFF:
        raise ValueError(f"ethertype {ethertype:#x} out of range")
    if not 0 <= pcp <= 7:
        raise ValueError(f"pcp {pcp} out of range 0..7")
    head = mac_bytes(dst) + mac_bytes(src)
    if vlan is None:
        vids: Sequence[int] = ()
    elif isinstance(vlan, int):
        vids = (vlan,)
    else:
        vids = vlan
    tags = []
    for i, vid in enumerate(vids):
        if not 0 <= vid <= EVL_VLID_MASK:
            raise ValueError(f"VLAN id {vid} out of range 0..4095")
        tpid = outer_tpid if i == 0 else ETHERTYPE_VLAN
        tags.append(struct.pack("!HH", tpid, (pcp << 13) | (int(dei) << 12) | vid))
    return b"".join((head, *tags, struct.pack("!H", ethertype), payload))


def parse_ether(buf: BytesLike, offset: int = 0) -> EtherHeader:
    """Parse an Ethernet header at ``offset``, stripping any number of 802.1Q/802.1ad tags.

    Raises :class:`PacketError` ``too_short`` when the header or a tag is cut off.
    """
    if offset < 0:
        raise ValueError("negative offset")
    n = len(buf)
    if n - offset < ETHER_HDR_LEN:
        raise PacketError("too_short", f"ether: {n - offset} bytes")
    dst, src, etype = ETHER_HDR.unpack_from(buf, offset)
    pos = offset + ETHER_HDR_LEN
    if etype not in _VLAN_TPIDS:
        return EtherHeader(dst, src, etype, ETHER_HDR_LEN)
    vids: list[int] = []
    pcp = 0
    dei = False
    while etype in _VLAN_TPIDS:
        if n - pos < ETHER_VLAN_ENCAP_LEN:
            raise PacketError("too_short", "ether: truncated VLAN tag")
        # the TPID was read as the type; the TCI and the next type follow it
        tci, etype = VLAN_TAG.unpack_from(buf, pos)
        if not vids:
            pcp = tci >> 13
            dei = bool(tci & 0x1000)
        vids.append(tci & EVL_VLID_MASK)
        pos += ETHER_VLAN_ENCAP_LEN
    return EtherHeader(dst, src, etype, pos - offset, vids[0], pcp, dei, tuple(vids))
