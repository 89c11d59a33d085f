"""The controller on a real kube-apiserver (reference e2e ids in the test names' docstrings).

Fake Nodes and agent Leases are made through the API; the controller runs as a subprocess with the
admin kubeconfig. Admission defaulting (spec.egressGatewayName, ipv4DefaultEIP) is the webhook's;
these tests check what the controller does with or without it.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from devtools.devkube.processes import free_port
from egress_cni import k8s
from tests.controller.cluster import (
    NAMESPACE,
    ensure_namespace,
    gateway,
    make_pod,
    policy,
    ready_reason,
    set_node_ready,
    status_of,
    wait_for,
)
from tests.controller.conftest import Env

pytestmark = pytest.mark.apiserver

GW, EP, ECP = k8s.EGRESS_GATEWAYS, k8s.EGRESS_POLICIES, k8s.EGRESS_CLUSTER_POLICIES
FINALIZER = "egressgateway.spidernet.io/egressgateway"


def assigned(env: Env, rt: k8s.ResourceType, name: str, ns: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = wait_for(
        f"{name} Ready", lambda: (s := status_of(env.client, rt, name, ns)).get("node") and ready_reason(s) == "Assigned" and s)
    return status


def nodes_of(env: Env, gw: str) -> dict[str, list[str]]:
    """node -> EIPs (ipv4 or '') from the gateway's status."""
    return {n["name"]: [e.get("ipv4", "") for e in n.get("eips") or []] for n in status_of(env.client, GW, gw).get("nodeList") or []}


def all_eips(by_node: dict[str, list[str]]) -> list[str]:
    return sorted(ip for ips in by_node.values() for ip in ips)


def test_default_eip_tunnels_and_usage(env: Env, namespace: str) -> None:
    """G00005/P00008: no default EIP and an empty egressIP -> an address of the pool, default allocator;
    EgressTunnel per node; ipUsage by pool arithmetic; the controller adds the gateway finalizer."""
    n1, n2 = env.node("n1"), env.node("n2")
    g = env.name("gw")
    env.create(GW, gateway(g, ["10.6.1.10-10.6.1.19"], env.label))
    env.create(EP, policy("p", namespace, g))
    env.create(EP, policy("q", namespace, g))
    env.controller()
    p, q = assigned(env, EP, "p", namespace), assigned(env, EP, "q", namespace)
    assert p["eip"]["ipv4"] == q["eip"]["ipv4"] == "10.6.1.10" and p["node"] == q["node"] == n1
    assert p["observedGeneration"] == 1
    usage = wait_for("ipUsage", lambda: status_of(env.client, GW, g).get("ipUsage", {}).get("ipv4Free") == 9 and
                     status_of(env.client, GW, g)["ipUsage"])
    assert usage == {"ipv4Total": 10, "ipv4Free": 9, "ipv6Total": 0, "ipv6Free": 0}
    assert nodes_of(env, g) == {n1: ["10.6.1.10"], n2: []}
    assert "egressgateway.spidernet.io/egressgateway" in env.client.get(GW, g)["metadata"]["finalizers"]
    tunnels = [wait_for("tunnel", lambda: status_of(env.client, k8s.EGRESS_TUNNELS, n1).get("mark")),
               wait_for("tunnel", lambda: status_of(env.client, k8s.EGRESS_TUNNELS, n2).get("mark"))]
    t1 = status_of(env.client, k8s.EGRESS_TUNNELS, n1)
    assert t1["tunnel"]["mac"].startswith("66:") and t1["tunnel"]["ipv4"].startswith("172.31.")
    assert len(set(tunnels)) == 2 and all(m.startswith("0x26") for m in tunnels)
    # G00010 (controller part): growing the pool changes ipUsage, the EIP in use stays put.
    env.client.patch(GW, g, {"spec": {"ippools": {"ipv4": ["10.6.1.10-10.6.1.29"]}}})
    wait_for("ipUsage after growing the pool", lambda: status_of(env.client, GW, g)["ipUsage"]["ipv4Total"] == 20)
    assert status_of(env.client, EP, "p", namespace)["eip"]["ipv4"] == "10.6.1.10"


