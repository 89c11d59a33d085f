"""devtools.devkube's real control plane, run inside the sandbox's control-plane netns.

devtools/devkube/controlplane.py starts its processes and probes them from the calling thread; running
its calls on a NetnsWorker puts every child process, port and probe in the cp netns unchanged.
kube-apiserver listens on the cp address of the underlay (nodes dial it there; pods through the
`kubernetes` Service and their node's kube-proxy) and dials kubelets (exec, logs) with a client
certificate.
"""

from __future__ import annotations

import atexit
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devtools.devkube.controlplane import ControlPlane
from devtools.sandbox.netns import NetnsWorker
from devtools.sandbox.plan import SandboxPlan
from devtools.sandbox.procs import ProcessRecord, start_ticks

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
            ControlPlane, work_dir, bind_address=self.address, service_account_admission=True,
            extra_apiserver_args=[
                "--enable-admission-plugins=NodeRestriction",
                # No kube-proxy in the control-plane netns: webhook Services are dialled at an
                # endpoint's pod IP (routed to its node), not at the ClusterIP.
                "--enable-aggregator-routing=true",
                f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP",
            ])
        # The identity kube-apiserver presents to kubelets (exec, logs); kubelets trust the client CA.
        self.plane.client_cert("kube-apiserver-kubelet-client", ["system:masters"]).write(pki, "kubelet-client")

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
        """kube-apiserver's URL: the cp address on the underlay, the same from every netns."""
        return self.plane.server

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
        """A client-certificate kubeconfig for `user` (nodes, our components)."""
        return Path(self.worker.call(self.plane.user_kubeconfig, user, list(groups)))

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,  # noqa: A002 - as the harness
                timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.worker.call(self.plane.kubectl, *args, input=input, check=check, timeout=timeout)

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)
