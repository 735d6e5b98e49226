"""Compiled batch kernels: numba's ``njit`` with this project's settings.

Why it exists: on this kind of machine a numpy call costs 0.5-2 us whatever
its size, so a batch of 32 packets pushed through a dozen whole-batch numpy
calls spends more in call overhead than in work (docs/BENCHMARKS.md measured
that floor for the pool's batch operations and the fused input path). A
kernel is a plain Python function over numpy arrays -- views of the shared
segments, so it reads and writes the pool in place -- compiled once to
machine code by numba (LLVM) and called once per batch: about half a
microsecond per call, then a few nanoseconds per packet.

Kernels are declared with explicit signatures, so they are compiled (or
loaded from numba's on-disk cache) when their module is imported, not at a
first call in the middle of a run: a role process pays the load at start-up
(about 0.3 s for numba's own initialisation, a few ms per kernel), and a
type mismatch is a TypeError at the call, never a silent recompilation.

The cache lives beside the sources (``__pycache__``) when that is writable,
as with an editable install; otherwise in ``$NUMBA_CACHE_DIR`` if set, else a
per-user folder under the temporary directory. The compose image compiles
every kernel at build time into a read-only ``$NUMBA_CACHE_DIR``, which a
role copies to its own writable folder on first use (numba will not load
from a folder it cannot write).

Every kernel is an exact transcription of a Python path that stays in the
code for the unusual cases; the tests hold the two to identical results.

Two more things live here because kernels over shared memory need them:
`entry` (a kernel's compiled entry point, called without the dispatcher's
type resolution: half the per-call cost, for callers whose arguments are
their own arrays of the declared types) and CPU atomics as numba intrinsics
(`cas32`, `load_acquire`, `store_release`, `cpu_relax`: numba has none for
the CPU), which the segments' spin locks and the descriptor rings use.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])


def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _choose_cache_dir() -> None:
    """Point numba at a cache it can use. numba insists on a writable cache folder
    even to load from it, so a read-only prebuilt one (a container image's, made
    by root at build time and run as another user) is copied once to a per-user
    folder under the temporary directory, and used from there."""
    given = os.environ.get("NUMBA_CACHE_DIR")
    mine = Path(tempfile.gettempdir()) / f"dispatch-emu-numba-{os.getuid()}"
    if given:
        src = Path(given)
        if _writable(src) or not src.is_dir():
            return  # usable as it is (numba creates a missing one)
        if not mine.exists():
            try:
                shutil.copytree(src, mine)
            except OSError:  # (a concurrent copy by a sibling process: use theirs)
                pass
        os.environ["NUMBA_CACHE_DIR"] = str(mine)
        return
    if _writable(Path(__file__).resolve().parent):
        return  # numba writes __pycache__ beside each module
    os.environ["NUMBA_CACHE_DIR"] = str(mine)


_choose_cache_dir()

import platform  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402  (after the cache directory is chosen: numba reads it at import)
from llvmlite import ir  # noqa: E402
from numba import types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

__all__ = ["cas32", "cpu_relax", "entries_by_dtype", "entry", "helper", "load_acquire",
           "store_release", "kernel", "types", "u8_1d", "u16_1d", "u32_1d", "u32_2d", "u64_1d", "u64_2d",
           "i64_1d", "i64_2d", "intp_1d", "intp_2d", "ro_u8_1d", "ro_u32_1d", "ro_intp_1d",
           "ra_intp_1d", "ra_u32_1d"]

#: array types of the kernels' signatures (C-contiguous, writable)
u8_1d = types.uint8[::1]
u16_1d = types.uint16[::1]
u32_1d = types.uint32[::1]
u32_2d = types.uint32[:, ::1]
u64_1d = types.uint64[::1]
u64_2d = types.uint64[:, ::1]
i64_1d = types.int64[::1]
i64_2d = types.int64[:, ::1]
intp_1d = types.intp[::1]
intp_2d = types.intp[:, ::1]
#: read-only ones, for arrays a kernel only reads: writable arrays match them too (at
#: the same call cost), and each signature a kernel has costs its own compile time
ro_u8_1d = types.Array(types.uint8, 1, "C", readonly=True)
ro_u32_1d = types.Array(types.uint32, 1, "C", readonly=True)
ro_intp_1d = types.Array(types.intp, 1, "C", readonly=True)
#: any-layout (strided) read-only handle batches: a caller need not check contiguity
#: (asking numpy costs ~0.2 us here), at a stride multiply per element
ra_intp_1d = types.Array(types.intp, 1, "A", readonly=True)
ra_u32_1d = types.Array(types.uint32, 1, "A", readonly=True)


def kernel(*signatures: Any) -> Callable[[_F], _F]:
    """Compile a function for the given signatures, eagerly, with the on-disk cache.

    No bounds checks (the callers pass handles and offsets that the pool and
    the stages have already validated, as the Python paths index without
    checks through memoryviews) and no GIL needed while it runs."""

    def wrap(fn: _F) -> _F:
        return numba.njit(list(signatures), cache=True, nogil=True,  # type: ignore[no-any-return]
                          boundscheck=False, error_model="numpy")(fn)

    return wrap


def entry(fn: Any, signature: int = 0) -> Callable[..., Any]:
    """The compiled entry point of one of a kernel's signatures, called without the
    dispatcher's type resolution: half the call overhead (about 0.15 us instead of
    0.3 per array argument here), and **no type checks at all** -- an argument of
    another type is reinterpreted, not refused. Only for calls whose every argument
    the caller itself made with the exact declared types (a pool's own views of
    its segment, its own caches), on a hot path."""
    return fn.overloads[fn.signatures[signature]].entry_point  # type: ignore[no-any-return]


def entries_by_dtype(fn: Any, arg: int) -> dict[np.dtype, Callable[..., Any]]:
    """`entry` for each of a kernel's signatures, keyed by the dtype of its argument
    number `arg` (a kernel compiled for intp and for u32 handle batches)."""
    out = {}
    for sig in fn.signatures:
        out[np.dtype(sig[arg].dtype.name)] = fn.overloads[sig].entry_point
    return out


def helper(fn: _F) -> _F:
    """A function called only from kernels (a sequence comparison, a checksum fold):
    compiled as part of each kernel that calls it, for the types it is called with,
    instead of separately for signatures of its own (compile time is paid per
    signature: about 25 s for every kernel on a fresh machine). Callable from
    Python too (compiled lazily on the first such call), as tests do."""
    return numba.njit(nogil=True, boundscheck=False, error_model="numpy")(fn)  # type: ignore[no-any-return]


# -- atomics for kernels over shared memory (numba has none for the CPU: each
# -- emits the LLVM instruction): a lock word's compare-and-swap, a ring index's
# -- acquire / release, and the spin-wait hint

@intrinsic
def cas32(typingctx, arr, idx, expected, desired):  # type: ignore[no-untyped-def]
    """Atomically: if arr[idx] == expected, set it to desired. Returns the old value
    (sequentially consistent: also a compiler and CPU barrier for the section)."""
    sig = types.uint32(arr, idx, expected, desired)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [args[1]])
        exp = context.cast(builder, args[2], signature.args[2], types.uint32)
        new = context.cast(builder, args[3], signature.args[3], types.uint32)
        pair = builder.cmpxchg(ptr, exp, new, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)

    return sig, codegen


#: the LLVM intrinsic of the CPU's spin-wait hint, and its argument (numba's JIT takes no
#: inline assembly)
_PAUSE: tuple[str, list[int]] | None = {
    "x86_64": ("llvm.x86.sse2.pause", []), "AMD64": ("llvm.x86.sse2.pause", []),
    "aarch64": ("llvm.aarch64.hint", [1]), "arm64": ("llvm.aarch64.hint", [1]),
}.get(platform.machine())


@intrinsic
def cpu_relax(typingctx):  # type: ignore[no-untyped-def]
    """The CPU's spin-wait hint (x86 PAUSE, Arm YIELD), or nothing elsewhere."""
    sig = types.void()

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        if _PAUSE:
            name, iargs = _PAUSE
            i32 = ir.IntType(32)
            fty = ir.FunctionType(ir.VoidType(), [i32] * len(iargs))
            fn = cgutils.get_or_insert_function(builder.module, fty, name)
            builder.call(fn, [ir.Constant(i32, a) for a in iargs])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def load_acquire(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """arr[idx] read with acquire ordering: what the writer stored before publishing
    this value (with `store_release`) is visible after it. A plain load on x86-64;
    to the compiler, a fence that later reads cannot move above."""
    sig = arr.dtype(arr, idx)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [args[1]])
        return builder.load_atomic(ptr, "acquire", context.get_abi_sizeof(
            context.get_data_type(aty.dtype)))

    return sig, codegen


@intrinsic
def store_release(typingctx, arr, idx, val):  # type: ignore[no-untyped-def]
    """arr[idx] = val with release ordering: every store before it is visible to a
    reader that sees this one (with `load_acquire`): how a ring publishes an index
    after writing its slots. A plain store on x86-64; to the compiler, a fence."""
    sig = types.void(arr, idx, val)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [args[1]])
        v = context.cast(builder, args[2], signature.args[2], aty.dtype)
        builder.store_atomic(v, ptr, "release", context.get_abi_sizeof(
            context.get_data_type(aty.dtype)))
        return context.get_dummy_value()

    return sig, codegen


@kernel(types.int64(i64_1d))
def _prime(a):  # type: ignore[no-untyped-def]
    return a.shape[0]


# The first call of any compiled function in a process pays a one-time set-up of
# about 10 ms here; pay it at import, not on a run's first packet batch.
_prime(np.zeros(1, dtype=np.int64))
