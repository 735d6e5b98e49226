"""Protocol stages: the stack's work as sans-IO functions over batches of handles.

Each step of the stack, `ether_input`, `ip_input`, `ip6_input`, `icmp_input`,
`udp_input`, `tcp_input` (with `tcp_reass`), `ip_forward`, the socket layer's
`sbappend`/`soreceive`/`sosend`, and on output `tcp_output`, `udp_output`,
`ip_output`, `ip6_output`, `ether_output`, is a plain function
``fn(ctx, batch) -> {next stage: handles}`` (see `base`). It takes the time
from `ctx.now`, never from a clock; it never starts a process or touches a
socket; every packet it does not pass on is either dropped through
`ctx.drop` under a reason declared once per module, or absorbed and counted
(a SYN, a pure ACK, a fragment folded into its datagram). That is what lets
every dispatch model run the very same code, lets each stage be tested in one
process against scapy and tshark, and lets every run prove that the packets
offered equal the packets delivered, dropped, absorbed or sent on.

The host's tables live in `socktab` (sockets and TCP control blocks in shared
memory, since in the hybrid model a flow's packets may be handled by the
interrupt thread for one batch and by a netisr worker for the next) and
`route` (longest-prefix match, neighbours). `all` imports every stage so the
registry is complete.

The trade-off taken for speed: a stage's common case over a whole batch
(untagged unicast frames, plain IPv4 for this host, UDP to a socket with
room, in-order TCP data on an established connection, a copyout) runs as one
compiled pass (`kernels`, numba), all or nothing; anything unusual in the
batch sends it through the per-packet Python code, which stays the
reference the tests hold the compiled passes to, packet for packet and
counter for counter.
"""
