"""Least privilege, proved on the real API server: each component runs under its own ServiceAccount
with exactly the RBAC (and the agents' node-claim policy) of manifests/, every call its code makes
is allowed, the grants it lost are Forbidden, and an agent's token writes only its own node's
Lease and EgressTunnel status (docs/rbac.md)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.devkube.controlplane import ControlPlane
from egress_cni import k8s
from egress_cni.agent.k8s_source import (
    LEASE_PREFIX,
    GatewayLease,
    KubernetesSource,
    KubernetesTunnelReporter,
    confirm_uninstalled,
)
from egress_cni.api.model import EgressGateway
from egress_cni.api.names import ANNOTATION_UNINSTALLED
from tests.controller.cluster import (
    ControllerProcess,
    delete_quietly,
    ensure_namespace,
    gateway,
    make_node,
    make_pod,
    policy,
    wait_for,
)
from webhook import certs

pytestmark = pytest.mark.apiserver

REPO = Path(__file__).resolve().parents[2]
NS = "egressgateway-system"
AGENT_SA, CONTROLLER_SA, WEBHOOK_SA = "egressgateway-agent", "egressgateway-controller", "egress-webhook"
LEADER_LEASE = "egressgateway-controller"  # the one Lease name the controller's Role lets it write
INSTALLED_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                   "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
NO_CLAIM = "the token has no node claim"
CRDS = k8s.ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False)


def installed_objects() -> list[dict[str, Any]]:
    """The manifests' identities, RBAC and admission policies (workloads are not started here)."""
    files = ("controller.yaml", "agent.yaml", "agent-node-claim.yaml", "webhook.yaml")
    docs = [d for f in files for d in yaml.safe_load_all((REPO / "manifests" / f).read_text()) if d]
    return sorted((d for d in docs if d["kind"] in INSTALLED_KINDS), key=lambda d: INSTALLED_KINDS.index(d["kind"]))


def node_claim_active(unbound: k8s.Client, node: str) -> bool:
    """The agents' Lease grant and the node-claim policy are in force: a token without the claim is
    refused by the policy (not by RBAC, not let through)."""
    try:
        k8s.LeaseKeeper(unbound, f"{LEASE_PREFIX}{node}", NS, node, 20).try_acquire_or_renew()
    except k8s.Forbidden as exc:
        return NO_CLAIM in str(exc)
    return False


def forbidden(call: Callable[[], Any]) -> k8s.Forbidden:
    with pytest.raises(k8s.Forbidden) as caught:
        call()
    return caught.value


@dataclass
class Cluster:
    plane: ControlPlane
    admin: k8s.Client
    suffix: str
    node_a: str
    node_b: str

    def client(self, sa: str, bound: tuple[str, str] | None = None) -> k8s.Client:
        path = self.plane.service_account_kubeconfig(NS, sa, create=False, bound=bound)
        return k8s.Client.from_kubeconfig(str(path), component=sa)


