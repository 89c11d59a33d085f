"""`helm uninstall`'s pre-delete hook on the real API server, under the real identities: the hook Job's
code (controller/uninstall.py) with the ServiceAccount and grants the chart renders for it, and the
agents' side (agent/uninstall.py reading the signal through the agent's informers, k8s_source's
confirmation) with pod-bound agent tokens under the agents' RBAC and node-claim policy. Every node
confirming ends the wait at once; a node that never does is named when the timeout ends, and the
Job still succeeds; the signal is withdrawn afterwards; the hook's identity can do nothing else."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from devtools.devkube.controlplane import ControlPlane
from egress_cni import k8s
from egress_cni.agent.k8s_source import LEASE_PREFIX, GatewayLease, KubernetesSource, confirm_uninstalled
from egress_cni.agent.uninstall import requested
from egress_cni.api.names import ANNOTATION_UNINSTALL, ANNOTATION_UNINSTALLED
from egress_cni.controller.liveness import AgentLiveness
from egress_cni.controller.uninstall import AGENT_SELECTOR, NodeUninstall
from tests.apiserver.test_rbac import AGENT_SA, NS, eligible, forbidden, installed_objects, node_claim_active
from tests.controller.cluster import delete_quietly, make_node, wait_for
from tests.harness.chart import helm_or_skip, render

pytestmark = [pytest.mark.apiserver, pytest.mark.timeout(300)]

HOOK_SA = "egressgateway-uninstall"


def hook_identity(helm: str) -> list[dict[str, Any]]:
    """The hook's ServiceAccount and grants as the chart renders them into NS (not its Job: no
    kube-controller-manager here, the test runs the Job's code itself under that ServiceAccount)."""
    result = render.template(helm, ["--show-only", "templates/uninstall-hook.yaml"], NS)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] != "Job"]
    for d in docs:  # applied as plain objects here; Helm would create them as hooks
        d["metadata"].pop("annotations", None)
    return docs


@dataclass
class Env:
    plane: ControlPlane
    admin: k8s.Client
    nodes: tuple[str, str, str]  # a: a gateway agent holding a Lease, b: a worker agent (no Lease), c: down

    def agent(self, node: str) -> k8s.Client:
        path = self.plane.service_account_kubeconfig(NS, AGENT_SA, create=False, bound=("Pod", f"agent-{node}"))
        return k8s.Client.from_kubeconfig(str(path), component=f"agent-{node}")

    def job(self) -> k8s.Client:
        path = self.plane.service_account_kubeconfig(NS, HOOK_SA, create=False)
        return k8s.Client.from_kubeconfig(str(path), component=HOOK_SA)

    def annotations(self) -> dict[str, str]:
        return dict(self.admin.get(k8s.EGRESS_CLUSTER_INFOS, "default")["metadata"].get("annotations") or {})

    def lease(self, node: str) -> dict[str, Any]:
        return self.admin.get(k8s.LEASES, f"{LEASE_PREFIX}{node}", NS)


