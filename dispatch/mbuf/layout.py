"""Byte layout of an mbuf and of the pool segment, with FreeBSD's names.

Everything that another process (or another container sharing the IPC
namespace) must agree on to read the pool lives here, as plain constants: the
header word indices, the flag bits, the checksum flags and the zone sizes.

An mbuf is MSIZE = 256 bytes, read as 64 little 32-bit words:

    words 0..7    m_hdr    next, nextpkt, data, len, type, flags, owner, ext
    words 8..17   pkthdr   len, flowid, rsstype, rcvif, csum_flags,
                           csum_data, hdrlens, vtag/tso_segsz, sockid, aux
    words 18..33  pkthdr   eight monotonic-ns timestamps (64-bit, TS_*)
    words 8..63   internal data of a plain mbuf (MLEN = 224 bytes)
    words 34..63  internal data of a packet-header mbuf (MHLEN = 120 bytes)

So, as FreeBSD derives them: MLEN = MSIZE - sizeof(m_hdr) = 256 - 32 = 224
and MHLEN = MLEN - sizeof(pkthdr) = 224 - 104 = 120. (FreeBSD amd64 has
MHLEN = 160; our pkthdr is larger because it carries the per-stage
timestamps that the emulator's latency figures come from, and the socket a
packet was delivered to, so that a handle alone says where it goes next.)

External storage (M_EXT) lives in cluster zones; the `ext` word names the
cluster by its pool-wide id (1-based, zone after zone), so 0 means "no
cluster". One metadata array of (refcount, owner) pairs covers all zones.
`data` is a byte offset from the start of the storage: the mbuf itself for
internal data, the cluster for external data.
"""

from __future__ import annotations

MSIZE = 256
WORDS_PER_MBUF = MSIZE // 4
M_HDR_BYTES = 32
PKTHDR_BYTES = 104
PKTHDR_WORDS_END = (M_HDR_BYTES + PKTHDR_BYTES) // 4  # 34: header words a gethdr sets
MLEN = MSIZE - M_HDR_BYTES
MHLEN = MLEN - PKTHDR_BYTES
M_DAT_OFF = M_HDR_BYTES  # internal data of a plain mbuf
M_PKTDAT_OFF = M_HDR_BYTES + PKTHDR_BYTES  # internal data of a pkthdr mbuf

# m_hdr words
W_NEXT = 0
W_NEXTPKT = 1
W_DATA = 2
W_LEN = 3
W_TYPE = 4
W_FLAGS = 5
W_OWNER = 6  # state << 16 | owner slot
W_EXT = 7  # pool-wide cluster id, 0 if none
# pkthdr words
W_PKTLEN = 8
W_FLOWID = 9
W_RSSTYPE = 10
W_RCVIF = 11
W_CSUM_FLAGS = 12
W_CSUM_DATA = 13
W_HDRLENS = 14  # l2hlen (8 bits) | l3hlen (16 bits) << 8 | l4hlen (8 bits) << 24
W_VTAG = 15  # ether_vtag | tso_segsz << 16
W_SOCKID = 16  # socket-table index + 1 once a socket lookup matched (0: none)
W_AUX = 17  # scratch for the stage that owns the packet (e.g. a next-hop index)
# timestamps: 64-bit words, index in the u64 view = (m << 5) + Q_TS + slot
Q_TS = 9
NTS = 8
TS_WIRE = 0  # the generator's send stamp (from the frame's payload)
TS_DMA = 1  # the NIC's DMA into the cluster
TS_ITHREAD = 2  # the interrupt thread picks the packet up
TS_NETISR_ENQ = 3  # queued to a netisr workstream
TS_NETISR_START = 4  # a netisr worker starts on it
TS_SOCKET = 5  # appended to a socket buffer
TS_USER = 6  # received by a user thread (copyout)
TS_SPARE = 7
TS_NAMES = ("wire", "dma", "ithread", "netisr_enq", "netisr_start", "socket", "user", "spare")

# m_flags (FreeBSD sys/sys/mbuf.h)
M_EXT = 0x00000001
M_PKTHDR = 0x00000002
M_EOR = 0x00000004
M_RDONLY = 0x00000008
M_BCAST = 0x00000010
M_MCAST = 0x00000020
M_PROMISC = 0x00000040
M_VLANTAG = 0x00000080
M_COPYFLAGS = M_PKTHDR | M_EOR | M_RDONLY | M_BCAST | M_MCAST | M_PROMISC | M_VLANTAG

# m_type
MT_NOTMBUF = 0
MT_DATA = 1
MT_HEADER = MT_DATA
MT_SONAME = 8
MT_CONTROL = 14
MT_OOBDATA = 15

# csum_flags, transmit side (what the stack asks the NIC to do)
CSUM_IP = 0x00000001
CSUM_IP_UDP = 0x00000002
CSUM_IP_TCP = 0x00000004
CSUM_IP_SCTP = 0x00000008
CSUM_IP_TSO = 0x00000010
CSUM_IP6_UDP = 0x00000200
CSUM_IP6_TCP = 0x00000400
CSUM_IP6_SCTP = 0x00000800
CSUM_IP6_TSO = 0x00001000
CSUM_TCP = CSUM_IP_TCP
CSUM_UDP = CSUM_IP_UDP
CSUM_TSO = CSUM_IP_TSO | CSUM_IP6_TSO
CSUM_TCP_IPV6 = CSUM_IP6_TCP
CSUM_UDP_IPV6 = CSUM_IP6_UDP
# csum_flags, receive side (what the NIC reports it verified)
CSUM_L3_CALC = 0x01000000
CSUM_L3_VALID = 0x02000000
CSUM_L4_CALC = 0x04000000
CSUM_L4_VALID = 0x08000000
CSUM_L5_CALC = 0x10000000
CSUM_L5_VALID = 0x20000000
CSUM_COALESCED = 0x40000000
CSUM_IP_CHECKED = CSUM_L3_CALC
CSUM_IP_VALID = CSUM_L3_VALID
CSUM_DATA_VALID = CSUM_L4_VALID
CSUM_PSEUDO_HDR = CSUM_L4_CALC

# Buffer states kept in the owner word (state << 16 | owner slot).
ST_FREE = 0  # on the segment's global free stack
ST_CACHED = 1  # in an owner's per-process cache
ST_INUSE = 2  # allocated
OWNER_MASK = 0xFFFF
STATE_SHIFT = 16

# Zones: 0 holds the mbufs themselves, 1..4 the cluster sizes.
ZONE_MBUF = 0
MCLBYTES = 2048
MJUMPAGESIZE = 4096
MJUM9BYTES = 9216
MJUM16BYTES = 16384
CLUSTER_SIZES = (MCLBYTES, MJUMPAGESIZE, MJUM9BYTES, MJUM16BYTES)
ZONE_NAMES = ("mbuf", "mbuf_cluster", "mbuf_jumbo_page", "mbuf_jumbo_9k", "mbuf_jumbo_16k")
NZONES = 1 + len(CLUSTER_SIZES)
MAX_ZONE_ITEMS = (1 << 24) - 1

M_COPYALL = 1_000_000_000  # m_copym's "to the end of the chain"


def zone_for_size(size: int) -> int:
    """The smallest cluster zone (1..4) that holds `size` bytes, else 0."""
    for i, cap in enumerate(CLUSTER_SIZES):
        if size <= cap:
            return i + 1
    return 0
