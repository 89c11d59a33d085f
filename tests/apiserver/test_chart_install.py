"""The chart's rendering passes a real kube-apiserver's validation (`kubectl apply --dry-run=server`),
installed into kube-system as the seed does and into a namespace of the test's own."""

from __future__ import annotations

import uuid

import pytest
import yaml

from devtools.devkube.controlplane import ControlPlane
from tests.harness.chart import SEED, helm_or_skip, objects

pytestmark = pytest.mark.apiserver

# Our own kinds are admitted by our webhook, which other modules of the session may register and stop:
# their schema is tested in tests/apiserver/test_schema.py and tests/webhook/test_apiserver.py.
OWN_GROUP = "egressgateway.spidernet.io/"


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_or_skip()


@pytest.mark.parametrize("namespace", ["kube-system", "fresh"])
def test_rendering_passes_server_side_validation(control_plane: ControlPlane, helm: str, namespace: str) -> None:
    if namespace == "fresh":
        namespace = f"egw-chart-{uuid.uuid4().hex[:8]}"
        control_plane.kubectl("create", "namespace", namespace)
    try:
        docs = [d for d in objects(helm, *SEED, namespace=namespace) if not d["apiVersion"].startswith(OWN_GROUP)]
        out = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs), check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("(server dry run)") == len(docs)
    finally:
        if namespace.startswith("egw-chart-"):
            control_plane.kubectl("delete", "namespace", namespace, "--wait=false")
