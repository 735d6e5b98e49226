"""Tests for dispatch.jit: where the compiled kernels' cache goes, and that a
kernel is compiled for exactly its signatures."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dispatch import jit


def test_a_read_only_prebuilt_cache_is_copied_to_a_writable_folder(tmp_path, monkeypatch):
    """A container image's cache (compiled by root at build time) is read-only to
    the role's user, and numba will not load from a folder it cannot write."""
    ro = tmp_path / "prebuilt"
    (ro / "mbuf_x").mkdir(parents=True)
    (ro / "mbuf_x" / "kernels.getcl_take-1.py311.nbi").write_bytes(b"index")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(ro))
    monkeypatch.setattr(jit, "_writable", lambda p: p != ro)
    monkeypatch.setattr(jit.tempfile, "gettempdir", lambda: str(tmp_path))
    jit._choose_cache_dir()
    mine = tmp_path / f"dispatch-emu-numba-{os.getuid()}"
    assert os.environ["NUMBA_CACHE_DIR"] == str(mine)
    assert (mine / "mbuf_x" / "kernels.getcl_take-1.py311.nbi").read_bytes() == b"index"


def test_a_writable_or_missing_cache_folder_is_used_as_given(tmp_path, monkeypatch):
    for given in (tmp_path, tmp_path / "not-yet"):
        monkeypatch.setenv("NUMBA_CACHE_DIR", str(given))
        jit._choose_cache_dir()
        assert os.environ["NUMBA_CACHE_DIR"] == str(given)


def test_no_folder_given_and_a_read_only_package_uses_a_per_user_temp_folder(tmp_path,
                                                                             monkeypatch):
    # (set, then deleted: so that the teardown also removes what the call under test
    # sets; a bare delenv of an absent variable records nothing, and the temporary
    # folder then leaked into every later test's role processes, which compiled all
    # their kernels afresh into it: ~40 s of the suite)
    monkeypatch.setenv("NUMBA_CACHE_DIR", "")
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setattr(jit, "_writable", lambda p: False)
    monkeypatch.setattr(jit.tempfile, "gettempdir", lambda: str(tmp_path))
    jit._choose_cache_dir()
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / f"dispatch-emu-numba-{os.getuid()}")


def test_a_kernel_takes_its_signatures_and_refuses_other_types():
    @jit.kernel(jit.types.int64(jit.i64_1d, jit.types.int64))
    def add_first(a, x):  # type: ignore[no-untyped-def]
        return a[0] + x

    assert add_first(np.array([40], np.int64), 2) == 42
    with pytest.raises(TypeError):
        add_first(np.array([40.0]), 2)  # float64 is not a declared signature


@jit.kernel(jit.types.uint32(jit.u32_1d, jit.types.int64, jit.types.uint32, jit.types.uint32))
def _cas(words, i, exp, new):  # type: ignore[no-untyped-def]
    return jit.cas32(words, i, exp, new)


@jit.kernel(jit.types.uint64(jit.u64_1d, jit.types.int64, jit.types.uint64))
def _publish_then_read(idx, i, v):  # type: ignore[no-untyped-def]
    jit.store_release(idx, i, v)
    jit.cpu_relax()
    return jit.load_acquire(idx, i)


def test_cas32_swaps_only_on_the_expected_value_and_returns_the_old_one():
    w = np.array([0, 7], np.uint32)
    assert _cas(w, 1, 0, 9) == 7 and w[1] == 7  # not expected: unchanged
    assert _cas(w, 1, 7, 9) == 7 and w[1] == 9  # expected: swapped
    assert _cas(w, 0, 0, 0xFFFFFFFF) == 0 and w[0] == 0xFFFFFFFF


def test_release_store_and_acquire_load_round_trip():
    idx = np.zeros(4, np.uint64)
    assert _publish_then_read(idx, 2, 1 << 40) == 1 << 40 and idx[2] == 1 << 40


def test_entry_points_skip_type_resolution_for_exact_arguments():
    w = np.array([3], np.uint32)
    fast = jit.entry(_cas)
    assert fast(w, 0, 3, 4) == 3 and w[0] == 4
    from dispatch.mbuf import kernels as K

    by = jit.entries_by_dtype(K.freem_fast, 3)
    assert set(by) == {np.dtype(np.intp), np.dtype(np.uint32)}