def tunnel(name: str) -> dict[str, Any]:
    return {"apiVersion": k8s.EGRESS_TUNNELS.api_version, "kind": "EgressTunnel", "metadata": {"name": name}, "spec": {}}


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Iterator[Cluster]:
    plane = control_plane
    admin = k8s.Client.from_kubeconfig(str(plane.kubeconfig))
    suffix = uuid.uuid4().hex[:6]
    env = Cluster(plane, admin, suffix, f"rbac-a-{suffix}", f"rbac-b-{suffix}")
    objects = json.dumps({"apiVersion": "v1", "kind": "List", "items": installed_objects()})
    try:
        plane.apply_yaml(objects)
        for node, mac in ((env.node_a, "02:00:00:00:00:0a"), (env.node_b, "02:00:00:00:00:0b")):
            make_node(admin, node, {"egw-rbac": suffix})
            admin.create(k8s.EGRESS_TUNNELS, tunnel(node))
            admin.patch_status(k8s.EGRESS_TUNNELS, node, {"status": {
                "tunnel": {"ipv4": "192.0.2.1", "mac": mac}, "mark": "0x26000000", "phase": "Init"}})
            # the agent DaemonSet's pod on that node: its projected token carries the node claim
            admin.create(k8s.PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"agent-{node}", "namespace": NS},
                                    "spec": {"nodeName": node, "serviceAccountName": AGENT_SA, "automountServiceAccountToken": False,
                                             "containers": [{"name": "agent", "image": "egressgateway:dev"}]}}, namespace=NS)
        # RBAC and admission policies reach the authorizer and the admission plugin through informers
        unbound = env.client(AGENT_SA)
        wait_for("the agent's Role and the node-claim policy to take effect", lambda: node_claim_active(unbound, env.node_a))
        yield env
    finally:
        for node in (env.node_a, env.node_b):
            plane.kubectl("delete", "pod", f"agent-{node}", "-n", NS, "--grace-period=0", "--force", "--ignore-not-found",
                          check=False)
            for rt, name, ns in ((k8s.LEASES, f"{LEASE_PREFIX}{node}", NS), (k8s.EGRESS_TUNNELS, node, None), (k8s.NODES, node, None)):
                delete_quietly(admin, rt, name, ns)
        delete_quietly(admin, k8s.LEASES, LEADER_LEASE, NS)
        plane.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", input=objects, check=False)


@pytest.fixture(scope="module")
def agent_a(cluster: Cluster) -> k8s.Client:
    return cluster.client(AGENT_SA, ("Pod", f"agent-{cluster.node_a}"))


def eligible(node: str) -> list[EgressGateway]:
    return [EgressGateway.parse({"apiVersion": k8s.EGRESS_GATEWAYS.api_version, "kind": "EgressGateway",
                                 "metadata": {"name": "gw"}, "status": {"nodeList": [{"name": node}]}})]


# --- agent -------------------------------------------------------------------------------------------


def test_a_pod_bound_agent_token_carries_its_node(cluster: Cluster) -> None:
    path = cluster.plane.service_account_kubeconfig(NS, AGENT_SA, create=False, bound=("Pod", f"agent-{cluster.node_a}"))
    info = cluster.plane.kubectl_json("auth", "whoami", kubeconfig=path)["status"]["userInfo"]
    assert info["username"] == f"system:serviceaccount:{NS}:{AGENT_SA}"
    assert info["extra"]["authentication.kubernetes.io/node-name"] == [cluster.node_a]


def test_the_agent_code_paths_are_allowed(cluster: Cluster, agent_a: k8s.Client) -> None:
    node = cluster.node_a
    source = KubernetesSource(agent_a, node)
    source.start(lambda: None)
    try:
        wait_for("every agent informer to list and watch", lambda: source.synced)
    finally:
        source.stop()
    assert all(i.healthy for i in source.informers.values())

    KubernetesTunnelReporter(agent_a).report_tunnel(node, {"name": "eth0", "ipv4": "192.0.2.10"}, ready=True)
    status = cluster.admin.get(k8s.EGRESS_TUNNELS, node)["status"]
    assert status["tunnel"] == {"ipv4": "192.0.2.1", "mac": "02:00:00:00:00:0a", "parent": {"name": "eth0", "ipv4": "192.0.2.10"}}
    assert status["phase"] == "Ready" and status["mark"] == "0x26000000"

    lease = GatewayLease(agent_a, node, NS, 20, gateways=lambda: eligible(node))
    assert lease.try_acquire_or_renew()  # get (404), create
    assert lease.try_acquire_or_renew()  # get, update
    assert cluster.admin.get(k8s.LEASES, f"{LEASE_PREFIX}{node}", NS)["spec"]["holderIdentity"] == node
    lease.release()  # get, update
    assert cluster.admin.get(k8s.LEASES, f"{LEASE_PREFIX}{node}", NS)["spec"].get("holderIdentity") is None
    confirm_uninstalled(agent_a, node, NS, "t")  # the uninstall hook's confirmation: get, update (create without a Lease)
    assert cluster.admin.get(k8s.LEASES, f"{LEASE_PREFIX}{node}", NS)["metadata"]["annotations"][ANNOTATION_UNINSTALLED] == "t"
    delete_quietly(cluster.admin, k8s.LEASES, f"{LEASE_PREFIX}{node}", NS)  # the controller test below needs a live one


