"""Where hack/build-kube.sh leaves the control-plane binaries and hack/build-helm.sh leaves helm."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

K8S_VERSION = os.environ.get("EGW_K8S_VERSION", "v1.36.3")
KUBE_TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
HELM_VERSION = os.environ.get("EGW_HELM_VERSION", "v3.22.0")


def kube_bin_dir() -> Path:
    root = os.environ.get("EGW_KUBE_CACHE") or str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "egressgateway" / "kube")
    return Path(root) / K8S_VERSION / "bin"


def helm_binary() -> str | None:
    """$HELM, else hack/build-helm.sh's cached build, else helm on PATH; None when there is none."""
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    cache = Path(os.environ.get("EGW_HELM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "egressgateway" / "helm")
    built = cache / HELM_VERSION / "bin" / "helm"
    return str(built) if built.is_file() and os.access(built, os.X_OK) else shutil.which("helm")
