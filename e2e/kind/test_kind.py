"""The walkthrough on kind: the manifests' controller, webhook and agents give a selected pod the EIP."""

from __future__ import annotations

import json
import time

import pytest

from e2e.kind.conftest import KindEnv

pytestmark = pytest.mark.kind


def _source(env: KindEnv, pod: str) -> str:
    out = env.kubectl("exec", pod, "--", "python", "-c",
                      f"import urllib.request;print(urllib.request.urlopen('http://{env.server_ip}:8080/').read().decode())")
    return out.strip().removeprefix("Remote IP: ")


def test_selected_pod_leaves_with_the_eip(kind_env: KindEnv) -> None:
    env = kind_env
    first, last = env.eip_pool.split("-")
    workers = json.loads(env.kubectl("get", "nodes", "-o", "json"))["items"]
    gateway_node = workers[-1]["metadata"]["name"]
    env.kubectl("label", "node", gateway_node, "egressgateway=true", "--overwrite")
    env.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "egressgateway.spidernet.io/v1beta1", "kind": "EgressGateway", "metadata": {"name": "default"},
        "spec": {"ippools": {"ipv4": [f"{first}-{last}"]}, "nodeSelector": {"selector": {"matchLabels": {"egressgateway": "true"}}}}}))
    env.kubectl("run", "client", "--image=egressgateway:dev", "--image-pull-policy=Never", "--labels=app=client",
                "--command", "--", "sleep", "36000")
    env.kubectl("wait", "--for=condition=Ready", "pod/client", "--timeout=180s")
    env.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "egressgateway.spidernet.io/v1beta1", "kind": "EgressPolicy", "metadata": {"name": "test", "namespace": "default"},
        "spec": {"egressGatewayName": "default", "appliedTo": {"podSelector": {"matchLabels": {"app": "client"}}}}}))
    deadline = time.monotonic() + 120
    while True:
        status = json.loads(env.kubectl("get", "egresspolicy", "test", "-o", "json")).get("status") or {}
        eip = (status.get("eip") or {}).get("ipv4")
        if eip and _source(env, "client") == eip:
            return
        assert time.monotonic() < deadline, f"client never left with the EIP (status {status})"
        time.sleep(1)