def test_an_agent_cannot_write_another_nodes_lease_or_tunnel(cluster: Cluster, agent_a: k8s.Client) -> None:
    a, b = cluster.node_a, cluster.node_b
    denied = forbidden(lambda: KubernetesTunnelReporter(agent_a).report_tunnel(b, {"ipv4": "192.0.2.66"}, ready=True))
    assert f"egressgateway-agent on node {a} may write only EgressTunnel {a}, not {b}" in str(denied)
    assert "parent" not in cluster.admin.get(k8s.EGRESS_TUNNELS, b)["status"]["tunnel"]

    other = k8s.LeaseKeeper(agent_a, f"{LEASE_PREFIX}{b}", NS, b, 20)
    denied = forbidden(other.try_acquire_or_renew)  # create
    assert f"may write only Lease {LEASE_PREFIX}{a}, not {LEASE_PREFIX}{b}" in str(denied)
    assert k8s.LeaseKeeper(cluster.admin, f"{LEASE_PREFIX}{b}", NS, b, 20).try_acquire_or_renew()
    forbidden(other.try_acquire_or_renew)  # update: the Lease exists now, held under b's name
    other.release()  # logged, not raised
    assert cluster.admin.get(k8s.LEASES, f"{LEASE_PREFIX}{b}", NS)["spec"]["holderIdentity"] == b

    assert k8s.LeaseKeeper(cluster.admin, LEADER_LEASE, NS, "someone", 20).try_acquire_or_renew()
    leader = cluster.admin.get(k8s.LEASES, LEADER_LEASE, NS)
    leader["spec"]["holderIdentity"] = f"agent-{a}"
    try:
        denied = forbidden(lambda: agent_a.replace(k8s.LEASES, leader))
        assert f"not {LEADER_LEASE}" in str(denied)
    finally:
        delete_quietly(cluster.admin, k8s.LEASES, LEADER_LEASE, NS)  # the controller test would wait out its 20 s


def test_an_agent_writes_only_parent_and_phase_of_its_own_tunnel(cluster: Cluster, agent_a: k8s.Client) -> None:
    a = cluster.node_a
    for forged in ({"tunnel": {"mac": "02:00:00:00:00:66"}}, {"tunnel": {"ipv4": "192.0.2.66"}}, {"mark": "0x1"},
                   {"lastHeartbeatTime": "2030-01-01T00:00:00Z"}):
        denied = forbidden(lambda f=forged: agent_a.patch_status(k8s.EGRESS_TUNNELS, a, {"status": f}))  # type: ignore[misc]
        assert "an agent writes only status.tunnel.parent and status.phase" in str(denied)
    status = cluster.admin.get(k8s.EGRESS_TUNNELS, a)["status"]
    assert status["tunnel"]["mac"] == "02:00:00:00:00:0a" and status["mark"] == "0x26000000"


@pytest.mark.parametrize("bound", [None, "Secret"])
def test_an_agent_token_without_a_node_claim_writes_nothing(cluster: Cluster, bound: str | None) -> None:
    if bound:  # bound to an object that is not on a node: no claim either
        secret = f"rbac-{cluster.suffix}"
        cluster.admin.create(k8s.SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret, "namespace": NS}},
                             namespace=NS)
    client = cluster.client(AGENT_SA, (bound, secret) if bound else None)
    try:
        a = cluster.node_a
        assert NO_CLAIM in str(forbidden(lambda: KubernetesTunnelReporter(client).report_tunnel(a, {"ipv4": "192.0.2.9"}, ready=True)))
        assert NO_CLAIM in str(forbidden(k8s.LeaseKeeper(client, f"{LEASE_PREFIX}{a}", NS, a, 20).try_acquire_or_renew))
        client.list(k8s.EGRESS_POLICIES)  # reads are RBAC's alone
    finally:
        if bound:
            delete_quietly(cluster.admin, k8s.SECRETS, secret, NS)


