"""e2e fixtures: one sandbox per session (the same code as `make sandbox`), torn down at the end.

Each session's sandbox has its own namespace prefix (egwe-<id><cni>) and state dir, so concurrent
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
from devtools.sandbox.state import SandboxState
from e2e.helpers import EXTERNAL_OTHER, Cluster, namespaces

E2E_STATE_PREFIX = "/run/egressgateway-sandbox-e2e-"
SESSION = uuid.uuid4().hex[:3]


def cni_modes(module: object) -> tuple[str, ...]:
    """The CNI modes a test module runs on: its SANDBOX_CNIS (default bridge), narrowed by
    EGW_E2E_CNIS=<mode>,... or, with EGW_E2E_KEPT, the kept sandbox's own mode."""
    modes: tuple[str, ...] = getattr(module, "SANDBOX_CNIS", ("bridge",))
    if kept := os.environ.get("EGW_E2E_KEPT"):
        state = SandboxState.load(Path(kept))
        return (str((state.plan_args if state else {}).get("cni", "bridge")),)
    if wanted := os.environ.get("EGW_E2E_CNIS"):
        modes = tuple(m for m in modes if m in wanted.split(","))
    return modes


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One session sandbox per CNI mode: the data-path modules (SANDBOX_CNIS) run on each, the rest
    on bridge; pytest groups the tests by mode, so one sandbox is up at a time."""
    if "sandbox" in metafunc.fixturenames:
        metafunc.parametrize("sandbox", cni_modes(metafunc.module), indirect=True, scope="session")


@pytest.fixture(scope="session")
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    if kept := os.environ.get("EGW_E2E_KEPT"):  # a sandbox kept by `--keep --state-dir <dir>`: debugging
        sb = Sandbox.attach(Path(kept), say=lambda line: print(line, flush=True))
        _second_destination(sb)
        yield sb
        return
    cni = str(getattr(request, "param", "bridge"))
    # Several people run the suite at once on this machine: every session gets its own names.
    sweep_stale(f"{E2E_STATE_PREFIX}*")
    session = f"{SESSION}{cni[0]}"  # egwe-<3 hex><b|m|f>: `<prefix>-node3` fits a link name
    plan = build_plan(state_dir=Path(f"{E2E_STATE_PREFIX}{session}"), prefix=f"egwe-{session}", cni=cni)
    sb = Sandbox(plan, say=lambda line: print(line, flush=True))
    try:
        sb.up()
        _second_destination(sb)
        if sb.pending:
            pytest.fail("sandbox came up without: " + "; ".join(sb.pending))
        yield sb
    finally:
        sb.down()


def _second_destination(sb: Sandbox) -> None:
    """A second destination outside the cluster, on the same external server (a kept sandbox too)."""
    netns.run(["ip", "-n", sb.plan.external.netns, "addr", "replace", f"{EXTERNAL_OTHER}/24", "dev", "eth0"])


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
