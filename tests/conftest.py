"""Suite-wide guards: no test may leave a shared-memory segment, a child process, or
a change to the environment that the role processes of later tests inherit.

Every test is checked, so a leak is pinned on the test that caused it.
"""

from __future__ import annotations

import itertools
import os
import time

import psutil
import pytest

SHM = "/dev/shm"
_names = itertools.count()


def _shm_entries() -> set[str]:
    """Segments this test process (or a child it named them for) made.

    Every segment a test creates carries the pytest process's pid in its name
    (the `pool_name` fixture, and the runtime's run ids), so concurrent test
    runs on the same machine never see, or delete, each other's segments.
    """
    tag = f"-{os.getpid()}-"
    try:
        return {n for n in os.listdir(SHM) if tag in n}
    except FileNotFoundError:
        return set()


#: environment variables that steer the processes a test starts (numba's kernel cache,
#: the runtime's timeouts, where live state goes): a test that changes one and leaves
#: it changed alters every later test (a leaked NUMBA_CACHE_DIR once made every later
#: test's roles compile their kernels afresh)
_STEERING = ("NUMBA_", "DISPATCH_", "XDG_RUNTIME_DIR")


def _steering_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_STEERING)}


@pytest.fixture(autouse=True)
def no_leftovers():
    before = _shm_entries()
    env = _steering_env()
    yield
    assert _steering_env() == env, "test left the environment changed: " + \
        str(sorted(set(_steering_env().items()) ^ set(env.items())))
    me = psutil.Process()
    deadline = time.monotonic() + 5.0
    children = me.children(recursive=True)
    while children and time.monotonic() < deadline:
        time.sleep(0.05)
        children = [c for c in me.children(recursive=True) if c.is_running()
                    and c.status() != psutil.STATUS_ZOMBIE]
    for c in children:  # stop them so the next test starts clean, then fail
        c.kill()
    leaked = _shm_entries() - before
    for name in leaked:
        os.unlink(os.path.join(SHM, name))
    assert not children, f"test left child processes: {[c.pid for c in children]}"
    assert not leaked, f"test left shared-memory segments: {sorted(leaked)}"


@pytest.fixture
def pool_name() -> str:
    """A pool name unique to this test run."""
    return f"demu-test-{os.getpid()}-{next(_names)}"


@pytest.fixture
def pool(pool_name: str):
    """A small pool (stage_helpers.SMALL), closed after the test; a test module may
    define its own `pool` fixture instead."""
    from stage_helpers import SMALL

    from dispatch.mbuf import MbufPool

    p = MbufPool.create(pool_name, SMALL)
    yield p
    p.close()