def test_rr_explicit_and_invalid_eips(env: Env, namespace: str) -> None:
    """P00009 rr spreads over pool and nodes; P00010 explicit egressIP wins over rr; P00022 honoured;
    an address outside the pool is reported (InvalidEIP) instead of being used."""
    n1, n2 = env.node("n1"), env.node("n2")
    g = env.name("gw")
    env.create(GW, gateway(g, ["10.6.2.1-10.6.2.4"], env.label, default4="10.6.2.1"))
    for name in ("r1", "r2", "r3"):
        env.create(EP, policy(name, namespace, g, egress_ip={"allocatorPolicy": "rr"}))
    env.create(EP, policy("fixed", namespace, g, egress_ip={"ipv4": "10.6.2.4", "allocatorPolicy": "rr"}))
    env.create(EP, policy("outside", namespace, g, egress_ip={"ipv4": "10.9.9.9"}))
    env.controller()
    fixed = assigned(env, EP, "fixed", namespace)
    assert fixed["eip"]["ipv4"] == "10.6.2.4"
    rr = [assigned(env, EP, n, namespace) for n in ("r1", "r2", "r3")]
    assert sorted(s["eip"]["ipv4"] for s in rr) == ["10.6.2.1", "10.6.2.2", "10.6.2.3"]
    assert {s["node"] for s in [*rr, fixed]} == {n1, n2}
    wait_for("gateway status: 2 EIPs per node", lambda: sorted(len(v) for v in nodes_of(env, g).values()) == [2, 2])
    wait_for("InvalidEIP", lambda: ready_reason(status_of(env.client, EP, "outside", namespace)) == "InvalidEIP")
    env.create(EP, policy("r4", namespace, g, egress_ip={"allocatorPolicy": "rr"}))
    wait_for("PoolExhausted", lambda: ready_reason(status_of(env.client, EP, "r4", namespace)) == "PoolExhausted")
    annotations = env.client.get(GW, g)["metadata"].get("annotations") or {}
    assert annotations.get("egressgateway.spidernet.io/rr-last", "").startswith("10.6.2.3")  # the round-robin cursor


def test_defaults_and_use_node_ip(env: Env, namespace: str) -> None:
    """G00017/P00002/P00003: no gateway name -> the namespace default (label) else the cluster default;
    G00018/G00019/P00015: a gateway without pools serves useNodeIP policies only."""
    n1 = env.node("n1")
    plain, cluster_default = env.name("plain"), env.name("cdef")
    env.create(GW, gateway(plain, [], env.label))
    env.create(GW, gateway(cluster_default, ["10.6.3.1"], env.label, clusterDefault=True))
    labelled = env.name("labelled")
    ensure_namespace(env.client, labelled, {"spidernet.io/egressgateway-default": plain})
    env.created.append((k8s.NAMESPACES, labelled, None))
    env.create(EP, policy("nodeip", labelled, "", egress_ip={"useNodeIP": True}))
    env.create(EP, policy("nopool", labelled, ""))
    env.create(EP, policy("fromcluster", namespace, ""))
    env.create(ECP, policy(env.name("cp"), None, ""))
    env.controller()
    s = assigned(env, EP, "nodeip", labelled)
    assert s["node"] == n1 and not s.get("eip")
    wait_for("PoolExhausted", lambda: ready_reason(status_of(env.client, EP, "nopool", labelled)) == "PoolExhausted")
    assert assigned(env, EP, "fromcluster", namespace)["eip"]["ipv4"] == "10.6.3.1"
    assert assigned(env, ECP, env.name("cp"))["eip"]["ipv4"] == "10.6.3.1"
    wait_for("the node-IP bucket in the gateway status", lambda: status_of(env.client, GW, plain).get("nodeList", [{}])[0].get("eips")
             == [{"policies": [{"name": "nodeip", "namespace": labelled}]}])


def test_gateway_deletion_waits_for_both_policy_kinds(env: Env, namespace: str) -> None:
    """G00020 and the reference bug: cluster policies block the deletion too."""
    env.node("n1")
    g = env.name("gw")
    env.create(GW, gateway(g, ["10.6.4.1"], env.label))
    env.create(EP, policy("p", namespace, g))
    cp = env.name("cp")
    env.create(ECP, policy(cp, None, g))
    env.controller()
    assigned(env, ECP, cp)
    env.client.delete(GW, g)
    env.client.delete(EP, "p", namespace)
    time.sleep(1.0)  # give a wrong controller the chance to drop the finalizer
    assert env.client.get(GW, g)["metadata"].get("deletionTimestamp")
    env.client.delete(ECP, cp)
    wait_for("gateway gone", lambda: _gone(env, GW, g))


