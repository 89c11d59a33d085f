"""The webhook registered in a real kube-apiserver, as users meet it: `kubectl apply`.

The webhook runs under gunicorn on 127.0.0.1 with informers over the admin kubeconfig and in
self-managed certificate mode: it creates its Secret and patches the caBundle into the two
configurations (taken from manifests/webhook.yaml, pointed at 127.0.0.1) itself. Everything it
registers or creates is removed at teardown, configurations first: with failurePolicy Fail they
would block every later test that touches the egress kinds.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.devkube.controlplane import ControlPlane
from egress_cni.api.model import FINALIZER_GATEWAY
from tests.harness.fixtures import EGRESS_NAMESPACE
from tests.support.seeds import applied_objects
from tests.webhook.server import Webhook, free_port, running_webhook

pytestmark = pytest.mark.apiserver

REPO = Path(__file__).resolve().parents[2]
SEED_GATEWAY = next(o for o in applied_objects() if o["kind"] == "EgressGateway")
SEED_POLICY = next(o for o in applied_objects() if o["kind"] == "EgressPolicy")
GATEWAY_NAMES = ("default", "webhook-test-other", "webhook-test-cluster-default")
CLUSTER_POLICY = "webhook-test-cluster-policy"
CREATED_CLUSTER_INFOS: list[str] = []
USED_NAMESPACES: list[str] = []  # their policies are deleted at teardown (no kube-controller-manager empties them)


def manifest(*kinds: str) -> list[dict[str, Any]]:
    docs = yaml.safe_load_all((REPO / "manifests" / "webhook.yaml").read_text())
    return [d for d in docs if d and d["kind"] in kinds]


def registrations(port: int) -> list[dict[str, Any]]:
    """Both configurations from manifests/webhook.yaml, with URLs on 127.0.0.1 instead of the Service."""
    docs = manifest("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
    for doc in docs:
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}"}
    return docs


def apply(plane: ControlPlane, obj: dict[str, Any], *extra: str, check: bool = True) -> Any:
    return plane.kubectl("apply", "-f", "-", *extra, input=json.dumps(obj), check=check)


def get(plane: ControlPlane, *args: str) -> Any:
    return plane.kubectl_json("get", *args)


def eventually(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll: the webhook's informer cache trails the API by a watch event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def remove_gateway(plane: ControlPlane, name: str) -> None:
    plane.kubectl("patch", "egressgateway", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
    plane.kubectl("delete", "egressgateway", name, "--ignore-not-found", "--wait=false", check=False)


@pytest.fixture(scope="module")
def hook(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    plane = control_plane
    for name in GATEWAY_NAMES:  # leftovers would turn our CREATEs into UPDATEs
        remove_gateway(plane, name)
    port = free_port()
    configs = registrations(port)
    rbac = manifest("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    secret = "egress-webhook-tls"  # the name the manifest's Role allows
    try:
        for obj in [*rbac, *configs]:
            apply(plane, obj)
        # the webhook runs with exactly the manifest's least-privilege RBAC
        kubeconfig = plane.service_account_kubeconfig(EGRESS_NAMESPACE, "egress-webhook", create=False)
        args = ["--namespace", EGRESS_NAMESPACE, "--secret", secret, "--rotation-interval", "1"]
        with running_webhook(tmp_path_factory.mktemp("webhook-apiserver"), kubeconfig=str(kubeconfig),
                             port=port, self_managed=args, timeout=120) as running:
            wait_until_active(plane)
            yield running
    finally:
        for config in configs:
            plane.kubectl("delete", config["kind"].lower(), config["metadata"]["name"], "--ignore-not-found", check=False)
        plane.kubectl("delete", "egresspolicy", SEED_POLICY["metadata"]["name"], "-n", "default", "--ignore-not-found", check=False)
        plane.kubectl("delete", "egressclusterpolicy", CLUSTER_POLICY, "--ignore-not-found", check=False)
        for ns in USED_NAMESPACES:
            plane.kubectl("delete", "egresspolicies", "--all", "-n", ns, "--ignore-not-found", check=False)
        for name in GATEWAY_NAMES:
            remove_gateway(plane, name)
        for name in CREATED_CLUSTER_INFOS:  # deletable again now that the configurations are gone
            plane.kubectl("delete", "egressclusterinfo", name, "--ignore-not-found", check=False)
        plane.kubectl("delete", "secret", secret, "-n", EGRESS_NAMESPACE, "--ignore-not-found", check=False)
        for obj in rbac:
            plane.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], "-n", EGRESS_NAMESPACE, "--ignore-not-found",
                          check=False)


def wait_until_active(plane: ControlPlane) -> None:
    """A dryRun canary: the apiserver's admission plugin picks configurations up asynchronously."""
    canary = copy.deepcopy(SEED_GATEWAY)
    canary["metadata"]["name"] = "webhook-canary"
    canary["spec"]["ippools"]["ipv4"] = ["192.0.2.1"]

    def mutated() -> bool:
        out = plane.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(canary), check=False)
        return out.returncode == 0 and json.loads(out.stdout)["spec"]["ippools"].get("ipv4DefaultEIP") == "192.0.2.1"

    def validated() -> bool:
        bad = copy.deepcopy(canary)
        bad["spec"]["nodeSelector"]["selector"] = {"matchLabels": {}}
        out = plane.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
        return out.returncode != 0 and "denied the request" in out.stderr

    eventually(mutated, 60, "the mutating webhook to be called")
    eventually(validated, 60, "the validating webhook to be called")


