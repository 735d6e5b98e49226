"""The tx, rr and forward workloads end to end, as real processes.

Each runs under direct and deferred input dispatch and both transmit
dispatch settings, and must pass both halves of conservation: the receive
equation and the transmit one (`egress`): every packet handed to the driver
left on the wire or was dropped with a reason, and the generator received
what the NIC sent. Forwarded frames are checked independently with scapy
(TTL decremented, IPv4 header checksum valid) from the generator's capture.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.runtime.config import ConfigError, RunConfig
from dispatch.runtime.controller import run_sync
from nicemu.pcap import PcapWriter

INPUT = ["direct", "deferred"]
TXD = ["direct", "deferred"]


def cfg(**kw) -> RunConfig:
    base = dict(source="trafgen", duration=None, rate=3000.0, flows=4, batch=32, count=600)
    base.update(kw)
    return RunConfig(**base).validate()


def ok(doc: dict) -> None:
    c = doc["conservation"]
    assert c["ok"], c["missing"]
    assert c["pool_whole"] and c["in_flight"]["rings"] == 0


@pytest.mark.parametrize("model", INPUT)
@pytest.mark.parametrize("txd", TXD)
def test_forward_routes_every_frame_out_of_the_second_port(model, txd, tmp_path):
    doc = run_sync(cfg(model=model, tx_dispatch=txd, workload="forward",
                       capture=str(tmp_path)))
    ok(doc)
    e = doc["egress"]
    assert doc["counters"]["ip.ips_forward"] == 600
    assert e["received_by_generator"] == 600 == e["to_driver"] == e["frames_on_wire"]
    assert doc["delivered"] == 0 and not doc["drops"]
    assert e["figures"]["latency_us"]["count"] == 600
    assert e["generator"]["ttl"] == {"63": 600}
    assert e["generator"]["bad_ip_csum"] == e["generator"]["bad_udp_csum"] == 0
    if txd == "deferred":
        assert doc["roles"]["txthread0"]["packets"] == 600
    # an independent check of what arrived: scapy recomputes the header checksum
    from scapy.all import IP, UDP, Ether, rdpcap

    pkts = rdpcap(str(tmp_path / "trafgen-port1.pcap"))
    assert len(pkts) == 600
    for p in pkts[:50]:
        ip = p[IP]
        assert ip.ttl == 63 and ip.dst.startswith("10.2.")
        assert p[Ether].src == "02:00:00:00:01:02" and p[Ether].dst == "02:00:00:00:01:01"
        # scapy recomputes both checksums from scratch: they must equal what arrived
        again = Ether(bytes(p))
        del again[IP].chksum
        del again[UDP].chksum
        again = Ether(bytes(again))
        assert again[IP].chksum == ip.chksum
        assert again[UDP].chksum == p[UDP].chksum


def _forward_capture(path: Path) -> None:
    from dispatch.packet.frames import build_udp_frame, pad_to_min

    mac_a, mac_b = "02:00:00:00:00:01", "02:00:00:00:00:02"
    frames = []
    for k in range(90):
        kind = k % 3
        dst = {0: "10.2.1.1", 1: "10.2.1.2", 2: "10.9.9.9"}[kind]
        f = bytearray(pad_to_min(build_udp_frame(
            src_ip="10.0.1.1", dst_ip=dst, src_port=4000, dst_port=5001, payload=bytes(40),
            src_mac=mac_a, dst_mac=mac_b)))
        if kind == 1:  # TTL 1: expires here
            f[14 + 8] = 1
            f[14 + 10: 14 + 12] = b"\0\0"
            from dispatch.packet.checksum import ones_sum

            c = ~ones_sum(bytes(f[14:34])) & 0xFFFF
            f[14 + 10: 14 + 12] = c.to_bytes(2, "big")
        frames.append(bytes(f))
    with PcapWriter(str(path)) as w:
        for n, fr in enumerate(frames):
            w.write(fr, timestamp_ns=n * 1000)


@pytest.mark.parametrize("model", INPUT)
def test_forward_counts_ttl_expiry_and_no_route(model, tmp_path):
    cap = tmp_path / "fwd.pcap"
    _forward_capture(cap)
    doc = run_sync(cfg(model=model, workload="forward", replay=str(cap), count=None,
                       rate=5000.0))
    ok(doc)
    assert doc["offered"] == 90
    assert doc["drops"] == {"ip_forward": {"timxceed": 30, "noroute": 30}}
    assert doc["egress"]["received_by_generator"] == 30


@pytest.mark.parametrize("model", INPUT)
@pytest.mark.parametrize("txd", TXD)
def test_udp_tx_every_datagram_reaches_the_generator(model, txd):
    doc = run_sync(cfg(model=model, tx_dispatch=txd, workload="tx", msg_size=200,
                       count=800, users=2))
    ok(doc)
    e = doc["egress"]
    assert e["app_sent"] == 800 == e["received_by_generator"]
    assert e["generator"]["bad_ip_csum"] == e["generator"]["bad_udp_csum"] == 0
    assert doc["copies"]["copyin_bytes"] == 800 * 200
    assert e["generator"]["latency_us"]["count"] == 800
    assert e["generator"]["flows"] == 4
    assert e["figures"]["goodput_bps"] > 0
    if txd == "deferred":
        assert doc["roles"]["txthread0"]["packets"] == 800


@pytest.mark.parametrize("txcsum", [True, False])
def test_udp_tx_checksums_are_the_nics_work_with_txcsum_and_the_stacks_without(txcsum):
    # with txcsum the output path leaves both checksums to the NIC (if_hwassist);
    # without, the stack computes them; either way the generator verifies them
    doc = run_sync(cfg(model="direct", workload="tx", msg_size=300, count=300,
                       txcsum=txcsum))
    ok(doc)
    g = doc["egress"]["generator"]
    assert g["frames"] == 300 and g["bad_ip_csum"] == 0 and g["bad_udp_csum"] == 0
    assert doc["counters"]["nic.tx_csum"] == (2 * 300 if txcsum else 0)  # IP and UDP


def test_udp_tx_a_full_driver_queue_drops_and_counts():
    # a driver queue of 4 packets, senders at full speed: drops at the handoff, counted,
    # and the transmit equation still closes
    doc = run_sync(cfg(model="direct", tx_dispatch="deferred", txq_limit=4, workload="tx",
                       rate=float("inf"), count=3000, msg_size=64, batch=64))
    ok(doc)
    e = doc["egress"]
    drops = doc["drops"].get("if_transmit", {})
    assert e["app_sent"] == 3000 == e["received_by_generator"] + sum(drops.values())
    assert drops.get("ifq_full", 0) > 0


@pytest.mark.parametrize("model", INPUT)
@pytest.mark.parametrize("txd", TXD)
def test_udp_rr_every_request_answered_one_for_one(model, txd):
    doc = run_sync(cfg(model=model, tx_dispatch=txd, workload="rr", count=400, rr="32:100"))
    ok(doc)
    rr = doc["egress"]["rr"]
    assert rr["transactions"] == 400 == rr["answered"] and rr["timeouts"] == 0
    assert doc["delivered"] == 400
    f = doc["egress"]["figures"]
    assert f["transactions"] == 400 and f["rtt_us"]["p50"] > 0
    assert doc["copies"]["copyin_bytes"] == 400 * 100


def test_workload_configuration_errors_name_the_valid_choices():
    with pytest.raises(ConfigError, match="one of rx, tx, rr, forward"):
        RunConfig(workload="bogus", source="trafgen").validate()
    with pytest.raises(ConfigError, match="needs --source trafgen"):
        RunConfig(workload="tx").validate()
    with pytest.raises(ConfigError, match="one of direct, deferred"):
        RunConfig(tx_dispatch="later").validate()
    with pytest.raises(ConfigError, match="--rr"):
        RunConfig(workload="rr", source="trafgen", rr="big").validate()
    with pytest.raises(ConfigError, match="toe"):
        RunConfig(workload="rr", source="trafgen", model="toe").validate()


@pytest.mark.parametrize("model,txd", [("direct", "direct"), ("deferred", "deferred"),
                                       ("hybrid", "direct")])
def test_tcp_tx_with_loss_and_reordering_delivers_every_byte_in_order(model, txd):
    # the host connects to the generator's receiver and sends; the wire from the host
    # loses, reorders and duplicates frames: the sender must retransmit until every
    # byte has arrived in order (sha256 of what was written == of what arrived)
    doc = run_sync(cfg(model=model, tx_dispatch=txd, workload="tx", proto="tcp",
                       count=400, rate=2000.0, msg_size=1448,
                       impair="loss=0.03,reorder=0.03,dup=0.01"))
    ok(doc)
    tcp = doc["egress"]["tcp"]
    assert len(tcp["streams"]) == 4
    for s in tcp["streams"]:
        assert s["ok"] and s["digest_equal"] and s["acked"]
        assert s["received"] == s["written"] == 100 * 1448
    imp = doc["egress"]["wire_impairments"]
    assert imp["loss"] > 0 and imp["reorder"] > 0
    c = doc["counters"]
    assert c["tcp.tcps_sndrexmitpack"] > 0  # what the wire lost was sent again
    assert c["tcp.tcps_connattempt"] == 4


def test_tcp_tx_with_tso_and_txcsum_moves_segmentation_to_the_nic():
    doc = run_sync(cfg(model="direct", workload="tx", proto="tcp", count=200, rate=2000.0,
                       msg_size=8000, tso=True, txcsum=True))
    ok(doc)
    c = doc["counters"]
    assert c["nic.tso_packets"] > 0 and c["nic.tso_segments"] > c["nic.tso_packets"]
    for s in doc["egress"]["tcp"]["streams"]:
        assert s["ok"] and s["written"] == 50 * 8000
    e = doc["egress"]
    assert e["frames_on_wire"] > e["transmitted_chains"]  # one chain became many frames


@pytest.mark.parametrize("model", INPUT)
def test_tcp_rr_transactions_are_answered(model):
    doc = run_sync(cfg(model=model, workload="rr", proto="tcp", count=300, rr="64:200"))
    ok(doc)
    rr = doc["egress"]["rr"]
    assert rr["transactions"] == 300 and rr["timeouts"] == 0
    assert rr["answered"] == 300
    assert doc["copies"]["copyin_bytes"] == 300 * 200


def test_cli_runs_a_workload_and_refuses_a_bad_one(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "rr.json"
    r = subprocess.run([sys.executable, "-m", "dispatch.cli", "run", "--workload", "rr",
                        "--count", "100", "--rate", "2k", "--quiet", "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["workload"] == "rr" and doc["config"]["source"] == "trafgen"
    assert doc["egress"]["rr"]["transactions"] == 100
    r = subprocess.run([sys.executable, "-m", "dispatch.cli", "run", "--workload", "tx",
                        "--source", "internal"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "needs --source trafgen" in r.stderr
    r = subprocess.run([sys.executable, "-m", "dispatch.cli", "run", "--workload", "tx",
                        "--impair", "lose=0.1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "loss" in r.stderr


@pytest.mark.parametrize("workload,proto", [("rx", "tcp"), ("forward", "udp")])
def test_several_generators_share_the_load_and_get_their_own_replies(workload, proto):
    # two generators, each with half the flows, rate and count; what the host sends
    # back (TCP handshakes, forwarded frames) must reach the generator of its flow
    doc = run_sync(cfg(workload=workload, proto=proto, trafgens=2, count=1000, rate=4000.0))
    ok(doc)
    per = doc["source"]["per_source"]
    assert len(per) == 2 and all(p["offered"] > 0 for p in per)
    assert {n for n in doc["roles"] if n.startswith("trafgen")} == {"trafgen0", "trafgen1"}
    if workload == "rx":  # every handshake completed at its own generator
        assert doc["delivered"] == 1000
        assert sum(p["handshakes"] for p in per) == 4
    else:
        g = doc["egress"]["generator"]
        assert g["generators"] == 2 and g["frames"] == 1000
        assert g["latency_us"]["count"] == 1000


def test_several_generators_need_a_generator_workload():
    with pytest.raises(ConfigError, match="--trafgens 2 needs --source trafgen"):
        RunConfig(trafgens=2).validate()
    with pytest.raises(ConfigError, match="tx and rr use one generator"):
        RunConfig(trafgens=2, source="trafgen", workload="rr").validate()
    with pytest.raises(ConfigError, match="fewer than --trafgens"):
        RunConfig(trafgens=3, source="trafgen", flows=2).validate()