def test_gateway_finalizer_precedes_the_first_assignment(env: Env, namespace: str) -> None:
    """A policy is reported Assigned only once its gateway carries the finalizer: a user (or test)
    who deletes the gateway as soon as the policy is Assigned must not see it vanish at once.
    One etcd orders every write, so the resourceVersions show which write came first."""
    env.node("n1")
    g = env.name("gw")
    start = env.create(GW, gateway(g, ["10.6.4.9"], env.label))["metadata"]["resourceVersion"]
    cp = env.name("cp")
    env.create(ECP, policy(cp, None, g))
    env.controller()
    assigned(env, ECP, cp)
    wait_for("gateway finalizer", lambda: FINALIZER in (env.client.get(GW, g)["metadata"].get("finalizers") or []))

    def first(rt: k8s.ResourceType, name: str, seen: Callable[[dict[str, Any]], bool]) -> int:
        for kind, obj in env.client.watch(rt, None, start, timeout_seconds=2):
            if kind != "BOOKMARK" and obj["metadata"]["name"] == name and seen(obj):
                return int(obj["metadata"]["resourceVersion"])
        raise AssertionError(f"no such event for {name}")

    protected = first(GW, g, lambda o: FINALIZER in (o["metadata"].get("finalizers") or []))
    announced = first(ECP, cp, lambda o: ready_reason(o.get("status") or {}) == "Assigned")
    assert protected < announced


def _gone(env: Env, rt: k8s.ResourceType, name: str, ns: str | None = None) -> bool:
    try:
        env.client.get(rt, name, ns)
    except k8s.NotFound:
        return True
    return False


def test_endpoint_slices(env: Env, namespace: str) -> None:
    """P00020/P00021: slices per policy (own namespace only, at most N endpoints), podSubnet
    selection, and cleanup when the policy goes."""
    n1 = env.node("n1")
    g = env.name("gw")
    env.create(GW, gateway(g, ["10.6.5.1"], env.label))
    other = env.name("other")
    ensure_namespace(env.client, other)
    env.created.append((k8s.NAMESPACES, other, None))
    for i in range(5):
        make_pod(env.client, namespace, f"web-{i}", {"app": "web"}, f"10.244.7.{i + 1}", n1)
    make_pod(env.client, other, "web-x", {"app": "web"}, "10.244.8.1", n1)
    make_pod(env.client, namespace, "nolabel", {}, "10.244.9.1", n1)
    env.create(EP, policy("web", namespace, g, match={"app": "web"}))
    subnet = policy("bysubnet", namespace, g)
    subnet["spec"]["appliedTo"] = {"podSubnet": ["10.244.9.0/24"]}
    env.create(EP, subnet)
    env.controller("a", "--max-endpoints-per-slice", "2")

    def slices(name: str) -> list[dict[str, Any]]:
        return env.client.list(k8s.EGRESS_ENDPOINT_SLICES, namespace, label_selector=f"spidernet.io/policy-name={name}")[0]

    wait_for("3 slices", lambda: sum(len(s["endpoints"]) for s in slices("web")) == 5)
    web = slices("web")
    assert len(web) == 3 and all(len(s["endpoints"]) <= 2 for s in web)
    assert {e["ns"] for s in web for e in s["endpoints"]} == {namespace}
    assert web[0]["metadata"]["ownerReferences"][0]["kind"] == "EgressPolicy"
    assert web[0]["metadata"]["generateName"] == "web-"
    sub = wait_for("podSubnet slice", lambda: slices("bysubnet"))
    assert [e["pod"] for e in sub[0]["endpoints"]] == ["nolabel"]
    env.plane.kubectl("delete", "pod", "web-0", "-n", namespace, "--grace-period=0", "--force")  # no kubelet to finish it
    wait_for("pod removed", lambda: sum(len(s["endpoints"]) for s in slices("web")) == 4)
    env.client.delete(EP, "web", namespace)
    wait_for("slices deleted with the policy", lambda: not slices("web"))
    wait_for("gateway status without the policy", lambda: all(
        p["name"] != "web" for n in status_of(env.client, GW, g)["nodeList"] for e in n.get("eips") or [] for p in e["policies"]))


