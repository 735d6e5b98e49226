"""The pool's POSIX shared-memory segment: creation, attach by name, locks.

Why not `multiprocessing.shared_memory`? On Python < 3.13 every process that
attaches registers the segment with its resource tracker, which unlinks it
when that process exits: a netisr worker ending would destroy the host's pool.
So the segment is a file under /dev/shm opened directly, which is also what
lets containers that share an IPC namespace (and so /dev/shm) attach to it.

The segment starts with a superblock that records the geometry and who made
it (pid and the process start time from /proc/PID/stat, so a recycled pid is
not mistaken for the creator). A creator killed with SIGKILL leaves its
segment behind; the next `create` of the same name finds the creator gone and
removes the stale segment before making a new one, and `remove_stale()` does
the same on demand (`dispatch pool clean`). A segment whose creator is still
alive is never touched: creating it again fails with a clear error.

Cross-process mutual exclusion on the data path (the zone locks, taken once
per cache refill or flush, never per packet) uses spin-lock words in the
superblock page (LOCKS_OFF; spinlock.py says why and how a dead holder's
lock is broken). The owner table, changed only when a process attaches or
leaves, uses an open-file-description lock (F_OFD_SETLKW) on a byte of the
segment file: it belongs to the open file, not the process, so two pools
attached in one process exclude each other too, and the kernel drops it if
the holder dies.
"""

from __future__ import annotations

import atexit
import fcntl
import mmap
import os
import signal
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

SHM_DIR = "/dev/shm"
MAGIC = b"DEMUPOOL"
VERSION = 2  # 2: spin-lock words at LOCKS_OFF replace the zone byte locks
PAGE = 4096

# Superblock: magic, version, creator pid, creator start time, nmbufs and
# the four cluster counts, then per-zone free-stack tops (u32) at TOPS_OFF.
SUPER = struct.Struct("<8sIIQ5I")
TOPS_OFF = 256  # 5 x u32 free-stack tops, one per zone
#: NLOCK_WORDS u32 spin-lock words (spinlock.SpinLock): 0..4 the zones' free stacks, 8..12
#: their shared-cluster refcounts; on the tops' cache line, which a holder touches next
LOCKS_OFF = TOPS_OFF + 32
NLOCK_WORDS = 16
FLOCK = struct.Struct("@hhqqi")
_FLOCK_PAD = b"\0" * 4
LOCK_OWNERS = 64  # OFD lock byte for the owner table


class _Closable(Protocol):
    def close(self) -> None: ...


_LIVE: weakref.WeakSet[_Closable] = weakref.WeakSet()
_HOOKED = False


def _close_live() -> None:
    for obj in list(_LIVE):
        obj.close()


def _on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def close_at_exit(obj: _Closable) -> None:
    """A segment's creator registers here, so that its segment is removed when the
    process exits, also on SIGTERM (turned into SystemExit, which unwinds through
    atexit) and SIGINT (KeyboardInterrupt already does). `forget` undoes it."""
    global _HOOKED
    _LIVE.add(obj)
    if _HOOKED:
        return
    _HOOKED = True
    atexit.register(_close_live)
    try:
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _on_term)
    except ValueError:
        pass  # not the main thread: the owner must close the segment itself


forget: Callable[[_Closable], None] = _LIVE.discard


class PoolError(Exception):
    """A pool cannot be created, attached or used as asked (never a data-path drop)."""


@dataclass(frozen=True, slots=True)
class Superblock:
    version: int
    creator_pid: int
    creator_start: int
    counts: tuple[int, ...]  # nmbufs, n2k, n4k, n9k, n16k


def shm_path(name: str) -> str:
    if not name or "/" in name or name.startswith("."):
        raise PoolError(f"bad pool name {name!r}: use letters, digits, '-', '_' and '.'")
    return os.path.join(SHM_DIR, name)


def process_start_time(pid: int) -> int:
    """Start time of `pid` in clock ticks since boot (0 if no such process)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return 0
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[19])


def process_alive(pid: int, start: int) -> bool:
    return pid > 0 and process_start_time(pid) == start


def read_superblock(fd: int, magic: bytes = MAGIC) -> Superblock | None:
    raw = os.pread(fd, SUPER.size, 0)
    if len(raw) < SUPER.size:
        return None
    found, version, pid, start, *counts = SUPER.unpack(raw)
    if found != magic:
        return None
    return Superblock(version, pid, start, tuple(counts))


def segment_owner_alive(name: str, magic: bytes = MAGIC) -> bool | None:
    """True if `name` exists and its creator lives, False if stale, None if absent."""
    try:
        fd = os.open(shm_path(name), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        sb = read_superblock(fd, magic)
    finally:
        os.close(fd)
    if sb is None:
        return False
    return process_alive(sb.creator_pid, sb.creator_start)


def remove_stale(name: str, magic: bytes = MAGIC) -> bool:
    """Remove segment `name` if its creator is dead. Returns True if removed."""
    if segment_owner_alive(name, magic) is False:
        try:
            os.unlink(shm_path(name))
        except FileNotFoundError:
            return False
        return True
    return False


def create_segment(name: str, size: int, counts: tuple[int, ...],
                   magic: bytes = MAGIC) -> tuple[int, mmap.mmap]:
    """Create the segment file (mode 0600) and map it; stale leftovers are removed.

    `magic` (8 bytes) names the kind of segment (other shared tables reuse
    this); `counts` is up to five geometry numbers recorded for attachers.
    """
    path = shm_path(name)
    remove_stale(name, magic)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise PoolError(
            f"pool {name!r} exists and its creator is alive; "
            f"stop that run first or pick another --pool name"
        ) from None
    try:
        os.fchmod(fd, 0o600)  # the umask must not widen or narrow it
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    pid = os.getpid()
    counts = tuple(counts) + (0,) * (5 - len(counts))
    mm[: SUPER.size] = SUPER.pack(magic, VERSION, pid, process_start_time(pid), *counts)
    return fd, mm


def attach_segment(name: str, magic: bytes = MAGIC) -> tuple[int, mmap.mmap, Superblock]:
    path = shm_path(name)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        raise PoolError(f"no pool named {name!r} (looked for {path})") from None
    except PermissionError:
        raise PoolError(f"pool {name!r} is not ours to open ({path} is mode 0600)") from None
    sb = read_superblock(fd, magic)
    if sb is None:
        os.close(fd)
        raise PoolError(f"{path} is not a dispatch-emu {magic.decode(errors='replace')} "
                        f"segment (bad magic)")
    if sb.version != VERSION:
        os.close(fd)
        raise PoolError(f"pool {name!r} has layout version {sb.version}, we speak {VERSION}")
    size = os.fstat(fd).st_size
    mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    return fd, mm, sb


class OfdLock:
    """An exclusive open-file-description lock on one byte of the segment file."""

    __slots__ = ("_fd", "_lock", "_unlock")

    def __init__(self, fd: int, byte: int) -> None:
        self._fd = fd
        self._lock = FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0) + _FLOCK_PAD
        self._unlock = FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, byte, 1, 0) + _FLOCK_PAD

    def __enter__(self) -> OfdLock:
        fcntl.fcntl(self._fd, fcntl.F_OFD_SETLKW, self._lock)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.fcntl(self._fd, fcntl.F_OFD_SETLKW, self._unlock)
