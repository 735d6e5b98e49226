"""netstat views: the emulator's counters in the layouts FreeBSD users know.

Each function takes plain figures (a live pool's stats, or the parts of a
result document) and returns the text `netstat` would print, so the same
view serves a live pool, a running experiment and a finished run.
"""

from __future__ import annotations

from dispatch.mbuf.pool import PoolStats


def _k(n: int) -> str:
    return f"{n // 1024}K"


def format_mbuf(stats: PoolStats) -> str:
    """`netstat -m`. Zones are preallocated, so total equals max; nothing is delayed
    (every allocation is M_NOWAIT: it succeeds or is denied and counted)."""
    z = stats.zones
    mb, cl, j4, j9, j16 = z
    lines = [
        f"{mb.current}/{mb.cache}/{mb.total} mbufs in use (current/cache/total)",
        f"{cl.current}/{cl.cache}/{cl.total}/{cl.total} mbuf clusters in use "
        f"(current/cache/total/max)",
        f"{j4.current}/{j4.cache}/{j4.total}/{j4.total} 4k (page size) jumbo clusters in use "
        f"(current/cache/total/max)",
        f"{j9.current}/{j9.cache}/{j9.total}/{j9.total} 9k jumbo clusters in use "
        f"(current/cache/total/max)",
        f"{j16.current}/{j16.cache}/{j16.total}/{j16.total} 16k jumbo clusters in use "
        f"(current/cache/total/max)",
        f"{_k(stats.bytes_current)}/{_k(stats.bytes_cache)}/"
        f"{_k(stats.bytes_current + stats.bytes_cache)} bytes allocated to network "
        f"(current/cache/total)",
        f"{mb.denied}/{cl.denied}/{stats.getcl_denied} requests for mbufs denied "
        f"(mbufs/clusters/mbuf+clusters)",
        "0/0/0 requests for mbufs delayed (mbufs/clusters/mbuf+clusters)",
        "0/0/0 requests for jumbo clusters delayed (4k/9k/16k)",
        f"{j4.denied}/{j9.denied}/{j16.denied} requests for jumbo clusters denied "
        f"(4k/9k/16k)",
    ]
    return "\n".join(lines)
