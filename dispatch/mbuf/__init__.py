"""The mbuf pool: where a packet's bytes live while the stack works on it.

A kernel moves packets by pointer. This package makes that possible between
OS processes: one POSIX shared-memory segment per emulated host holds
FreeBSD-shaped mbufs (MSIZE = 256 bytes, MLEN = 224, MHLEN = 120) and cluster
zones of 2k, 4k, 9k and 16k, and processes hand each other small integer
handles. A received packet's bytes are written twice, by the NIC's DMA and by
the socket layer's copyout; everything between moves a handle.

`layout` fixes the byte layout and FreeBSD's names, `segment` makes and finds
the segment by name (so containers sharing an IPC namespace can attach), and
`pool` implements the mbuf operations with per-process caches, owner tags,
reclaim and audit, and the `netstat -m` figures.
"""

from .layout import MCLBYTES, MHLEN, MLEN, MSIZE
from .pool import MbufPool, MbufQueue, PoolAudit, PoolConfig, PoolStats
from .segment import PoolError, remove_stale

__all__ = ["MCLBYTES", "MHLEN", "MLEN", "MSIZE", "MbufPool", "MbufQueue", "PoolAudit",
           "PoolConfig", "PoolError", "PoolStats", "remove_stale"]
