"""Where hack/build-kube.sh leaves the control-plane binaries."""

from __future__ import annotations

import os
from pathlib import Path

K8S_VERSION = os.environ.get("EGW_K8S_VERSION", "v1.36.3")
KUBE_TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


def kube_bin_dir() -> Path:
    root = os.environ.get("EGW_KUBE_CACHE") or str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "egressgateway" / "kube")
    return Path(root) / K8S_VERSION / "bin"
