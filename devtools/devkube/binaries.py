"""Where hack/build-kube.sh leaves the control-plane binaries, hack/build-helm.sh helm and
hack/build-flannel.sh flanneld."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

K8S_VERSION = os.environ.get("EGW_K8S_VERSION", "v1.36.3")
KUBE_TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
HELM_VERSION = os.environ.get("EGW_HELM_VERSION", "v3.22.0")
FLANNEL_SERIES = "v0.28"  # hack/build-flannel.sh builds the newest release of it the proxy serves


def _cache(env: str, tool: str) -> Path:
    return Path(os.environ.get(env) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "egressgateway" / tool)


def kube_bin_dir() -> Path:
    return _cache("EGW_KUBE_CACHE", "kube") / K8S_VERSION / "bin"


def helm_binary() -> str | None:
    """$HELM, else hack/build-helm.sh's cached build, else helm on PATH; None when there is none."""
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    built = _cache("EGW_HELM_CACHE", "helm") / HELM_VERSION / "bin" / "helm"
    return str(built) if built.is_file() and os.access(built, os.X_OK) else shutil.which("helm")


def release_patch(version: str, series: str) -> int | None:
    """The patch number of a plain release `<series>.<patch>` (sorts v0.28.10 after v0.28.4); None for
    anything else (another series, a pre-release)."""
    head, _, patch = version.rpartition(".")
    return int(patch) if head == series and patch.isdigit() else None


def flannel_binary() -> Path | None:
    """hack/build-flannel.sh's flanneld: $EGW_FLANNEL_VERSION's, else the newest v0.28.x built; None when none is."""
    cache = _cache("EGW_FLANNEL_CACHE", "flannel")
    wanted = os.environ.get("EGW_FLANNEL_VERSION")
    built_patches = {p.name: release_patch(p.name, FLANNEL_SERIES) for p in cache.glob(f"{FLANNEL_SERIES}.*")}
    versions = [wanted] if wanted else sorted((v for v, n in built_patches.items() if n is not None),
                                              key=lambda v: built_patches[v] or 0, reverse=True)
    for version in versions:
        built = cache / version / "bin" / "flanneld"
        if built.is_file() and os.access(built, os.X_OK):
            return built
    return None
