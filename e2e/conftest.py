"""e2e fixtures: one sandbox per session (the same code as `make sandbox`), torn down at the end.

Each session's sandbox has its own namespace prefix (egwe-<id>) and state dir, so concurrent
sessions and a sandbox kept with `make sandbox SANDBOX_ARGS=--keep` do not meet; sandboxes of killed
sessions (no live process) are swept at the start. EGW_E2E_KEPT=<state dir> runs the tests against a
sandbox kept with `python -m devtools.sandbox --keep --state-dir <dir> --prefix <p>` instead (debugging;
it is left running).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.sandbox import netns
from devtools.sandbox.cluster import Sandbox, sweep_stale
from devtools.sandbox.plan import build_plan
from e2e.helpers import EXTERNAL_OTHER, Cluster, namespaces

E2E_STATE_PREFIX = "/run/egressgateway-sandbox-e2e-"


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    if kept := os.environ.get("EGW_E2E_KEPT"):  # a sandbox kept by `--keep --state-dir <dir>`: debugging
        yield Sandbox.attach(Path(kept), say=lambda line: print(line, flush=True))
        return
    # Several people run the suite at once on this machine: every session gets its own names.
    sweep_stale(f"{E2E_STATE_PREFIX}*")
    session = uuid.uuid4().hex[:4]
    plan = build_plan(state_dir=Path(f"{E2E_STATE_PREFIX}{session}"), prefix=f"egwe-{session}")
    sb = Sandbox(plan, say=lambda line: print(line, flush=True))
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
