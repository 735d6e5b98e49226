"""Tests for dispatch.runtime.placement: models are placements, cuts are derived."""

from __future__ import annotations

import pytest

from dispatch.runtime.placement import EDGES, MODELS, placement
from dispatch.stages import base as S


def test_every_model_places_every_input_stage():
    for name, pl in MODELS.items():
        assert set(pl.stages) == set(EDGES), name
        assert pl.stages[S.SORECEIVE] == "user"


def test_cuts_are_exactly_where_roles_change():
    assert placement("direct").cuts() == [(S.TCP_INPUT, S.SORECEIVE, "ithread", "user"),
                                          (S.UDP_INPUT, S.SORECEIVE, "ithread", "user")]
    deferred = placement("deferred").cuts()
    assert (S.ETHER_INPUT, S.IP_INPUT, "ithread", "netisr") in deferred
    assert (S.ETHER_INPUT, S.IP6_INPUT, "ithread", "netisr") in deferred
    assert {c[3] for c in deferred} == {"netisr", "user"}
    toe = placement("toe").cuts()
    assert {(c[2], c[3]) for c in toe} == {("nic", "user")}


def test_hybrid_ithread_may_run_netisr_stages_and_polling_is_direct_shaped():
    hy = placement("hybrid")
    assert S.IP_INPUT in hy.local("ithread") and S.IP_INPUT not in placement(
        "deferred").local("ithread")
    assert placement("polling").stages == placement("direct").stages
    assert placement("polling").polling and not placement("direct").polling
    for pl in MODELS.values():  # the output path runs wherever a packet is produced
        for role in ("ithread", "netisr", "user", "nic"):
            assert S.IP_OUTPUT in pl.local(role)


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(ValueError, match="direct, deferred, hybrid, polling, toe"):
        placement("nope")
