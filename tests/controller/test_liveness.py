"""Agent liveness as the controller observes it: skew-immune, and held when most agents go stale together."""

from __future__ import annotations

from typing import Any

import pytest

from egress_cni.controller.liveness import AgentLiveness

pytestmark = pytest.mark.unit


def lease(renew: str, holder: str = "agent", duration: int = 1) -> dict[str, Any]:
    return {"spec": {"holderIdentity": holder, "renewTime": renew, "leaseDurationSeconds": duration}}


def renew_all(live: AgentLiveness, names: list[str], tick: int, now: float) -> None:
    for name in names:
        live.observe(name, lease(f"t{tick}"), now)


def test_renewals_keep_an_agent_alive_whatever_its_clock_says() -> None:
    live = AgentLiveness()
    # renewTime from a node whose clock is an hour behind: only the change of value counts
    live.observe("a", lease("2020-01-01T00:00:00.000000Z"), 100.0)
    assert live.evaluate(100.9).alive == {"a": True}
    live.observe("a", lease("2020-01-01T00:00:00.200000Z"), 100.9)
    assert live.evaluate(101.8).alive == {"a": True}


def test_an_agent_that_stops_renewing_dies_after_duration_plus_grace() -> None:
    live = AgentLiveness(grace=0.5)
    live.observe("a", lease("t1"), 10.0)
    live.observe("a", lease("t1"), 11.0)  # the same renewal again (a relist) does not refresh it
    v = live.evaluate(11.4)
    assert v.alive == {"a": True} and v.next_change == pytest.approx(11.5)
    assert live.evaluate(11.5).alive == {"a": False}


def test_a_released_or_deleted_lease_is_dead_at_once() -> None:
    live = AgentLiveness()
    live.observe("a", lease("t1"), 0.0)
    live.observe("a", {"spec": {"holderIdentity": "", "renewTime": "t1"}}, 0.1)
    assert live.evaluate(0.1).alive == {"a": False}
    live.observe("a", None, 0.2)
    assert live.evaluate(0.2).alive == {}


def test_one_node_lost_among_three_fails_over_at_once() -> None:
    live = AgentLiveness(hold=10)
    renew_all(live, ["a", "b", "c"], 1, 0.0)
    renew_all(live, ["b", "c"], 2, 1.4)  # healthy agents renew every 0.2 s
    v = live.evaluate(1.5)
    assert v.alive == {"a": False, "b": True, "c": True} and not v.held


def test_most_agents_stale_together_are_held_until_the_hold_ends() -> None:
    live = AgentLiveness(hold=10)
    renew_all(live, ["a", "b", "c"], 1, 0.0)
    renew_all(live, ["c"], 2, 0.9)  # a and b stop renewing together: the API server is slow
    v = live.evaluate(1.5)
    assert v.alive == {"a": True, "b": True, "c": True} and v.held == {"a", "b"}
    assert v.next_change == pytest.approx(1.9)  # c's own expiry comes first
    renew_all(live, ["a", "b", "c"], 3, 4.0)  # the API server caught up: nothing moved meanwhile
    assert live.evaluate(4.1).held == frozenset()
    for tick in range(4, 26):  # a and b stop again; c keeps renewing
        renew_all(live, ["c"], tick, tick / 2 + 2.5)
    assert live.evaluate(14.9).held == {"a", "b"}  # stale since 5.0, held until 15.0
    assert live.evaluate(15.0).alive == {"a": False, "b": False, "c": True}


def test_agents_stopping_a_moment_apart_still_count_as_together() -> None:
    live = AgentLiveness(hold=10)
    renew_all(live, ["a", "b", "c"], 1, 0.0)
    renew_all(live, ["b", "c"], 2, 0.2)  # b's last renewal comes 0.2 s after a's
    renew_all(live, ["c"], 3, 0.9)
    v = live.evaluate(1.05)  # a has run out, b has not yet but is 0.85 s late
    assert v.alive == {"a": True, "b": True, "c": True} and v.held == {"a"}


