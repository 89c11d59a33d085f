"""The kind suite: the chart installed into a kind cluster (pytest-kind-ng) with the seed's
`helm install`, as the sandbox does, with the data-path checks of the sandbox suite. Runs only where
a Docker engine and kind exist and EGW_E2E_KIND=1; elsewhere the root conftest skips the `kind`
tier and says why (here: no Docker engine).

    docker build -t egressgateway:dev . && EGW_E2E_KIND=1 pytest -m kind --kind-bin=$(which kind)
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.devkube.binaries import helm_binary
from devtools.sandbox import components

REPO = Path(__file__).resolve().parents[2]
IMAGE = "egressgateway:dev"
SERVER_NAME = "egw-kind-external"


@dataclass(frozen=True)
class KindEnv:
    cluster: Any  # pytest_kind.KindCluster
    server_ip: str  # the external server: a container on the kind network, outside the cluster
    eip_pool: str  # free addresses at the top of the kind network, on-link for every node

    def kubectl(self, *args: str, input: str | None = None) -> str:  # noqa: A002
        return str(self.cluster.kubectl(*args, input=input) if input else self.cluster.kubectl(*args))


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def _kind_subnet() -> ipaddress.IPv4Network:
    networks = json.loads(_docker("network", "inspect", "kind"))[0]["IPAM"]["Config"]
    return next(ipaddress.IPv4Network(c["Subnet"]) for c in networks if ":" not in c["Subnet"])


@pytest.fixture(scope="session")
def kind_env(request: pytest.FixtureRequest) -> Iterator[KindEnv]:
    cluster = request.getfixturevalue("kind_cluster")  # pytest-kind-ng: created once, deleted at the end
    cluster.load_docker_image(IMAGE)
    helm = helm_binary()
    if helm is None:
        pytest.fail("no helm binary (make helm: hack/build-helm.sh)")
    subprocess.run(components.install_command(helm, Path(cluster.kubeconfig_path), "--wait", "--timeout=5m"),
                   check=True, capture_output=True, text=True)
    for workload in ("deployment/egressgateway-controller", "deployment/egress-webhook", "daemonset/egressgateway-agent"):
        cluster.kubectl("-n", components.NAMESPACE, "rollout", "status", workload, "--timeout=300s")
    subnet = _kind_subnet()
    last = subnet.broadcast_address - 1
    # the image holds the product only: the external server runs from the checkout, mounted read-only
    _docker("run", "-d", "--rm", "--name", SERVER_NAME, "--network", "kind", "-v", f"{REPO}:/checkout:ro", "-w", "/checkout",
            IMAGE, "python", "-m", "devtools.sandbox.extserver", "--record", "/tmp/record.jsonl")
    try:
        server_ip = _docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", SERVER_NAME).strip()
        yield KindEnv(cluster, server_ip, f"{last - 4}-{last}")
    finally:
        subprocess.run(["docker", "rm", "-f", SERVER_NAME], capture_output=True)
