"""The dispatch runtime: roles as processes, placements as models, one controller.

A kernel's receive path runs in threads that share memory; here each thread
of interest is an OS process, and the memory they share is the host's mbuf
pool, socket table, netisr workstream table and NIC rings, all in POSIX
shared memory attached by name. What crosses between processes is a handle
(a 32-bit integer) in a ZeroMQ message, batched; so the cost of a handoff
is paid for real (a context switch, a cache miss, a queue), not modelled.

The trade-off the emulator exists to show is FreeBSD's netisr trade-off:
running protocol work in the interrupt thread (direct dispatch) keeps a
packet's processing on one CPU, with no queue and no handoff, at the price of
serialising all of it behind the interrupt; deferring it to netisr workers
buys parallelism and isolates the interrupt path, at the price of a queue,
a handoff and the latency both add. Hybrid dispatch takes the direct path
when the workstream is idle; polling bounds the work per round so that a
flood cannot starve everything else (receive livelock); TOE moves the work
into the NIC. Each is one `Placement` of the same stages, so comparisons are
honest: only where the work runs differs.

Modules: `placement` (models), `netisr` (workstreams, exact queue limits),
`agent` (a role's control channel), `roles` (the data planes), `launcher`
(local subprocesses), `controller` (asyncio control plane: plan, run, drain,
collect), `result` (the versioned result document and conservation),
`procstat` (CPU and context switches of every thread), `workload` (flows and
sockets), `config` (every option, validated before any process starts).
"""