def test_cluster_info(env: Env) -> None:
    """I00001-I00005: node IPs, service CIDR from the API, pod CIDRs from Node.spec.podCIDRs,
    toggles and extraCidr."""
    n1 = env.node("n1", ip="192.168.77.1", pod_cidr="10.244.77.0/24")
    env.controller()
    info = wait_for("cluster info", lambda: (s := status_of(env.client, k8s.EGRESS_CLUSTER_INFOS, "default")).get("nodeIP", {}).get(n1) and s)
    assert info["nodeIP"][n1] == {"ipv4": ["192.168.77.1"]}
    assert info["clusterIP"]["ipv4"] and "10.244.77.0/24" in info["podCIDR"]["k8s"]["ipv4"]
    original = env.client.get(k8s.EGRESS_CLUSTER_INFOS, "default")["spec"]
    try:
        env.client.patch(k8s.EGRESS_CLUSTER_INFOS, "default", {"spec": {
            "autoDetect": {"clusterIP": False, "nodeIP": False, "podCidrMode": "k8s"}, "extraCidr": ["10.10.10.1", "10.20.0.0/16"]}})
        s = wait_for("toggled", lambda: (s := status_of(env.client, k8s.EGRESS_CLUSTER_INFOS, "default")).get("extraCidr") and
                     not s.get("nodeIP") and s)
        assert not s.get("clusterIP") and s["podCidrMode"] == "k8s" and s["extraCidr"] == ["10.10.10.1", "10.20.0.0/16"]
    finally:
        env.client.patch(k8s.EGRESS_CLUSTER_INFOS, "default", {"spec": {**original, "extraCidr": original.get("extraCidr")}})


def test_failover_spreads_cordon_moves_and_restart_keeps_everything(env: Env, namespace: str) -> None:
    """An expired agent Lease moves its node's EIPs, spread over the others; no flapping back;
    cordon and unlabel move EIPs; a controller restart moves nothing."""
    nodes = [env.node(f"n{i}") for i in range(3)]
    g = env.name("gw")
    env.create(GW, gateway(g, ["10.6.6.1-10.6.6.20"], env.label))
    for i in range(6):
        env.create(EP, policy(f"p{i}", namespace, g, egress_ip={"allocatorPolicy": "rr"}))
    ctl = env.controller()
    wait_for("6 EIPs over 3 nodes", lambda: sorted(len(v) for v in nodes_of(env, g).values()) == [2, 2, 2])
    before = nodes_of(env, g)
    victim = nodes[0]
    env.agents.stop(victim)
    after: dict[str, list[str]] = wait_for("failover", lambda: (m := nodes_of(env, g)) and not m[victim] and m)
    assert sorted(len(after[n]) for n in nodes[1:]) == [3, 3], after  # spread, not piled onto one node
    assert all_eips(after) == all_eips(before)  # same EIPs
    assert status_of(env.client, GW, g)["nodeList"][0]["status"] == "HeartbeatTimeout"
    # the Event is written after the status: poll for it (a CI run once listed before it was there)
    assert wait_for("EIPMoved event", lambda: any(
        e["reason"] == "EIPMoved"
        for e in env.client.list(k8s.EVENTS, "default", field_selector=f"involvedObject.name={g}")[0]))
    env.agents.start(victim)
    wait_for("victim Ready again", lambda: status_of(env.client, GW, g)["nodeList"][0]["status"] == "Ready")
    time.sleep(1.0)
    assert nodes_of(env, g) == after  # no fail-back
    # Restart: nothing moves, tunnels unchanged.
    tunnels = {n: status_of(env.client, k8s.EGRESS_TUNNELS, n) for n in nodes}
    gw_rv = env.client.get(GW, g)["metadata"]["resourceVersion"]
    ctl.stop()
    env.controller("b")
    time.sleep(3.0)  # the new leader has had time to act if it were going to
    assert nodes_of(env, g) == after and env.client.get(GW, g)["metadata"]["resourceVersion"] == gw_rv
    assert {n: status_of(env.client, k8s.EGRESS_TUNNELS, n) for n in nodes} == tunnels
    # Cordon (planned maintenance): the node's EIPs leave it; unlabelling does the same.
    busy = max(nodes[1:], key=lambda n: len(after[n]))
    env.client.patch(k8s.NODES, busy, {"spec": {"unschedulable": True}})
    wait_for("cordon moved EIPs", lambda: not nodes_of(env, g)[busy])
    env.client.patch(k8s.NODES, busy, {"spec": {"unschedulable": None}})
    other = next(n for n in nodes[1:] if n != busy)
    env.client.patch(k8s.NODES, other, {"metadata": {"labels": {"egw-test": None}}})
    wait_for("unlabel moved EIPs", lambda: other not in nodes_of(env, g) and sum(len(v) for v in nodes_of(env, g).values()) == 6)