def test_a_node_bound_agent_token_writes_its_node_as_the_sandbox_does(cluster: Cluster) -> None:
    client = cluster.client(AGENT_SA, ("Node", cluster.node_b))
    KubernetesTunnelReporter(client).report_tunnel(cluster.node_b, {"name": "eth0", "ipv4": "192.0.2.11"}, ready=False)
    assert "may write only EgressTunnel" in str(forbidden(
        lambda: KubernetesTunnelReporter(client).report_tunnel(cluster.node_a, {"ipv4": "192.0.2.11"}, ready=False)))


def test_the_agent_lost_the_grants_it_never_used(cluster: Cluster, agent_a: k8s.Client) -> None:
    a = cluster.node_a
    forbidden(lambda: agent_a.list(k8s.NODES))
    forbidden(lambda: agent_a.get(k8s.NODES, a))
    forbidden(lambda: agent_a.create(k8s.EVENTS, {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "x.", "namespace": NS},
                                                  "involvedObject": {"kind": "Node", "name": a}, "reason": "X", "message": "x"},
                                     namespace=NS))
    forbidden(lambda: agent_a.get(k8s.EGRESS_POLICIES, "any", "default"))  # informers list and watch; no get
    forbidden(lambda: agent_a.patch(k8s.EGRESS_TUNNELS, a, {"metadata": {"labels": {"x": "y"}}}))  # not the spec
    forbidden(lambda: agent_a.replace_status(k8s.EGRESS_TUNNELS, cluster.admin.get(k8s.EGRESS_TUNNELS, a)))  # patch only
    forbidden(lambda: agent_a.delete(k8s.LEASES, f"{LEASE_PREFIX}{a}", NS))
    forbidden(lambda: agent_a.list(k8s.LEASES, NS))
    forbidden(lambda: agent_a.patch(k8s.LEASES, f"{LEASE_PREFIX}{a}", {"metadata": {"labels": {"x": "y"}}}, NS))


# --- controller --------------------------------------------------------------------------------------


def test_the_controller_runs_under_its_service_account(cluster: Cluster, tmp_path: Path) -> None:
    """The real controller process: leader Lease, informers, status, tunnels, slices, cluster info,
    Events; the log shows no Forbidden."""
    admin, a = cluster.admin, cluster.node_a
    path = cluster.plane.service_account_kubeconfig(NS, CONTROLLER_SA, create=False)
    ns = f"rbac-{cluster.suffix}"
    ensure_namespace(admin, ns)
    gw, ghost = f"rbac-{cluster.suffix}", f"rbac-ghost-{cluster.suffix}"
    admin.create(k8s.EGRESS_GATEWAYS, gateway(gw, ["10.6.200.1-10.6.200.9"], {"egw-rbac": cluster.suffix}))
    admin.create(k8s.EGRESS_TUNNELS, tunnel(ghost))  # a tunnel of no node: the controller deletes it
    admin.create(k8s.EGRESS_POLICIES, policy("p", ns, gw))
    make_pod(admin, ns, "pod-1", {"app": "p"}, "10.244.9.1", a)
    k8s.LeaseKeeper(admin, f"{LEASE_PREFIX}{a}", NS, a, 60).try_acquire_or_renew()
    proc = ControllerProcess(str(path), tmp_path, "rbac", "--leader-lease", LEADER_LEASE)
    try:
        status = wait_for("the policy's EIP", lambda: (admin.get(k8s.EGRESS_POLICIES, "p", ns).get("status") or {}).get("eip"),
                          timeout=40)
        assert status["ipv4"].startswith("10.6.200.")

        def slices() -> list[dict[str, Any]]:
            return admin.list(k8s.EGRESS_ENDPOINT_SLICES, ns)[0]

        wait_for("the policy's slice", lambda: [s for s in slices() if len(s.get("endpoints") or []) == 1])
        make_pod(admin, ns, "pod-2", {"app": "p"}, "10.244.9.2", a)
        wait_for("the slice updated", lambda: [s for s in slices() if len(s.get("endpoints") or []) == 2])
        assert wait_for("the gateway's status", lambda: admin.get(k8s.EGRESS_GATEWAYS, gw).get("status", {}).get("nodeList"))
        assert "egressgateway.spidernet.io/egressgateway" in admin.get(k8s.EGRESS_GATEWAYS, gw)["metadata"]["finalizers"]
        wait_for("the orphan tunnel deleted", lambda: not admin.list(k8s.EGRESS_TUNNELS, field_selector=f"metadata.name={ghost}")[0])
        wait_for("the cluster info status", lambda: (admin.get(k8s.EGRESS_CLUSTER_INFOS, "default").get("status") or {}))
        wait_for("an Event about the policy", lambda: admin.list(k8s.EVENTS, ns, field_selector="involvedObject.name=p")[0])
        admin.delete(k8s.EGRESS_POLICIES, "p", ns)
        wait_for("the slice pruned", lambda: not slices())
        assert admin.get(k8s.LEASES, LEADER_LEASE, NS)["spec"]["holderIdentity"] == "rbac"
    finally:
        proc.stop()
        log = proc.log_path.read_text(errors="replace")
        admin.patch(k8s.EGRESS_GATEWAYS, gw, {"metadata": {"finalizers": None}})
        for rt, name, where in ((k8s.EGRESS_POLICIES, "p", ns), (k8s.EGRESS_GATEWAYS, gw, None), (k8s.EGRESS_TUNNELS, ghost, None),
                                (k8s.NAMESPACES, ns, None)):
            delete_quietly(admin, rt, name, where)
    assert "Forbidden" not in log and "forbidden" not in log and "event not recorded" not in log, log[-3000:]


