"""e2e fixtures: one sandbox per session (the same code as `make sandbox`), torn down at the end.

The e2e sandbox uses its own namespace prefix and state dir, so a sandbox kept with
`make sandbox SANDBOX_ARGS=--keep` can stay up while the suite runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.helpers import EXTERNAL_OTHER, Cluster, namespaces
from egress_cni.sandbox import netns
from egress_cni.sandbox.cluster import Sandbox
from egress_cni.sandbox.plan import build_plan

E2E_STATE_DIR = Path("/run/egressgateway-sandbox-e2e")


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(build_plan(state_dir=E2E_STATE_DIR, prefix="egw-e2e"), say=lambda line: print(line, flush=True))
    try:
        sb.up()
        # A second destination outside the cluster, on the same external server.
        netns.run(["ip", "-n", sb.plan.external.netns, "addr", "replace", f"{EXTERNAL_OTHER}/24", "dev", "eth0"])
        if sb.pending:
            pytest.fail("sandbox came up without: " + "; ".join(sb.pending))
        yield sb
    finally:
        sb.down()


@pytest.fixture(scope="session")
def cluster(sandbox: Sandbox) -> Cluster:
    return Cluster(sandbox)


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    yield from namespaces(cluster)


@pytest.fixture
def gateways(cluster: Cluster) -> Iterator[list[str]]:
    """Names of EgressGateways a test creates: deleted (and their node labels removed) afterwards."""
    created: list[str] = []
    yield created
    for name in created:
        cluster.move_gateway(name, [])
        cluster.delete("egressgateway", name)
