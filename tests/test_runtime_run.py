"""Real multi-process runs of every dispatch model, held against the inline reference.

These start the roles as OS processes (nic, ithread, netisr, user, trafgen),
drive traffic, drain, and check conservation; the fixtures in conftest.py
make sure every process is gone and no segment is left afterwards.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
from pathlib import Path

import pytest
from shared_paths import CAPTURES  # noqa: E402

from dispatch.packet.frames import build_udp_frame, pad_to_min
from dispatch.runtime.config import ConfigError, RunConfig
from dispatch.runtime.controller import Controller, RunFailed, run_sync
from dispatch.runtime.inline import run_inline
from dispatch.runtime.placement import MODELS
from nicemu.pcap import PcapWriter, read_packets
from nicemu.trafgen.flows import Flow
from nicemu.trafgen.impair import ImpairConfig, Impairer
from nicemu.trafgen.tcpstream import hostless_segments

MODEL_NAMES = list(MODELS)


def small(**kw) -> RunConfig:
    base = dict(count=1500, duration=None, rate=20_000.0, flows=4, batch=32)
    base.update(kw)
    return RunConfig(**base).validate()


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_every_model_delivers_everything_at_light_load(model):
    # light even when the 2 cores are busy with something else: 5 kpps, deep queue
    doc = run_sync(small(model=model, rate=5000.0, qlimit=2048))
    c = doc["conservation"]
    assert c["ok"], c["missing"]
    assert doc["offered"] == 1500 and doc["delivered"] == 1500 and not doc["drops"]
    assert doc["latency_us"]["e2e"]["count"] == 1500
    assert doc["copies"]["copyout_bytes"] == 1500 * 18  # 60-byte frames: 18 bytes of UDP data
    assert doc["copies"]["dma_bytes"] == 1500 * 60
    assert sum(s["packets_delivered"] for s in doc["sockets"]) == 1500
    assert {r for r in doc["roles"]} >= {"nic0", "ithread0", "netisr0", "user0"}
    assert doc["roles"]["user0"]["voluntary_ctxt"] > 0
    ws = doc["netisr"]["workstreams"][0]
    if model in ("deferred", "hybrid"):
        assert ws["handled"] == 1500 and ws["queued"] + ws["hybrid_dispatched"] == 1500
    if model in ("direct", "polling"):
        assert ws["dispatched"] == 1500 and ws["queued"] == 0


def _mixed_capture(path: Path, seed: int = 7) -> list[bytes]:
    """UDP and TCP over several flows, with reordering, duplicates, bad checksums and
    truncated frames: the mixed workload every model must treat exactly as inline does."""
    mac_a, mac_b = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
    frames: list[bytes] = []
    for i in range(3):
        flow = Flow(bytes([10, 0, 1, i + 1]), bytes([10, 0, 0, 1]), 20000 + i, 80 + i,
                    mac_a, mac_b)
        frames += hostless_segments(flow, [100 + 31 * k for k in range(40)], isn=1000 * i)
    for i in range(3):
        for k in range(60):
            frames.append(pad_to_min(build_udp_frame(
                src_ip=f"10.0.2.{i + 1}", dst_ip="10.0.0.1", src_port=30000 + i,
                dst_port=9000 + i, payload=bytes([k % 256]) * (20 + k), src_mac=mac_a,
                dst_mac=mac_b)))
    # interleave the flows deterministically, then impair
    frames = [frames[j] for j in sorted(range(len(frames)), key=lambda j: (j * 7919) % 1009)]
    imp = Impairer(ImpairConfig(reorder=0.05, dup=0.03, badsum=0.03, truncate=0.02),
                   seed=seed)
    frames = imp.apply(frames) + imp.flush()
    with PcapWriter(str(path)) as w:
        for n, f in enumerate(frames):
            w.write(f, timestamp_ns=n * 1000)
    return frames


def _by_socket(sockets: list[dict]) -> dict[tuple[str, str], tuple[int, str | None]]:
    return {(s["local"], s["remote"]): (s["bytes_delivered"], s.get("sha256"))
            for s in sockets if not s["listener"]}


def _replay_cfg(path: Path, model: str, **kw) -> RunConfig:
    # loss-free by construction (a deep queue at a modest rate), so that any
    # difference from the inline reference is a real one
    return RunConfig(model=model, source="trafgen", replay=str(path), duration=None,
                     rate=5000.0, qlimit=4096, sockets_auto=True, digest=True,
                     fixcsum=kw.pop("fixcsum", False), **kw).validate()


def _assert_same_as_inline(doc: dict, ref: dict) -> None:
    assert doc["conservation"]["ok"], doc["conservation"]["missing"]
    assert doc["offered"] == ref["offered"]
    assert _by_socket(doc["sockets"]) == _by_socket(ref["sockets"])
    assert doc["drops"] == ref["drops"]


def test_models_match_inline_on_a_mixed_workload(tmp_path):
    path = tmp_path / "mixed.pcap"
    frames = _mixed_capture(path)
    base = _replay_cfg(path, "direct", netisr=2, users=2)
    ref = run_inline(frames, base)
    assert ref["drops"], "the workload must exercise drop reasons"
    assert sum(s["bytes_delivered"] for s in ref["sockets"]) > 0

    async def go() -> list[dict]:
        docs = []
        async with Controller(base) as ctl:  # one set of roles, re-planned per model
            for model in MODEL_NAMES:
                docs.append(await ctl.run(base.replace(model=model)))
        return docs

    for model, doc in zip(MODEL_NAMES, asyncio.run(go())):
        assert doc["model"] == model
        _assert_same_as_inline(doc, ref)


@pytest.mark.parametrize("capture", sorted(p.name for p in CAPTURES.glob("*.pcap*")))
def test_shared_captures_replay_identically_under_every_model(capture):
    path = CAPTURES / capture
    frames = [r.data for r in read_packets(str(path))]
    from nicemu.trafgen.replay import fix_checksums

    base = _replay_cfg(path, "direct", fixcsum=True, netisr=2)
    ref = run_inline([fix_checksums(f) for f in frames], base)
    assert sum(s["bytes_delivered"] for s in ref["sockets"]) > 0

    async def go() -> list[dict]:
        async with Controller(base) as ctl:
            return [await ctl.run(base.replace(model=m)) for m in MODEL_NAMES]

    for doc in asyncio.run(go()):
        _assert_same_as_inline(doc, ref)


def test_qlimit_overflow_is_exactly_qdrops_and_conservation_holds():
    doc = run_sync(small(model="deferred", count=3000, rate=40_000.0, qlimit=32,
                         netisr_delay_us=100.0))
    c = doc["conservation"]
    assert c["ok"], c["missing"]
    qdrops = doc["drops"]["netisr"]["qdrop"]
    ws = doc["netisr"]["workstreams"][0]
    assert qdrops > 0 and ws["qdrops"] == qdrops
    assert ws["wmark"] <= 32
    assert doc["delivered"] + qdrops + sum(
        n for s, r in doc["drops"].items() if s != "netisr" for n in r.values()) == 3000


def test_a_role_killed_mid_run_is_named_and_everything_is_cleaned_up():
    cfg = RunConfig(model="deferred", duration=20.0, rate=5000.0).validate()

    async def go() -> None:
        async with Controller(cfg) as ctl:
            victim = ctl.pids["netisr0"]

            async def killer() -> None:
                await asyncio.sleep(1.0)
                os.kill(victim, signal.SIGKILL)

            task = asyncio.create_task(killer())
            try:
                await ctl.run()
            finally:
                await task

    with pytest.raises(RunFailed, match=r"netisr0 \(exit status -9\)"):
        asyncio.run(go())


def test_bad_configuration_fails_before_any_process_starts():
    from dispatch.runtime.config import ConfigError

    for kw, msg in ((dict(model="bogus"), "direct, deferred"),
                    (dict(policy="rr"), "source, flow, cpu"),
                    (dict(qlimit=20000), "1 to 10240"),
                    (dict(size="huge"), "--size"),
                    (dict(replay="x.pcap"), "--source trafgen"),
                    (dict(irq_mode="adaptive"), "itr, delay")):
        with pytest.raises(ConfigError, match=msg):
            RunConfig(**kw).validate()


@pytest.mark.parametrize("policy", ["flow", "source", "cpu"])
def test_several_queues_workers_and_users_under_each_policy(policy):
    doc = run_sync(small(model="deferred", rxq=2, netisr=2, users=2, flows=8, policy=policy,
                         cpus=(("user", (0,)),), bindthreads=True, rate=5000.0, qlimit=2048))
    c = doc["conservation"]
    assert c["ok"], c["missing"]
    assert doc["delivered"] == 1500 and not doc["drops"]
    per_q = doc["roles"]["nic0"]["rxq_packets"]
    assert len(per_q) == 2 and all(per_q), "RSS must spread 8 flows over both rx queues"
    handled = [w["handled"] for w in doc["netisr"]["workstreams"]]
    assert sum(handled) == 1500
    if policy in ("source", "cpu"):  # rx queue q -> workstream q
        assert handled == per_q
    else:
        assert all(handled)
    assert doc["roles"]["user0"]["cpus"] == [0] and doc["roles"]["user1"]["cpus"] == [0]
    assert doc["roles"]["netisr1"]["cpus"] == [1]
    assert doc["config"]["cpus"] == {"user": [0]}


def test_the_ithread_can_be_given_a_higher_priority():
    doc = run_sync(small(model="direct", count=300, ithread_prio=True))
    assert doc["conservation"]["ok"]
    r = doc["roles"]["ithread0"]
    # SCHED_FIFO where permitted (root here), else a lower nice value
    assert r["sched"] == "fifo" or r["nice"] < 0


def test_every_role_can_run_under_sched_batch_and_the_ithread_prio_still_wins():
    # light load (as in test_every_model_delivers_everything_at_light_load): under a
    # loaded suite, a SCHED_FIFO ithread at 20 kpps once overran the netisr queue
    doc = run_sync(small(model="deferred", count=300, sched="batch", ithread_prio=True,
                         rate=5000.0, qlimit=2048))
    assert doc["conservation"]["ok"] and doc["delivered"] == 300
    assert doc["config"]["sched"] == "batch"
    for name in ("nic0", "netisr0", "user0"):
        assert doc["roles"][name]["sched"] == "batch", name
    r = doc["roles"]["ithread0"]
    assert r["sched"] == "fifo" or (r["sched"] == "batch" and r["nice"] < 0)


@pytest.mark.parametrize("model", ["deferred", "direct"])
def test_flow_control_keeps_max_rate_within_the_host_queues(model):
    # the internal line at max rate, paced by the host's queues: a short netisr queue
    # (qlimit 64) never overflows, and nothing is lost anywhere
    doc = run_sync(small(model=model, rate=math.inf, count=30_000, qlimit=64,
                         flow_control=True))
    assert doc["conservation"]["ok"], doc["conservation"]
    assert doc["offered"] == doc["delivered"] == 30_000 and not doc["drops"]
    ws = doc["netisr"]["workstreams"][0]
    assert ws["qdrops"] == 0 and ws["wmark"] <= 64
    assert doc["config"]["flow_control"] is True


def test_irq_mode_reaches_the_nic():
    """--irq-mode: a packet every 10 ms with a 3 ms rx-usecs waits the whole 3 ms for
    its interrupt under delay, none under itr (its queue was quiet for longer)."""
    kw = dict(count=30, rate=100.0, flows=1, batch=1, irq_usecs=3000)
    p50 = {}
    for mode in ("delay", "itr"):
        doc = run_sync(small(irq_mode=mode, **kw))
        assert doc["conservation"]["ok"] and doc["delivered"] == 30
        assert doc["config"]["irq_mode"] == mode
        p50[mode] = doc["latency_us"]["dma_to_ithread"]["p50"]
    assert p50["delay"] >= 3000 > p50["itr"], p50


def test_flow_control_is_only_for_the_internal_line_at_max_rate():
    with pytest.raises(ConfigError, match="--flow-control needs --source internal"):
        small(flow_control=True)  # (20 kpps)
    with pytest.raises(ConfigError, match="--flow-control needs --source internal"):
        small(flow_control=True, rate=math.inf, source="trafgen")


def test_the_shared_captures_are_there():
    # the capture tests are parametrised over this folder: an empty glob must not pass
    assert len(list(CAPTURES.glob("*.pcap*"))) == 4, f"no captures under {CAPTURES}"
