"""The Flask adapter in-process (no sockets): envelope, HTTP errors as reviews."""

from __future__ import annotations

import json

import pytest

from tests.webhook.builders import gateway, policy, request
from webhook.app import create_app
from webhook.config import WebhookConfig
from webhook.view import MemoryView

pytestmark = pytest.mark.unit


def client(ready: bool = True):  # type: ignore[no-untyped-def]
    view = MemoryView.of([gateway(ipv4=["10.6.168.201-10.6.168.205"], default4="10.6.168.201")])
    return create_app(view, WebhookConfig(), ready=lambda: ready).test_client()


def test_review_round_trip() -> None:
    req = request(policy())
    resp = client().post("/validate", data=json.dumps({"request": req}))
    assert resp.status_code == 200 and resp.json["response"] == {"uid": req["uid"], "allowed": True,
                                                                "status": {"code": 200, "message": "", "reason": ""}}


def test_oversized_body_is_refused_as_a_review() -> None:
    resp = client().post("/validate", data=b"x" * (9 << 20))
    assert resp.status_code == 413 and resp.json["response"]["allowed"] is False


def test_wrong_method_is_a_review_too() -> None:
    resp = client().get("/validate")
    assert resp.status_code == 405 and resp.json["kind"] == "AdmissionReview"


def test_readyz_reflects_the_cache() -> None:
    assert client(ready=False).get("/readyz").status_code == 503
    assert client(ready=True).get("/readyz").status_code == 200


def test_metric_labels_stay_bounded_whatever_kind_a_request_names() -> None:
    from prometheus_client import REGISTRY

    from webhook import metrics

    def value(kind: str) -> float:
        return REGISTRY.get_sample_value("egress_webhook_requests_total",
                                         {"action": "validate", "kind": kind, "result": "allowed"}) or 0.0

    before = value("other")
    for i in range(5):
        metrics.observe("validate", f"Random{i}", "allowed", "")
    assert value("other") == before + 5
    assert all(value(f"Random{i}") == 0.0 for i in range(5))
