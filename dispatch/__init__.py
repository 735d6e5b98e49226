"""dispatch: the host side of dispatch-emu.

A network stack's receive path is a chain of work on one packet: the link
layer checks the frame, IP validates the header and decides whether the
packet is ours, TCP or UDP finds the socket, and the socket layer queues the
data until a user thread copies it out. None of that work says *where* it
must run. A kernel can run all of it in the interrupt thread that took the
frame off the NIC (direct dispatch), hand it at some point to another thread
through a queue (deferred dispatch, FreeBSD's netisr), decide per packet
(hybrid), bound it per round (polling, NAPI), or push it into the NIC (TOE).
That choice trades latency against parallelism, cache locality against
isolation, and early drops against queueing delay; this package makes it a
thing one can run and measure.

It does so by keeping three things separate. The *memory* (`dispatch.mbuf`):
one shared-memory pool per emulated host, FreeBSD's mbufs and clusters, so
that processes pass handles and a packet's bytes are copied exactly twice.
The *work* (`dispatch.packet` for wire formats, `dispatch.stages` for the
protocol steps): sans-IO functions over batches of handles, each drop a
declared, counted reason, the same code whichever model runs it. And the
*placement* (`dispatch.runtime`): a model maps stages onto processes, the
queues appear exactly at the cuts, and a controller runs, drains and
accounts for every packet, proving at the end of each run that nothing was
lost. `dispatch.compare` and the CLI turn runs into side-by-side figures.
"""

__version__ = "0.1.0"
