"""The one exception every parser in :mod:`dispatch.packet` raises.

A protocol stage drops a malformed packet and counts the drop under a reason.
If each parser raised its own assortment of ``struct.error``, ``IndexError`` and
``ValueError``, every stage would need a different ``except`` clause and the
reasons would be guessed from messages.  Instead every parser raises exactly
:class:`PacketError`, whose :attr:`~PacketError.reason` is a short machine name
taken from :data:`REASONS`, so a stage can write::

    try:
        hdr = parse_ipv4(buf)
    except PacketError as e:
        counters.drop("ip", e.reason)

Builders, on the other hand, raise :class:`ValueError` for impossible
arguments: a bad argument is a programming error, not a packet on the wire.
"""

from __future__ import annotations

from typing import TypeAlias

#: Anything the parsers accept: the hot path hands them memoryviews of shared memory.
BytesLike: TypeAlias = bytes | bytearray | memoryview

#: Every reason a parser can give, declared once.
REASONS: tuple[str, ...] = (
    "too_short",  # fewer bytes than the header (or the declared length) needs
    "bad_version",  # IP version nibble is not 4 (ipv4) / 6 (ipv6)
    "bad_hlen",  # header length field too small or past the end of the data
    "bad_len",  # a total/payload length field inconsistent with the header
    "bad_option",  # malformed IPv4/TCP option (length < 2, overruns, wrong fixed size)
    "bad_ext",  # malformed or truncated IPv6 extension header chain
)


class PacketError(Exception):
    """A packet that cannot be parsed.

    ``reason`` is one of :data:`REASONS`; ``detail`` is free text for humans.
    """

    __slots__ = ("reason", "detail")

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown PacketError reason {reason!r}; valid: {', '.join(REASONS)}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[PacketError], tuple[str, str]]:
        return (PacketError, (self.reason, self.detail))
