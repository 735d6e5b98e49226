"""Wire formats as pure functions over bytes.

Two very different parts of dispatch-emu need to read and write the same
headers.  The host's protocol stages (``ether_input``, ``ip_input``,
``tcp_input``, ...) parse frames that sit in shared-memory mbufs, millions of
times a second, and must do it with nothing heavier than
``struct.unpack_from`` on a memoryview.  The hardware side (``nicemu``: the
NIC's checksum offload and TOE, the traffic generator, pcap replay) and the
tests build frames, mangle them on purpose, and check them.  If each side had
its own idea of a header, a disagreement between them would look like a
dispatch bug.  So the formats live here, once, below both: this package
imports nothing from the rest of the project, does no I/O, keeps no state
and reads no clock; every function takes bytes (or a memoryview) and returns
bytes or a value.

Each module serves both kinds of caller, at two levels:

* **Hot path**: FreeBSD-named constants (``ETHERTYPE_IP``, ``IPPROTO_TCP``,
  ``TH_SYN``, ``ETHER_HDR_LEN``...) and precompiled :class:`struct.Struct`
  objects (``IPV4_HDR``, ``TCP_HDR``...) that a stage uses directly, plus the
  checksum arithmetic of :mod:`~dispatch.packet.checksum`, including a numpy
  batch form and RFC 1624 incremental updates.
* **Tools**: keyword-only builders (``build_ipv4``, ``build_tcp``...) that get
  every length and checksum right unless told to get one wrong, validating
  parsers that return frozen dataclasses, and :mod:`~dispatch.packet.frames`
  to build or summarise a whole frame in one call.

Parsers raise exactly one exception type, :class:`PacketError`, whose
``reason`` is a short name from :data:`REASONS` (``too_short``,
``bad_version``, ``bad_hlen``, ``bad_len``, ``bad_option``, ``bad_ext``), so
that a stage counts drops by reason instead of guessing; on arbitrary input
bytes they raise nothing else.  Builders raise :class:`ValueError` for
impossible arguments.  Frames never carry an FCS.

Modules: ``checksum``, ``ether``, ``ipv4`` (with the ``IPPROTO_*`` numbers and
address helpers shared by all), ``ipv6``, ``tcp``, ``udp``, ``icmp``, ``frames``.
"""

from dispatch.packet.errors import REASONS, BytesLike, PacketError

__all__ = ["PacketError", "REASONS", "BytesLike"]
