"""kube-controller-manager + kube-scheduler on the session plane, and acting as a ServiceAccount."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import yaml

from devtools.devkube.controlplane import ControlPlane
from tests.support.seeds import walkthrough_text

pytestmark = pytest.mark.apiserver

T = TypeVar("T")
TIMEOUT = 90.0  # generous: the machine is shared and loaded


def eventually(probe: Callable[[], T | None], what: str, timeout: float = TIMEOUT) -> T:
    """Poll until probe returns something truthy (controllers act asynchronously)."""
    deadline, delay = time.monotonic() + timeout, 0.1
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def walkthrough_deployment() -> dict[str, Any]:
    text = walkthrough_text().split("cat <<EOF | kubectl create -f -\n", 1)[1].split("\nEOF\n", 1)[0]
    deployment: dict[str, Any] = yaml.safe_load(text)
    assert deployment["kind"] == "Deployment"
    return deployment


@pytest.fixture
def fake_node(control_plane_full: ControlPlane) -> Iterator[str]:
    name = f"fake-node-{uuid.uuid4().hex[:8]}"
    control_plane_full.add_fake_node(name, {"egw-test/node": name})
    yield name
    control_plane_full.kubectl("delete", "node", name, "--ignore-not-found", check=False)


def test_deployment_gets_replicaset_and_pods_scheduled_to_a_ready_node(
    control_plane_full: ControlPlane, namespace: str, fake_node: str,
) -> None:
    plane = control_plane_full
    deployment = walkthrough_deployment()
    deployment["metadata"]["namespace"] = namespace
    # Pin to our node: other tests may register Ready fake nodes on the same session plane.
    pod_spec = deployment["spec"]["template"]["spec"]
    pod_spec["nodeSelector"] = {"egw-test/node": fake_node}
    # No kubelet renews the fake node: on a loaded machine kcm may taint it NotReady (after 50 s)
    # before the scheduler gets to the pod. Scheduling, not node health, is under test here.
    pod_spec["tolerations"] = [{"key": f"node.kubernetes.io/{t}", "operator": "Exists", "effect": "NoSchedule"}
                               for t in ("not-ready", "unreachable")]
    plane.kubectl("create", "-f", "-", input=json.dumps(deployment))
    try:
        def replicasets() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = plane.kubectl_json("get", "replicasets", "-n", namespace, "-l", "app=test-app")["items"]
            return items

        (replicaset,) = eventually(replicasets, "the Deployment's ReplicaSet")
        assert replicaset["metadata"]["ownerReferences"][0]["kind"] == "Deployment"

        def bound_pods() -> list[dict[str, Any]]:
            pods: list[dict[str, Any]] = plane.kubectl_json("get", "pods", "-n", namespace, "-l", "app=test-app")["items"]
            return pods if pods and all(p["spec"].get("nodeName") for p in pods) else []

        (pod,) = eventually(bound_pods, "a pod bound to a node by kube-scheduler")
        assert pod["spec"]["nodeName"] == fake_node
        assert pod["metadata"]["ownerReferences"][0]["name"] == replicaset["metadata"]["name"]
        assert pod["status"]["phase"] == "Pending"  # no kubelet runs the pod: expected here

        # Garbage collection follows ownerReferences: Deployment -> ReplicaSet.
        plane.kubectl("delete", "deployment", "test-app", "-n", namespace, "--cascade=background")
        eventually(lambda: not replicasets() or None, "the ReplicaSet garbage-collected")
    finally:
        # Bound pods wait for a kubelet to confirm termination; none will, so force them away.
        plane.kubectl("delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", check=False)


def test_service_account_is_denied_until_a_role_binds_it(control_plane: ControlPlane, namespace: str) -> None:
    plane = control_plane
    as_sa = plane.service_account_kubeconfig(namespace, "policy-reader")
    whoami = plane.kubectl_json("auth", "whoami", kubeconfig=as_sa)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:policy-reader"

    denied = plane.kubectl("get", "egresspolicies", "-n", namespace, kubeconfig=as_sa, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr

    plane.kubectl("create", "role", "policy-reader", "-n", namespace,
                  "--verb=get,list,watch", "--resource=egresspolicies.egressgateway.spidernet.io")
    plane.kubectl("create", "rolebinding", "policy-reader", "-n", namespace,
                  "--role=policy-reader", f"--serviceaccount={namespace}:policy-reader")
    # The RBAC authorizer reads bindings from an informer: allow a moment for it to catch up.
    eventually(lambda: plane.kubectl("get", "egresspolicies", "-n", namespace, kubeconfig=as_sa, check=False).returncode == 0,
               "the RoleBinding to take effect")
    elsewhere = plane.kubectl("get", "egresspolicies", "-n", "default", kubeconfig=as_sa, check=False)
    assert elsewhere.returncode != 0 and "forbidden" in elsewhere.stderr.lower(), "a Role must not grant other namespaces"
    policy = {"apiVersion": "egressgateway.spidernet.io/v1beta1", "kind": "EgressPolicy",
              "metadata": {"name": "test", "namespace": namespace},
              "spec": {"egressGatewayName": "default", "appliedTo": {"podSelector": {"matchLabels": {"app": "test-app"}}}}}
    plane.kubectl("create", "-f", "-", input=json.dumps(policy))
    listed = plane.kubectl_json("get", "egresspolicies", "-n", namespace, kubeconfig=as_sa)
    assert [p["metadata"]["name"] for p in listed["items"]] == ["test"]
    write = plane.kubectl("delete", "egresspolicy", "test", "-n", namespace, kubeconfig=as_sa, check=False)
    assert write.returncode != 0 and "forbidden" in write.stderr.lower(), "get/list/watch must not grant delete"


def test_client_certificate_user_carries_its_groups(control_plane: ControlPlane) -> None:
    as_user = control_plane.user_kubeconfig("jane", ["egw-viewers"])
    info = control_plane.kubectl_json("auth", "whoami", kubeconfig=as_user)["status"]["userInfo"]
    assert info["username"] == "jane"
    assert "egw-viewers" in info["groups"]
    denied = control_plane.kubectl("get", "egressgateways", kubeconfig=as_user, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