def denied(plane: ControlPlane, obj: dict[str, Any], expected: str) -> str:
    out = apply(plane, obj, check=False)
    assert out.returncode != 0, f"applied although it should be denied: {out.stdout}"
    assert "denied the request" in out.stderr and expected in out.stderr, out.stderr
    return str(out.stderr)


@pytest.fixture
def ns(namespace: str) -> str:
    """A fresh namespace whose policies the module teardown removes."""
    USED_NAMESPACES.append(namespace)
    return namespace


@pytest.fixture(scope="module")
def seeded(control_plane: ControlPlane, hook: Webhook) -> ControlPlane:
    """The walkthrough's gateway and policy, applied verbatim."""
    apply(control_plane, SEED_GATEWAY)
    eventually(lambda: apply(control_plane, SEED_POLICY, check=False).returncode == 0, 30, "the seed policy to apply")
    return control_plane


def test_seed_gateway_gets_a_default_eip_and_the_finalizer(seeded: ControlPlane) -> None:
    gateway = get(seeded, "egressgateway", "default")
    assert gateway["spec"]["ippools"]["ipv4DefaultEIP"] == "10.6.168.201"
    assert FINALIZER_GATEWAY in gateway["metadata"]["finalizers"]


def test_seed_policy_gets_its_defaults(seeded: ControlPlane) -> None:
    policy = get(seeded, "egresspolicy", "test", "-n", "default")
    assert policy["spec"]["egressGatewayName"] == "default"
    assert policy["spec"]["egressIP"] == {"allocatorPolicy": "default", "useNodeIP": False}


def test_gateway_name_defaults_from_the_namespace_label(seeded: ControlPlane, ns: str) -> None:
    seeded.kubectl("label", "namespace", ns, "spidernet.io/egressgateway-default=default")
    policy = copy.deepcopy(SEED_POLICY)
    policy["metadata"]["namespace"] = ns
    del policy["spec"]["egressGatewayName"]

    def named() -> bool:
        apply(seeded, policy, check=False)
        found = seeded.kubectl("get", "egresspolicy", "test", "-n", ns, "-o", "json", check=False)
        return found.returncode == 0 and json.loads(found.stdout)["spec"].get("egressGatewayName") == "default"

    eventually(named, 30, "the namespace label to name the gateway")


def test_cluster_policy_gets_the_cluster_default_gateway(seeded: ControlPlane) -> None:
    default_gateway = copy.deepcopy(SEED_GATEWAY)
    default_gateway["metadata"] = {"name": "webhook-test-cluster-default"}
    default_gateway["spec"]["clusterDefault"] = True
    default_gateway["spec"]["ippools"]["ipv4"] = ["10.6.172.1-10.6.172.2"]
    apply(seeded, default_gateway)
    second = copy.deepcopy(default_gateway)
    second["metadata"] = {"name": "webhook-test-second-default"}
    second["spec"]["ippools"]["ipv4"] = ["10.6.173.1"]
    eventually(lambda: "is already the cluster default" in apply(seeded, second, "--dry-run=server", check=False).stderr,
               30, "the second cluster default to be refused")
    cluster_policy = {"apiVersion": SEED_POLICY["apiVersion"], "kind": "EgressClusterPolicy", "metadata": {"name": CLUSTER_POLICY},
                      "spec": {"appliedTo": {"podSelector": {"matchLabels": {"app": "cluster-wide"}},
                                             "namespaceSelector": {"matchLabels": {"team": "nobody"}}}}}
    apply(seeded, cluster_policy)
    assert get(seeded, "egressclusterpolicy", CLUSTER_POLICY)["spec"]["egressGatewayName"] == "webhook-test-cluster-default"


