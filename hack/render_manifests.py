"""Render the plain manifests (manifests/<template>.yaml) from the Helm chart manifests/chart/egressgateway.

The chart is the one source: each manifests/<name>.yaml is `helm template` of the chart's
templates/<name>.yaml with the default values into namespace egressgateway-system (namespace.yaml and
kustomization.yaml stay hand-written: Helm does not create its release namespace). Run
`make manifests` after changing the chart; tests/unit/test_chart.py fails when the files differ.

Hooks are left out (`--no-hooks`): the pre-delete uninstall Job (templates/uninstall-hook.yaml) is
Helm's, and a `kubectl apply` of it would clean every node at once.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from devtools.devkube.binaries import helm_binary  # noqa: E402 - the checkout is not installed

CHART = ROOT / "manifests" / "chart" / "egressgateway"
OUT = ROOT / "manifests"
NAMESPACE = "egressgateway-system"
HEADER = "# Generated from manifests/chart/egressgateway by `make manifests`: edit the chart, not this file.\n"
_SOURCE = re.compile(r"^# Source: egressgateway/templates/(?P<name>[^\n]+)\n", re.MULTILINE)


def template(helm: str, args: Sequence[str] = (), namespace: str = NAMESPACE) -> subprocess.CompletedProcess[str]:
    """`helm template egressgateway <chart> -n <namespace> <args>`; the caller checks returncode."""
    return subprocess.run([helm, "template", "egressgateway", str(CHART), "-n", namespace, *args],
                          capture_output=True, text=True, check=False, timeout=120)


def split_by_template(rendered: str) -> dict[str, str]:
    """Template file name -> its documents, in rendering order, each file starting with HEADER."""
    files: dict[str, list[str]] = {}
    matches = list(_SOURCE.finditer(rendered))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(rendered)
        body = rendered[match.end():end].removesuffix("---\n").rstrip("\n") + "\n"
        files.setdefault(match["name"], []).append(body)
    return {name: HEADER + "---\n".join(docs) for name, docs in files.items()}


def rendered_manifests(helm: str) -> dict[str, str]:
    result = template(helm, ["--no-hooks"])
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed: {result.stderr.strip()}")
    return split_by_template(result.stdout)


def main() -> int:
    helm = helm_binary()
    if helm is None:
        print("render_manifests: no helm (run hack/build-helm.sh)", file=sys.stderr)
        return 2
    files = rendered_manifests(helm)
    for name, text in files.items():
        (OUT / name).write_text(text)
    print(f"rendered {len(files)} manifests into {OUT}: {', '.join(sorted(files))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
