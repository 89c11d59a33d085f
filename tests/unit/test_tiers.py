"""Under CI=true a tier this machine is meant to run fails when it cannot set up; elsewhere it skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import tiers

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TARGET = "tests/apiserver/test_harness.py"  # the apiserver tier, made unable to run by an empty kube cache


def run_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["EGW_KUBE_CACHE"] = str(tmp_path / "no-kube")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TARGET], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("value", ["true", "1", "True"])
def test_ci_turns_a_tier_that_cannot_set_up_into_a_failure(tmp_path: Path, value: str) -> None:
    proc = run_pytest(tmp_path, value)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "apiserver tier cannot set up under CI=true: control plane not built" in proc.stdout
    assert "tiers that must run under CI but cannot" in proc.stdout and " skipped" not in proc.stdout


@pytest.mark.parametrize("value", [None, "", "false"])
def test_outside_ci_the_tier_skips_and_says_why(tmp_path: Path, value: str | None) -> None:
    proc = run_pytest(tmp_path, value)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "apiserver tier: control plane not built" in proc.stdout and " skipped" in proc.stdout


def test_kind_may_skip_under_ci() -> None:
    assert "kind" in tiers.REASONS and "kind" not in tiers.REQUIRED_IN_CI
    assert set(tiers.REQUIRED_IN_CI) == {"process", "netns", "cri", "apiserver", "e2e"}
