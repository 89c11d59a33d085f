"""The CRDs in manifests/crds against a real kube-apiserver: Established, walkthrough accepted, bad types rejected."""

from __future__ import annotations

import copy
import json
import re
import ssl
import urllib.request
from typing import Any

import pytest
import yaml

from devtools.devkube.controlplane import ControlPlane
from tests.harness.fixtures import CRD_DIR, EGRESS_NAMESPACE
from tests.support.seeds import walkthrough_text

pytestmark = pytest.mark.apiserver

GROUP = "egressgateway.spidernet.io"
PLURALS = ("egressgateways", "egresspolicies", "egressclusterpolicies", "egressendpointslices",
           "egressclusterendpointslices", "egresstunnels", "egressclusterinfos")


def walkthrough_manifests() -> list[tuple[str, str]]:
    """(kubectl verb, manifest text) for every heredoc the walkthrough pipes into kubectl, verbatim."""
    pattern = re.compile(r"cat <<EOF \| kubectl (apply|create) -f -\n(.*?)\nEOF\n", re.S)
    return pattern.findall(walkthrough_text())


def walkthrough_object(kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next(o for o in (yaml.safe_load(t) for _, t in walkthrough_manifests()) if o["kind"] == kind)
    return found


def test_apiserver_serves_readyz_under_the_serving_ca(control_plane: ControlPlane) -> None:
    context = ssl.create_default_context(cadata=control_plane.ca_pem.decode())
    with urllib.request.urlopen(f"{control_plane.server}/readyz", context=context, timeout=10) as response:
        assert response.status == 200
    whoami = control_plane.kubectl_json("auth", "whoami")
    assert whoami["status"]["userInfo"]["username"] == "admin"
    assert "system:masters" in whoami["status"]["userInfo"]["groups"]
    control_plane.kubectl("get", "namespace", EGRESS_NAMESPACE)


def test_every_crd_is_established(control_plane: ControlPlane) -> None:
    files = sorted(CRD_DIR.glob("*.yaml"))
    assert len(files) == len(PLURALS), f"expected one CRD file per kind in {CRD_DIR}, found {[f.name for f in files]}"
    for plural in PLURALS:
        crd = control_plane.kubectl_json("get", "crd", f"{plural}.{GROUP}")
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", f"{plural}: {conditions}"
        assert conditions.get("NamesAccepted") == "True", f"{plural}: {conditions}"
        control_plane.kubectl("get", f"{plural}.{GROUP}", "-A")  # served, listable


@pytest.mark.parametrize(("verb", "manifest"), walkthrough_manifests(),
                         ids=[f"{verb}-{yaml.safe_load(text)['kind']}" for verb, text in walkthrough_manifests()])
def test_walkthrough_yaml_is_accepted_by_server_dry_run(control_plane: ControlPlane, verb: str, manifest: str) -> None:
    result = control_plane.kubectl(verb, "--dry-run=server", "-f", "-", "-o", "json", input=manifest)
    stored = json.loads(result.stdout)
    assert stored["metadata"]["name"] == yaml.safe_load(manifest)["metadata"]["name"]


def test_walkthrough_policy_gets_the_documented_defaults(control_plane: ControlPlane) -> None:
    """The walkthrough's `kubectl get EgressPolicy -o yaml` shows egressIP defaults it never wrote."""
    manifest = next(text for _, text in walkthrough_manifests() if "kind: EgressPolicy" in text)
    stored = json.loads(control_plane.kubectl("apply", "--dry-run=server", "-f", "-", "-o", "json", input=manifest).stdout)
    assert stored["spec"]["egressIP"] == {"allocatorPolicy": "default", "useNodeIP": False}


def _set(obj: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    changed = copy.deepcopy(obj)
    *parents, leaf = path.split(".")
    node = changed
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return changed


def rejected(control_plane: ControlPlane, obj: dict[str, Any]) -> str:
    """kubectl's error output for `obj`, which the server must refuse (dry run)."""
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)
    assert result.returncode != 0, f"accepted: {json.dumps(obj)[:500]}"
    return str(result.stderr)


WRONG_TYPES = [
    ("EgressGateway", "spec.ippools.ipv4", "10.6.168.201-10.6.168.205", "array"),
    ("EgressGateway", "spec.nodeSelector.selector.matchLabels.egressgateway", 1, "string"),
    ("EgressPolicy", "spec.egressIP.useNodeIP", "yes", "boolean"),
    ("EgressPolicy", "spec.appliedTo.podSelector.matchLabels", ["app", "test-app"], "object"),
]


@pytest.mark.parametrize(("kind", "path", "value", "expected_type"), WRONG_TYPES, ids=[f"{k}-{p}" for k, p, _, _ in WRONG_TYPES])
def test_wrong_types_are_rejected_by_the_schema(
    control_plane: ControlPlane, kind: str, path: str, value: object, expected_type: str,
) -> None:
    stderr = rejected(control_plane, _set(walkthrough_object(kind), path, value))
    assert "is invalid" in stderr, stderr
    assert path in stderr and f"must be of type {expected_type}" in stderr, stderr


def _slice(endpoints: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1beta1", "kind": "EgressEndpointSlice", "metadata": {"name": "s", "namespace": "default"},
            "endpoints": [{"ns": "default", "pod": f"p{i}", "ipv4": ["10.0.0.1"]} for i in range(endpoints)]}


TOO_BIG = [
    ("EgressPolicy", "spec.destSubnet", [f"10.{i // 256}.{i % 256}.0/24" for i in range(4097)], "Too many"),
    ("EgressPolicy", "spec.egressGatewayName", "g" * 254, "Too long"),
    ("EgressPolicy", "spec.appliedTo.podSelector.matchLabels.app", "v" * 64, "Too long"),
    ("EgressGateway", "spec.ippools.ipv4", [f"10.6.{i // 256}.{i % 256}" for i in range(4097)], "Too many"),
    ("EgressGateway", "spec.ippools.ipv4DefaultEIP", "1.2.3.4 -j ACCEPT" + " " * 40, "Too long"),
]


@pytest.mark.parametrize(("kind", "path", "value", "why"), TOO_BIG, ids=[f"{k}-{p}" for k, p, _, _ in TOO_BIG])
def test_over_long_lists_and_strings_are_rejected_naming_the_field(
    control_plane: ControlPlane, kind: str, path: str, value: object, why: str,
) -> None:
    stderr = rejected(control_plane, _set(walkthrough_object(kind), path, value))
    assert f"{path}: {why}" in stderr, stderr[-2000:]


def test_a_slice_holds_at_most_the_bound_of_endpoints(control_plane: ControlPlane) -> None:
    control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(_slice(1000)))
    stderr = rejected(control_plane, _slice(1001))
    assert "endpoints: Too many: 1001: must have at most 1000 items" in stderr, stderr[-2000:]