def test_two_agents_one_lost_fails_over_and_fraction_one_disables_the_hold() -> None:
    live = AgentLiveness(hold=10)
    renew_all(live, ["a", "b"], 1, 0.0)
    renew_all(live, ["b"], 2, 1.1)
    assert live.evaluate(1.2).alive == {"a": False, "b": True}
    never = AgentLiveness(stale_fraction=1.0, hold=10)
    renew_all(never, ["a", "b", "c"], 1, 0.0)
    assert never.evaluate(1.0).alive == {"a": False, "b": False, "c": False}


def test_long_dead_agents_do_not_count_towards_the_fraction() -> None:
    live = AgentLiveness(hold=10)
    renew_all(live, ["a", "b", "c", "d"], 1, 0.0)
    for t in range(1, 40):  # a and b died long ago; c and d keep renewing
        renew_all(live, ["c", "d"], t + 1, float(t))
    renew_all(live, ["c"], 41, 40.0)  # now d dies: one of the two live agents, not a majority
    assert live.evaluate(40.5).alive == {"a": False, "b": False, "c": True, "d": False}


def test_fresh_is_the_one_lease_view_used_on_every_renewal_event() -> None:
    live = AgentLiveness(grace=0.5)
    assert not live.fresh("a", 0.0)
    live.observe("a", lease("t1"), 0.0)
    assert live.fresh("a", 1.4) and not live.fresh("a", 1.5)


def _reporting(renew: str, eips: str = "", peers: str = "", duration: int = 20) -> dict[str, Any]:
    out = lease(renew, duration=duration)
    out["metadata"] = {"annotations": {"egressgateway.spidernet.io/eips": eips, "egressgateway.spidernet.io/peers": peers}}
    return out


def test_a_stale_agent_that_a_fresh_peer_sees_alive_stays_alive() -> None:
    live = AgentLiveness(stale_fraction=1.0, prefix="egress-agent-")
    live.observe("egress-agent-a", _reporting("t1", eips="10.6.1.1"), 0.0)
    assert live.observe("egress-agent-b", _reporting("t1", peers="a"), 0.0)  # its reports changed
    live.observe("egress-agent-b", _reporting("t2", peers="a"), 15.0)
    v = live.evaluate(21.0)  # a's Lease ran out on our clock; b, fresh, sees a alive
    assert v.alive == {"egress-agent-a": True, "egress-agent-b": True} and v.vouched == {"egress-agent-a"}
    assert v.reports == {}  # a stale Lease's EIPs do not count
    live.observe("egress-agent-b", _reporting("t3", peers=""), 21.5)  # b no longer sees a
    assert live.evaluate(21.5).alive == {"egress-agent-a": False, "egress-agent-b": True}
    # a stale voucher vouches for nobody
    live.observe("egress-agent-b", _reporting("t4", peers="a"), 22.0)
    assert live.evaluate(42.5).alive == {"egress-agent-a": False, "egress-agent-b": False}


def test_fresh_leases_report_the_eips_they_hold() -> None:
    live = AgentLiveness(prefix="egress-agent-")
    live.observe("egress-agent-a", _reporting("t1", eips="10.6.1.2,10.6.1.1"), 0.0)
    assert live.evaluate(1.0).reports == {"egress-agent-a": ("10.6.1.1", "10.6.1.2")}


def test_regaining_sight_gives_every_lease_a_full_duration_again() -> None:
    # A 60 s API stall: this controller lost its own Lease and saw no renewal of anyone's; the first
    # agent to renew afterwards must not make the slower ones look dead.
    blind, seeing = AgentLiveness(hold=10), AgentLiveness(hold=10)
    for live in (blind, seeing):
        renew_all(live, ["a", "b", "c"], 1, 0.0)
    seeing.regained_sight(60.0)
    for live in (blind, seeing):
        live.observe("a", lease("t2"), 60.3)
    assert blind.evaluate(60.5).alive == {"a": True, "b": False, "c": False}
    v = seeing.evaluate(60.5)
    assert v.alive == {"a": True, "b": True, "c": True} and not v.held and v.next_change == pytest.approx(61.0)