def test_user_finalizers_are_kept(seeded: ControlPlane) -> None:
    other = copy.deepcopy(SEED_GATEWAY)
    other["metadata"] = {"name": "webhook-test-other", "finalizers": ["example.com/keep"]}
    other["spec"]["ippools"]["ipv4"] = ["10.6.170.1-10.6.170.2"]
    apply(seeded, other)
    assert get(seeded, "egressgateway", "webhook-test-other")["metadata"]["finalizers"] == ["example.com/keep", FINALIZER_GATEWAY]


def _policy(namespace: str, **spec: Any) -> dict[str, Any]:
    policy = copy.deepcopy(SEED_POLICY)
    policy["metadata"] = {"name": "bad", "namespace": namespace}
    policy["spec"].update(spec)
    return policy


def _gateway(name: str = "webhook-test-bad", **pools: Any) -> dict[str, Any]:
    gateway = copy.deepcopy(SEED_GATEWAY)
    gateway["metadata"] = {"name": name}
    gateway["spec"]["ippools"] = pools
    return gateway


INVALID: list[tuple[str, Callable[[str], dict[str, Any]], str]] = [
    ("dest-bare-ip", lambda ns: _policy(ns, destSubnet=["10.6.1.7"]), "write 10.6.1.7/32 for a single host"),
    ("pod-subnet-syntax", lambda ns: _policy(ns, appliedTo={"podSubnet": ["10.244.0.0/33"]}), "spec.appliedTo.podSubnet[0]: is not a CIDR"),
    ("empty-selector", lambda ns: _policy(ns, appliedTo={"podSelector": {}}), "spec.appliedTo: must select pods"),
    ("unknown-gateway", lambda ns: _policy(ns, egressGatewayName="nope"), "no EgressGateway of that name exists"),
    ("use-node-ip-with-eip", lambda ns: _policy(ns, egressIP={"useNodeIP": True, "ipv4": "10.6.168.202"}),
     "spec.egressIP.useNodeIP: cannot be combined with spec.egressIP.ipv4/ipv6"),
    ("eip-outside-pool", lambda ns: _policy(ns, egressIP={"ipv4": "10.6.169.1"}),
     "spec.egressIP.ipv4: is not in the ippools of EgressGateway default"),
    ("gateway-overlap", lambda ns: _gateway(ipv4=["10.6.168.205-10.6.168.210"]),
     "10.6.168.205 already belongs to EgressGateway default"),
    ("gateway-default-eip", lambda ns: _gateway(ipv4=["10.6.171.1-10.6.171.3"], ipv4DefaultEIP="10.6.171.9"),
     "spec.ippools.ipv4DefaultEIP: is not in spec.ippools.ipv4"),
    ("gateway-pool-syntax", lambda ns: _gateway(ipv4=["10.6.171.9-10.6.171.1"]), "spec.ippools.ipv4[0]:"),
    ("gateway-pairing", lambda ns: _gateway(ipv4=["10.6.171.1-10.6.171.3"], ipv6=["fd00:171::1"]),
     "the IPv4 pool holds 3 addresses and the IPv6 pool 1"),
]


