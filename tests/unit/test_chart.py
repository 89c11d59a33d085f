"""The Helm chart manifests/chart/egressgateway, rendered by the real helm binary (hack/build-helm.sh).

The plain manifests are its rendering (hack/render_manifests.py): nobody edits both. Unknown values
fail; the seed's install (kube-system, upstream's keys) renders; each value changes what it says.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from egress_cni.settings import parse
from tests.harness.chart import SEED, helm_or_skip, objects, render

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_or_skip()


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def test_plain_manifests_are_the_charts_rendering(helm: str) -> None:
    rendered = render.rendered_manifests(helm)
    assert sorted(rendered) == ["agent-node-claim.yaml", "agent.yaml", "config.yaml", "controller.yaml",
                                "egressclusterinfo.yaml", "webhook.yaml"]
    stale = [name for name, text in rendered.items() if (ROOT / "manifests" / name).read_text() != text]
    assert not stale, f"manifests differ from the chart's rendering: {stale}; edit the chart and run `make manifests`"


def test_crds_have_one_copy() -> None:
    assert (ROOT / "manifests" / "crds").resolve() == ROOT / "manifests" / "chart" / "egressgateway" / "crds"


@pytest.mark.parametrize(("args", "named"), [
    (["--set", "feature.tunnelIPv4Subnet=10.0.0.0/16"], "tunnelIPv4Subnet"),
    (["--set", "controller.replica=3"], "replica"),
    (["--set", "bogus=1"], "bogus"),
    (["--set", "feature.vxlan.vni=7"], "vni"),
    (["--set", "controller.tls.method=vault"], "/controller/tls/method"),
    (["--set", "controller.replicas=two"], "/controller/replicas"),
])
def test_unknown_or_bad_value_is_an_error_naming_it(helm: str, args: list[str], named: str) -> None:
    result = render.template(helm, args)
    assert result.returncode != 0
    assert named in result.stderr


def test_seed_install_renders_into_kube_system(helm: str) -> None:
    docs = objects(helm, *SEED, namespace="kube-system")
    text = yaml.safe_dump_all(docs)
    assert "egressgateway-system" not in text
    # the one exception: the controller's read of Service `kubernetes`, which lives in default
    namespaced = [d for d in docs if "namespace" in d["metadata"] and d["metadata"]["name"] != "egressgateway-controller-kubernetes-service"]
    assert namespaced and all(d["metadata"]["namespace"] == "kube-system" for d in namespaced)
    claim = find(docs, "ValidatingAdmissionPolicy", "egressgateway-agent-node-claim")
    assert "system:serviceaccount:kube-system:egressgateway-agent" in claim["spec"]["matchConditions"][0]["expression"]
    hook = find(docs, "MutatingWebhookConfiguration", "egressgateway-mutating")
    assert hook["webhooks"][0]["clientConfig"]["service"]["namespace"] == "kube-system"
    config = find(docs, "ConfigMap", "egressgateway-config")
    settings = parse(yaml.safe_load(config["data"]["config.yaml"]), "chart")
    assert settings.tunnel.ipv4_subnet == "192.200.0.1/16"
    assert any("enableGatewayReplyRoute" in note for note in settings.notes)


def test_default_config_parses_to_todays_settings(helm: str) -> None:
    config = find(objects(helm), "ConfigMap", "egressgateway-config")
    settings = parse(yaml.safe_load(config["data"]["config.yaml"]), "chart")
    assert settings.notes == ()
    assert (settings.vxlan.vni, settings.vxlan.port, settings.agent.lease_seconds) == (100, 7789, 20)


def test_cluster_cidr_goes_to_egressclusterinfo(helm: str) -> None:
    docs = objects(helm, "--set", "feature.clusterCIDR.autoDetect.podCidrMode=calico",
                   "--set", "feature.clusterCIDR.extraCidr={10.9.0.0/16}")
    info = find(docs, "EgressClusterInfo", "default")
    assert info["spec"]["autoDetect"]["podCidrMode"] == "calico"
    assert info["spec"]["extraCidr"] == ["10.9.0.0/16"]


def test_controller_replicas(helm: str) -> None:
    assert find(objects(helm), "Deployment", "egressgateway-controller")["spec"]["replicas"] == 2
    assert find(objects(helm, "--set", "controller.replicas=3"), "Deployment", "egressgateway-controller")["spec"]["replicas"] == 3


def test_controller_placement(helm: str) -> None:
    spec = find(objects(helm), "Deployment", "egressgateway-controller")["spec"]["template"]["spec"]
    assert "nodeSelector" not in spec and "tolerations" not in spec
    assert spec["affinity"]["podAntiAffinity"]  # spread by default
    spec = find(objects(helm, "--set-string", "controller.nodeSelector.egress-controller=true",
                        "--set", "controller.tolerations[0].key=dedicated", "--set", "controller.tolerations[0].operator=Exists",
                        "--set", "controller.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight=1",
                        "--set", "controller.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]"
                                 ".preference.matchExpressions[0].key=egress",
                        "--set", "controller.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]"
                                 ".preference.matchExpressions[0].operator=DoesNotExist"),
                "Deployment", "egressgateway-controller")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"egress-controller": "true"}
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert list(spec["affinity"]) == ["nodeAffinity"]  # given, it replaces the default spread
    assert "nodeSelector" in render.template(helm, ["--set", "controller.nodeSelector=x"]).stderr


def test_image_overrides(helm: str) -> None:
    docs = objects(helm, "--set", "global.imageRegistryOverride=registry.example:5000", "--set", "global.imageTagOverride=v9")
    images = {c["image"] for d in docs if d["kind"] in ("Deployment", "DaemonSet") for c in containers(d)}
    assert images == {"registry.example:5000/egressgateway:v9"}
    default = {c["image"] for d in objects(helm) if d["kind"] in ("Deployment", "DaemonSet") for c in containers(d)}
    assert default == {"egressgateway:dev"}


def _webhook_tls(docs: list[dict[str, Any]]) -> tuple[list[str], list[Any], list[Any]]:
    deployment = find(docs, "Deployment", "egress-webhook")
    mounts = [m["mountPath"] for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]]
    configs = [find(docs, k, n) for k, n in (("MutatingWebhookConfiguration", "egressgateway-mutating"),
                                              ("ValidatingWebhookConfiguration", "egressgateway-validating"))]
    return mounts, [c["metadata"].get("annotations") for c in configs], [c["webhooks"][0]["clientConfig"].get("caBundle") for c in configs]


def test_tls_auto_is_self_managed(helm: str) -> None:
    docs = objects(helm)
    mounts, annotations, bundles = _webhook_tls(docs)
    assert "/etc/tls" not in mounts and annotations == [None, None] and bundles == [None, None]
    assert not [d for d in docs if d["kind"] in ("Certificate", "Issuer") or d["metadata"]["name"] == "egress-webhook-serving"]


def test_tls_provided(helm: str) -> None:
    docs = objects(helm, "--set", "controller.tls.method=provided", "--set", "controller.tls.provided.tlsCert=CERT",
                   "--set", "controller.tls.provided.tlsKey=KEY", "--set", "controller.tls.provided.tlsCa=CA")
    mounts, _, bundles = _webhook_tls(docs)
    assert "/etc/tls" in mounts and bundles == [base64.b64encode(b"CA").decode()] * 2
    secret = find(docs, "Secret", "egress-webhook-serving")
    assert base64.b64decode(secret["data"]["tls.key"]) == b"KEY"
    missing = render.template(helm, ["--set", "controller.tls.method=provided"])
    assert missing.returncode != 0 and "controller.tls.provided.tlsCa is required" in missing.stderr


def test_tls_certmanager(helm: str) -> None:
    docs = objects(helm, "--set", "controller.tls.method=certmanager", namespace="kube-system")
    mounts, annotations, bundles = _webhook_tls(docs)
    assert "/etc/tls" in mounts and bundles == [None, None]
    assert annotations == [{"cert-manager.io/inject-ca-from": "kube-system/egress-webhook"}] * 2
    cert = find(docs, "Certificate", "egress-webhook")
    assert cert["spec"]["secretName"] == "egress-webhook-serving"
    assert "egress-webhook.kube-system.svc" in cert["spec"]["dnsNames"]
    assert find(docs, "Issuer", "egress-webhook")["spec"] == {"selfSigned": {}}


MONITORING = ("ServiceMonitor", "PrometheusRule")


def test_prometheus_objects_only_when_enabled(helm: str) -> None:
    plain = objects(helm)
    assert not [d for d in plain if d["kind"] in MONITORING or d["metadata"]["name"].endswith(("-metrics", "-dashboard"))]
    on = ["--set", "agent.prometheus.enabled=true", "--set", "agent.prometheus.serviceMonitor.install=true",
          "--set", "agent.prometheus.prometheusRule.install=true", "--set", "agent.prometheus.grafanaDashboard.install=true",
          "--set", "controller.prometheus.enabled=true"]
    docs = objects(helm, *on)
    assert find(docs, "Service", "egressgateway-agent-metrics")["spec"]["ports"][0]["port"] == 5811
    assert find(docs, "Service", "egressgateway-controller-metrics")["spec"]["ports"][0]["port"] == 5821
    assert find(docs, "ServiceMonitor", "egressgateway-agent")
    assert find(docs, "PrometheusRule", "egressgateway-agent")["spec"]["groups"][0]["rules"]
    dashboard = find(docs, "ConfigMap", "egressgateway-agent-dashboard")
    assert yaml.safe_load(dashboard["data"]["egressgateway-agent.json"])["uid"] == "egressgateway-agent"
    assert not [d for d in docs if d["kind"] in MONITORING and d["metadata"]["name"] == "egressgateway-controller"]


def test_upstreams_other_feature_values_are_accepted_and_noted(helm: str) -> None:
    """Upstream's chart defaults for the knobs we have no use for install unchanged; the daemons log them."""
    docs = objects(helm, "--set", "feature.datapathMode=iptables", "--set", "feature.gatewayReplyRouteTable=600",
                   "--set", "feature.gatewayReplyRouteMark=39", "--set", "feature.gatewayFailover.tunnelMonitorPeriod=5",
                   "--set", "feature.announcedInterfacesToExclude={^cali.*,br-*}")
    settings = parse(yaml.safe_load(find(docs, "ConfigMap", "egressgateway-config")["data"]["config.yaml"]), "chart")
    noted = " ".join(settings.notes)
    for key in ("gatewayReplyRouteTable", "gatewayReplyRouteMark", "tunnelMonitorPeriod", "announcedInterfacesToExclude"):
        assert key in noted


