"""Warm start time and memory of the test control plane (tests/harness/controlplane.py).

Each run starts a fresh plane in a new directory with the already-built binaries (warm: page cache
and build cache hot, nothing compiled): etcd + kube-apiserver until /readyz and namespace `default`,
then manifests/crds until every CRD is Established and in discovery, then kube-controller-manager +
kube-scheduler until /healthz. RSS (VmRSS) of each component is read right after the full start.
No external peer can run here (kind needs a Docker engine and an image registry), so the in-run
comparison is the full plane against the apiserver-only plane the `control_plane` fixture uses.

Run: .venv/bin/python bench/controlplane.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devtools.devkube.controlplane import ControlPlane
from tests.support.tiers import apiserver_missing

CRD_DIR = Path(__file__).resolve().parents[1] / "manifests" / "crds"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Run:
    apiserver_ready: float  # etcd + apiserver until /readyz and namespace default
    crds_established: float  # ... plus every CRD Established and discoverable
    full_ready: float  # ... plus kcm + scheduler /healthz
    rss: dict[str, int]


def one_run(root: Path) -> Run:
    plane = ControlPlane(Path(tempfile.mkdtemp(prefix="run-", dir=root)))
    started = time.monotonic()
    try:
        plane.start()
        apiserver_ready = time.monotonic() - started
        plane.apply_crds(CRD_DIR)
        crds_established = time.monotonic() - started
        plane.start_controllers()
        full_ready = time.monotonic() - started
        return Run(apiserver_ready, crds_established, full_ready, plane.rss_bytes())
    finally:
        plane.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if reason := apiserver_missing():
        print(f"cannot measure: {reason}")
        return 2
    with tempfile.TemporaryDirectory(prefix="egw-bench-cp-") as root:
        runs = []
        for index in range(args.runs):
            run = one_run(Path(root))
            runs.append(run)
            print(f"run {index + 1}: apiserver ready {run.apiserver_ready:.2f}s, CRDs Established "
                  f"{run.crds_established:.2f}s, +kcm+scheduler {run.full_ready:.2f}s", flush=True)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    api = median([r.apiserver_ready for r in runs])
    crds = median([r.crds_established for r in runs])
    full = median([r.full_ready for r in runs])
    print(f"\nwarm start, median of {len(runs)} runs:")
    print(f"  etcd + kube-apiserver /readyz        {api:6.2f} s")
    print(f"  ... + CRDs Established (fixture)     {crds:6.2f} s")
    print(f"  ... + kcm + scheduler (full)         {full:6.2f} s   (full / fixture = {full / crds:.2f}x)")
    print(f"\nRSS right after the full start, median of {len(runs)} runs:")
    components = list(runs[0].rss)
    for name in components:
        print(f"  {name:<26} {median([r.rss[name] / MIB for r in runs]):7.1f} MiB")
    core = median([(r.rss["etcd"] + r.rss["kube-apiserver"]) / MIB for r in runs])
    total = median([sum(r.rss.values()) / MIB for r in runs])
    print(f"  {'etcd + kube-apiserver':<26} {core:7.1f} MiB")
    print(f"  {'all four':<26} {total:7.1f} MiB   (all / etcd+apiserver = {total / core:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
