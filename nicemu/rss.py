"""Toeplitz receive-side scaling (RSS), as a NIC computes it.

The emulated NIC spreads received flows over its rx queues the way real
hardware does: a Toeplitz hash over the addresses (and ports) of the packet,
keyed with a 40-byte secret, then an indirection table of 128 entries that maps
the low 7 bits of the hash to a queue.  The hash doubles as the mbuf flowid
(FreeBSD ``m_pkthdr.flowid``) with its type (``M_HASHTYPE_*``), which netisr
uses for FLOW work placement.

The hash input is laid out exactly as Microsoft's "RSS hashing functions"
specifies (and as Intel's datasheets repeat):

- IPv4 2-tuple:           src addr (4), dst addr (4)                    = 8 bytes
- TCP/IPv4 4-tuple:       src addr, dst addr, src port (2), dst port (2) = 12 bytes
- IPv6 2-tuple:           src addr (16), dst addr (16)                  = 32 bytes
- TCP/IPv6 4-tuple:       src addr, dst addr, src port, dst port         = 36 bytes
- UDP/IPv4, UDP/IPv6:     same layout as TCP, only when UDP hashing is on

all in network byte order.  The Microsoft verification suite ("Verifying the
RSS Hash Calculation") is reproduced in tests/test_nicemu_rss.py.

Speed: the hash is linear over GF(2), so it is precomputed per (byte position,
byte value): hashing n bytes is n table lookups and XORs.  ``Rss.hash_batch``
does the same over many tuples at once with numpy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "MS_KEY",
    "KEY_LEN",
    "MAX_INPUT_LEN",
    "INDIRECTION_SIZE",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "M_HASHTYPE_HASHPROP",
    "M_HASHTYPE_NONE",
    "M_HASHTYPE_RSS_IPV4",
    "M_HASHTYPE_RSS_TCP_IPV4",
    "M_HASHTYPE_RSS_IPV6",
    "M_HASHTYPE_RSS_TCP_IPV6",
    "M_HASHTYPE_RSS_UDP_IPV4",
    "M_HASHTYPE_RSS_UDP_IPV6",
    "HASHTYPE_NAMES",
    "Address",
    "hashtype_name",
    "toeplitz_hash",
    "toeplitz_table",
    "hash_input",
    "Rss",
]

#: Microsoft's verification key (also the default key of many NIC drivers).
MS_KEY: Final[bytes] = bytes.fromhex(
    "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
)
KEY_LEN: Final = 40
#: Longest hash input: TCP/IPv6 4-tuple, 16 + 16 + 2 + 2 bytes.  With a 40-byte
#: key the 32-bit window can slide over at most 320 - 32 = 288 bits = 36 bytes.
MAX_INPUT_LEN: Final = 36
#: Entries in the indirection table (Microsoft: up to 128; index = hash & 127).
INDIRECTION_SIZE: Final = 128

IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17

# FreeBSD sys/sys/mbuf.h: M_HASHTYPE_HASH(t) = M_HASHTYPE_HASHPROP | t.
M_HASHTYPE_HASHPROP: Final = 0x80
M_HASHTYPE_NONE: Final = 0
M_HASHTYPE_RSS_IPV4: Final = M_HASHTYPE_HASHPROP | 1  # IPv4 2-tuple
M_HASHTYPE_RSS_TCP_IPV4: Final = M_HASHTYPE_HASHPROP | 2  # TCPv4 4-tuple
M_HASHTYPE_RSS_IPV6: Final = M_HASHTYPE_HASHPROP | 3  # IPv6 2-tuple
M_HASHTYPE_RSS_TCP_IPV6: Final = M_HASHTYPE_HASHPROP | 4  # TCPv6 4-tuple
M_HASHTYPE_RSS_UDP_IPV4: Final = M_HASHTYPE_HASHPROP | 7  # IPv4 UDP 4-tuple
M_HASHTYPE_RSS_UDP_IPV6: Final = M_HASHTYPE_HASHPROP | 9  # IPv6 UDP 4-tuple

HASHTYPE_NAMES: Final[dict[int, str]] = {
    M_HASHTYPE_NONE: "M_HASHTYPE_NONE",
    M_HASHTYPE_RSS_IPV4: "M_HASHTYPE_RSS_IPV4",
    M_HASHTYPE_RSS_TCP_IPV4: "M_HASHTYPE_RSS_TCP_IPV4",
    M_HASHTYPE_RSS_IPV6: "M_HASHTYPE_RSS_IPV6",
    M_HASHTYPE_RSS_TCP_IPV6: "M_HASHTYPE_RSS_TCP_IPV6",
    M_HASHTYPE_RSS_UDP_IPV4: "M_HASHTYPE_RSS_UDP_IPV4",
    M_HASHTYPE_RSS_UDP_IPV6: "M_HASHTYPE_RSS_UDP_IPV6",
}

#: What ``hash_tuple`` accepts as an address: text, packed bytes (4 or 16),
#: an ``ipaddress`` object.
Address = str | bytes | bytearray | memoryview | ipaddress.IPv4Address | ipaddress.IPv6Address

_ETHERTYPE_IPV4: Final = 0x0800
_ETHERTYPE_IPV6: Final = 0x86DD
_ETHERTYPE_VLAN: Final = (0x8100, 0x88A8)


def hashtype_name(hashtype: int) -> str:
    """``M_HASHTYPE_*`` name of a hash type value (``'0x..'`` if unknown)."""
    return HASHTYPE_NAMES.get(hashtype, f"0x{hashtype:02x}")


def _check_key(key: bytes) -> bytes:
    key = bytes(key)
    if len(key) != KEY_LEN:
        raise ValueError(f"RSS key must be {KEY_LEN} bytes, got {len(key)}")
    return key


def toeplitz_hash(data: bytes, key: bytes = MS_KEY) -> int:
    """Reference Toeplitz hash, bit by bit, exactly as Microsoft's pseudocode.

    Slow (one step per input bit); used to build and check the tables.
    """
    key = _check_key(key)
    if len(data) > MAX_INPUT_LEN:
        raise ValueError(f"hash input is at most {MAX_INPUT_LEN} bytes, got {len(data)}")
    k = int.from_bytes(key, "big")
    nbits = KEY_LEN * 8
    result = 0
    for i, byte in enumerate(data):
        for j in range(8):
            if byte & (0x80 >> j):
                result ^= (k >> (nbits - 32 - (8 * i + j))) & 0xFFFFFFFF
    return result


def toeplitz_table(key: bytes = MS_KEY) -> npt.NDArray[np.uint32]:
    """Contribution of each (byte position, byte value) to the hash.

    Shape ``(MAX_INPUT_LEN, 256)``; the hash of ``data`` is the XOR of
    ``table[i, data[i]]`` over i.
    """
    key = _check_key(key)
    k = int.from_bytes(key, "big")
    nbits = KEY_LEN * 8
    table = np.zeros((MAX_INPUT_LEN, 256), dtype=np.uint32)
    values = np.arange(256, dtype=np.uint32)
    for i in range(MAX_INPUT_LEN):
        for j in range(8):
            window = (k >> (nbits - 32 - (8 * i + j))) & 0xFFFFFFFF
            bit_set = (values & (0x80 >> j)) != 0
            table[i, bit_set] ^= np.uint32(window)
    return table


def _packed(addr: Address) -> bytes:
    if isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return addr.packed
    if isinstance(addr, bytes | bytearray | memoryview):
        b = bytes(addr)
        if len(b) not in (4, 16):
            raise ValueError(f"packed address must be 4 or 16 bytes, got {len(b)}")
        return b
    if isinstance(addr, str):
        try:
            return ipaddress.ip_address(addr.strip()).packed
        except ValueError:
            raise ValueError(f"{addr!r} is not a valid IPv4 or IPv6 address") from None
    raise TypeError(f"unsupported address type {type(addr).__name__}")


def _check_port(port: int, what: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int | np.integer):
        raise TypeError(f"{what} must be an int, got {type(port).__name__}")
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"{what} {port} out of range: valid ports are 0..65535")
    return int(port)


def hash_input(
    src: Address, dst: Address, sport: int | None = None, dport: int | None = None
) -> bytes:
    """Microsoft's hash input: src addr, dst addr[, src port, dst port].

    Ports are included when both are given.  Both addresses must be the same
    family.
    """
    s, d = _packed(src), _packed(dst)
    if len(s) != len(d):
        raise ValueError("source and destination must both be IPv4 or both be IPv6")
    if (sport is None) != (dport is None):
        raise ValueError("give both ports or neither")
    if sport is None or dport is None:
        return s + d
    return s + d + _check_port(sport, "source port").to_bytes(2, "big") + _check_port(
        dport, "destination port"
    ).to_bytes(2, "big")


def _proto_number(proto: int | str | None) -> int | None:
    if proto is None or isinstance(proto, int):
        return proto
    names = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}
    try:
        return names[proto.lower()]
    except KeyError:
        raise ValueError(f"unknown protocol {proto!r}: valid are 'tcp', 'udp' or a number") from None


class Rss:
    """A NIC's RSS function: key, enabled hash types and indirection table.

    ``queues`` rx queues; the indirection table starts round-robin
    (entry i -> queue i % queues), like most drivers' default.  ``udp`` turns
    on the UDP 4-tuple hash types (off by default, as in Microsoft's spec where
    they are optional; UDP then hashes on the 2-tuple).
    """

    __slots__ = ("_key", "_queues", "_udp", "_table", "_rows", "_indir")

    def __init__(self, key: bytes = MS_KEY, queues: int = 1, udp: bool = False) -> None:
        self._key = _check_key(key)
        if isinstance(queues, bool) or not isinstance(queues, int) or queues < 1:
            raise ValueError(f"queues must be an int >= 1, got {queues!r}")
        self._queues = queues
        self._udp = bool(udp)
        self._table = toeplitz_table(self._key)
        # Python-int rows: faster than numpy indexing for one short input.
        self._rows: tuple[tuple[int, ...], ...] = tuple(
            tuple(int(v) for v in row) for row in self._table
        )
        self._indir = np.arange(INDIRECTION_SIZE, dtype=np.int64) % queues

    # -- configuration -----------------------------------------------------
    @property
    def key(self) -> bytes:
        return self._key

    @property
    def queues(self) -> int:
        return self._queues

    @property
    def udp(self) -> bool:
        return self._udp

    @property
    def indirection(self) -> tuple[int, ...]:
        """The 128-entry indirection table (entry -> queue)."""
        return tuple(int(q) for q in self._indir)

    def set_indirection(self, table: Sequence[int]) -> None:
        """Replace the indirection table: 128 entries, each a queue in 0..queues-1."""
        entries = [int(q) for q in table]
        if len(entries) != INDIRECTION_SIZE:
            raise ValueError(
                f"indirection table must have {INDIRECTION_SIZE} entries, got {len(entries)}"
            )
        bad = [q for q in entries if not 0 <= q < self._queues]
        if bad:
            raise ValueError(
                f"indirection entry {bad[0]} out of range: valid queues are 0..{self._queues - 1}"
            )
        self._indir = np.array(entries, dtype=np.int64)

    # -- hashing -------------------------------------------------------------
    def toeplitz(self, data: bytes) -> int:
        """Toeplitz hash of a raw hash input (at most 36 bytes)."""
        if len(data) > MAX_INPUT_LEN:
            raise ValueError(f"hash input is at most {MAX_INPUT_LEN} bytes, got {len(data)}")
        h = 0
        for row, b in zip(self._rows, data):
            h ^= row[b]
        return h

    def hash_tuple(
        self,
        src: Address,
        dst: Address,
        sport: int | None = None,
        dport: int | None = None,
        proto: int | str | None = IPPROTO_TCP,
    ) -> tuple[int, int]:
        """Hash a flow; returns ``(hash, M_HASHTYPE_*)``.

        The 4-tuple is used when both ports are given and ``proto`` is TCP, or
        UDP with UDP hashing on; otherwise the 2-tuple (addresses only), as a
        NIC does for other protocols (and for fragments).
        """
        s, d = _packed(src), _packed(dst)
        if len(s) != len(d):
            raise ValueError("source and destination must both be IPv4 or both be IPv6")
        if (sport is None) != (dport is None):
            raise ValueError("give both ports or neither")
        v6 = len(s) == 16
        p = _proto_number(proto)
        use_ports = sport is not None and (p == IPPROTO_TCP or (p == IPPROTO_UDP and self._udp))
        if use_ports:
            assert sport is not None and dport is not None
            data = (
                s
                + d
                + _check_port(sport, "source port").to_bytes(2, "big")
                + _check_port(dport, "destination port").to_bytes(2, "big")
            )
            if p == IPPROTO_TCP:
                htype = M_HASHTYPE_RSS_TCP_IPV6 if v6 else M_HASHTYPE_RSS_TCP_IPV4
            else:
                htype = M_HASHTYPE_RSS_UDP_IPV6 if v6 else M_HASHTYPE_RSS_UDP_IPV4
        else:
            data = s + d
            htype = M_HASHTYPE_RSS_IPV6 if v6 else M_HASHTYPE_RSS_IPV4
        return self.toeplitz(data), htype

    def hash_frame(self, frame: bytes | bytearray | memoryview) -> tuple[int, int]:
        """Hash an Ethernet frame as a NIC would; ``(0, M_HASHTYPE_NONE)`` if not IP.

        Handles one or two VLAN tags, IPv4 (options; fragments hash on the
        2-tuple), and IPv6 whose next header is TCP/UDP directly (any extension
        header: 2-tuple).  Truncated headers fall back to what can be read.
        """
        f = memoryview(frame)
        n = len(f)
        off = 12
        if n < off + 2:
            return 0, M_HASHTYPE_NONE
        etype = (f[off] << 8) | f[off + 1]
        off += 2
        while etype in _ETHERTYPE_VLAN and n >= off + 4:
            etype = (f[off + 2] << 8) | f[off + 3]
            off += 4
        if etype == _ETHERTYPE_IPV4:
            if n < off + 20 or f[off] >> 4 != 4:
                return 0, M_HASHTYPE_NONE
            ihl = (f[off] & 0x0F) * 4
            p = f[off + 9]
            frag = ((f[off + 6] << 8) | f[off + 7]) & 0x3FFF  # MF flag + offset
            src, dst = bytes(f[off + 12 : off + 16]), bytes(f[off + 16 : off + 20])
            l4 = off + ihl
            v6 = False
        elif etype == _ETHERTYPE_IPV6:
            if n < off + 40 or f[off] >> 4 != 6:
                return 0, M_HASHTYPE_NONE
            p = f[off + 6]
            frag = 0
            src, dst = bytes(f[off + 8 : off + 24]), bytes(f[off + 24 : off + 40])
            l4 = off + 40
            v6 = True
        else:
            return 0, M_HASHTYPE_NONE
        ports_ok = (
            not frag
            and (p == IPPROTO_TCP or (p == IPPROTO_UDP and self._udp))
            and n >= l4 + 4
            and (v6 or ihl >= 20)
        )
        if ports_ok:
            data = src + dst + bytes(f[l4 : l4 + 4])
            if p == IPPROTO_TCP:
                htype = M_HASHTYPE_RSS_TCP_IPV6 if v6 else M_HASHTYPE_RSS_TCP_IPV4
            else:
                htype = M_HASHTYPE_RSS_UDP_IPV6 if v6 else M_HASHTYPE_RSS_UDP_IPV4
        else:
            data = src + dst
            htype = M_HASHTYPE_RSS_IPV6 if v6 else M_HASHTYPE_RSS_IPV4
        return self.toeplitz(data), htype

    def hash_batch(self, inputs: npt.ArrayLike) -> npt.NDArray[np.uint32]:
        """Hash many inputs at once: a ``(n, L)`` uint8 array of hash inputs.

        Each row is a complete hash input (``hash_input`` layout, L <= 36, e.g.
        12 for TCP/IPv4); returns n uint32 hashes.  Build rows with
        ``pack_inputs`` or directly from header bytes.
        """
        a = np.asarray(inputs, dtype=np.uint8)
        if a.ndim != 2:
            raise ValueError(f"inputs must be a 2-d (n, L) uint8 array, got shape {a.shape}")
        if a.shape[1] > MAX_INPUT_LEN:
            raise ValueError(f"hash input is at most {MAX_INPUT_LEN} bytes, got {a.shape[1]}")
        if a.shape[0] == 0 or a.shape[1] == 0:
            return np.zeros(a.shape[0], dtype=np.uint32)
        out = self._table[0][a[:, 0]].copy()
        for i in range(1, a.shape[1]):
            out ^= self._table[i][a[:, i]]
        return out

    def queue_of(self, hash: int) -> int:
        """Rx queue for a hash: ``indirection[hash & 127]``."""
        return int(self._indir[hash & (INDIRECTION_SIZE - 1)])

    def queues_of(self, hashes: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Vectorised ``queue_of``."""
        h = np.asarray(hashes, dtype=np.uint32)
        return self._indir[(h & np.uint32(INDIRECTION_SIZE - 1)).astype(np.intp)]

    def __repr__(self) -> str:
        default = " (MS key)" if self._key == MS_KEY else ""
        return f"Rss(queues={self._queues}, udp={self._udp}, key={self._key.hex()}{default})"