def test_agents_stale_together_are_held_then_moved(env: Env, namespace: str) -> None:
    """Two of three agents stop renewing at the same moment (what a lagging API server looks like):
    their EIPs stay put for --agent-stale-hold, then move to the live node."""
    nodes = [env.node(f"s{i}") for i in range(3)]
    g = env.name("gw")
    env.create(GW, gateway(g, ["10.6.8.1-10.6.8.9"], env.label))
    for i in range(3):
        env.create(EP, policy(f"h{i}", namespace, g, egress_ip={"allocatorPolicy": "rr"}))
    env.controller("a", "--agent-stale-hold", "5")
    before = wait_for("3 EIPs over 3 nodes", lambda: (m := nodes_of(env, g)) and sorted(len(v) for v in m.values()) == [1, 1, 1] and m)
    env.agents.stop(nodes[0])
    env.agents.stop(nodes[1])
    stopped = time.monotonic()
    time.sleep(3.0)  # both Leases (1 s) have run out, the hold (5 s) has not
    assert nodes_of(env, g) == before
    after = wait_for("moved after the hold", lambda: (m := nodes_of(env, g)) and len(m.get(nodes[2], [])) == 3 and m, timeout=30)
    assert time.monotonic() - stopped >= 5.0, after
    assert all_eips(after) == all_eips(before)


def test_two_replicas_leader_killed(env: Env, namespace: str) -> None:
    """Two replicas: one leads; SIGKILL it and the other takes over after the Lease expires."""
    env.node("n1")
    g = env.name("gw")
    env.create(GW, gateway(g, ["10.6.7.1-10.6.7.9"], env.label))
    lease = env.name("leader")
    env.created.append((k8s.LEASES, lease, NAMESPACE))
    a = env.controller("a", lease=lease)
    b = env.controller("b", lease=lease)
    env.create(EP, policy("before", namespace, g))
    assigned(env, EP, "before", namespace)
    holder = wait_for("leader", lambda: env.client.get(k8s.LEASES, lease, NAMESPACE)["spec"].get("holderIdentity"))
    leader, standby = (a, b) if holder == a.identity else (b, a)
    leader.stop(kill=True)
    env.create(EP, policy("after", namespace, g))
    started = time.monotonic()
    assigned(env, EP, "after", namespace)
    took = time.monotonic() - started
    assert env.client.get(k8s.LEASES, lease, NAMESPACE)["spec"]["holderIdentity"] == standby.identity
    assert took < 20, took


def test_not_ready_and_deleted_nodes(env: Env, namespace: str) -> None:
    """A NotReady node loses its EIPs; a deleted node leaves the nodeList and loses its EgressTunnel."""
    n1, n2 = env.node("n1"), env.node("n2")
    g = env.name("gw")
    env.create(GW, gateway(g, ["10.6.8.1"], env.label))
    env.create(EP, policy("p", namespace, g))
    env.controller()
    assert assigned(env, EP, "p", namespace)["node"] == n1
    set_node_ready(env.client, n1, False)
    wait_for("moved off the NotReady node", lambda: status_of(env.client, EP, "p", namespace).get("node") == n2)
    wait_for("NodeNotReady in the nodeList",
             lambda: {n["name"]: n["status"] for n in status_of(env.client, GW, g).get("nodeList") or []}.get(n1) == "NodeNotReady")
    wait_for("tunnel", lambda: status_of(env.client, k8s.EGRESS_TUNNELS, n1).get("mark"))
    env.client.delete(k8s.NODES, n1)
    wait_for("tunnel deleted", lambda: _gone(env, k8s.EGRESS_TUNNELS, n1))
    wait_for("node left the nodeList", lambda: [n["name"] for n in status_of(env.client, GW, g)["nodeList"]] == [n2])


def test_probes_and_metrics(env: Env, namespace: str) -> None:
    """/healthz, /readyz and /metrics (allocations, moves, reconcile latency, queue depth, leadership)."""
    env.node("n1")
    g = env.name("gw")
    env.create(GW, gateway(g, ["10.6.9.1"], env.label))
    env.create(EP, policy("p", namespace, g))
    port = free_port()
    env.controller("a", "--health-address", f"127.0.0.1:{port}")

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    wait_for("/readyz", lambda: get("/readyz")[0] == 200)
    assert get("/healthz")[0] == 200
    assigned(env, EP, "p", namespace)
    text = wait_for("metrics", lambda: (m := get("/metrics")[1]) and "egress_controller_eip_allocations_total 1.0" in m and m)
    for name in ("egress_controller_is_leader 1.0", "egress_controller_reconcile_seconds_count", "egress_controller_queue_depth",
                 "egress_controller_eip_moves"):
        assert name in text
