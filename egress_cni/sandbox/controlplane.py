"""The test harness' real control plane, run inside the sandbox's control-plane netns.

tests/harness/controlplane.py binds everything to 127.0.0.1 and probes it from the calling thread;
running its calls on a NetnsWorker puts every child process, port and probe in the cp netns
unchanged. Nodes reach kube-apiserver on the cp address of the underlay, so it also listens there,
its serving certificate names that address, and it can dial kubelets (exec/logs) with a client cert.
"""

from __future__ import annotations

import atexit
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from egress_cni.sandbox.netns import NetnsWorker
from egress_cni.sandbox.plan import SandboxPlan
from egress_cni.sandbox.procs import ProcessRecord, start_ticks

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the harness lives in the checkout's tests/ package
    sys.path.insert(0, str(REPO_ROOT))

from tests.harness.controlplane import FIRST_SERVICE_IP, ControlPlane  # noqa: E402

NODES_BINDING = {
    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
    "metadata": {"name": "egw-sandbox-nodes"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}],
}


class SandboxControlPlane:
    def __init__(self, plan: SandboxPlan, work_dir: Path) -> None:
        self.address = plan.control_plane.ipv4
        self.worker = NetnsWorker(plan.control_plane.netns)
        pki = work_dir / "pki"
        self.plane: ControlPlane = self.worker.call(
            ControlPlane, work_dir, advertise_address=self.address, service_account_admission=False,
            extra_apiserver_args=[
                "--bind-address=0.0.0.0",  # later flags win: also the underlay address, for nodes
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP",
            ])
        # Harness gap (reported): its serving cert names only loopback; nodes dial the underlay address.
        serving = self.plane._serving_ca.issue_server(
            "kube-apiserver", ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            ["127.0.0.1", FIRST_SERVICE_IP, self.address])
        serving.write(pki, "apiserver")
        self.plane._client_ca.issue_client("kube-apiserver-kubelet-client", ["system:masters"]).write(pki, "kubelet-client")

    def start(self, crd_dir: Path) -> None:
        self.worker.call(self.plane.start)
        # RBAC only (the harness fixes --authorization-mode, a list flag): grant kubelets their role.
        self.kubectl("apply", "-f", "-", input=json.dumps(NODES_BINDING))
        self.worker.call(self.plane.apply_crds, crd_dir)
        self.worker.call(self.plane.start_controllers)

    def keep_running_after_exit(self) -> None:
        """The harness stops its processes at interpreter exit; `--keep` must not."""
        atexit.unregister(self.plane.stop)

    def stop(self) -> None:
        self.plane.stop()
        self.worker.close()

    @property
    def node_server(self) -> str:
        """kube-apiserver's URL as seen from the nodes (the loopback URL only works inside the cp netns)."""
        return self.plane.server.replace("127.0.0.1", self.address)

    @property
    def ca_file(self) -> Path:
        return self.plane.pki_dir / "serving-ca.crt"

    @property
    def client_ca_file(self) -> Path:
        return self.plane.pki_dir / "client-ca.crt"

    def process_records(self) -> list[ProcessRecord]:
        records = []
        for name, process in self.plane.processes.items():
            if process.pid is not None and (ticks := start_ticks(process.pid)) is not None:
                records.append(ProcessRecord(name, process.pid, ticks, str(process.log_path)))
        return records

    def kubeconfig_for(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A client-certificate kubeconfig for `user` that dials the underlay address (for nodes)."""
        path = self.worker.call(self.plane.user_kubeconfig, user, list(groups))
        config = yaml.safe_load(path.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = self.node_server
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return Path(path)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,  # noqa: A002 - as the harness
                timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.worker.call(self.plane.kubectl, *args, input=input, check=check, timeout=timeout)

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)
