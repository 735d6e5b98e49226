"""The emulated NIC: rx/tx rings, DMA, RSS, interrupt moderation and offloads, sans-IO.

The NIC is the first and last hop of the host's memory flow (DESIGN.md s. 1):
on receive it posts pool buffers to its rx rings ahead of time (a driver's
refill), copies each frame from the wire into one (the DMA: the first of a
received packet's two copies) and publishes the descriptor; on transmit it
copies posted mbuf chains out to the wire (the last copy) and completes the
descriptors, and the driver frees the buffers.  Everything is counted with
the names users know (``netstat -i``: ipackets, ibytes, imissed, ierrors,
opackets, obytes; ``netstat -m``: requests denied).

:class:`Nic` is driven by a role process: it never reads the clock (every
call takes ``now_ns``), never touches zmq, and returns what must happen next
(queues to interrupt, frames to put on the wire, the next timer deadline).
:class:`RxQueueHost` and :class:`TxQueueHost` are the host's side of one
queue, used from the ithread and from the sending process; they attach to
the NIC's ring segment by name.

Receive path per batch: classify (RSS hash, checksum fields) with numpy over
the first 60 bytes of every frame for the common untagged IPv4/IPv6 frames,
per frame with ``dispatch.packet`` for the rest; per queue, drop what does
not fit the ring (imissed), take posted buffers (2k clusters; 4k/9k/16k ones
on demand for jumbo frames), copy, fill the pkthdr in batch (length, flowid,
rsstype, rcvif, csum flags, TS_WIRE, TS_DMA), optionally coalesce (LRO) and
hand to TOE, publish, and let moderation decide about the interrupt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from dispatch.mbuf import MbufPool
from dispatch.mbuf import layout as L
from dispatch.packet.errors import BytesLike
from dispatch.packet.ether import ETHER_HDR_LEN, ETHER_MIN_LEN_NOFCS
from dispatch.packet.ipv4 import IPPROTO_TCP, IPPROTO_UDP
from nicemu import kernels as nk
from nicemu import offload as off
from nicemu.moderation import Moderation, ModerationConfig
from nicemu.ring import RingSet, check_ring_size, ring_set_name
from nicemu.rss import (
    INDIRECTION_SIZE,
    KEY_LEN,
    M_HASHTYPE_RSS_IPV4,
    M_HASHTYPE_RSS_IPV6,
    M_HASHTYPE_RSS_TCP_IPV4,
    M_HASHTYPE_RSS_TCP_IPV6,
    M_HASHTYPE_RSS_UDP_IPV4,
    M_HASHTYPE_RSS_UDP_IPV6,
    MS_KEY,
    Rss,
    toeplitz_table,
)

__all__ = ["NicConfig", "Nic", "NicCounters", "RxQueueHost", "TxQueueHost", "Classified"]

HEAD: Final = ETHER_MIN_LEN_NOFCS  # bytes of each frame the batch classifier reads (60)
_RX_BUF_SIZES: Final = L.CLUSTER_SIZES
_LUT4: Final = np.array([M_HASHTYPE_RSS_IPV4, M_HASHTYPE_RSS_UDP_IPV4, M_HASHTYPE_RSS_TCP_IPV4],
                        np.uint32)
_LUT6: Final = np.array([M_HASHTYPE_RSS_IPV6, M_HASHTYPE_RSS_UDP_IPV6, M_HASHTYPE_RSS_TCP_IPV6],
                        np.uint32)
_OFF6: Final = np.arange(6, dtype=np.intp) * 65536
_OFF18: Final = np.arange(18, dtype=np.intp) * 65536
_EMPTY: Final = np.zeros(0, np.intp)


@dataclass(frozen=True, slots=True)
class NicConfig:
    """The NIC's configuration, as ``ifconfig`` / ``ethtool`` / sysctl show it.

    ``rss_udp``: hash UDP on the 4-tuple (on by default, as FreeBSD's RSS
    hash config; off: UDP hashes on the 2-tuple).  ``indirection``: 128
    queue numbers (default round-robin).  ``rx_buf_size``: the size of the
    buffers posted to the rx rings (a cluster size); frames larger than it
    get a cluster of their size at DMA time.  ``refill_batch``: idle-time refills
    (:meth:`Nic.refill_all`) wait until this many slots are free.  ``rearm_check_us``: while a
    masked queue has packets waiting, :meth:`Nic.next_deadline` asks to be
    polled this often to notice the ithread's re-arm.  ``batch_min``:
    batches smaller than this are classified per frame (numpy does not pay).
    """

    rx_queues: int = 1
    tx_queues: int = 1
    ring_size: int = 1024
    tx_ring_size: int = 1024
    rss_key: bytes = MS_KEY
    rss_udp: bool = True
    indirection: tuple[int, ...] | None = None
    rxcsum: bool = True
    txcsum: bool = True
    tso: bool = True
    lro: bool = False
    toe: bool = False
    ifindex: int = 1
    rx_buf_size: int = L.MCLBYTES
    refill_batch: int = 32
    moderation: ModerationConfig = field(default_factory=ModerationConfig)
    rearm_check_us: float = 20.0
    batch_min: int = 4

    def __post_init__(self) -> None:
        for name in ("rx_queues", "tx_queues"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 64:
                raise ValueError(f"{name}={v!r} invalid: valid values are 1..64")
        check_ring_size(self.ring_size)
        check_ring_size(self.tx_ring_size)
        if len(bytes(self.rss_key)) != KEY_LEN:
            raise ValueError(f"rss_key must be {KEY_LEN} bytes, got {len(bytes(self.rss_key))}")
        if self.indirection is not None:
            if len(self.indirection) != INDIRECTION_SIZE or not all(
                    0 <= int(q) < self.rx_queues for q in self.indirection):
                raise ValueError(f"indirection must be {INDIRECTION_SIZE} queue numbers in "
                                 f"0..{self.rx_queues - 1}")
        if self.rx_buf_size not in _RX_BUF_SIZES:
            raise ValueError(f"rx_buf_size={self.rx_buf_size!r} invalid: valid values are "
                             f"{', '.join(map(str, _RX_BUF_SIZES))}")
        if not 0 <= self.ifindex <= 0xFFFFFFFF:
            raise ValueError(f"ifindex={self.ifindex!r} invalid: valid values are 0..2**32-1")
        if self.refill_batch < 1:
            raise ValueError(f"refill_batch={self.refill_batch!r} invalid: valid values >= 1")
        if not self.rearm_check_us > 0:
            raise ValueError(f"rearm_check_us={self.rearm_check_us!r} invalid: must be > 0")
        if self.batch_min < 1:
            raise ValueError(f"batch_min={self.batch_min!r} invalid: valid values >= 1")


@dataclass(slots=True)
class NicCounters:
    """What the NIC counts (``netstat -i`` names first; per-queue lists by rx queue)."""

    ipackets: int = 0  # packets DMAed and published (before LRO merging)
    ibytes: int = 0
    imissed: int = 0  # no descriptor: ring full or no posted buffer
    ierrors: int = 0  # frames the NIC cannot take (empty, larger than 16k)
    opackets: int = 0  # frames put on the wire (after TSO)
    obytes: int = 0
    oerrors: int = 0  # chains the NIC could not send (TSO asked but off, bad TSO request)
    tx_chains: int = 0  # chains taken off the tx rings (sent, or counted in oerrors)
    rx_dma_bytes: int = 0  # copy 1: wire -> cluster
    tx_copy_bytes: int = 0  # the transmit copy: chain -> wire
    rx_ring_full: int = 0  # imissed because the ring was full
    rx_nobuf: int = 0  # imissed because no buffer could be allocated (mbuf alloc failures)
    denied: int = 0  # buffers asked of the pool and denied
    rx_csum_ip_bad: int = 0
    rx_csum_l4_bad: int = 0
    rx_csum_ok: int = 0
    tx_csum: int = 0  # checksums filled by txcsum
    tso_packets: int = 0  # chains segmented
    tso_segments: int = 0  # frames they became
    lro_queued: int = 0  # segments merged into another
    lro_flushed: int = 0  # coalesced packets delivered
    toe_packets: int = 0  # packets handed to the TOE hook
    interrupts: int = 0
    rxq_packets: list[int] = field(default_factory=list)
    rxq_bytes: list[int] = field(default_factory=list)
    rxq_missed: list[int] = field(default_factory=list)
    rxq_interrupts: list[int] = field(default_factory=list)
    txq_packets: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, int | list[int]]:
        return {k: (list(v) if isinstance(v, list) else v)
                for k, v in ((n, getattr(self, n)) for n in self.__slots__)}


#: a batch of frames laid out for the DMA kernel: (bytes, offset of each frame)
FlatFrames = tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]


def flatten(frames: Sequence[BytesLike], lens: Sequence[int]) -> FlatFrames:
    """The frames' bytes end to end, and where each starts (one join: the DMA kernel
    then copies each into its buffer)."""
    data = np.frombuffer(b"".join(frames), np.uint8)
    doff = np.zeros(len(lens), np.int64)
    if len(lens) > 1:
        np.cumsum(lens[:-1], out=doff[1:])
    return data, doff


_ARANGE = np.arange(4096, dtype=np.intp)


def _arange(k: int) -> npt.NDArray[np.intp]:
    return _ARANGE[:k] if k <= len(_ARANGE) else np.arange(k, dtype=np.intp)


class Classified:
    """A batch after classification: what the rest of the receive path needs per frame.

    ``blk`` is an ``(n, 6)`` uint32 array laid out as the pkthdr words
    ``W_PKTLEN .. W_CSUM_DATA`` (length, flowid = RSS hash, rsstype, rcvif,
    csum_flags, csum_data), written to the mbufs in one store; ``queues`` the
    rx queue of each frame; ``lens`` the lengths as a list; ``lro`` (or None)
    what :func:`nicemu.offload.lro_plan` takes.  ``csum_flags`` holds the
    verification result even when rxcsum is off (LRO needs it); the NIC
    reports it only with rxcsum on.
    """

    __slots__ = ("blk", "queues", "lens", "lro", "flat")

    def __init__(self, blk: npt.NDArray[np.uint32], queues: npt.NDArray[np.intp],
                 lens: list[int], lro: list[off.LroSeg | None | bool] | None = None) -> None:
        self.blk = blk
        self.queues = queues
        self.lens = lens
        self.lro = lro
        #: the frames laid out for the DMA (`flatten`), when classifying made it
        self.flat: FlatFrames | None = None

    @classmethod
    def empty(cls, n: int, ifindex: int) -> Classified:
        blk = np.zeros((n, 6), np.uint32)
        blk[:, 3] = ifindex
        return cls(blk, np.zeros(n, np.intp), [0] * n)

    def __len__(self) -> int:
        return len(self.lens)

    @property
    def hashes(self) -> npt.NDArray[np.uint32]:
        return self.blk[:, 1]

    @property
    def htypes(self) -> npt.NDArray[np.uint32]:
        return self.blk[:, 2]

    @property
    def csum_flags(self) -> npt.NDArray[np.uint32]:
        return self.blk[:, 4]

    @property
    def csum_data(self) -> npt.NDArray[np.uint32]:
        return self.blk[:, 5]

    def take(self, idx: Sequence[int] | npt.NDArray[np.intp]) -> Classified:
        """The rows `idx` (e.g. templates chosen for a batch)."""
        ix = np.asarray(idx, dtype=np.intp)
        lro = None if self.lro is None else [self.lro[i] for i in ix.tolist()]
        return Classified(self.blk[ix], self.queues[ix], [self.lens[i] for i in ix.tolist()],
                          lro)


class Nic:
    """An emulated NIC attached to a host's mbuf pool (see the module docstring).

    ``Nic(pool, config, index=0)`` creates the ring segment
    ``ring_set_name(pool.name, index)`` (``f"{pool.name}.nic{index}"``) unless
    ``rings_name`` is given, and posts buffers to every rx ring.  ``pool`` is
    this process's pool object (attach it with ``owner="nic"``): rx buffers are
    allocated by, and tagged as owned by, this process until the host adopts
    them.  Call :meth:`close` to free what the NIC holds and remove the rings.
    """

    def __init__(self, pool: MbufPool, config: NicConfig | None = None, *, index: int = 0,
                 rings_name: str | None = None, toe_input: off.ToeInput | None = None) -> None:
        self.config = cfg = config or NicConfig()
        self.pool = pool
        self.index = index
        self.rss = Rss(bytes(cfg.rss_key), cfg.rx_queues, cfg.rss_udp)
        if cfg.indirection is not None:
            self.rss.set_indirection(cfg.indirection)
        self._indir = np.array(self.rss.indirection, dtype=np.intp)
        t8 = toeplitz_table(bytes(cfg.rss_key))
        self._t16 = (t8[0::2, :, None] ^ t8[1::2, None, :]).reshape(-1)  # (18 * 65536,)
        self._toe = toe_input
        self.rings = RingSet.create(rings_name or ring_set_name(pool.name, index),
                                    rx_queues=cfg.rx_queues, tx_queues=cfg.tx_queues,
                                    rx_size=cfg.ring_size, tx_size=cfg.tx_ring_size)
        try:
            self._map_pool()
        except BaseException:
            self.rings.close()
            raise
        nq = cfg.rx_queues
        self.moderation = Moderation(nq, cfg.moderation)
        self._rearm_ns = int(cfg.rearm_check_us * 1000)
        self._last_check = 0
        self.counters = c = NicCounters()
        c.rxq_packets, c.rxq_bytes = [0] * nq, [0] * nq
        c.rxq_missed, c.rxq_interrupts = [0] * nq, [0] * nq
        c.txq_packets = [0] * cfg.tx_queues
        #: buffers posted to each rx queue (handles), taken from the front
        self._posted: list[npt.NDArray[np.intp]] = [_EMPTY] * nq
        self._blk_tmpl = Classified.empty(64, cfg.ifindex).blk
        self._closed = False
        self.refill_all()

    def _map_pool(self) -> None:
        # numpy views for batch header writes, on the pool's mapping itself (the mmap under
        # pool.buf), not on pool.w: a view on that memoryview would block pool.close().
        p = self.pool
        mm = p.buf.obj
        nm = p.nmbufs + 1
        self._mh = np.frombuffer(mm, np.uint32, nm * L.WORDS_PER_MBUF,
                                 p.mbuf_off).reshape(nm, L.WORDS_PER_MBUF)
        self._mq = np.frombuffer(mm, np.uint64, nm * L.WORDS_PER_MBUF // 2,
                                 p.mbuf_off).reshape(nm, L.WORDS_PER_MBUF // 2)
        self._buf = memoryview(mm)  # type: ignore[arg-type]
        self._seg = np.frombuffer(mm, np.uint8)
        self._clbase = np.array(p.cl_base, dtype=np.int64)
        self._tally = np.zeros(4, np.int64)
        self._nostamp = np.zeros(1, np.uint64)

    # ------------------------------------------------------------------ settings
    @property
    def hwassist(self) -> int:
        """``if_hwassist``: the transmit csum_flags the stack may ask the NIC for."""
        fl = off.TX_CSUM_FLAGS if self.config.txcsum else 0
        if self.config.tso:
            fl |= L.CSUM_TSO
        return fl

    @property
    def options(self) -> dict[str, bool]:
        """The offload switches, as ``ifconfig`` lists them."""
        c = self.config
        return {"rxcsum": c.rxcsum, "txcsum": c.txcsum, "tso": c.tso, "lro": c.lro,
                "toe": c.toe}

    def set_indirection(self, table: Sequence[int]) -> None:
        """Replace the RSS indirection table (128 queue numbers)."""
        self.rss.set_indirection(table)
        self._indir = np.array(self.rss.indirection, dtype=np.intp)

    def set_toe_input(self, toe_input: off.ToeInput | None) -> None:
        """Install the TOE hook (the stack's ip/tcp input, supplied by the runtime)."""
        self._toe = toe_input

    # ------------------------------------------------------------------ buffers
    def posted(self, q: int) -> int:
        """Buffers posted to rx queue `q` (ready for DMA)."""
        return len(self._posted[q])

    def refill(self, q: int, *, need: int | None = None) -> int:
        """Post buffers to every free slot of rx queue `q` (a driver's refill, one
        ``getcl_batch``), if fewer than `need` are posted (None: always).  Returns how
        many were added; a shortfall (pool exhausted) is counted as denied."""
        have = self._posted[q]
        if need is not None and len(have) >= need:
            return 0
        want = self.rings.rx[q].space() - len(have)
        if want <= 0 or (need is None and want < self.config.refill_batch and len(have)):
            return 0
        new = self.pool.getcl_batch(want, self.config.rx_buf_size)
        if len(new) < want:
            self.counters.denied += want - len(new)
        if len(new):
            self._posted[q] = np.concatenate((have, new)) if len(have) else new
        return len(new)

    def release_posted(self) -> int:
        """Give every posted (empty) rx buffer back to the pool, as a driver does when
        the interface goes down; the next receive or refill posts new ones.  Returns
        how many were freed.  At the end of a run this is what makes the pool whole."""
        n = 0
        for q in range(len(self._posted)):
            if len(self._posted[q]):
                n += len(self._posted[q])
                self.pool.freem_batch(self._posted[q])
            self._posted[q] = _EMPTY
        return n

    def refill_all(self) -> int:
        """Top every rx queue's posted buffers up to its free slots (idle-time work)."""
        return sum(self.refill(q) for q in range(len(self._posted)))

    # ------------------------------------------------------------------ classify
    def classify(self, frames: Sequence[BytesLike]) -> Classified:
        """RSS hash, queue and rx checksum result of each frame (no side effects)."""
        n = len(frames)
        cfg = self.config
        need_csum = cfg.rxcsum or cfg.lro or cfg.toe
        lens = [len(f) for f in frames]
        tm = self._blk_tmpl
        if len(tm) < n:
            tm = self._blk_tmpl = Classified.empty(n, cfg.ifindex).blk
        out = Classified(tm[:n].copy(), np.zeros(n, np.intp), lens)
        out.blk[:, 0] = lens
        if cfg.lro:
            out.lro = [None] * n
        elif n and min(lens) >= HEAD:
            # the common kind, any batch size: one compiled pass over the frames laid
            # out for the DMA (which the receive path then uses as they are)
            flat = flatten(frames, lens)
            if nk.classify_v4(flat[0], flat[1], out.blk, self._t16, int(cfg.rss_udp),
                              int(need_csum)) >= 0:
                if cfg.rx_queues > 1:
                    out.queues = self._indir[out.blk[:, 1] & (INDIRECTION_SIZE - 1)]
                out.flat = flat
                return out
            out.blk[:] = tm[:n]  # (rows it wrote before refusing: start afresh)
            out.blk[:, 0] = lens
        if n < cfg.batch_min:
            return self._classify_scalar(frames, range(n), need_csum, out)
        if min(lens) >= HEAD:
            heads = b"".join([f[:HEAD] for f in frames])
            if self._classify_v4(frames, heads, need_csum, out):
                return out
        else:
            heads = b"".join([bytes(f[:HEAD]).ljust(HEAD, b"\0") for f in frames])
        self._classify_mixed(frames, heads, need_csum, out)
        return out

    def _classify_v4(self, frames: Sequence[BytesLike], heads: bytes, need_csum: bool,
                     out: Classified) -> bool:
        """The common batch: untagged, unfragmented IPv4 without options, all TCP or all UDP.
        Checked with strided byte-string compares (no per-frame Python); False if not."""
        n = len(frames)
        if heads[12::HEAD] != b"\x08" * n or heads[13::HEAD] != bytes(n) \
                or heads[14::HEAD] != b"\x45" * n or heads[21::HEAD] != bytes(n) \
                or heads[20::HEAD].translate(None, b"\x00\x40"):
            return False
        p = heads[23::HEAD]
        if p == b"\x11" * n:
            proto, ports, htype = IPPROTO_UDP, self.config.rss_udp, M_HASHTYPE_RSS_UDP_IPV4
            if not ports:
                htype = M_HASHTYPE_RSS_IPV4
        elif p == b"\x06" * n:
            proto, ports, htype = IPPROTO_TCP, True, M_HASHTYPE_RSS_TCP_IPV4
        else:
            return False
        H16 = np.frombuffer(heads, ">u2").reshape(n, HEAD // 2)
        ends: list[int] = []
        if need_csum:
            lens = out.lens
            tl = H16[:, 8].tolist()
            minl = 40 if proto == IPPROTO_TCP else 28
            ends = [t + ETHER_HDR_LEN for t in tl]
            if not all(minl <= t and e <= ln for t, e, ln in zip(tl, ends, lens)):
                return False  # short or overlong: the general path decides per frame
            if proto == IPPROTO_UDP and (b"\0" in heads[40::HEAD] and b"\0" in heads[41::HEAD]):
                return False  # possibly a datagram without checksum
        w = 6 if ports else 4
        inp = H16[:, 13 : 13 + w] + _OFF6[:w]
        blk = out.blk
        np.bitwise_xor.reduce(self._t16[inp], axis=1, out=blk[:, 1])
        blk[:, 2] = htype
        if self.config.rx_queues > 1:
            out.queues = self._indir[blk[:, 1] & (INDIRECTION_SIZE - 1)]
        if need_csum:
            fl, da = off.rx_csum_std(frames, None, ends, proto, None)
            blk[:, 4] = fl
            blk[:, 5] = da
            if out.lro is not None and proto == IPPROTO_TCP:
                ok = ((fl & off.RX_L4_OK) == off.RX_L4_OK).tolist()
                out.lro = [off.lro_seg_std(f, v6=False, csum_ok=o) for f, o in zip(frames, ok)]
        return True

    def _classify_mixed(self, frames: Sequence[BytesLike], heads: bytes, need_csum: bool,
                        out: Classified) -> None:
        """Any batch: numpy for the standard IPv4/IPv6 frames, per frame for the rest."""
        n = len(frames)
        cfg = self.config
        lens = np.array(out.lens, dtype=np.int64)
        H = np.frombuffer(heads, np.uint8).reshape(n, HEAD)
        H16 = H.view(">u2")
        H32 = H.view(">u4")
        w3 = H32[:, 3]
        v4 = ((w3 & 0xFFFFFF00) == 0x08004500) & (lens >= HEAD)
        v6 = ((w3 & 0xFFFFF000) == 0x86DD6000) & (lens >= HEAD)
        std = v4 | v6
        blk = out.blk
        l4_end = np.zeros(n, np.int64)
        proto = np.zeros(n, np.uint64)
        check = np.zeros(n, bool)
        udp_rss = cfg.rss_udp
        i4 = np.flatnonzero(v4)
        if len(i4):
            p = H[i4, 23]
            fragz = (H32[i4, 5] & 0x3FFF0000) == 0
            tcp = (p == IPPROTO_TCP) & fragz
            udp = (p == IPPROTO_UDP) & fragz
            ports = (tcp | udp) if udp_rss else tcp
            inp = H16[i4, 13:19].astype(np.intp)
            inp[:, 4:] *= ports[:, None]
            inp += _OFF6
            blk[i4, 1] = np.bitwise_xor.reduce(self._t16[inp], axis=1)
            blk[i4, 2] = _LUT4[ports.view(np.uint8) + tcp.view(np.uint8)]
            tl = H16[i4, 8].astype(np.int64)
            end = tl + ETHER_HDR_LEN
            lok = (tl >= 20) & (end <= lens[i4])
            uck = H16[i4, 20] != 0
            check[i4] = lok & ((tcp & (tl >= 40)) | (udp & (tl >= 28) & uck))
            l4_end[i4] = np.where(lok, end, 0)
            proto[i4] = p
        i6 = np.flatnonzero(v6)
        if len(i6):
            p = H[i6, 20]
            tcp = p == IPPROTO_TCP
            udp = p == IPPROTO_UDP
            ports = (tcp | udp) if udp_rss else tcp
            inp = H16[i6, 11:29].astype(np.intp)
            inp[:, 16:] *= ports[:, None]
            inp += _OFF18
            blk[i6, 1] = np.bitwise_xor.reduce(self._t16[inp], axis=1)
            blk[i6, 2] = _LUT6[ports.view(np.uint8) + tcp.view(np.uint8)]
            pl = H16[i6, 9].astype(np.int64)
            end = pl + ETHER_HDR_LEN + 40
            lok = end <= lens[i6]
            check[i6] = lok & ((tcp & (pl >= 20)) | (udp & (pl >= 8)))
            l4_end[i6] = np.where(lok, end, 0)
            proto[i6] = p
        si = np.flatnonzero(std)
        if need_csum and len(si):
            fl, da = off.rx_csum_std([frames[i] for i in si.tolist()], v6[si],
                                     l4_end[si].tolist(), proto[si], check[si])
            blk[si, 4] = fl
            blk[si, 5] = da
        if cfg.rx_queues > 1:
            out.queues = self._indir[blk[:, 1] & (INDIRECTION_SIZE - 1)]
        if out.lro is not None:
            lro = out.lro
            ok = ((blk[:, 4] & off.RX_L4_OK) == off.RX_L4_OK).tolist()
            for i in np.flatnonzero(std & (proto == IPPROTO_TCP)).tolist():
                lro[i] = off.lro_seg_std(frames[i], v6=bool(v6[i]), csum_ok=ok[i])
        odd = np.flatnonzero(~std)
        if len(odd):
            self._classify_scalar(frames, odd.tolist(), need_csum, out)

    def _classify_scalar(self, frames: Sequence[BytesLike], which: Sequence[int],
                         need_csum: bool, out: Classified) -> Classified:
        rss = self.rss
        indir = self._indir
        blk = out.blk
        for i in which:
            f = frames[i]
            h, t = rss.hash_frame(f)
            blk[i, 1] = h
            blk[i, 2] = t
            out.queues[i] = indir[h & (INDIRECTION_SIZE - 1)]
            fl = 0
            if need_csum:
                fl, da = off.rx_csum_frame(f)
                blk[i, 4] = fl
                blk[i, 5] = da
            if out.lro is not None:
                out.lro[i] = self._lro_scalar(f, fl)
        return out

    @staticmethod
    def _lro_scalar(f: BytesLike, flags: int) -> off.LroSeg | None | bool:
        if len(f) < HEAD:
            return True
        b = bytes(f[12:15])
        ok = (flags & off.RX_L4_OK) == off.RX_L4_OK
        if b == b"\x08\x00\x45":
            return off.lro_seg_std(f, v6=False, csum_ok=ok)
        if b[:2] == b"\x86\xdd" and b[2] >> 4 == 6:
            return off.lro_seg_std(f, v6=True, csum_ok=ok)
        return True

    # ------------------------------------------------------------------ receive
    def receive(self, frames: Sequence[BytesLike], now_ns: int,
                wire_stamps: Sequence[int] | npt.NDArray[np.integer] | None = None) -> list[int]:
        """Frames arrive from the wire at `now_ns`; returns the rx queues to interrupt now.

        ``wire_stamps[i]`` (optional) is frame i's send time, stored as TS_WIRE (one
        int stamps every frame).
        """
        if not len(frames):
            return self._check_rearms(now_ns)
        cls = self.classify(frames)
        return self.receive_classified(frames, cls, now_ns, wire_stamps, flat=cls.flat)

    def receive_classified(self, frames: Sequence[BytesLike], cls: Classified, now_ns: int,
                           wire_stamps: Sequence[int] | npt.NDArray[np.integer] | None = None,
                           *, flat: FlatFrames | None = None) -> list[int]:
        """The receive path after classification (the internal source enters here with
        classification done once per template, and its frames already laid out flat
        for the DMA: `flat`, as `flatten(frames, cls.lens)` makes it)."""
        if self._closed:
            raise RuntimeError("NIC is closed")
        cfg = self.config
        if cfg.toe and self._toe is None:
            raise RuntimeError("toe is on but no toe_input was installed "
                               "(Nic(..., toe_input=...) or set_toe_input)")
        irqs = self._check_rearms(now_ns)
        n = len(frames)
        lens = cls.lens
        keep: npt.NDArray[np.intp] | None = None
        if min(lens) == 0 or max(lens) > L.MJUM16BYTES:
            la = np.array(lens)
            bad = (la == 0) | (la > L.MJUM16BYTES)
            self.counters.ierrors += int(np.count_nonzero(bad))
            keep = np.flatnonzero(~bad)
        stamps = None if wire_stamps is None else np.asarray(wire_stamps, dtype=np.uint64)
        if flat is None:
            flat = flatten(frames, lens)
        nq = cfg.rx_queues
        if nq == 1:
            if self._rx_queue(0, keep, n, flat, cls, now_ns, stamps):
                irqs.append(0)
            return irqs
        qs = cls.queues if keep is None else cls.queues[keep]
        base = np.arange(n) if keep is None else keep
        order = np.argsort(qs, kind="stable")
        pos = 0
        for q, k in enumerate(np.bincount(qs, minlength=nq).tolist()):
            if k:
                if self._rx_queue(q, base[order[pos : pos + k]], n, flat, cls, now_ns,
                                  stamps):
                    irqs.append(q)
            pos += k
        return irqs

    def _rx_queue(self, q: int, idx: npt.NDArray[np.intp] | None, n: int,
                  flat: FlatFrames, cls: Classified, now_ns: int,
                  stamps: npt.NDArray[np.uint64] | None) -> bool:
        """Frames `idx` (None: all n, in order) for rx queue `q`."""
        cfg = self.config
        c = self.counters
        ring = self.rings.rx[q]
        k = n if idx is None else len(idx)
        space = ring.space()
        if k > space:
            miss = k - space
            c.imissed += miss
            c.rx_ring_full += miss
            c.rxq_missed[q] += miss
            idx = (np.arange(n) if idx is None else idx)[:space]
            k = space
        if k == 0:
            return False
        ll = cls.lens if idx is None else [cls.lens[i] for i in idx.tolist()]
        nbig = 0
        if max(ll) > cfg.rx_buf_size:
            nbig = sum(1 for x in ll if x > cfg.rx_buf_size)
        posted = self._posted[q]
        if len(posted) < k - nbig:
            self.refill(q, need=k - nbig)
            posted = self._posted[q]
        if nbig == 0 and len(posted) >= k:
            handles = posted[:k]
            self._posted[q] = posted[k:]
        else:
            handles, got = self._take_buffers(q, ll)
            if got is not None:
                miss = k - int(np.count_nonzero(got))
                c.imissed += miss
                c.rx_nobuf += miss
                c.rxq_missed[q] += miss
                gi = np.flatnonzero(got)
                idx = gi if idx is None else idx[gi]
                handles = handles[gi]
                ll = [ll[i] for i in gi.tolist()]
                k = len(ll)
                if k == 0:
                    return False
        # DMA: one copy per frame into its cluster, and the descriptor write-back
        rows = _arange(k) if idx is None else idx.astype(np.intp, copy=False)
        if stamps is None:
            st, kind = self._nostamp, nk.STAMP_NONE
        elif stamps.ndim == 0:
            st, kind = stamps.reshape(1), nk.STAMP_ONE
        else:
            st, kind = np.ascontiguousarray(stamps), nk.STAMP_EACH
        tally = self._tally
        nk.dma_rx(self._mh, self._mq, self._seg, self._clbase,
                  handles.astype(np.intp, copy=False), flat[0], flat[1], cls.blk, rows,
                  1 if (cfg.rxcsum or cfg.toe) else 0, now_ns, st, kind, tally)
        nbytes = int(tally[0])
        c.ipackets += k
        c.ibytes += nbytes
        c.rx_dma_bytes += nbytes
        c.rxq_packets[q] += k
        c.rxq_bytes[q] += nbytes
        if cfg.rxcsum:
            c.rx_csum_ok += int(tally[1])
            c.rx_csum_l4_bad += int(tally[2])
            c.rx_csum_ip_bad += int(tally[3])
        if cfg.lro and cls.lro is not None and k > 1:
            handles = self._lro(handles, list(range(k)) if idx is None else idx.tolist(), cls)
        if self._toe is not None and cfg.toe:
            c.toe_packets += len(handles)
            handles = np.asarray(self._toe(handles, q, now_ns), dtype=np.intp)
        pushed = ring.push_many(handles)
        if self.moderation.on_packets(q, pushed, now_ns):
            self._raise(q, now_ns)
            return True
        return False

    def _take_buffers(self, q: int, ll: list[int]
                      ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_] | None]:
        """Buffers for frames of lengths `ll`: posted ones for those that fit, clusters of
        their size for jumbo frames.  ``got`` (None: all) marks frames that got one."""
        c = self.counters
        k = len(ll)
        la = np.array(ll)
        big = la > self.config.rx_buf_size
        handles = np.zeros(k, np.intp)
        got = np.ones(k, bool)
        posted = self._posted[q]
        si = np.flatnonzero(~big)
        take = min(len(si), len(posted))
        handles[si[:take]] = posted[:take]
        self._posted[q] = posted[take:]
        got[si[take:]] = False
        bi = np.flatnonzero(big)
        lo = 0
        for size in L.CLUSTER_SIZES:
            zi = bi[(la[bi] > lo) & (la[bi] <= size)]
            lo = size
            if not len(zi):
                continue
            hs = self.pool.getcl_batch(len(zi), size)
            if len(hs) < len(zi):
                c.denied += len(zi) - len(hs)
            handles[zi[: len(hs)]] = hs
            got[zi[len(hs) :]] = False
        return handles, (None if got.all() else got)

    def _lro(self, handles: npt.NDArray[np.intp], idx: list[int],
             cls: Classified) -> npt.NDArray[np.intp]:
        assert cls.lro is not None
        segs = [cls.lro[i] for i in idx]
        runs = off.lro_plan(segs)
        if not runs:
            return handles
        mh = self._mh
        hl = handles.tolist()
        drop: set[int] = set()
        c = self.counters
        for run in runs:
            first = segs[run[0]]
            assert isinstance(first, off.LroSeg)
            head = hl[run[0]]
            hb = head
            prev = head
            total_pl = 0
            for j in run[1:]:
                s = segs[j]
                assert isinstance(s, off.LroSeg)
                m = hl[j]
                mh[m, L.W_DATA] += s.hdr_len
                mh[m, L.W_LEN] = s.payload
                mh[m, L.W_FLAGS] &= ~np.uint32(L.M_PKTHDR)
                mh[m, L.W_NEXT] = 0
                mh[prev, L.W_NEXT] = m
                prev = m
                total_pl += s.payload
                drop.add(j)
            ip_len = first.ip_len + total_pl
            # the head keeps its headers; trim its Ethernet padding and fix the IP length
            head_len = first.hdr_len + first.payload
            mh[hb, L.W_LEN] = head_len
            mh[hb, L.W_PKTLEN] = head_len + total_pl
            o = int(self._clbase[mh[hb, L.W_EXT]]) + int(mh[hb, L.W_DATA])
            hdr = self._buf[o : o + first.hdr_len]
            if hdr[12] == 0x08:
                off.ipv4_fix_len(hdr, ETHER_HDR_LEN, ip_len)
            else:
                hdr[ETHER_HDR_LEN + 4] = ip_len >> 8
                hdr[ETHER_HDR_LEN + 5] = ip_len & 0xFF
            hdr.release()
            mh[hb, L.W_CSUM_FLAGS] |= np.uint32(off.RX_L4_OK | L.CSUM_COALESCED)
            mh[hb, L.W_CSUM_DATA] = 0xFFFF
            c.lro_queued += len(run) - 1
            c.lro_flushed += 1
        keep = [h for j, h in enumerate(hl) if j not in drop]
        return np.array(keep, dtype=np.intp)

    # ------------------------------------------------------------------ interrupts
    def _raise(self, q: int, now_ns: int) -> None:
        self.rings.irq[q].raise_irq(now_ns)
        self.counters.interrupts += 1
        self.counters.rxq_interrupts[q] += 1

    def _check_rearms(self, now_ns: int) -> list[int]:
        """Notice the ithreads' re-arms (and polling switches) in the control blocks."""
        out = []
        mod = self.moderation
        self._last_check = now_ns
        for q, irq in enumerate(self.rings.irq):
            dis = irq.disabled
            if dis != mod.disabled(q):
                if mod.set_disabled(q, dis, now_ns, backlog=len(self.rings.rx[q])):
                    self._raise(q, now_ns)
                    out.append(q)
                    continue
            if mod.masked(q) and irq.rearmed == irq.raised:
                if mod.rearm(q, now_ns, backlog=len(self.rings.rx[q])):
                    self._raise(q, now_ns)
                    out.append(q)
        return out

    def poll_timers(self, now_ns: int) -> list[int]:
        """Re-arms and moderation timers: the rx queues to interrupt now."""
        out = self._check_rearms(now_ns)
        for q in self.moderation.poll_timers(now_ns):
            self._raise(q, now_ns)
            out.append(q)
        return out

    def next_deadline(self) -> int | None:
        """When :meth:`poll_timers` should next be called (monotonic ns), None: no need
        until frames arrive.  While a masked queue has packets waiting, this includes a
        re-arm check every ``rearm_check_us``."""
        t = self.moderation.next_deadline()
        for q, ring in enumerate(self.rings.rx):
            if self.moderation.masked(q) and len(ring):
                r = self._last_check + self._rearm_ns
                t = r if t is None else min(t, r)
                break
        return t

    # ------------------------------------------------------------------ transmit
    def transmit(self, now_ns: int, max_frames: int = 1024, *,
                 stamps: list[int] | None = None,
                 stamp_slot: int = L.TS_USER) -> list[bytes | bytearray]:
        """Send what the drivers posted: copy each chain out to wire bytes, apply txcsum
        and TSO, complete the descriptors.  Returns the frames for the wire, in order.

        At most `max_frames` chains are taken per call (TSO may make more frames).
        With `stamps`, one timestamp per returned frame is appended to it: the
        chain's pkthdr timestamp `stamp_slot` (the host stamps the time its stack
        sent the packet there), for the wire to carry beside the frame.
        """
        c = self.counters
        pool = self.pool
        w = pool.w
        cfg = self.config
        out: list[bytes | bytearray] = []
        ts = pool.stamps64 if stamps is not None else None
        budget = max_frames
        for q, ring in enumerate(self.rings.tx):
            if budget <= 0:
                break
            if ring.pending() <= 0:  # (one ring per host thread; most are idle)
                continue
            hs = ring.fetch(budget).tolist()
            csum_frames: list[bytearray] = []
            csum_flags: list[int] = []
            for m in hs:
                n = pool.chain_len(m)
                data = bytearray(n)
                pool.copydata_into(m, 0, n, memoryview(data))
                c.tx_copy_bytes += n
                b = m << 6
                fl = w[b + L.W_CSUM_FLAGS]
                if fl & L.CSUM_TSO:
                    mss = w[b + L.W_VTAG] >> 16
                    if not cfg.tso or not mss:
                        c.oerrors += 1
                        continue
                    try:
                        segs = off.tso_segment(data, mss)
                    except ValueError:
                        c.oerrors += 1
                        continue
                    c.tso_packets += 1
                    c.tso_segments += len(segs)
                    out.extend(segs)
                    c.txq_packets[q] += len(segs)
                    if ts is not None:
                        stamps.extend([int(ts[m, L.Q_TS + stamp_slot])] * len(segs))
                    continue
                if fl & off.TX_CSUM_FLAGS and cfg.txcsum:
                    k = nk.tx_csum_v4(np.frombuffer(data, np.uint8), fl)
                    if k >= 0:  # the common kind, compiled
                        c.tx_csum += k
                    else:
                        csum_frames.append(data)
                        csum_flags.append(fl)
                out.append(data)
                c.txq_packets[q] += 1
                if ts is not None:
                    stamps.append(int(ts[m, L.Q_TS + stamp_slot]))
            if csum_frames:
                c.tx_csum += off.tx_csum_frames(csum_frames, csum_flags)
            ring.complete(len(hs))
            c.tx_chains += len(hs)
            budget -= len(hs)
        c.opackets += len(out)
        c.obytes += sum(len(f) for f in out)
        return out

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Free every buffer the NIC holds (posted ones, and any still in its rings,
        which nobody will harvest now), then remove the ring segment."""
        if self._closed:
            return
        self._closed = True
        try:
            self.release_posted()
            for r in self.rings.rx:
                left = r.pop_array()
                if len(left):
                    self.pool.freem_batch(left)
            for t in self.rings.tx:
                t.complete(t.pending())
                left = t.reclaim()
                if len(left):
                    self.pool.freem_batch(left)
        finally:
            self.rings.close()
            del self._mh, self._mq
            self._buf.release()

    def __enter__(self) -> Nic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _QueueHost:
    def __init__(self, rings: RingSet | str, queue: int, pool: MbufPool) -> None:
        self._own = isinstance(rings, str)
        self.rings = RingSet.attach(rings) if isinstance(rings, str) else rings
        self.queue = queue
        self.pool = pool

    def close(self) -> None:
        """Detach (only if this object attached the rings by name)."""
        if self._own:
            self.rings.close()

    def __enter__(self) -> _QueueHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RxQueueHost(_QueueHost):
    """The host (ithread) side of rx queue `queue`: harvest completed buffers, re-arm.

    ``rings`` is the NIC's ring segment name (or an attached :class:`RingSet`);
    ``pool`` this process's pool object: harvested packets are adopted (tagged
    as owned by this process).  Interrupt mode: on an interrupt, harvest until
    empty, then :meth:`rearm`.  Polling mode: :meth:`set_polling` (True), then
    harvest with a quota per round and re-arm only when :meth:`pending` is 0.
    """

    def __init__(self, rings: RingSet | str, queue: int, pool: MbufPool) -> None:
        super().__init__(rings, queue, pool)
        if not 0 <= queue < self.rings.n_rx:
            raise ValueError(f"rx queue {queue} invalid: valid queues are 0..{self.rings.n_rx - 1}")
        self._ring = self.rings.rx[queue]
        self._irq = self.rings.irq[queue]

    def harvest_array(self, max_n: int | None = None) -> npt.NDArray[np.uint32]:
        """Take up to `max_n` completed packets (uint32 handles), adopted by this process."""
        hs = self._ring.pop_array(max_n)
        if len(hs):
            self.pool.adopt(hs)
        return hs

    def harvest(self, max_n: int | None = None) -> list[int]:
        """Take up to `max_n` completed packets (all if None), adopted by this process."""
        return self.harvest_array(max_n).tolist()

    def pending(self) -> int:
        """Completed packets waiting in the ring."""
        return len(self._ring)

    def rearm(self) -> None:
        """Done with the interrupt: let the NIC raise the next one (at once if packets wait)."""
        self._irq.rearm()

    @property
    def masked(self) -> bool:
        return self._irq.masked

    def set_polling(self, polling: bool) -> None:
        """Polling mode keeps the interrupt disabled whatever rearm does; leaving it re-enables."""
        self._irq.set_disabled(polling)


class TxQueueHost(_QueueHost):
    """The driver side of tx queue `queue`: post chains, reclaim completed ones (txeof)."""

    def __init__(self, rings: RingSet | str, queue: int, pool: MbufPool) -> None:
        super().__init__(rings, queue, pool)
        if not 0 <= queue < self.rings.n_tx:
            raise ValueError(f"tx queue {queue} invalid: valid queues are 0..{self.rings.n_tx - 1}")
        self._ring = self.rings.tx[queue]

    def post(self, handles: Sequence[int] | npt.NDArray[np.integer]) -> int:
        """Post packets (head handles of chains) for transmission; returns how many fit.
        The caller still owns the rest (count a drop and free them, or retry)."""
        return self._ring.push_many(handles)

    def space(self) -> int:
        """Free descriptors (not posted, or completed and reclaimed)."""
        return self._ring.space()

    def in_flight(self) -> int:
        """Posted and not yet reclaimed."""
        return len(self._ring)

    def reclaim_completed(self, max_n: int | None = None) -> int:
        """txeof: free the buffers of completed descriptors here (the driver side)."""
        hs = self._ring.reclaim(max_n)
        if len(hs):
            self.pool.freem_batch(hs)
        return len(hs)