def pack_inputs(
    src: npt.ArrayLike,
    dst: npt.ArrayLike,
    sport: npt.ArrayLike | None = None,
    dport: npt.ArrayLike | None = None,
) -> npt.NDArray[np.uint8]:
    """Build an ``(n, L)`` array of hash inputs for ``Rss.hash_batch``.

    ``src``/``dst``: either n IPv4 addresses as uint32 in host order (1-d), or
    an ``(n, 4)`` / ``(n, 16)`` uint8 array of packed addresses.  Ports: n
    integers each (both or neither).
    """

    def addr_bytes(a: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        arr = np.asarray(a)
        if arr.ndim == 1:
            return arr.astype(">u4").view(np.uint8).reshape(-1, 4)
        if arr.ndim == 2 and arr.shape[1] in (4, 16):
            return arr.astype(np.uint8)
        raise ValueError("addresses must be 1-d uint32 or (n, 4)/(n, 16) uint8")

    s, d = addr_bytes(src), addr_bytes(dst)
    if s.shape != d.shape:
        raise ValueError(f"source and destination shapes differ: {s.shape} vs {d.shape}")
    parts = [s, d]
    if (sport is None) != (dport is None):
        raise ValueError("give both ports or neither")
    if sport is not None and dport is not None:
        for p in (sport, dport):
            pa = np.asarray(p, dtype=np.int64)
            if pa.size and (pa.min() < 0 or pa.max() > 0xFFFF):
                raise ValueError("ports must be in 0..65535")
            parts.append(pa.astype(">u2").view(np.uint8).reshape(-1, 2))
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


__all__ += ["pack_inputs"]
