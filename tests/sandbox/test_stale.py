"""A sandbox is swept as stale once the session that brought it up is gone, even when processes it
started still run (a session killed while a test froze one of them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from devtools.sandbox import procs
from devtools.sandbox.cluster import abandoned
from devtools.sandbox.state import SandboxState

pytestmark = pytest.mark.unit


def _gone() -> procs.ProcessRecord:
    child = subprocess.Popen(["true"])
    record = procs.ProcessRecord("owner", child.pid, procs.start_ticks(child.pid) or 0, "")
    child.wait()
    return record


def test_a_dead_owner_makes_it_stale_whatever_still_runs(tmp_path: Path) -> None:
    running = procs.this_process()
    assert not abandoned(SandboxState(tmp_path, processes=[running], owner=procs.this_process()))
    assert abandoned(SandboxState(tmp_path, processes=[running], owner=_gone()))
    # a state written before owners were recorded: stale only when none of its processes runs
    assert not abandoned(SandboxState(tmp_path, processes=[running]))
    assert abandoned(SandboxState(tmp_path, processes=[_gone()]))


def test_the_owner_survives_a_save_and_load(tmp_path: Path) -> None:
    SandboxState(tmp_path, owner=procs.this_process()).save()
    loaded = SandboxState.load(tmp_path)
    assert loaded is not None and loaded.owner == procs.this_process()
