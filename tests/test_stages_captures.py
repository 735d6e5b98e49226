"""Real captures through the whole inline input path, in auto-sockets mode.

Each capture in ../shared/captures is replayed frame by frame (checksums
recomputed first, as ``tcpreplay --fixcsum`` does) through ether_input ->
ip_input / ip6_input -> tcp_input / udp_input -> soreceive. Every direction
of every TCP conversation must deliver exactly the bytes that an independent
tool says were delivered in order: tshark's follow-stream where tshark is
installed, else a reassembly written here on scapy.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from shared_paths import CAPTURES  # noqa: E402

from dispatch.mbuf import MbufPool, PoolConfig
from dispatch.mbuf import layout as L
from dispatch.packet.checksum import in_cksum, l4_checksum
from dispatch.packet.ipv4 import IPPROTO_TCP, IPPROTO_UDP
from dispatch.packet.ipv6 import parse_ipv6
from dispatch.stages import ether, ip, ip6, socket, tcp_input, udp  # noqa: F401  (register)
from dispatch.stages.base import Ctx, StackConfig, inline_runner
from dispatch.stages.socktab import SocketTable
from dispatch.stages.tcp_reass import tcp_reass_flush
from nicemu.pcap import LINKTYPE_ETHERNET, read_packets

FILES = sorted(p.name for p in CAPTURES.glob("*.pcap*")) if CAPTURES.is_dir() else []
TSHARK = shutil.which("tshark")


def fixcsum(frame: bytes) -> bytes:
    """Recompute the IPv4 header checksum and the TCP/UDP checksum (tcpreplay --fixcsum)."""
    b = bytearray(frame)
    off = 12
    etype = int.from_bytes(b[off : off + 2], "big")
    while etype in (0x8100, 0x88A8):
        off += 4
        etype = int.from_bytes(b[off : off + 2], "big")
    ipo = off + 2
    if etype == 0x0800 and len(b) >= ipo + 20:
        hl = (b[ipo] & 15) * 4
        tot = int.from_bytes(b[ipo + 2 : ipo + 4], "big")
        b[ipo + 10 : ipo + 12] = b"\0\0"
        b[ipo + 10 : ipo + 12] = in_cksum(b[ipo : ipo + hl]).to_bytes(2, "big")
        frag = int.from_bytes(b[ipo + 6 : ipo + 8], "big") & 0x3FFF
        proto, l4, end = b[ipo + 9], ipo + hl, ipo + tot
        src, dst = bytes(b[ipo + 12 : ipo + 16]), bytes(b[ipo + 16 : ipo + 20])
        if frag:
            return bytes(b)
    elif etype == 0x86DD:
        try:
            h = parse_ipv6(bytes(b), ipo)
        except Exception:
            return bytes(b)
        if h.fragment is not None:
            return bytes(b)
        proto, l4, end, src, dst = h.upper_proto, h.l4_offset, h.end, h.src, h.dst
    else:
        return bytes(b)
    if end > len(b):
        return bytes(b)  # cut by the snap length: leave it
    if proto == IPPROTO_TCP and end - l4 >= 20:
        b[l4 + 16 : l4 + 18] = b"\0\0"
        b[l4 + 16 : l4 + 18] = l4_checksum(src, dst, proto, b[l4:end]).to_bytes(2, "big")
    elif proto == IPPROTO_UDP and end - l4 >= 8:
        b[l4 + 6 : l4 + 8] = b"\0\0"
        c = l4_checksum(src, dst, proto, b[l4:end]) or 0xFFFF
        b[l4 + 6 : l4 + 8] = c.to_bytes(2, "big")
    return bytes(b)


def tshark_follow(path: Path) -> dict[tuple[str, str], bytes]:
    """{(from "addr:port", to "addr:port"): bytes delivered in order} for every TCP stream."""
    ids = subprocess.run([TSHARK, "-r", str(path), "-T", "fields", "-e", "tcp.stream"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    streams = sorted({int(x) for x in ids if x.strip()})
    if not streams:
        return {}
    args = [TSHARK, "-r", str(path), "-q"]
    for s in streams:
        args += ["-z", f"follow,tcp,raw,{s}"]
    text = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    out: dict[tuple[str, str], bytes] = {}
    node: dict[int, str] = {}
    chunks: dict[int, list[bytes]] = {0: [], 1: []}

    def flush() -> None:
        if len(node) == 2:
            for k in (0, 1):
                key = (node[k], node[1 - k])
                out[key] = out.get(key, b"") + b"".join(chunks[k])

    in_block = False
    for line in text.splitlines():
        if line.startswith("Follow: tcp"):
            in_block, node, chunks = True, {}, {0: [], 1: []}
        elif line.startswith("====="):
            if in_block and len(node) == 2:
                flush()
                in_block = False
                node = {}
        elif in_block and line.startswith("Node 0: "):
            node[0] = line[8:].strip()
        elif in_block and line.startswith("Node 1: "):
            node[1] = line[8:].strip()
        elif in_block and len(node) == 2 and line.strip():
            k = 1 if line.startswith("\t") else 0
            chunks[k].append(bytes.fromhex(line.strip()))
    return out


def scapy_follow(frames: list[bytes]) -> dict[tuple[str, str], bytes]:
    """An independent in-order reassembly: the first sequence number seen starts each
    direction (or the SYN's + 1); bytes are taken first-come at their offset, and only
    the run contiguous from the start counts."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    base: dict[tuple[str, str], int] = {}
    got: dict[tuple[str, str], dict[int, int]] = {}
    for f in frames:
        p = Ether(f)
        if TCP not in p:
            continue
        ipl = p[IP] if IP in p else p[IPv6]
        t = p[TCP]
        fmt = "[{}]:{}" if IPv6 in p and IP not in p else "{}:{}"
        k = (fmt.format(ipl.src, t.sport), fmt.format(ipl.dst, t.dport))
        seq = t.seq
        if k not in base:
            base[k] = seq + 1 if "S" in t.flags else seq
        elif "S" in t.flags:
            continue
        data = bytes(t.payload)
        if isinstance(ipl, IP):
            data = data[: max(0, ipl.len - ipl.ihl * 4 - t.dataofs * 4)]
        rel = (seq - base[k]) & 0xFFFFFFFF
        if rel >= 0x80000000:
            continue
        d = got.setdefault(k, {})
        for j, byte in enumerate(data):
            d.setdefault(rel + j, byte)
    out = {}
    for k, d in got.items():
        n = 0
        while n in d:
            n += 1
        out[k] = bytes(d[j] for j in range(n))
    return out


@pytest.fixture
def host(pool_name: str) -> Iterator[tuple[Ctx, SocketTable]]:
    pool = MbufPool.create(pool_name, PoolConfig(nmbufs=4096, nclusters=2048, njumbop=64,
                                                 njumbo9=16, njumbo16=8))
    tab = SocketTable.create(None, 256)
    ctx = Ctx(pool, config=StackConfig(auto_sockets=True, digest=True), sockets=tab)
    yield ctx, tab
    for i in tab.indices():
        tcp_reass_flush(ctx, tab, i)
    tab.close()
    audit = pool.audit()
    pool.close()
    assert audit.whole, audit


def replay(ctx: Ctx, frames: list[bytes], *, batch: int) -> None:
    pool = ctx.pool
    runner = inline_runner(ctx)
    ms: list[int] = []
    for n, f in enumerate(frames):
        m = pool.getcl(len(f)) if len(f) > L.MHLEN else pool.gethdr()
        assert m and pool.append(m, f)
        ms.append(m)
        if len(ms) == batch or n == len(frames) - 1:
            out = runner.run("ether_input", ms, now=1_000_000 * (n + 1))
            for hs in out.values():  # nothing should leave in auto mode, but never leak
                pool.freem_batch(hs)
            assert not out, out
            ms = []


@pytest.mark.skipif(not FILES, reason="no captures")
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("batch", [1, 32])
def test_capture_delivers_what_tshark_follows(host: tuple[Ctx, SocketTable], name: str,
                                              batch: int) -> None:
    ctx, tab = host
    path = CAPTURES / name
    recs = [r for r in read_packets(path) if r.linktype == LINKTYPE_ETHERNET]
    frames = [fixcsum(r.data) for r in recs]
    replay(ctx, frames, batch=batch)
    want = tshark_follow(path) if TSHARK else scapy_follow(frames)
    assert want, "the reference found no TCP data"
    got_bytes: dict[tuple[str, str], int] = {}
    got_digest: dict[tuple[str, str], str] = {}
    digests = socket.socket_digests(ctx)
    empty = hashlib.sha256().hexdigest()
    for s in tab.sockets():
        if s.proto != "tcp":
            continue
        k = (s.remote, s.local)
        got_bytes[k] = got_bytes.get(k, 0) + s.bytes_delivered
        got_digest[k] = digests.get(s.index, empty) if k not in got_digest else "several"
    for k, data in want.items():
        assert got_bytes.get(k, 0) == len(data), (k, got_bytes.get(k), len(data))
        if data:
            assert got_digest[k] == hashlib.sha256(data).hexdigest(), k
    # nothing delivered that the reference does not know about
    assert {k for k, n in got_bytes.items() if n} <= {k for k, d in want.items() if d}


@pytest.mark.skipif(not FILES or not TSHARK, reason="needs the captures and tshark")
def test_scapy_reference_agrees_with_tshark() -> None:
    """The fallback reference is itself checked against tshark where both exist."""
    for name in FILES:
        path = CAPTURES / name
        frames = [fixcsum(r.data) for r in read_packets(path)
                  if r.linktype == LINKTYPE_ETHERNET]
        t = {k: v for k, v in tshark_follow(path).items() if v}
        s = {k: v for k, v in scapy_follow(frames).items() if v}
        assert t == s, name
