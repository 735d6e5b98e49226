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
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
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