@pytest.fixture(scope="module")
def env(control_plane: ControlPlane) -> Iterator[Env]:
    helm = helm_or_skip()
    admin = k8s.Client.from_kubeconfig(str(control_plane.kubeconfig))
    suffix = uuid.uuid4().hex[:6]
    nodes = (f"uninst-a-{suffix}", f"uninst-b-{suffix}", f"uninst-c-{suffix}")
    objects = json.dumps({"apiVersion": "v1", "kind": "List", "items": installed_objects() + hook_identity(helm)})
    created_info = False
    try:
        control_plane.apply_yaml(objects)
        try:
            admin.get(k8s.EGRESS_CLUSTER_INFOS, "default")
        except k8s.NotFound:
            admin.create(k8s.EGRESS_CLUSTER_INFOS, {"apiVersion": k8s.EGRESS_CLUSTER_INFOS.api_version, "kind": "EgressClusterInfo",
                                                    "metadata": {"name": "default"}, "spec": {}})
            created_info = True
        for node in nodes:
            make_node(admin, node, {"egw-uninstall": suffix})
            # the DaemonSet's pod on that node, with its label: the Job waits for the nodes these run on
            admin.create(k8s.PODS, {"apiVersion": "v1", "kind": "Pod",
                                    "metadata": {"name": f"agent-{node}", "namespace": NS,
                                                 "labels": {"app.kubernetes.io/name": "egressgateway-agent"}},
                                    "spec": {"nodeName": node, "serviceAccountName": AGENT_SA, "automountServiceAccountToken": False,
                                             "containers": [{"name": "agent", "image": "egressgateway:dev"}]}}, namespace=NS)
        e = Env(control_plane, admin, nodes)
        job = e.job()
        unbound = k8s.Client.from_kubeconfig(str(control_plane.service_account_kubeconfig(NS, AGENT_SA, create=False)))

        def grants_active() -> bool:
            try:
                job.get(k8s.EGRESS_CLUSTER_INFOS, "default")
                job.list(k8s.LEASES, NS)
            except k8s.Forbidden:
                return False
            return node_claim_active(unbound, nodes[0])

        wait_for("the hook's and the agents' grants and the node-claim policy to take effect", grants_active)
        yield e
    finally:
        for node in nodes:
            control_plane.kubectl("delete", "pod", f"agent-{node}", "-n", NS, "--grace-period=0", "--force", "--ignore-not-found",
                                  check=False)
            delete_quietly(admin, k8s.LEASES, f"{LEASE_PREFIX}{node}", NS)
            delete_quietly(admin, k8s.NODES, node)
        admin.patch(k8s.EGRESS_CLUSTER_INFOS, "default", {"metadata": {"annotations": {ANNOTATION_UNINSTALL: None}}})
        if created_info:
            try:
                admin.delete(k8s.EGRESS_CLUSTER_INFOS, "default")
            except k8s.APIError:
                pass  # a webhook of another module may refuse it; an empty default harms nobody
        control_plane.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", input=objects, check=False)


class AgentSide:
    """One node's agent as far as the uninstall goes: its real informers under its pod-bound token
    see the signal; then it confirms in its Lease (the dataplane part is tests/agent/test_netns_uninstall.py)."""

    def __init__(self, env: Env, node: str) -> None:
        self.node, self.client = node, env.agent(node)
        self.source = KubernetesSource(self.client, node)
        self.confirmed = ""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop = threading.Event()

    def start(self) -> AgentSide:
        self.source.start(lambda: None)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            token = requested(self.source.stores)
            if token:
                confirm_uninstalled(self.client, self.node, NS, token)
                self.confirmed = token
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.source.stop()


def run_job(env: Env, timeout: float, agents: tuple[str, ...] = ()) -> tuple[NodeUninstall, set[str], float, set[str]]:
    """The Job's code under its ServiceAccount, with the agents of `agents` running meanwhile: the
    nodes it names as not confirmed, how long it took, and the tokens the agents confirmed."""
    sides = [AgentSide(env, n).start() for n in agents]
    try:
        wait_for("the agents' informers to sync", lambda: all(side.source.synced for side in sides))
        job = NodeUninstall(env.job(), NS, uuid.uuid4().hex)
        started = time.monotonic()
        missing = job.run(timeout=timeout, poll=0.2)
        took = time.monotonic() - started
    finally:
        for side in sides:
            side.stop()
    return job, missing, took, {side.confirmed for side in sides}


def test_every_node_confirms_and_the_wait_ends_at_once(env: Env) -> None:
    a, b, _ = env.nodes
    # a is a gateway node: its agent holds its Lease, with EIPs reported
    gateway = GatewayLease(env.agent(a), a, NS, 20, gateways=lambda: eligible(a))
    gateway.report(eips=lambda: ["10.6.0.9"])
    assert gateway.try_acquire_or_renew()
    job, missing, took, confirmed = run_job(env, 60, env.nodes)
    assert missing == set() and took < 30, (missing, took)
    assert confirmed == {job.token}
    assert ANNOTATION_UNINSTALL not in env.annotations()  # withdrawn
    held = env.lease(a)
    assert held["metadata"]["annotations"][ANNOTATION_UNINSTALLED] == job.token
    assert held["metadata"]["annotations"]["egressgateway.spidernet.io/eips"] == ""
    assert held["spec"].get("holderIdentity") is None  # released on the way
    assert env.lease(b)["metadata"]["annotations"][ANNOTATION_UNINSTALLED] == job.token  # created: b held none
    live = AgentLiveness(prefix=LEASE_PREFIX)  # the controller reads these as no Lease at all
    for node in env.nodes:
        live.observe(f"{LEASE_PREFIX}{node}", env.lease(node), time.monotonic())
    assert live.evaluate(time.monotonic()).alive == {}