def test_the_controller_may_read_its_optional_apis_and_the_kubernetes_service_only(cluster: Cluster) -> None:
    """Checked directly: a Forbidden optional API would be skipped silently (watchers.start_optional)."""
    controller = cluster.client(CONTROLLER_SA)
    controller.list(k8s.SERVICE_CIDRS)
    with pytest.raises(k8s.NotFound):  # authorized (else 403), not served here: no Calico
        controller.list(k8s.CALICO_IPPOOLS)
    assert controller.get(k8s.SERVICES, "kubernetes", "default")["spec"]["clusterIP"]
    forbidden(lambda: controller.list(k8s.SERVICES, "default"))
    forbidden(lambda: controller.list(k8s.SERVICES))
    forbidden(lambda: controller.get(k8s.SERVICES, "egress-webhook", NS))


def test_the_controller_lost_the_grants_it_never_used(cluster: Cluster) -> None:
    controller, a = cluster.client(CONTROLLER_SA), cluster.node_a
    body = policy(f"forbidden-{cluster.suffix}", "default", "default")
    forbidden(lambda: controller.create(k8s.EGRESS_POLICIES, body))
    forbidden(lambda: controller.delete(k8s.EGRESS_POLICIES, "any", "default"))
    forbidden(lambda: controller.patch(k8s.EGRESS_POLICIES, "any", {"metadata": {"labels": {"x": "y"}}}, "default"))
    forbidden(lambda: controller.create(k8s.EGRESS_CLUSTER_POLICIES, policy(f"forbidden-{cluster.suffix}", None, "default")))
    forbidden(lambda: controller.delete(k8s.EGRESS_CLUSTER_POLICIES, "any"))
    forbidden(lambda: controller.create(k8s.EGRESS_GATEWAYS, gateway(f"forbidden-{cluster.suffix}", ["10.6.201.1"], {})))
    forbidden(lambda: controller.delete(k8s.EGRESS_GATEWAYS, "any"))
    forbidden(lambda: controller.delete(k8s.EGRESS_CLUSTER_INFOS, "default"))
    forbidden(lambda: controller.list(CRDS))
    forbidden(lambda: controller.get(CRDS, "egresspolicies.egressgateway.spidernet.io"))
    forbidden(lambda: controller.list(k8s.LEASES))  # cluster-wide
    forbidden(lambda: controller.list(k8s.LEASES, "default"))
    k8s.LeaseKeeper(cluster.admin, f"{LEASE_PREFIX}{a}", NS, a, 20).try_acquire_or_renew()
    lease = cluster.admin.get(k8s.LEASES, f"{LEASE_PREFIX}{a}", NS)
    forbidden(lambda: controller.replace(k8s.LEASES, lease))  # an agent's Lease: read, never written
    forbidden(lambda: controller.delete(k8s.LEASES, LEADER_LEASE, NS))
    forbidden(lambda: controller.get(k8s.NODES, a))  # informers list and watch
    forbidden(lambda: controller.patch(k8s.NODES, a, {"metadata": {"labels": {"x": "y"}}}))
    forbidden(lambda: controller.list(k8s.SECRETS, NS))


