"""Import every stage module, so that the stage registry holds the whole stack."""

from dispatch.stages import (  # noqa: F401
    ether,
    forward,
    icmp,
    inputfast,
    ip,
    ip6,
    outputfast,
    socket,
    tcp_input,
    tcp_output,
    udp,
)
