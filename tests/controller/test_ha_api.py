"""High availability on a real kube-apiserver (docs/ha.md, points 8 to 10): leader election judged on
the standby's own clock, a stale leader that wakes up writes nothing, the record follows takeovers
that agents report in their Leases, and no EIP moves while a peer reports its node alive."""

from __future__ import annotations

import glob
import os
import signal
import time
from typing import Any

import pytest

from egress_cni import k8s
from tests.controller.cluster import NAMESPACE, gateway, policy, set_node_ready, status_of, wait_for
from tests.controller.conftest import Env

pytestmark = pytest.mark.apiserver

GW, EP = k8s.EGRESS_GATEWAYS, k8s.EGRESS_POLICIES
EIPS, PEERS = "egressgateway.spidernet.io/eips", "egressgateway.spidernet.io/peers"


def placed_on(env: Env, g: str) -> dict[str, str]:
    """EIP -> node, from the gateway's nodeList."""
    return {e.get("ipv4", ""): n["name"] for n in status_of(env.client, GW, g).get("nodeList") or [] for e in n.get("eips") or []}


def leader_lease(env: Env, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = env.client.get(k8s.LEASES, name, NAMESPACE)["spec"]
    return spec


def version(env: Env, rt: k8s.ResourceType, name: str, ns: str | None = None) -> str:
    return str(env.client.get(rt, name, ns)["metadata"]["resourceVersion"])


def moved_events(env: Env, g: str) -> list[str]:
    events = env.client.list(k8s.EVENTS, "default", field_selector=f"involvedObject.name={g}")[0]
    return [e["message"] for e in events if e["reason"] == "EIPMoved"]


def test_leader_paused_past_its_lease_the_standby_moves_and_the_old_leader_writes_nothing(env: Env, namespace: str) -> None:
    n1, n2 = env.node("n1"), env.node("n2")
    g = env.name("gw")
    env.create(GW, gateway(g, ["10.6.21.1"], env.label))
    env.create(EP, policy("p", namespace, g))
    lease = env.name("leader")
    env.created.append((k8s.LEASES, lease, NAMESPACE))
    a, b = env.controller("a", lease=lease), env.controller("b", lease=lease)
    wait_for("placed on n1", lambda: status_of(env.client, EP, "p", namespace).get("node") == n1)
    holder = wait_for("leader", lambda: leader_lease(env, lease).get("holderIdentity"))
    leader, standby = (a, b) if holder == a.identity else (b, a)
    os.kill(leader.proc.pid, signal.SIGSTOP)
    try:
        paused = time.monotonic()
        set_node_ready(env.client, n1, False)  # an EIP that must move: only a working leader moves it
        wait_for("the standby moved the EIP", lambda: status_of(env.client, EP, "p", namespace).get("node") == n2, timeout=30)
        assert leader_lease(env, lease)["holderIdentity"] == standby.identity
        assert time.monotonic() - paused >= 2.0  # not before the lease (2 s) ran out on the standby's clock
        wait_for("the standby settled", lambda: placed_on(env, g) == {"10.6.21.1": n2})
        # a stale view on the old leader: it last saw the EIP on n1 and n1 Ready
        versions = {"gw": version(env, GW, g), "policy": version(env, EP, "p", namespace)}
        offset = leader.log_size()
    finally:
        os.kill(leader.proc.pid, signal.SIGCONT)
    wait_for("the old leader noticed", lambda: "lost leadership" in leader.log_since(offset) or
             "no longer acting as leader" in leader.log_since(offset), timeout=15)
    time.sleep(2.0)  # it has had time to write, were it going to
    assert {"gw": version(env, GW, g), "policy": version(env, EP, "p", namespace)} == versions
    assert status_of(env.client, EP, "p", namespace)["node"] == n2 and placed_on(env, g) == {"10.6.21.1": n2}
    assert leader_lease(env, lease)["holderIdentity"] == standby.identity
    assert "became leader" not in leader.log_since(offset)
    assert leader.proc.poll() is None  # it did not crash either


def test_a_standby_whose_clock_runs_ahead_does_not_take_over_early(env: Env, namespace: str) -> None:
    library = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)
    if library is None:
        pytest.skip("libfaketime is not installed (Debian package faketime; hack/install-deps.sh installs it)")
    env.node("n1")
    g = env.name("gw")
    env.create(GW, gateway(g, ["10.6.22.1"], env.label))
    env.create(EP, policy("p", namespace, g))
    lease = env.name("leader")
    env.created.append((k8s.LEASES, lease, NAMESPACE))
    a = env.controller("a", lease=lease)
    wait_for("a leads", lambda: leader_lease(env, lease).get("holderIdentity") == a.identity)
    transitions = leader_lease(env, lease).get("leaseTransitions", 0)
    # Only the wall clock runs ahead (renewTime + 2 s is always behind it); a faked monotonic clock
    # would stall libfaketime's condition waits, and monotonic time has no "ahead" anyway. The
    # library is preloaded rather than run through `faketime`, which forks: stopping it would orphan
    # the controller.
    b = env.controller("b", lease=lease, env={"LD_PRELOAD": library, "FAKETIME": "+5s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    assert b.proc.pid
    wait_for("b runs", lambda: "controller started" in b.log_since(0), timeout=30)
    deadline = time.monotonic() + 8.0  # four lease durations
    while time.monotonic() < deadline:
        spec = leader_lease(env, lease)
        assert spec["holderIdentity"] == a.identity and spec.get("leaseTransitions", 0) == transitions, spec
        time.sleep(0.1)
    assert "became leader" not in b.log_since(0)
    a.stop(kill=True)  # now b must take over, on its own clock, after one lease duration
    wait_for("b took over", lambda: leader_lease(env, lease).get("holderIdentity") == b.identity, timeout=30)


def test_a_takeover_reported_in_a_lease_becomes_the_record(env: Env, namespace: str) -> None:
    n1, n2, n3 = env.node("n1"), env.node("n2"), env.node("n3")
    g = env.name("gw")
    env.create(GW, gateway(g, ["10.6.23.1"], env.label))
    env.create(EP, policy("p", namespace, g))
    env.controller()
    wait_for("placed on n1", lambda: status_of(env.client, EP, "p", namespace).get("node") == n1)
    wait_for("the gateway status", lambda: placed_on(env, g) == {"10.6.23.1": n1})  # written after the policy's
    entry = status_of(env.client, GW, g)["nodeList"][0]["eips"][0]
    assert entry["standbys"] == [n2, n3]
    env.agents.annotations[n2] = {EIPS: "10.6.23.1", PEERS: n3}  # n2 took it over on the segment
    wait_for("the record follows", lambda: placed_on(env, g) == {"10.6.23.1": n2})
    wait_for("the policy follows", lambda: status_of(env.client, EP, "p", namespace).get("node") == n2)
    entry = next(n for n in status_of(env.client, GW, g)["nodeList"] if n["name"] == n2)["eips"][0]
    assert entry["standbys"] == [n3, n1]
    time.sleep(1.5)  # several renewals with the same report: no more moves, no Event storm
    moved = moved_events(env, g)
    assert len(moved) == 1 and "TakenOver" in moved[0] and n1 in moved[0] and n2 in moved[0], moved
    assert placed_on(env, g) == {"10.6.23.1": n2}


def test_no_move_while_a_peer_reports_the_node_alive(env: Env, namespace: str) -> None:
    n1, n2 = env.node("n1"), env.node("n2")
    g = env.name("gw")
    env.create(GW, gateway(g, ["10.6.24.1"], env.label))
    env.create(EP, policy("p", namespace, g))
    env.agents.annotations[n2] = {PEERS: n1}  # n2 sees n1 alive on the underlay
    env.controller()
    wait_for("placed on n1", lambda: status_of(env.client, EP, "p", namespace).get("node") == n1)
    env.agents.stop(n1)  # n1's agent lost the API; its 1 s Lease runs out
    stopped = time.monotonic()
    time.sleep(3.0)
    assert placed_on(env, g) == {"10.6.24.1": n1} and status_of(env.client, EP, "p", namespace)["node"] == n1
    assert {n["name"]: n["status"] for n in status_of(env.client, GW, g)["nodeList"]}[n1] == "Ready"
    env.agents.annotations[n2] = {PEERS: ""}  # now n2 lost it too: the node is gone
    wait_for("moved once no peer vouches", lambda: placed_on(env, g) == {"10.6.24.1": n2}, timeout=20)
    assert time.monotonic() - stopped > 3.0
    wait_for("HeartbeatTimeout on the tunnel",
             lambda: status_of(env.client, k8s.EGRESS_TUNNELS, n1).get("phase") == "HeartbeatTimeout")
    assert status_of(env.client, k8s.EGRESS_TUNNELS, n1).get("lastHeartbeatTime")
    assert status_of(env.client, k8s.EGRESS_TUNNELS, n2).get("phase") in ("Ready", "Init")
