"""The chart under test: hack/render_manifests.py loaded as a module, and the real helm binary.

`helm_or_skip` skips with a reason where no helm was built; under CI=true a missing helm fails.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The seed's install: upstream's keys, into kube-system.
SEED = ("--set", "feature.tunnelIpv4Subnet=192.200.0.1/16", "--set", "feature.enableGatewayReplyRoute=true")


def _load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_manifests", ROOT / "hack" / "render_manifests.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


render = _load_render()


def helm_or_skip() -> str:
    found: str | None = render.helm_binary()
    if found is None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail("CI=true and no helm binary: run `make helm` (hack/build-helm.sh)")
        pytest.skip("no helm binary (run `make helm`: hack/build-helm.sh builds it from the Go module proxy)")
    return found


def objects(helm: str, *args: str, namespace: str = render.NAMESPACE) -> list[dict[str, Any]]:
    """The chart's objects as `helm template` renders them with `args`."""
    result = render.template(helm, args, namespace)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]
