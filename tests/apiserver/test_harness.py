"""The harness's own failure path: a component that cannot start fails fast, says why, leaks nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.devkube.controlplane import ControlPlane
from devtools.devkube.processes import StartupError

pytestmark = pytest.mark.apiserver


def test_apiserver_that_cannot_start_reports_its_log_and_stops_etcd(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path, extra_apiserver_args=["--no-such-flag=1"])
    with pytest.raises(StartupError, match="unknown flag: --no-such-flag") as failure:
        plane.start()
    assert "kube-apiserver" in str(failure.value) and "exited with code" in str(failure.value)
    assert not plane.processes["etcd"].running, "etcd must not outlive a failed apiserver start"
    assert not (tmp_path / "etcd-data").exists()
