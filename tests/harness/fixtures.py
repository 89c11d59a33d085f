"""pytest plugin with the control-plane fixtures (registered by the root conftest).

- `control_plane` (session): etcd + kube-apiserver, CRDs from manifests/crds applied and Established,
  namespace egressgateway-system created. One plane per session keeps the apiserver tier fast.
- `control_plane_full` (session): the same plane plus kube-controller-manager and kube-scheduler,
  started the first time a test asks for them.
- `namespace` (function): a fresh namespace, deleted afterwards.
A failing test that used the plane gets the component log tails in its report.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from devtools.devkube.controlplane import ControlPlane
from devtools.devkube.processes import StartupError

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "manifests" / "crds"
EGRESS_NAMESPACE = os.environ.get("EGRESS_NAMESPACE", "egressgateway-system")
PLANE_FIXTURES = {"control_plane", "control_plane_full", "namespace"}

_session_plane: ControlPlane | None = None


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    global _session_plane
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"))
    try:
        plane.start()
        _session_plane = plane
        plane.apply_crds(CRD_DIR)
        plane.ensure_namespace(EGRESS_NAMESPACE)
    except Exception as error:
        tails = plane.log_tails()
        plane.stop()
        pytest.fail(f"control plane did not start: {error}\n{tails}", pytrace=False)
    try:
        yield plane
    finally:
        _session_plane = None
        plane.stop()


@pytest.fixture(scope="session")
def control_plane_full(control_plane: ControlPlane) -> ControlPlane:
    try:
        control_plane.start_controllers()
    except StartupError as error:
        pytest.fail(f"kube-controller-manager/kube-scheduler did not start: {error}\n{control_plane.log_tails()}", pytrace=False)
    return control_plane


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    # DNS label: at most 63 characters of [a-z0-9-]; the suffix keeps reruns and parametrized cases apart.
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:48].rstrip("-")
    name = f"{stem}-{uuid.uuid4().hex[:8]}"
    control_plane.ensure_namespace(name)
    yield name
    # Without kube-controller-manager the namespace stays Terminating; that is harmless here.
    control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    uses_plane = PLANE_FIXTURES & set(getattr(item, "fixturenames", ()))
    if report.failed and uses_plane and _session_plane is not None:
        report.sections.append(("control plane log tails", _session_plane.log_tails()))
    return report
