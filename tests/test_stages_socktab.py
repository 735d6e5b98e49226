"""The socket table: in_pcblookup semantics, per-process caches, shared memory by name."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from dispatch.mbuf.segment import PoolError
from dispatch.stages.socktab import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    P_STATE,
    Q_DELIVERED,
    Q_SB_APPENDED,
    Q_SB_REMOVED,
    SocketTable,
    pf_of,
)
from dispatch.stages.tcp_var import TCPS_ESTABLISHED


def key(proto: int, la: int, lp: int, fa: int, fp: int, fam: int = 4) -> tuple:
    return (pf_of(proto, fam), la, lp, fa, fp)


def test_lookup_exact_then_local_then_wildcard() -> None:
    with SocketTable.create(None, 16) as t:
        any_l = t.listen(IPPROTO_TCP, "0.0.0.0", 80)
        assert t.lookup(IPPROTO_TCP, "10.0.0.1", 80, "1.2.3.4", 5) == any_l
        bound = t.listen(IPPROTO_TCP, "10.0.0.1", 80)  # more specific: wins from now on
        assert t.lookup(IPPROTO_TCP, "10.0.0.1", 80, "1.2.3.4", 5) == bound
        assert t.lookup(IPPROTO_TCP, "10.0.0.2", 80, "1.2.3.4", 5) == any_l
        k = key(IPPROTO_TCP, 0x0A000001, 80, 0x01020304, 5)
        conn, created = t.insert_key(k, state=TCPS_ESTABLISHED)
        assert created and t.lookup_key(k) == conn
        assert t.insert_key(k) == (conn, False)  # lookup-or-insert
        assert t.lookup(IPPROTO_UDP, "10.0.0.1", 80, "1.2.3.4", 5) == -1  # other protocol
        assert t.lookup(IPPROTO_TCP, "fd00::1", 80, "::1", 5) == -1  # other family
        t.unlink(conn)
        assert t.lookup_key(k) == bound
        info = t.info(conn)
        assert info.local == "10.0.0.1:80" and info.remote == "1.2.3.4:5"
        assert info.state == "ESTABLISHED" and not info.listener
        assert [s.index for s in t.sockets()] == [any_l, bound, conn]


def test_ipv6_and_capacity() -> None:
    with SocketTable.create(None, 3, nusers=2) as t:
        a = t.bind_udp("::", 53)
        b = t.connect_udp("fd00::1", 53, "2001:db8::9", 1000)
        assert t.lookup(IPPROTO_UDP, "fd00::1", 53, "2001:db8::9", 1000) == b
        assert t.lookup(IPPROTO_UDP, "fd00::1", 53, "2001:db8::9", 1001) == a
        assert t.info(b).local == "[fd00::1]:53" and t.info(b).remote == "[2001:db8::9]:1000"
        assert [t.user_of(i) for i in (a, b)] == [0, 1]
        t.bind_udp("0.0.0.0", 1)
        assert t.insert_key(key(IPPROTO_UDP, 1, 2, 3, 4)) == (-1, False)
        with pytest.raises(PoolError, match="full"):
            t.bind_udp("0.0.0.0", 2)


def test_many_sockets_hash_chains() -> None:
    with SocketTable.create(None, 2000) as t:
        ks = [key(IPPROTO_TCP, 0x0A000001, 80, 0x0B000000 + n, 1024 + n % 7) for n in range(2000)]
        idx = [t.insert_key(k)[0] for k in ks]
        assert idx == list(range(2000))
        other = SocketTable.__new__(SocketTable)  # a second view: no cache at all
        other.__dict__.update(t.__dict__)
        other._cache, other._wkeys, other._wgen = {}, set(), -1
        assert [other.lookup_key(k) for k in ks] == idx
        for i in range(0, 2000, 3):
            t.unlink(i)
        assert [t.lookup_key(k) for k in ks[:6]] == [-1, 1, 2, -1, 4, 5]


def test_receive_buffer_counters() -> None:
    with SocketTable.create(None, 4) as t:
        i = t.bind_udp("0.0.0.0", 9, sb_hiwat=1000)
        t.qadd(i, Q_SB_APPENDED, 700)
        t.qadd(i, Q_SB_REMOVED, 200)
        assert t.sb_cc(i) == 500 and t.sbspace(i) == 500


CHILD = textwrap.dedent("""
    import sys
    from dispatch.stages.socktab import SocketTable, IPPROTO_TCP, Q_SB_REMOVED, Q_DELIVERED
    t = SocketTable.attach(sys.argv[1])
    socks = t.sockets()
    print(len(socks), socks[1].local, socks[1].remote, socks[1].state, socks[1].bytes_appended)
    i = t.lookup(IPPROTO_TCP, "10.0.0.1", 80, "192.0.2.1", 4000)
    t.qadd(i, Q_SB_REMOVED, 1500)      # the consumer's side, written by the other process
    t.qadd(i, Q_DELIVERED, 1500)
    j = t.listen(IPPROTO_TCP, "0.0.0.0", 443)
    print(i, j, t.generation)
    t.close()
""")


def test_second_process_sees_and_writes(pool_name: str) -> None:
    name = pool_name + "-socks"
    t = SocketTable.create(name, 64)
    try:
        assert os.path.exists(f"/dev/shm/{name}")
        t.listen(IPPROTO_TCP, "0.0.0.0", 80)
        k = key(IPPROTO_TCP, 0x0A000001, 80, 0xC0000201, 4000)
        i, _ = t.insert_key(k)
        t.set(i, P_STATE, TCPS_ESTABLISHED)
        t.qadd(i, Q_SB_APPENDED, 2000)
        gen = t.generation
        child = subprocess.Popen([sys.executable, "-c", CHILD, name], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            out, err = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                os.kill(child.pid, 9)
                child.wait()
        assert child.returncode == 0, err
        line1, line2 = out.splitlines()
        assert line1 == "2 10.0.0.1:80 192.0.2.1:4000 ESTABLISHED 2000"
        assert line2.split()[:2] == [str(i), "2"] and int(line2.split()[2]) == gen + 1
        assert t.sb_cc(i) == 500 and t.qget(i, Q_DELIVERED) == 1500
        # the child's insert is visible here, and its generation bump drops our wildcard cache
        assert t.lookup(IPPROTO_TCP, "10.0.0.1", 443, "1.1.1.1", 1) == 2
        with pytest.raises(PoolError):
            SocketTable.create(name, 8)  # the creator is alive: never clobbered
    finally:
        t.close()
    assert not os.path.exists(f"/dev/shm/{name}")


def test_attach_rejects_other_segments(pool_name: str) -> None:
    from dispatch.mbuf import MbufPool, PoolConfig

    with MbufPool.create(pool_name, PoolConfig(nmbufs=8, nclusters=0, njumbop=0, njumbo9=0,
                                               njumbo16=0)):
        with pytest.raises(PoolError, match="bad magic"):
            SocketTable.attach(pool_name)
    with pytest.raises(PoolError, match="no pool named"):
        SocketTable.attach(pool_name + "-nothing")