def test_a_node_that_never_confirms_is_named_and_the_job_still_ends(env: Env) -> None:
    a, b, c = env.nodes  # c is down: its pod exists, its agent never answers; its Lease has the last run's token
    job, missing, took, confirmed = run_job(env, 6, (a, b))
    assert missing == {c} and 6 <= took < 20, (missing, took)
    assert confirmed == {job.token}  # a fresh token: the last run's confirmations do not count
    assert env.lease(c)["metadata"]["annotations"][ANNOTATION_UNINSTALLED] != job.token
    assert ANNOTATION_UNINSTALL not in env.annotations()
    pods, _ = env.admin.list(k8s.PODS, NS, label_selector=AGENT_SELECTOR)
    assert {p["spec"]["nodeName"] for p in pods} >= set(env.nodes)


def test_a_retried_job_keeps_the_token_agents_already_confirmed(env: Env) -> None:
    env.admin.patch(k8s.EGRESS_CLUSTER_INFOS, "default", {"metadata": {"annotations": {ANNOTATION_UNINSTALL: "first-pod"}}})
    for node in env.nodes:  # all confirmed the first pod's token before it crashed; they are idle now
        confirm_uninstalled(env.agent(node), node, NS, "first-pod")
    job, missing, took, _ = run_job(env, 30)
    assert job.token == "first-pod" and missing == set() and took < 10


def test_the_hooks_identity_may_signal_and_read_and_nothing_else(env: Env) -> None:
    job, a = env.job(), env.nodes[0]
    job.get(k8s.EGRESS_CLUSTER_INFOS, "default")
    job.patch(k8s.EGRESS_CLUSTER_INFOS, "default", {"metadata": {"annotations": {ANNOTATION_UNINSTALL: None}}})
    job.list(k8s.PODS, NS, label_selector=AGENT_SELECTOR)
    job.list(k8s.LEASES, NS)
    forbidden(lambda: job.list(k8s.EGRESS_CLUSTER_INFOS))
    forbidden(lambda: job.get(k8s.EGRESS_CLUSTER_INFOS, "other"))
    forbidden(lambda: job.patch(k8s.EGRESS_CLUSTER_INFOS, "other", {"metadata": {"annotations": {"x": "y"}}}))
    forbidden(lambda: job.replace(k8s.EGRESS_CLUSTER_INFOS, env.admin.get(k8s.EGRESS_CLUSTER_INFOS, "default")))
    forbidden(lambda: job.patch_status(k8s.EGRESS_CLUSTER_INFOS, "default", {"status": {}}))
    forbidden(lambda: job.delete(k8s.EGRESS_CLUSTER_INFOS, "default"))
    forbidden(lambda: job.list(k8s.PODS))  # cluster-wide
    forbidden(lambda: job.list(k8s.PODS, "default"))
    forbidden(lambda: job.get(k8s.PODS, f"agent-{a}", NS))
    forbidden(lambda: job.delete(k8s.PODS, f"agent-{a}", NS))
    forbidden(lambda: job.list(k8s.LEASES))
    forbidden(lambda: job.get(k8s.LEASES, f"{LEASE_PREFIX}{a}", NS))
    forbidden(lambda: job.replace(k8s.LEASES, env.lease(a)))
    forbidden(lambda: job.delete(k8s.LEASES, f"{LEASE_PREFIX}{a}", NS))
    forbidden(lambda: job.list(k8s.NODES))
    forbidden(lambda: job.patch(k8s.EGRESS_TUNNELS, a, {"metadata": {"labels": {"x": "y"}}}))


def test_an_agent_confirms_only_for_its_own_node(env: Env) -> None:
    a, b, _ = env.nodes
    denied = forbidden(lambda: confirm_uninstalled(env.agent(a), b, NS, "forged"))
    assert f"may write only Lease {LEASE_PREFIX}{a}, not {LEASE_PREFIX}{b}" in str(denied)
    assert env.lease(b)["metadata"]["annotations"].get(ANNOTATION_UNINSTALLED) != "forged"