@pytest.mark.parametrize(("build", "expected"), [(b, e) for _, b, e in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_objects_fail_at_kubectl_apply(seeded: ControlPlane, ns: str, build: Callable[[str], dict[str, Any]],
                                               expected: str) -> None:
    denied(seeded, build(ns), expected)


def test_upstream_host_bits_apply_with_a_warning(seeded: ControlPlane, ns: str) -> None:
    """Upstream's own valid YAML (destSubnet 192.168.1.1/24, fd00::21/112) applies unchanged; kubectl
    shows the warning naming the CIDR that is used."""
    out = apply(seeded, _policy(ns, destSubnet=["192.168.1.1/24", "fd00::21/112"]))
    assert "spec.destSubnet[0]: has host bits set; it is used as 192.168.1.0/24" in out.stderr, out.stderr
    assert "spec.destSubnet[1]: has host bits set; it is used as fd00::/112" in out.stderr, out.stderr


def test_conflicting_policy_is_refused_naming_the_other(seeded: ControlPlane, ns: str) -> None:
    """A true tie is refused; a different priority or a more specific destination applies, and
    kubectl shows the warning naming the other policy and the winner."""
    first = _policy(ns)
    first["metadata"]["name"] = "first"
    apply(seeded, first)
    second = _policy(ns, egressIP={"ipv4": "10.6.168.202"})
    second["metadata"]["name"] = "second"
    eventually(lambda: "denied" in apply(seeded, second, "--dry-run=server", check=False).stderr, 30, "the cache to see `first`")
    denied(seeded, second, f"EgressPolicy {ns}/first may select the same pods")
    narrow = copy.deepcopy(second)
    narrow["spec"]["destSubnet"] = ["192.0.2.0/24"]
    out = apply(seeded, narrow, "--dry-run=server")
    assert f"EgressPolicy {ns}/first may select the same pods" in out.stderr, out.stderr
    assert "this policy wins by the more specific destination, 256 addresses against all of IPv4" in out.stderr, out.stderr
    second["spec"]["priority"] = 10
    out = apply(seeded, second)
    assert "this policy wins by priority, 10 before (unset)" in out.stderr, out.stderr


def test_immutable_fields_are_refused_on_update(seeded: ControlPlane, ns: str) -> None:
    policy = _policy(ns)
    apply(seeded, policy)
    policy["spec"]["egressIP"] = {"useNodeIP": True}
    denied(seeded, policy, "spec.egressIP.useNodeIP: is immutable")


def test_allocated_eip_cannot_leave_the_pool(seeded: ControlPlane) -> None:
    status = {"status": {"nodeList": [{"name": "node-1", "status": "Ready", "eips": [
        {"ipv4": "10.6.168.205", "policies": [{"name": "test", "namespace": "default"}]}]}]}}
    seeded.kubectl("patch", "egressgateway", "default", "--subresource=status", "--type=merge", "-p", json.dumps(status))
    shrunk = copy.deepcopy(SEED_GATEWAY)
    shrunk["spec"]["ippools"]["ipv4"] = ["10.6.168.201-10.6.168.204"]
    denied(seeded, shrunk, "spec.ippools.ipv4: 10.6.168.205 is allocated to policies and cannot be removed from the pool")


def test_default_cluster_info_cannot_be_deleted(seeded: ControlPlane) -> None:
    manifest = yaml.safe_load((REPO / "manifests" / "egressclusterinfo.yaml").read_text())
    if seeded.kubectl("get", "egressclusterinfo", "default", check=False).returncode != 0:
        CREATED_CLUSTER_INFOS.append("default")
        apply(seeded, manifest)
    out = seeded.kubectl("delete", "egressclusterinfo", "default", check=False)
    assert out.returncode != 0 and "EgressClusterInfo 'default' is not allowed to be deleted" in out.stderr, out.stderr
    seeded.kubectl("get", "egressclusterinfo", "default")


def test_the_webhook_created_its_secret_and_ca_bundle(seeded: ControlPlane, hook: Webhook) -> None:
    hooks = [h for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
             for c in get(seeded, kind)["items"] if c["metadata"]["name"] in ("egressgateway-mutating", "egressgateway-validating")
             for h in c["webhooks"] if f":{hook.url.rsplit(':', 1)[1]}/" in h["clientConfig"].get("url", "")]
    assert len(hooks) == 2 and all(h["clientConfig"].get("caBundle") for h in hooks)


def test_a_dropped_ca_bundle_is_restored(seeded: ControlPlane, hook: Webhook) -> None:
    """Last in the module: until the bundle is back, the API server cannot call the webhook."""
    seeded.kubectl("patch", "validatingwebhookconfiguration", "egressgateway-validating", "--type=json",
                   "-p", '[{"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}]')

    def restored() -> bool:
        config = get(seeded, "validatingwebhookconfiguration", "egressgateway-validating")
        return bool(config["webhooks"][0]["clientConfig"].get("caBundle"))

    eventually(restored, 30, "the webhook to patch its caBundle back")
    wait_until_active(seeded)


def test_the_manifest_passes_server_side_validation(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("apply", "--dry-run=server", "-f", str(REPO / "manifests" / "webhook.yaml"), check=False)
    assert out.returncode == 0, out.stderr