# --- webhook -----------------------------------------------------------------------------------------


def test_the_webhook_calls_are_allowed_and_nothing_else(cluster: Cluster) -> None:
    """Its informers, the gateway read-through, its Secret and its two configurations' caBundle
    (tests/webhook/test_apiserver.py runs the whole webhook under this ServiceAccount too)."""
    webhook, admin = cluster.client(WEBHOOK_SA), cluster.admin
    for rt in (k8s.NAMESPACES, k8s.EGRESS_GATEWAYS, k8s.EGRESS_POLICIES, k8s.EGRESS_CLUSTER_POLICIES, k8s.EGRESS_CLUSTER_INFOS):
        webhook.list(rt)
    with pytest.raises(k8s.NotFound):
        webhook.get(k8s.EGRESS_GATEWAYS, f"absent-{cluster.suffix}")
    secret = "egress-webhook-tls"
    configs = ((k8s.MUTATING_WEBHOOKS, "egressgateway-mutating"), (k8s.VALIDATING_WEBHOOKS, "egressgateway-validating"))
    present = {name for rt, name in configs if admin.list(rt, field_selector=f"metadata.name={name}")[0]}
    if present or admin.list(k8s.SECRETS, NS, field_selector=f"metadata.name={secret}")[0]:
        pytest.skip("another test's webhook owns the configurations or the Secret")
    hooks = {"sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": "Ignore",
             "clientConfig": {"url": "https://127.0.0.1:1/none"},
             "rules": [{"apiGroups": ["rbac-test.invalid"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["none"]}]}
    for rt, name in configs:
        admin.create(rt, {"apiVersion": rt.api_version, "kind": rt.kind, "metadata": {"name": name},
                          "webhooks": [{"name": "none.rbac-test.invalid", **hooks}]})
    try:
        bundle = certs.ensure_secret(webhook, NS, secret, ["egress-webhook.egressgateway-system.svc"])  # get (404), create
        certs.ensure_secret(webhook, NS, secret, ["egress-webhook.egressgateway-system.svc", "another.svc"])  # get, update
        certs.patch_ca_bundle(webhook, configs, bundle.ca_pem)  # get, update
        assert all(admin.get(rt, name)["webhooks"][0]["clientConfig"].get("caBundle") for rt, name in configs)
        forbidden(lambda: webhook.list(k8s.SECRETS, NS))
        forbidden(lambda: webhook.get(k8s.SECRETS, "other", NS))
        forbidden(lambda: webhook.delete(k8s.SECRETS, secret, NS))
        forbidden(lambda: webhook.list(k8s.MUTATING_WEBHOOKS))
        forbidden(lambda: webhook.get(k8s.VALIDATING_WEBHOOKS, "other"))
        forbidden(lambda: webhook.get(k8s.EGRESS_POLICIES, "any", "default"))
        forbidden(lambda: webhook.patch_status(k8s.EGRESS_GATEWAYS, "any", {"status": {}}))
        forbidden(lambda: webhook.list(k8s.PODS))
    finally:
        for rt, name in configs:
            delete_quietly(admin, rt, name)
        delete_quietly(admin, k8s.SECRETS, secret, NS)
