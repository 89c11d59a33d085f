"""The webhook as deployed: egress-webhook under gunicorn, over real HTTPS on 127.0.0.1.

Tier `unit`: it needs nothing but loopback and the repo (no root, no control plane).
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.webhook.builders import gateway, patch_of, policy, request
from tests.webhook.server import Webhook, running_webhook

pytestmark = pytest.mark.process

STATE = [gateway(ipv4=["10.6.168.201-10.6.168.205"], default4="10.6.168.201"),
         {"kind": "Namespace", "metadata": {"name": "team", "labels": {"spidernet.io/egressgateway-default": "default"}}}]


@pytest.fixture(scope="module")
def hook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    with running_webhook(tmp_path_factory.mktemp("webhook"), state=STATE) as running:
        yield running


def post(hook: Webhook, path: str, body: object) -> requests.Response:
    return requests.post(hook.url + path, data=json.dumps(body), verify=str(hook.ca_file), timeout=10)


def test_mutate_over_https_returns_a_json_patch(hook: Webhook) -> None:
    req = request(policy(namespace="team", gateway_name=""))
    resp = post(hook, "/mutate", {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
    assert resp.status_code == 200
    review = resp.json()
    assert review["apiVersion"] == "admission.k8s.io/v1" and review["kind"] == "AdmissionReview"
    assert review["response"]["uid"] == req["uid"]
    ops = {op["path"]: op["value"] for op in patch_of(review["response"])}
    assert ops == {"/spec/egressGatewayName": "default", "/spec/egressIP": {"allocatorPolicy": "default", "useNodeIP": False}}


def test_validate_over_https_denies_with_the_message(hook: Webhook) -> None:
    req = request(policy(dest=["10.6.1.7"]))
    response = post(hook, "/validate", {"request": req}).json()["response"]
    assert response["allowed"] is False and response["uid"] == req["uid"]
    assert response["status"]["code"] == 403
    assert response["status"]["message"].startswith("spec.destSubnet[0]: is an address, not a CIDR; write 10.6.1.7/32")


def test_garbage_gets_a_well_formed_400(hook: Webhook) -> None:
    resp = requests.post(hook.url + "/validate", data=b"\xff not json", verify=str(hook.ca_file), timeout=10)
    assert resp.status_code == 200
    assert resp.json()["response"]["status"]["code"] == 400


def test_health_readiness_and_metrics(hook: Webhook) -> None:
    s = hook.session()
    assert s.get(hook.url + "/healthz", timeout=10).status_code == 200
    assert s.get(hook.url + "/readyz", timeout=10).status_code == 200
    for _ in range(4):  # several connections, so both workers are likely to have answered
        post(hook, "/validate", {"request": request(policy(gateway_name=""))})
    text = s.get(hook.url + "/metrics", timeout=10).text
    # one worker answers /metrics, but counts every worker's denials (multiprocess aggregation)
    assert 'egress_webhook_denials_total{kind="EgressPolicy",reason="policy-gateway-name"} 4.0' in text
    assert "egress_webhook_review_seconds_bucket" in text and "egress_webhook_requests_total" in text


def _client_context(hook: Webhook, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(hook.ca_file))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer old protocols; the server must say no
    context.minimum_version = context.maximum_version = version
    return context


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_below_1_2_is_refused(hook: Webhook, version: ssl.TLSVersion) -> None:
    port = int(hook.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, pytest.raises((ssl.SSLError, OSError)):
        _client_context(hook, version).wrap_socket(raw, server_hostname="127.0.0.1").close()


def test_tls_1_2_is_served(hook: Webhook) -> None:
    port = int(hook.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            _client_context(hook, ssl.TLSVersion.TLSv1_2).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() == "TLSv1.2"


def test_certificate_rotation_is_picked_up_without_restart(tmp_path: Path) -> None:
    from webhook import certs

    with running_webhook(tmp_path / "hook", state=STATE, workers=1) as hook:
        fresh = certs.new_bundle(["127.0.0.1"])
        certs.write_cert_dir(fresh, hook.ca_file.parent)
        (tmp_path / "new-ca.crt").write_bytes(fresh.ca_pem)
        resp = requests.get(hook.url + "/healthz", verify=str(tmp_path / "new-ca.crt"), timeout=10)
        assert resp.status_code == 200


def test_installation_families_come_from_the_environment(tmp_path: Path) -> None:
    with running_webhook(tmp_path / "v4-only", state=STATE, workers=1, env={"EGRESS_ENABLE_IPV6": "false"}) as v4_only:
        response = post(v4_only, "/validate", {"request": request(gateway("v6", ipv6=["fd00::1"]))}).json()["response"]
    assert response["allowed"] is False
    assert response["status"]["message"].startswith("spec.ippools.ipv6: IPv6 is not enabled in this installation")
