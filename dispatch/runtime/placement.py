"""Dispatch models as placements: which role runs which stage.

A model is nothing but a mapping from stages to process roles; the queues
between processes exist exactly where consecutive stages sit in different
roles, and `cuts()` derives them. The runtime reads a placement and nothing
else differs between models, so every model runs the same stage code.

Output stages (tcp_output, ip_output, ether_output ...) run in whichever
role produced the packet: FreeBSD's output path runs in the sending thread.
`if_transmit` is the driver's transmit ring, which every role can post to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dispatch.stages import base as S

ROLES = ("nic", "ithread", "netisr", "user", "txthread", "trafgen")
NETISR_STAGES = frozenset({S.IP_INPUT, S.IP6_INPUT, S.ICMP_INPUT, S.UDP_INPUT, S.TCP_INPUT,
                           S.IP_FORWARD})
OUTPUT_STAGES = frozenset(S.OUTPUT_STAGES) - {S.SOSEND}
# the input-path edges: which stage can hand a packet to which
EDGES: dict[str, tuple[str, ...]] = {
    S.ETHER_INPUT: (S.IP_INPUT, S.IP6_INPUT),
    S.IP_INPUT: (S.TCP_INPUT, S.UDP_INPUT, S.ICMP_INPUT, S.IP_FORWARD),
    S.IP6_INPUT: (S.TCP_INPUT, S.UDP_INPUT, S.ICMP_INPUT, S.IP_FORWARD),
    S.TCP_INPUT: (S.SORECEIVE,),
    S.UDP_INPUT: (S.SORECEIVE,),
    S.ICMP_INPUT: (),
    S.IP_FORWARD: (),
    S.SORECEIVE: (),
}


@dataclass(frozen=True, slots=True)
class Placement:
    """Stage -> role for the input path, plus how the ithread gets its packets."""

    model: str
    stages: dict[str, str] = field(default_factory=dict)
    polling: bool = False  # the ithread polls its ring with a quota (NAPI)
    hybrid: bool = False  # the ithread may run netisr stages inline when idle
    description: str = ""

    def role_of(self, stage: str) -> str:
        return self.stages[stage]

    def local(self, role: str) -> frozenset[str]:
        """The stages a role runs itself (output stages run everywhere)."""
        mine = {s for s, r in self.stages.items() if r == role}
        if self.hybrid and role == "ithread":
            mine |= {s for s, r in self.stages.items() if r == "netisr"}
        return frozenset(mine | OUTPUT_STAGES)

    def cuts(self) -> list[tuple[str, str, str, str]]:
        """(from stage, to stage, from role, to role) where a queue is needed."""
        out = []
        for a, nexts in EDGES.items():
            for b in nexts:
                ra, rb = self.stages[a], self.stages[b]
                if ra != rb:
                    out.append((a, b, ra, rb))
        return out

    def queued_roles(self) -> set[str]:
        return {rb for _, _, _, rb in self.cuts()}

    def entry_role(self) -> str:
        return self.stages[S.ETHER_INPUT]


def _place(nic: set[str], ithread: set[str], netisr: set[str], user: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for role, stages in (("nic", nic), ("ithread", ithread), ("netisr", netisr),
                         ("user", user)):
        for s in stages:
            out[s] = role
    missing = set(EDGES) - set(out)
    if missing:
        raise ValueError(f"placement leaves stages unplaced: {sorted(missing)}")
    return out


_ITHREAD_ALL = set(NETISR_STAGES) | {S.ETHER_INPUT}

MODELS: dict[str, Placement] = {
    "direct": Placement("direct", _place(set(), _ITHREAD_ALL, set(), {S.SORECEIVE}),
                        description="the ithread runs ether, ip, tcp/udp and the socket "
                                    "append; user threads receive"),
    "deferred": Placement("deferred", _place(set(), {S.ETHER_INPUT}, set(NETISR_STAGES),
                                             {S.SORECEIVE}),
                          description="the ithread runs ether and queues to a netisr "
                                      "workstream, whose worker runs ip, tcp/udp and the "
                                      "socket append"),
    "hybrid": Placement("hybrid", _place(set(), {S.ETHER_INPUT}, set(NETISR_STAGES),
                                         {S.SORECEIVE}), hybrid=True,
                        description="as deferred, but the ithread runs the netisr work "
                                    "inline when the workstream is idle with nothing queued"),
    "polling": Placement("polling", _place(set(), _ITHREAD_ALL, set(), {S.SORECEIVE}),
                         polling=True,
                         description="the ithread polls its ring in rounds of at most "
                                     "`quota` packets, interrupts masked until it is empty"),
    "toe": Placement("toe", _place({S.ETHER_INPUT, S.IP_INPUT, S.IP6_INPUT, S.ICMP_INPUT,
                                    S.TCP_INPUT, S.UDP_INPUT, S.IP_FORWARD}, set(), set(),
                                   {S.SORECEIVE}),
                     description="the NIC validates checksums and runs ip and tcp input and "
                                 "reassembly; the ithread only delivers to the sockets"),
}


def placement(model: str) -> Placement:
    try:
        return MODELS[model]
    except KeyError:
        raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}") from None
