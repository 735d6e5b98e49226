"""The generator's receiving side for datagrams: what arrived, how fast, how late.

When the host sends (the `tx` workload) or routes (`forward`), the generator
is the far end: it must say what reached it, per flow, and how long each
frame took. `FrameSink` counts frames and bytes per flow (the flow is the
frame's 5-tuple), keeps a running sha256 of each flow's UDP payloads in
arrival order (so a test can compare with what the host sent), checks each
IPv4 header checksum and each UDP checksum (so that a host's software checksums
and its NIC's txcsum are both held to what a receiver accepts) and, for
forwarding, records the TTL seen, and records
per-frame latency into an HDR histogram:

- from the sender's stamp that the wire carries beside the frame (the host's
  NIC puts the time the host's stack sent it there), when there is one;
- else from the generator's own stamp in the payload (`nicemu.trafgen.flows`
  STAMP: forwarded frames carry the time the generator sent them), to the
  arrival time: when the frame was read, or the hardware arrival stamp the
  wire carries (the forwarding port's frames have one: the host NIC's
  transmit time, as a generator port timestamping in hardware would see it;
  reading time would add the generator's own scheduling to the figure).

Frames that are not IPv4/IPv6 UDP or TCP are counted as `other`; frames with a
bad IPv4 header checksum as `bad_ip_csum`, UDP datagrams whose checksum does not
verify as `bad_udp_csum` (an IPv4 datagram without one, field 0, is not checked);
both are still counted as received.
TCP frames are only counted here; the TCP receiver is `tcpsink`.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any, Final

from hdrh.histogram import HdrHistogram

from dispatch.packet.checksum import l4_checksum, ones_sum
from nicemu.trafgen.flows import STAMP, STAMP_LEN, STAMP_MAGIC, l4_offsets

__all__ = ["FrameSink"]

_HIST_MAX: Final = 60_000_000_000  # 60 s in ns

FlowKey = tuple[bytes, bytes, int, int, int]  # src, dst, sport, dport, proto


class FrameSink:
    """Counts and times the frames that reach one of the generator's ports."""

    def __init__(self, *, digest: bool = True) -> None:
        self.digest = digest
        self.frames = 0
        self.bytes = 0
        self.other = 0
        self.bad_ip_csum = 0
        self.bad_udp_csum = 0
        self.stamped = 0
        self.ttls: defaultdict[int, int] = defaultdict(int)
        self.per_flow: dict[FlowKey, list[int]] = {}  # key -> [frames, payload bytes]
        self._digests: dict[FlowKey, Any] = {}
        self.hist = HdrHistogram(1, _HIST_MAX, 3)

    def on_frames(self, frames: list[Any], now_ns: int, stamps: list[int] | None = None,
                  *, arrivals: list[int] | None = None) -> None:
        """Account a batch read off the wire at `now_ns`, with the wire's stamps: the
        sender's times (`stamps`) or hardware arrival times (`arrivals`)."""
        for k, fr in enumerate(frames):
            self.on_frame(fr, arrivals[k] if arrivals is not None else now_ns,
                          stamps[k] if stamps is not None else None)

    def on_frame(self, frame: Any, now_ns: int, stamp_ns: int | None = None) -> None:
        """One frame that arrived at `now_ns`; `stamp_ns` is its sender's time if the
        wire carried one (else the payload's generator stamp is used, if any)."""
        b = bytes(frame)
        self.frames += 1
        self.bytes += len(b)
        loc = l4_offsets(b)
        if loc is None or loc[2] not in (6, 17):
            self.other += 1
            return
        l3, version, proto, l4 = loc
        if version == 4:
            ihl = (b[l3] & 0xF) * 4
            if ones_sum(b[l3 : l3 + ihl]) != 0xFFFF:
                self.bad_ip_csum += 1
            self.ttls[b[l3 + 8]] += 1
            src, dst = b[l3 + 12 : l3 + 16], b[l3 + 16 : l3 + 20]
            end = l3 + int.from_bytes(b[l3 + 2 : l3 + 4], "big")
        else:
            self.ttls[b[l3 + 7]] += 1
            src, dst = b[l3 + 8 : l3 + 24], b[l3 + 24 : l3 + 40]
            end = l3 + 40 + int.from_bytes(b[l3 + 4 : l3 + 6], "big")
        sport = int.from_bytes(b[l4 : l4 + 2], "big")
        dport = int.from_bytes(b[l4 + 2 : l4 + 4], "big")
        p = l4 + 8 if proto == 17 else l4 + (b[l4 + 12] >> 4) * 4
        payload = b[p:end]
        if proto == 17 and (version == 6 or b[l4 + 6] or b[l4 + 7]) and \
                l4_checksum(src, dst, 17, b[l4:end]) != 0:
            self.bad_udp_csum += 1
        key = (src, dst, sport, dport, proto)
        pf = self.per_flow.get(key)
        if pf is None:
            pf = self.per_flow[key] = [0, 0]
            if self.digest and proto == 17:
                self._digests[key] = hashlib.sha256()
        pf[0] += 1
        pf[1] += len(payload)
        if proto == 17 and self.digest:
            self._digests[key].update(payload)
        sent = stamp_ns or None
        if sent is None and len(payload) >= STAMP_LEN:
            magic, _seq, t = STAMP.unpack_from(payload, 0)
            if magic == STAMP_MAGIC:
                sent = t
        if sent:
            self.stamped += 1
            self.hist.record_value(max(1, min(now_ns - sent, _HIST_MAX)))

    def digest_of(self, key: FlowKey) -> str | None:
        d = self._digests.get(key)
        return d.hexdigest() if d is not None else None

    def stats(self) -> dict[str, Any]:
        """Plain numbers (for the result document): counts, TTLs seen, latency in us."""
        h = self.hist
        n = h.get_total_count()
        lat = {"count": n}
        for name, p in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)):
            lat[name] = round(h.get_value_at_percentile(p) / 1000.0, 3) if n else None
        lat["max"] = round(h.get_max_value() / 1000.0, 3) if n else None
        return {
            "hist": h.encode().decode() if n else "",  # to merge several generators' figures
            "frames": self.frames, "bytes": self.bytes, "other": self.other,
            "bad_ip_csum": self.bad_ip_csum, "bad_udp_csum": self.bad_udp_csum,
            "stamped": self.stamped,
            "ttl": {str(k): v for k, v in sorted(self.ttls.items())},
            "flows": len(self.per_flow), "latency_us": lat,
        }

    def flow_table(self) -> list[dict[str, Any]]:
        """Per flow: addresses and ports as text, frames, payload bytes, sha256 (UDP)."""
        import ipaddress

        out = []
        for key, (nf, nb) in sorted(self.per_flow.items()):
            src, dst, sp, dp, proto = key
            out.append({"src": f"{ipaddress.ip_address(src)}:{sp}",
                        "dst": f"{ipaddress.ip_address(dst)}:{dp}",
                        "proto": "udp" if proto == 17 else "tcp", "frames": nf,
                        "payload_bytes": nb, "sha256": self.digest_of(key)})
        return out
