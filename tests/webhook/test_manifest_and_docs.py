"""manifests/webhook.yaml keeps its promises, and docs/webhook.md names every rule the code has."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def docs() -> dict[str, dict[str, Any]]:
    objects = [d for d in yaml.safe_load_all((REPO / "manifests" / "webhook.yaml").read_text()) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in objects}


def test_webhook_configurations_fail_closed_review_only_our_kinds_and_leave_deletes_alone() -> None:
    objects = docs()
    configs = [objects["MutatingWebhookConfiguration/egressgateway-mutating"],
               objects["ValidatingWebhookConfiguration/egressgateway-validating"]]
    for config in configs:
        for hook in config["webhooks"]:
            assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
            assert hook["admissionReviewVersions"] == ["v1"] and 1 <= hook["timeoutSeconds"] <= 10
            assert "namespaceSelector" not in hook  # kube-system (upstream's install namespace) is validated too
            for rule in hook["rules"]:
                assert rule["apiGroups"] == ["egressgateway.spidernet.io"]  # never pods or system objects
                if "DELETE" in rule["operations"]:  # only where a rule refuses a delete
                    assert rule["operations"] == ["DELETE"] and rule["resources"] == ["egressclusterinfos"]
    creates, deletes = configs[1]["webhooks"][0]["rules"]
    assert "egressclusterinfos" in creates["resources"] and deletes["operations"] == ["DELETE"]


def test_two_replicas_with_a_disruption_budget() -> None:
    objects = docs()
    deployment = objects["Deployment/egress-webhook"]
    assert deployment["spec"]["replicas"] == 2
    assert objects["PodDisruptionBudget/egress-webhook"]["spec"]["minAvailable"] == 1
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "egress-webhook"


def test_rbac_is_read_only_except_its_own_objects() -> None:
    objects = docs()
    for rule in objects["ClusterRole/egress-webhook"]["rules"]:
        writes = set(rule["verbs"]) - {"get", "list", "watch"}
        if writes:
            assert rule["resourceNames"] and writes == {"update"}, rule
    for rule in objects["Role/egress-webhook-certs"]["rules"]:
        assert rule["resources"] == ["secrets"]
        assert rule["verbs"] == ["create"] or rule.get("resourceNames") == ["egress-webhook-tls"]


def test_every_rule_id_is_documented() -> None:
    source = "\n".join(p.read_text() for p in (REPO / "webhook").glob("*.py"))
    ids = set(re.findall(r'Denial\(\s*"([a-z0-9-]+)"', source)) | set(re.findall(r'"((?:policy|clusterinfo)-[a-z-]+-(?:subnet|cidr))"', source))
    assert len(ids) > 20
    text = (REPO / "docs" / "webhook.md").read_text()
    missing = sorted(i for i in ids if f"`{i}`" not in text)
    assert not missing, f"rules without documentation in docs/webhook.md: {missing}"
