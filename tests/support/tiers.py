"""Which test tiers can run on this machine, and why not when they cannot.

A tier that cannot run skips and says why, except under CI (`CI=true`): the machine CI runs on is
root with Debian's packages and a control plane that `make test` builds, so there every tier in
REQUIRED_IN_CI that cannot set up fails instead (root conftest.py). Only kind, which needs a Docker
engine this kind of machine lacks, may still skip.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from devtools.devkube.binaries import KUBE_TOOLS, kube_bin_dir


@functools.cache
def netns_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "iptables-restore", "ipset", "conntrack", "busybox"):
        if not shutil.which(tool):
            return f"{tool} is not installed (run hack/install-deps.sh)"
    return None


@functools.cache
def cri_missing() -> str | None:
    if reason := netns_missing():
        return reason
    if not shutil.which("containerd") or not shutil.which("runc"):
        return "Debian containerd/runc are not installed (run hack/install-deps.sh)"
    if not Path("/usr/lib/cni/bridge").exists():
        return "Debian containernetworking-plugins are not installed (run hack/install-deps.sh)"
    return None


@functools.cache
def apiserver_missing() -> str | None:
    missing = [t for t in KUBE_TOOLS if not (kube_bin_dir() / t).exists()]
    if missing:
        return f"control plane not built ({', '.join(missing)} missing in {kube_bin_dir()}); run hack/build-kube.sh"
    return None


@functools.cache
def e2e_missing() -> str | None:
    return apiserver_missing() or cri_missing()


@functools.cache
def kind_missing() -> str | None:
    if os.environ.get("EGW_E2E_KIND") != "1":
        return "kind suite not requested (set EGW_E2E_KIND=1 where a Docker engine and kind exist)"
    if not shutil.which("docker"):
        return "no docker client"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode != 0:
        return "no Docker engine answers `docker info` (kind needs one)"
    if not shutil.which("kind"):
        return "no kind binary on PATH"
    return None


@functools.cache
def process_missing() -> str | None:
    if importlib.util.find_spec("gunicorn") is None:
        return "gunicorn is not installed in this Python (run make venv)"
    return None


def in_ci() -> bool:
    """CI sets CI=true (most CI systems do); 1/yes count too."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


REQUIRED_IN_CI = ("process", "netns", "cri", "apiserver", "e2e")

REASONS = {
    "process": process_missing,
    "netns": netns_missing,
    "cri": cri_missing,
    "apiserver": apiserver_missing,
    "e2e": e2e_missing,
    "kind": kind_missing,
}
