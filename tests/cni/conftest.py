"""The `lab` fixture of the CNI netns tests: a host netns and pods (tests/cni/lab.py), removed by name
afterwards. A module names its netns prefix with LAB_PREFIX (default "egwc"), so a leftover says
which module made it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cni.lab import Lab


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    made = Lab(tmp_path, prefix=getattr(request.module, "LAB_PREFIX", "egwc"))
    try:
        yield made
    finally:
        made.close()