# --- helm uninstall: the pre-delete hook ---------------------------------------------------------------

HOOK_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Job")


def hooks(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})]


def test_the_uninstall_hook_renders_as_pre_delete_with_grants_that_go_with_it(helm: str) -> None:
    docs = objects(helm, namespace="kube-system")
    found = hooks(docs)
    assert sorted(d["kind"] for d in found) == sorted(HOOK_KINDS)
    assert {d["metadata"]["name"] for d in found} == {"egressgateway-uninstall"}
    weights = {d["kind"]: int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) for d in found}
    for d in found:
        notes = d["metadata"]["annotations"]
        assert notes["helm.sh/hook"] == "pre-delete"
        assert set(notes["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded", "hook-failed"}
        if d["kind"] != "Job":
            assert weights[d["kind"]] < weights["Job"]  # identity and grants exist before the Job starts
    assert find(found, "ClusterRole", "egressgateway-uninstall")["rules"] == [
        {"apiGroups": ["egressgateway.spidernet.io"], "resources": ["egressclusterinfos"], "resourceNames": ["default"],
         "verbs": ["get", "patch"]}]
    assert find(found, "Role", "egressgateway-uninstall")["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["list"]}]
    for binding in ("ClusterRoleBinding", "RoleBinding"):
        assert find(found, binding, "egressgateway-uninstall")["subjects"] == [
            {"kind": "ServiceAccount", "name": "egressgateway-uninstall", "namespace": "kube-system"}]
    job = find(found, "Job", "egressgateway-uninstall")
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "egressgateway-uninstall" and pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["egress-controller", "uninstall-nodes", "--timeout-seconds=120"]
    assert container["image"] == find(docs, "Deployment", "egressgateway-controller")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert job["spec"]["activeDeadlineSeconds"] > 120


def test_uninstall_timeout_is_a_value_checked_by_the_schema(helm: str) -> None:
    job = find(objects(helm, "--set", "uninstall.timeoutSeconds=30"), "Job", "egressgateway-uninstall")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--timeout-seconds=30"
    for bad, named in ((["--set", "uninstall.timeoutSeconds=0"], "timeoutSeconds"), (["--set", "uninstall.wait=1"], "wait")):
        result = render.template(helm, bad)
        assert result.returncode != 0 and named in result.stderr


def test_the_plain_manifests_carry_no_hook() -> None:
    """`kubectl apply` of them must never run the uninstall Job (it would clean every node at once)."""
    for path in sorted((ROOT / "manifests").glob("*.yaml")):
        assert "helm.sh/hook" not in path.read_text(), path.name


def test_the_agent_mounts_every_dir_it_removes(helm: str) -> None:
    ds = find(objects(helm), "DaemonSet", "egressgateway-agent")
    pod = ds["spec"]["template"]["spec"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    init, agent = pod["initContainers"][0], pod["containers"][0]

    def host_path(container: dict[str, Any], path: str) -> str:
        """`path` inside the container as the node sees it."""
        for mount in sorted(container["volumeMounts"], key=lambda m: -len(m["mountPath"])):
            if path == mount["mountPath"] or path.startswith(mount["mountPath"] + "/"):
                return volumes[mount["name"]] + path[len(mount["mountPath"]):]
        raise AssertionError(f"{path} is not on a hostPath volume of {container['name']}")

    flags = dict(a.split("=", 1) for a in agent["args"] if a.startswith("--") and "=" in a)
    installed = dict(a.split("=", 1) for a in init["command"] if a.startswith("--") and "=" in a)
    plugin = yaml.safe_load(installed["--plugin-config"])
    assert host_path(agent, flags["--cni-conf-dir"]) == host_path(init, installed["--conf-dir"]) == "/etc/cni/net.d"
    assert host_path(agent, flags["--cni-bin-dir"]) == host_path(init, installed["--bin-dir"]) == "/opt/cni/bin"
    assert host_path(agent, flags["--cni-runtime-dir"]) == installed["--host-runtime-dir"] == "/opt/egressgateway/cni"
    assert host_path(agent, flags["--cni-state-dir"]) == plugin["stateDir"] == "/var/lib/egressgateway/cni"
    assert host_path(agent, flags["--registry-dir"]) == plugin["registryDir"] == "/run/egressgateway"


# --- helm upgrade: a changed value rolls every pod ------------------------------------------------------


def pod_templates(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"] for d in docs if d["kind"] in ("DaemonSet", "Deployment")}


@pytest.mark.parametrize("change", [["--set", "feature.gatewayFailover.eipEvictionTimeout=21"],
                                    ["--set", "feature.vxlan.port=7790"]])
def test_a_changed_feature_value_changes_every_pod_template(helm: str, change: list[str]) -> None:
    before, after = pod_templates(objects(helm)), pod_templates(objects(helm, *change))
    assert sorted(before) == ["egress-webhook", "egressgateway-agent", "egressgateway-controller"]
    for name, template in before.items():
        assert template["metadata"]["annotations"]["checksum/config"] != after[name]["metadata"]["annotations"]["checksum/config"], name


def test_a_value_no_pod_reads_rolls_no_pod(helm: str) -> None:
    before = pod_templates(objects(helm))
    assert pod_templates(objects(helm, "--set", "feature.clusterCIDR.extraCidr={10.9.0.0/16}")) == before  # EgressClusterInfo's
    assert pod_templates(objects(helm, "--set", "uninstall.timeoutSeconds=300")) == before


def test_a_provided_certificate_change_rolls_the_webhook(helm: str) -> None:
    tls = ["--set", "controller.tls.method=provided", "--set", "controller.tls.provided.tlsKey=KEY", "--set", "controller.tls.provided.tlsCa=CA"]
    one = pod_templates(objects(helm, *tls, "--set", "controller.tls.provided.tlsCert=ONE"))
    two = pod_templates(objects(helm, *tls, "--set", "controller.tls.provided.tlsCert=TWO"))
    assert one["egress-webhook"] != two["egress-webhook"]
