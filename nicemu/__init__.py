"""nicemu: the hardware side of dispatch-emu (the wire, the NIC, the traffic generator).

The host's dispatch models only mean something if the packets arrive as they
do on a real machine: in bursts that a NIC batches with interrupt
moderation, spread over receive queues by an RSS hash, DMAed into buffers
the driver posted ahead of time, with checksums the hardware may already
have verified. This package plays that hardware. `nic` owns the descriptor
rings in shared memory, the DMA copy (the first of a received packet's two
copies), RSS (`rss`, reproducing Microsoft's verification suite), moderation
(`moderation`) and the offloads (`offload`: rxcsum, txcsum, TSO, LRO and a
TOE hook that reuses the host's own stage code rather than a second TCP).
`internal` makes the NIC an ideal line for peak-rate measurements; `wire`
carries frames between the generator and the NIC over ZeroMQ in batches;
`trafgen` builds and paces valid Ethernet/IPv4/IPv6/TCP/UDP traffic with
impairments, replays captures (`pcap`) and measures round trips.

The NIC never reads the clock or touches a socket itself: a role process
drives it with the time, which keeps it testable in one process.
"""
