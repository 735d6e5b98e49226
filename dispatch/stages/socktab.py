"""The host's socket / protocol-control-block table, in shared memory.

Why it exists: in the runtime the transport stages (tcp_input, udp_input)
run in an interrupt-thread process or in any of N netisr workers, and in the
hybrid model a flow's packets may be handled by the ithread for one batch and
by a worker for the next; user-thread processes meanwhile read the sockets.
So the pcb (TCP state, sequence numbers, the reassembly queue as mbuf
handles, delayed-ACK state, the receive-buffer counters) cannot live in one
process's objects: it lives here, in a fixed-capacity table in a segment that
every role attaches by name, as FreeBSD keeps inpcbs in one hash that every
CPU's netisr thread looks up.

Segment layout (all little-endian; offsets in bytes)::

    0      superblock (segment.py): magic "DEMUSOCK", version, creator pid and
           start time, counts = (capacity, nbuckets, nusers)
    1024   header, u64 words: H_GEN (bumped on every insert/unlink),
           H_NEXT (records handed out so far), H_CAP, H_NBUCKETS, H_NUSERS
    4096   hash buckets: nbuckets x u32, index + 1 of the first pcb (0 = empty)
    REC    capacity records of REC_BYTES = 512 bytes: 64 u64 slots, of which
           slots 0..19 are read as 40 u32 words (P_* below) and slots 20..63
           as u64 counters (Q_* below). Record i's u32 word k is
           ``w[(i << 7) + k]``, its u64 slot k is ``q[(i << 6) + k]``.

Concurrency rules (who writes what; nothing here needs an atomic):

- Insert and unlink take the table's OfdLock (one byte of the segment file).
  Insert is lookup-or-insert under the lock; a new record is written fully
  (addresses, ports, initial TCP state through the ``init`` callback) and
  only then linked at its bucket's head, so a lock-free reader walking a
  chain sees either the old chain or a complete new record. Unlinking leaves
  the record's own next pointer intact, so a reader standing on it walks on.
  Records are never reused during a table's life (a closed connection stays
  for the report), so an index stays valid forever.
- Lookups take no lock. Each process keeps a cache of key -> index: a hit
  is used while the record says SF_INHASH, and hits that resolved to a
  wildcard listener are dropped whenever H_GEN changes.
- Connection state (P_STATE, P_IRS/P_RCV_*, P_SND_UNA, P_TFLAGS, the
  reassembly queue P_REASS_*, Q_DELACK_SINCE, the per-socket receive
  counters) is written only by whoever runs tcp_input/udp_input for that
  flow. The runtime guarantees one such runner at a time per flow (flow
  placement; hybrid dispatch never runs a flow inline while it is queued).
- The receive buffer is two monotonic counters: Q_SB_APPENDED is written only
  by the producer (the transport stage's sbappend), Q_SB_REMOVED only by the
  consumer (soreceive in the socket's user thread). sb_cc = appended -
  removed, exact without atomics; the producer's high-water check reads the
  consumer's counter (a stale read errs on the side of "fuller").
  Q_DELIVERED / Q_DELIVERED_PKTS are the consumer's too.
- The send buffer's accounting mirrors it: Q_SND_APPENDED by sosend (the
  user thread), Q_SND_REMOVED by udp_output (a datagram leaves) or, for
  TCP, by sbdrop when the peer acknowledges the bytes (sndbuf.py): TCP keeps
  its data until acknowledged. The TCP send buffer itself is an mbuf chain
  hung off the record (P_SNDBUF_HEAD / P_SNDBUF_TAIL, Q_SNDBUF_CC), and the
  sender's state (P_SND_CWND, P_SND_SSTHRESH, Q_SND_RECOVER .. Q_FASTREXMT:
  congestion control, RTT estimator, timers' deadlines, per-socket send
  counters) has ONE writer: the process that runs the connection's sender,
  which is tcp_output (the application's sends), tcp_input's ACK
  processing for that connection and its tcp_timers. The runtime must
  place those together for a sending connection (for example: run
  tcp_input for tx flows in the socket's user thread, or hand the user's
  sends to the process that runs the flow's tcp_input). P_SND_NXT/P_SND_MAX
  are the sender's too; a purely passive connection's tcp_input writes
  them for its SYN-ACK / FIN as before.
- P_USER says which user thread reads the socket (index % nusers unless
  given): the runtime routes "soreceive" batches by it.

The anonymous variant (``create(None, ...)``) has the same layout over a
bytearray and no lock, for single-process tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import ipaddress
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dispatch.mbuf.segment import (
    PAGE,
    SUPER,
    VERSION,
    OfdLock,
    PoolError,
    attach_segment,
    close_at_exit,
    create_segment,
    forget,
    process_start_time,
    shm_path,
)
from dispatch.mbuf.spinlock import SpinLock, pid_alive
from dispatch.stages.tcp_var import TCPS_LISTEN, state_name

MAGIC = b"DEMUSOCK"
REC_BYTES = 512
REC_WORDS = REC_BYTES // 4  # 128: record i starts at u32 word i << 7
REC_SLOTS = REC_BYTES // 8  # 64: and at u64 slot i << 6
HDR_OFF = 1024
BUCKETS_OFF = PAGE
LOCK_BYTE = 16
PCB_LOCK_OFF = HDR_OFF + 128  # pcb_lock()'s u32 spin-lock word (its own cache line)

IPPROTO_TCP = 6
IPPROTO_UDP = 17
AF_INET4 = 4  # families as the IP version number, not the OS's AF_* values
AF_INET6 = 6

# header u64 words
H_GEN, H_NEXT, H_CAP, H_NBUCKETS, H_NUSERS = range(5)

# record u32 words
P_SFLAGS = 0  # SF_* socket flags
P_PF = 1  # proto | family << 8
P_STATE = 2  # TCPS_* (0 for UDP)
P_HNEXT = 3  # index + 1 of the next record in the bucket chain
P_LPORT = 4
P_FPORT = 5
P_USER = 6  # user thread that reads this socket
P_PARENT = 7  # index + 1 of the listener that spawned it
P_LADDR = 8  # 4 words: 16 bytes, big-endian (an IPv4 address in the last 4)
P_FADDR = 12  # 4 words
P_IRS = 16
P_RCV_NXT = 17
P_RCV_ADV = 18  # rcv_nxt + the window last advertised
P_ISS = 19
P_SND_UNA = 20
P_SND_NXT = 21
P_SND_MAX = 22
P_SND_WND = 23
P_TFLAGS = 24  # TF_* (tcp_var)
P_SCALE = 25  # snd_scale | rcv_scale << 8
P_MAXSEG = 26  # t_maxseg
P_TS_RECENT = 27
P_FINSEQ = 28  # sequence number of a FIN seen beyond rcv_nxt (TF_FIN_PENDING)
P_REASS_HEAD = 29  # mbuf handle of the first queued out-of-order segment
P_REASS_TAIL = 30
P_REASS_NSEG = 31
P_REASS_BYTES = 32
P_SB_HIWAT = 33
P_SND_HIWAT = 34
P_DELACK_SEGS = 35  # segments received since the last ACK we sent
P_SND_CWND = 36  # sender: congestion window, bytes (RFC 5681)
P_SND_SSTHRESH = 37  # sender: slow-start threshold, bytes
P_SNDBUF_HEAD = 38  # sender: first mbuf of the send buffer (the byte at snd_una)
P_SNDBUF_TAIL = 39  # sender: last mbuf of the send buffer

# record u64 slots
Q_SB_APPENDED = 20  # producer: bytes appended to the receive buffer
Q_SB_REMOVED = 21  # consumer: bytes removed (copied out)
Q_DELIVERED = 22  # consumer: bytes delivered to the user
Q_DELIVERED_PKTS = 23  # consumer
Q_DELACK_SINCE = 24  # producer: ctx.now when an ACK became owed
Q_SND_APPENDED = 25  # sosend
Q_SND_REMOVED = 26  # tcp_output / udp_output
Q_CREATED = 27
Q_RCVPACK = 28  # producer: packets appended
Q_RCVBYTE = 29  # producer: bytes appended (= Q_SB_APPENDED, kept for symmetry)
Q_DROPS = 30  # producer: packets of this socket dropped (full, out of window, ...)
Q_DUPBYTES = 31  # producer: duplicate bytes received
Q_OOPACK = 32  # producer: out-of-order segments queued
Q_SNDPACK = 33  # output: segments sent
Q_SNDBYTE = 34  # output: data bytes sent
# The sender's state (tcp_output, tcp_sender, tcp_timer). Times are ctx.now values
# (ns); 0 means "timer off" / "not timing". Sequence numbers are stored as u32 values.
Q_SNDBUF_CC = 35  # bytes in the send-buffer chain (written only by the sender)
Q_SND_RECOVER = 36  # NewReno "recover": snd_max when fast recovery began
Q_DUPACKS = 37  # consecutive duplicate ACKs
Q_BYTES_ACKED = 38  # congestion avoidance byte counter (RFC 5681 3.1)
Q_RTT_SEQ = 39  # sequence number being timed
Q_RTT_START = 40  # when it was sent (0: no measurement running)
Q_SRTT = 41  # smoothed RTT, ns (0: no sample yet)
Q_RTTVAR = 42  # RTT variation, ns
Q_RTO = 43  # retransmission timeout before backoff, ns
Q_RXTSHIFT = 44  # backoff exponent (retransmission or persist)
Q_REXMT_AT = 45  # retransmission timer deadline
Q_PERSIST_AT = 46  # persist (zero-window probe) timer deadline
Q_TIMEWAIT_AT = 47  # 2MSL timer deadline (TIME_WAIT)
Q_SND_WL1 = 48  # seq of the segment that last updated snd_wnd
Q_SND_WL2 = 49  # ack of the segment that last updated snd_wnd
Q_SNDREXMITPACK = 50  # segments retransmitted
Q_SNDREXMITBYTE = 51  # bytes retransmitted
Q_SND_ACKED = 52  # data bytes acknowledged by the peer (freed from the send buffer)
Q_SND_MAXWND = 53  # largest window the peer offered (silly-window avoidance)
Q_RXTCOUNT = 54  # retransmission timeouts on this connection
Q_FASTREXMT = 55  # fast retransmits on this connection

# socket flags
SF_USED = 0x01
SF_INHASH = 0x02
SF_LISTEN = 0x04  # a wildcard-remote socket (TCP listener, bound UDP)
SF_AUTO = 0x08  # created by auto-sockets mode: a passive observer, sends nothing
SF_V6 = 0x10

Key = tuple[int, int, int, int, int]  # (pf, laddr, lport, faddr, fport)


def pf_of(proto: int, family: int) -> int:
    return proto | (family << 8)


def addr_int(addr: str | bytes | int) -> tuple[int, int]:
    """(family, integer value) of an address given as text, 4/16 bytes or (v4) int."""
    if isinstance(addr, int):
        return AF_INET4, addr
    if isinstance(addr, bytes | bytearray | memoryview):
        b = bytes(addr)
        return (AF_INET4 if len(b) == 4 else AF_INET6), int.from_bytes(b, "big")
    a = ipaddress.ip_address(addr)
    return a.version, int(a)


def addr_text(family: int, value: int) -> str:
    if family == AF_INET6:
        return str(ipaddress.IPv6Address(value))
    return str(ipaddress.IPv4Address(value))


def endpoint_text(family: int, value: int, port: int) -> str:
    a = addr_text(family, value)
    return f"[{a}]:{port}" if family == AF_INET6 else f"{a}:{port}"


@dataclass(frozen=True, slots=True)
class SocketInfo:
    """One socket, as the result document shows it."""

    index: int
    proto: str  # "tcp" | "udp"
    local: str  # "addr:port" ("[v6]:port")
    remote: str  # "*:*" for a listener / bound UDP socket
    state: str  # TCP state name, "" for UDP
    user: int
    listener: bool
    auto: bool
    bytes_delivered: int
    packets_delivered: int
    bytes_appended: int
    sb_cc: int
    reass_segments: int
    counters: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "proto": self.proto, "local": self.local,
                "remote": self.remote, "state": self.state, "user": self.user,
                "listener": self.listener, "auto": self.auto,
                "bytes_delivered": self.bytes_delivered,
                "packets_delivered": self.packets_delivered,
                "bytes_appended": self.bytes_appended, "sb_cc": self.sb_cc,
                "reass_segments": self.reass_segments, **self.counters}


def _geometry(capacity: int, nbuckets: int) -> tuple[int, int]:
    rec_off = (BUCKETS_OFF + 4 * nbuckets + PAGE - 1) // PAGE * PAGE
    size = (rec_off + capacity * REC_BYTES + PAGE - 1) // PAGE * PAGE
    return rec_off, size


class SocketTable:
    """The pcb table: lookup by 4-tuple with wildcard listeners, fields by index."""

    def __init__(self, name: str | None, fd: int, backing: mmap.mmap | bytearray,
                 counts: tuple[int, ...], *, creator: bool) -> None:
        self.name = name
        self.creator = creator
        self._pid = os.getpid()
        self._fd = fd
        self._backing = backing
        self.capacity, self.nbuckets = counts[0], counts[1]
        self.rec_off, self.size = _geometry(self.capacity, self.nbuckets)
        self.buf = memoryview(backing)
        #: header u64 words
        self.hq = self.buf[HDR_OFF : HDR_OFF + 64].cast("Q")
        self._buckets = self.buf[BUCKETS_OFF : BUCKETS_OFF + 4 * self.nbuckets].cast("I")
        recs = self.buf[self.rec_off : self.rec_off + self.capacity * REC_BYTES]
        #: record u32 words: w[(i << 7) + P_*]; u64 slots: q[(i << 6) + Q_*]
        self.w = recs.cast("I")
        self.q = recs.cast("Q")
        self._mask = self.nbuckets - 1
        self._lock: contextlib.AbstractContextManager[Any] = (
            OfdLock(fd, LOCK_BYTE) if fd >= 0 else contextlib.nullcontext())
        self._pcb_word = np.frombuffer(backing, np.uint32, 1, PCB_LOCK_OFF)
        self._cache: dict[Key, int] = {}  # key -> index (exact or via a listener)
        self._wkeys: set[Key] = set()  # the keys in _cache that resolved to a listener
        self._wgen = -1
        self._raw_cache: dict[int, dict[bytes, int]] = {}  # lookup_raw_batch's, by pf
        self._raw_gen = -1
        #: numpy views of the same words (over the backing itself, not the memoryviews
        #: above, which close() releases), for the compiled lookups (stages/kernels.py)
        self.np_w = np.frombuffer(backing, np.uint32, self.capacity * REC_WORDS, self.rec_off)
        self.np_q = np.frombuffer(backing, np.uint64, self.capacity * REC_SLOTS, self.rec_off)
        self.np_buckets = np.frombuffer(backing, np.uint32, self.nbuckets, BUCKETS_OFF)
        self.np_mask = np.uint64(self._mask)
        self._closed = False

    # ------------------------------------------------------------ lifetime
    @classmethod
    def create(cls, name: str | None, capacity: int = 4096, *, nusers: int = 1) -> SocketTable:
        """A new table: in /dev/shm under `name`, or anonymous (in-process) if None."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        nbuckets = 1
        while nbuckets < 2 * capacity:
            nbuckets <<= 1
        counts = (capacity, nbuckets, nusers)
        _, size = _geometry(capacity, nbuckets)
        if name is None:
            backing: mmap.mmap | bytearray = bytearray(size)
            backing[: SUPER.size] = SUPER.pack(MAGIC, VERSION, os.getpid(),
                                               process_start_time(os.getpid()),
                                               *counts, 0, 0)
            fd = -1
        else:
            fd, backing = create_segment(name, size, counts, MAGIC)
        t = cls(name, fd, backing, counts, creator=True)
        t.hq[H_CAP] = capacity
        t.hq[H_NBUCKETS] = nbuckets
        t.hq[H_NUSERS] = max(1, nusers)
        if name is not None:
            close_at_exit(t)
        return t

    @classmethod
    def attach(cls, name: str) -> SocketTable:
        """Attach to a table another process created."""
        fd, mm, sb = attach_segment(name, MAGIC)
        return cls(name, fd, mm, sb.counts, creator=False)

    def close(self) -> None:
        """Unmap; the creator also unlinks the segment."""
        if self._closed or os.getpid() != self._pid:
            return
        self._closed = True
        forget(self)
        del self.np_w, self.np_q, self.np_buckets, self._pcb_word
        for v in (self.hq, self._buckets, self.w, self.q):
            v.release()
        self.buf.release()
        if isinstance(self._backing, mmap.mmap):
            with contextlib.suppress(BufferError):
                self._backing.close()
        if self._fd >= 0:
            os.close(self._fd)
            if self.creator and self.name is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(shm_path(self.name))

    def __enter__(self) -> SocketTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- basics
    def __len__(self) -> int:
        return int(self.hq[H_NEXT])

    @property
    def nusers(self) -> int:
        return int(self.hq[H_NUSERS])

    def set_nusers(self, n: int) -> None:
        """How many user threads sockets created from now on are spread over."""
        self.hq[H_NUSERS] = max(1, n)

    @property
    def generation(self) -> int:
        return int(self.hq[H_GEN])

    def pcb_lock(self) -> Any:
        """A lock over the table's TCP connection state, for runtimes where a flow's
        sender and its tcp_input run in different processes (FreeBSD's inpcb lock,
        one for the whole table): a spin-lock word of the segment, taken under the
        caller's pid (taken per batch and per send: an fcntl lock cost 6 us here)."""
        if self._fd < 0:
            return contextlib.nullcontext()
        return SpinLock(self._pcb_word, 0, os.getpid(), pid_alive)

    def user_of(self, i: int) -> int:
        return self.w[(i << 7) + P_USER]

    def get(self, i: int, word: int) -> int:
        return self.w[(i << 7) + word]

    def set(self, i: int, word: int, value: int) -> None:
        self.w[(i << 7) + word] = value & 0xFFFFFFFF

    def qget(self, i: int, slot: int) -> int:
        return self.q[(i << 6) + slot]

    def qadd(self, i: int, slot: int, n: int) -> None:
        self.q[(i << 6) + slot] += n

    def sb_cc(self, i: int) -> int:
        """Bytes in the receive buffer: appended (producer) - removed (consumer)."""
        b = i << 6
        return self.q[b + Q_SB_APPENDED] - self.q[b + Q_SB_REMOVED]

    def sbspace(self, i: int, default_hiwat: int = 2 * 1024 * 1024) -> int:
        return max(0, (self.w[(i << 7) + P_SB_HIWAT] or default_hiwat) - self.sb_cc(i))

    def key_of(self, i: int) -> Key:
        b = i << 7
        o = self.rec_off + (i * REC_BYTES)
        return (self.w[b + P_PF],
                int.from_bytes(self.buf[o + 4 * P_LADDR : o + 4 * P_LADDR + 16], "big"),
                self.w[b + P_LPORT],
                int.from_bytes(self.buf[o + 4 * P_FADDR : o + 4 * P_FADDR + 16], "big"),
                self.w[b + P_FPORT])

    # ------------------------------------------------------------- lookup
    def _hash(self, key: Key) -> int:
        pf, la, lp, fa, fp = key
        h = (la * 0x9E3779B1) ^ (fa * 0x85EBCA77) ^ (((lp << 16) | fp) * 0xC2B2AE3D) ^ pf
        h ^= h >> 64
        h ^= h >> 29
        h ^= h >> 13
        return h & self._mask

    def _find(self, key: Key) -> int:
        """Walk the bucket chain for an exact key (no cache, no lock)."""
        w = self.w
        j = self._buckets[self._hash(key)]
        pf, _la, lp, _fa, fp = key
        while j:
            i = j - 1
            b = i << 7
            if (w[b + P_PF] == pf and w[b + P_LPORT] == lp and w[b + P_FPORT] == fp
                    and w[b + P_SFLAGS] & SF_INHASH and self.key_of(i) == key):
                return i
            j = w[b + P_HNEXT]
        return -1

    def lookup_key(self, key: Key) -> int:
        """in_pcblookup: exact 4-tuple first, then the local addr:port listener, then
        the wildcard-address listener. Returns the index or -1. Cached per process:
        any hit must still be in the hash; hits that resolved to a listener are
        forgotten whenever the table's generation changes (an insert or unlink
        anywhere may have made a better match)."""
        gen = self.hq[H_GEN]
        if gen != self._wgen:
            if self._wkeys:
                cache = self._cache
                for k in self._wkeys:
                    cache.pop(k, None)
                self._wkeys.clear()
            self._wgen = gen
        i = self._cache.get(key)
        if i is not None:
            if self.w[i << 7] & SF_INHASH:
                return i
            del self._cache[key]
        i = self._find(key)
        if i >= 0:
            self._cache[key] = i
            return i
        pf, la, lp, _fa, _fp = key
        i = self._find((pf, la, lp, 0, 0))
        if i < 0 and la:
            i = self._find((pf, 0, lp, 0, 0))
        if i >= 0:
            self._cache[key] = i
            self._wkeys.add(key)
        return i

    def lookup_raw_batch(self, pf: int, raws: list[bytes]) -> list[int] | None:
        """lookup_key for every packet of an IPv4 batch, keyed by the 12 bytes of its
        headers as on the wire: source address, destination address, source port,
        destination port (big-endian; the local end is the destination). Returns
        the indices in packet order, or None if some packet finds no socket.

        Results come from a per-process cache keyed by those bytes and kept only
        while the table's generation stays the same (every insert and unlink bumps
        it, and nothing else changes what a lookup finds), so they are exactly
        what lookup_key gives; each distinct key not in it gets one lookup_key.
        """
        gen = self.hq[H_GEN]
        if gen != self._raw_gen or len(self._raw_cache) > 65536:
            self._raw_cache = {}
            self._raw_gen = gen
        fc = self._raw_cache.get(pf)
        if fc is None:
            fc = self._raw_cache[pf] = {}
        out = list(map(fc.get, raws))
        if None in out:
            fb = int.from_bytes
            for r in dict.fromkeys(r for r, i in zip(raws, out) if i is None):
                i = self.lookup_key((pf, fb(r[4:8], "big"), fb(r[10:12], "big"),
                                     fb(r[0:4], "big"), fb(r[8:10], "big")))
                if i < 0:
                    return None
                fc[r] = i
            out = list(map(fc.get, raws))
        return out  # type: ignore[return-value]

    def lookup(self, proto: int, laddr: str | bytes | int, lport: int,
               faddr: str | bytes | int, fport: int) -> int:
        """Lookup by addresses given as text or bytes (see lookup_key for the hot path)."""
        fam, la = addr_int(laddr)
        _, fa = addr_int(faddr)
        return self.lookup_key((pf_of(proto, fam), la, lport, fa, fport))

    def lookup_exact(self, key: Key) -> int:
        return self._find(key)

    # ------------------------------------------------------------- insert
    def insert_key(self, key: Key, *, state: int = 0, sflags: int = 0, user: int | None = None,
                   parent: int = -1, now: int = 0, sb_hiwat: int = 0,
                   snd_hiwat: int = 0,
                   init: Callable[[SocketTable, int], None] | None = None) -> tuple[int, bool]:
        """Lookup-or-insert an exact key under the lock: (index, created); (-1, False) if full.

        `init(table, index)` runs under the lock before the record is linked,
        so no other process can see a half-initialised pcb. A high-water mark
        of 0 means the stack's configured one (StackConfig.sb_hiwat /
        so_snd_hiwat), read by the stages.
        """
        with self._lock:
            i = self._find(key)
            if i >= 0:
                return i, False
            i = int(self.hq[H_NEXT])
            if i >= self.capacity:
                return -1, False
            pf, la, lp, fa, fp = key
            b = i << 7
            self.w[b : b + REC_WORDS] = memoryview(bytes(REC_BYTES)).cast("I")
            o = self.rec_off + i * REC_BYTES
            self.buf[o + 4 * P_LADDR : o + 4 * P_LADDR + 16] = la.to_bytes(16, "big")
            self.buf[o + 4 * P_FADDR : o + 4 * P_FADDR + 16] = fa.to_bytes(16, "big")
            w = self.w
            w[b + P_PF] = pf
            w[b + P_LPORT] = lp
            w[b + P_FPORT] = fp
            w[b + P_STATE] = state
            w[b + P_USER] = (i % int(self.hq[H_NUSERS])) if user is None else user
            w[b + P_PARENT] = parent + 1
            w[b + P_SB_HIWAT] = sb_hiwat
            w[b + P_SND_HIWAT] = snd_hiwat
            self.q[(i << 6) + Q_CREATED] = now
            if init is not None:
                init(self, i)
            h = self._hash(key)
            w[b + P_HNEXT] = self._buckets[h]
            w[b + P_SFLAGS] = sflags | SF_USED | SF_INHASH | (SF_V6 if pf >> 8 == 6 else 0)
            self.hq[H_NEXT] = i + 1
            self._buckets[h] = i + 1  # publish: the record is complete
            self.hq[H_GEN] += 1
            return i, True

    def unlink(self, i: int) -> None:
        """Take a pcb out of the hash (it stays in the table for the report)."""
        key = self.key_of(i)
        with self._lock:
            b = i << 7
            if not self.w[b + P_SFLAGS] & SF_INHASH:
                return
            h = self._hash(key)
            j = self._buckets[h]
            if j == i + 1:
                self._buckets[h] = self.w[b + P_HNEXT]
            else:
                while j:
                    pb = (j - 1) << 7
                    if self.w[pb + P_HNEXT] == i + 1:
                        self.w[pb + P_HNEXT] = self.w[b + P_HNEXT]
                        break
                    j = self.w[pb + P_HNEXT]
            self.w[b + P_SFLAGS] &= ~SF_INHASH
            self.hq[H_GEN] += 1
        self._cache.pop(key, None)

    def listen(self, proto: int, addr: str, port: int, *, user: int | None = None,
               sb_hiwat: int = 0, now: int = 0) -> int:
        """A listening (TCP) or bound (UDP) socket on addr:port, any remote.

        ``addr`` "0.0.0.0" / "::" is the wildcard address. Returns the index.
        """
        fam, a = addr_int(addr)
        i, _ = self.insert_key((pf_of(proto, fam), a, port, 0, 0),
                               state=TCPS_LISTEN if proto == IPPROTO_TCP else 0,
                               sflags=SF_LISTEN, user=user, now=now, sb_hiwat=sb_hiwat)
        if i < 0:
            raise PoolError(f"socket table full ({self.capacity})")
        return i

    def bind_udp(self, addr: str, port: int, *, user: int | None = None,
                 sb_hiwat: int = 0, now: int = 0) -> int:
        """A UDP socket bound to addr:port, receiving from anyone."""
        return self.listen(IPPROTO_UDP, addr, port, user=user, sb_hiwat=sb_hiwat, now=now)

    def connect_udp(self, laddr: str, lport: int, faddr: str, fport: int, *,
                    user: int | None = None, sb_hiwat: int = 0,
                    now: int = 0) -> int:
        """A connected UDP socket (exact 4-tuple; udp_output sends to faddr:fport)."""
        fam, la = addr_int(laddr)
        _, fa = addr_int(faddr)
        i, _ = self.insert_key((pf_of(IPPROTO_UDP, fam), la, lport, fa, fport), user=user,
                               now=now, sb_hiwat=sb_hiwat)
        if i < 0:
            raise PoolError(f"socket table full ({self.capacity})")
        return i

    # ------------------------------------------------------------- report
    def indices(self) -> Iterator[int]:
        return iter(range(int(self.hq[H_NEXT])))

    def info(self, i: int) -> SocketInfo:
        b, qb = i << 7, i << 6
        w, q = self.w, self.q
        pf, la, lp, fa, fp = self.key_of(i)
        proto, fam = pf & 0xFF, pf >> 8
        sf = w[b + P_SFLAGS]
        listener = bool(sf & SF_LISTEN)
        tcp = proto == IPPROTO_TCP
        counters = {"rcvpack": q[qb + Q_RCVPACK], "drops": q[qb + Q_DROPS],
                    "dupbytes": q[qb + Q_DUPBYTES], "oopack": q[qb + Q_OOPACK],
                    "sndpack": q[qb + Q_SNDPACK], "sndbyte": q[qb + Q_SNDBYTE]}
        if tcp and (q[qb + Q_SNDBYTE] or q[qb + Q_SNDBUF_CC]):
            counters.update(sndrexmitpack=q[qb + Q_SNDREXMITPACK],
                            sndrexmitbyte=q[qb + Q_SNDREXMITBYTE], sndacked=q[qb + Q_SND_ACKED],
                            snd_unacked=q[qb + Q_SNDBUF_CC], rexmttimeo=q[qb + Q_RXTCOUNT],
                            fastrexmt=q[qb + Q_FASTREXMT], cwnd=w[b + P_SND_CWND],
                            ssthresh=w[b + P_SND_SSTHRESH])
        return SocketInfo(
            index=i, proto="tcp" if tcp else "udp" if proto == IPPROTO_UDP else str(proto),
            local=endpoint_text(fam, la, lp),
            remote="*:*" if listener else endpoint_text(fam, fa, fp),
            state=state_name(w[b + P_STATE]) if tcp else "",
            user=w[b + P_USER], listener=listener, auto=bool(sf & SF_AUTO),
            bytes_delivered=q[qb + Q_DELIVERED], packets_delivered=q[qb + Q_DELIVERED_PKTS],
            bytes_appended=q[qb + Q_SB_APPENDED], sb_cc=self.sb_cc(i),
            reass_segments=w[b + P_REASS_NSEG], counters=counters)

    def sockets(self) -> list[SocketInfo]:
        """Every socket ever created in this table, in creation order."""
        return [self.info(i) for i in self.indices()]
