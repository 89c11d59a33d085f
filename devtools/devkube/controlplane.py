"""A real Kubernetes control plane for tests and the sandbox: etcd + kube-apiserver (+ kcm + scheduler).

Flags follow controller-runtime's envtest (RBAC authorization, client-certificate admin, ServiceAccount
signing keys), binaries come from hack/build-kube.sh. No pytest here: the sandbox script uses it too.

    with ControlPlane(Path("/tmp/cp")) as plane:      # etcd + apiserver, admin kubeconfig written
        plane.apply_crds(Path("manifests/crds"))
        plane.start_controllers()                     # kube-controller-manager + kube-scheduler
        plane.kubectl("get", "pods", "-A")
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from devtools.devkube.binaries import kube_bin_dir
from devtools.devkube.certs import CertificateAuthority, CertKey, SigningKey
from devtools.devkube.kubeconfig import write_kubeconfig
from devtools.devkube.processes import (
    ManagedProcess,
    StartupError,
    clean_environment,
    free_port,
    http_ok,
    insecure_context,
    wait_until,
)

SERVICE_CIDR = "10.0.0.0/24"
FIRST_SERVICE_IP = "10.0.0.1"  # the `kubernetes` Service: in-cluster clients dial it, so it is a SAN
START_TIMEOUT = float(os.environ.get("EGW_CONTROL_PLANE_START_TIMEOUT", "180"))
T = TypeVar("T")
PORT_ATTEMPTS = 3  # other engineers start planes concurrently: a chosen port can be taken before we bind


class CommandFailed(subprocess.CalledProcessError):
    """A kubectl call that exited non-zero; str() includes its stderr (CalledProcessError's does not)."""

    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd))} exited {self.returncode}: {(self.stderr or '').strip()}"


def _port_clash(process: ManagedProcess) -> bool:
    return "address already in use" in process.tail(200)


class ControlPlane:
    """etcd + kube-apiserver, optionally kube-controller-manager + kube-scheduler.

    Everything listens on 127.0.0.1 except the apiserver, which listens on `bind_address` (default
    127.0.0.1; the sandbox passes its control-plane netns address so node namespaces can reach it).
    """

    def __init__(
        self, work_dir: Path, *, bin_dir: Path | None = None, start_timeout: float = START_TIMEOUT,
        service_account_admission: bool = False, bind_address: str = "127.0.0.1", advertise_address: str | None = None,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        self.work_dir = work_dir
        self.bin_dir = bin_dir or kube_bin_dir()
        self.start_timeout = start_timeout
        self.log_dir = work_dir / "logs"
        self.pki_dir = work_dir / "pki"
        self.users_dir = work_dir / "users"
        # Envtest disables it because no controller creates `default` ServiceAccounts; the sandbox
        # (which runs kcm from the start and real pods) turns it back on.
        self._service_account_admission = service_account_admission
        if ipaddress.ip_address(bind_address).is_unspecified:
            raise ValueError(f"bind_address {bind_address!r}: give the concrete IP clients dial (it becomes the server URL and a SAN)")
        self._bind_address = bind_address
        self._advertise_address = advertise_address or self._bind_address
        self._extra_apiserver_args = list(extra_apiserver_args)
        self.processes: dict[str, ManagedProcess] = {}
        self.server = ""
        self.kubeconfig = work_dir / "admin.kubeconfig"
        for directory in (self.log_dir, self.pki_dir, self.users_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._serving_ca = CertificateAuthority("egw-serving-ca")
        self._client_ca = CertificateAuthority("egw-client-ca")
        self._sa_key = SigningKey.generate()
        self.ca_pem = self._serving_ca.cert_pem
        self._write_pki()

    # --- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start etcd then kube-apiserver; return once /readyz is 200 and namespace `default` exists."""
        atexit.register(self.stop)
        try:
            etcd_url = self._start_with_port_retry("etcd", self._start_etcd)
            self._start_with_port_retry("kube-apiserver", lambda: self._start_apiserver(etcd_url))
        except BaseException:
            self.stop()  # never leave etcd behind a failed apiserver
            raise

    def start_controllers(self) -> None:
        """Start kube-controller-manager and kube-scheduler if they are not running yet."""
        if "kube-controller-manager" not in self.processes:
            self._start_with_port_retry("kube-controller-manager", self._start_controller_manager)
        if "kube-scheduler" not in self.processes:
            self._start_with_port_retry("kube-scheduler", self._start_scheduler)

    def stop(self) -> None:
        """Stop every component by PID in reverse start order; logs stay in log_dir."""
        for process in reversed(list(self.processes.values())):
            process.stop()
        shutil.rmtree(self.work_dir / "etcd-data", ignore_errors=True)
        atexit.unregister(self.stop)

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(
            f"===== {p.name} (pid {p.pid}, {p.log_path}) =====\n{p.tail(lines)}" for p in self.processes.values()
        )

    def rss_bytes(self) -> dict[str, int]:
        return {name: process.rss_bytes() for name, process in self.processes.items()}

    # --- kubectl and identities ---------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True,  # noqa: A002 (contract: mirrors subprocess.run)
        kubeconfig: Path | None = None, timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as admin (or as the identity of `kubeconfig`); raise CommandFailed when check."""
        argv = [str(self.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}",
                f"--cache-dir={self.work_dir / 'kubectl-cache'}", *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, env=clean_environment())
        if check and result.returncode != 0:
            raise CommandFailed(result.returncode, argv, result.stdout, result.stderr)
        return result

    def kubectl_json(self, *args: str, kubeconfig: Path | None = None) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json", kubeconfig=kubeconfig).stdout)

    def client_cert(self, user: str, groups: Sequence[str] = ()) -> CertKey:
        """A client certificate the apiserver accepts as `user` in `groups`."""
        return self._client_ca.issue_client(user, groups)

    def user_kubeconfig(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig authenticating as `user` in `groups` with a client certificate."""
        pair = self.client_cert(user, groups)
        path = self.users_dir / f"user-{_file_safe(user)}.kubeconfig"
        return write_kubeconfig(path, self.server, self.ca_pem, user, cert_pem=pair.cert_pem, key_pem=pair.key_pem)

    def service_account_kubeconfig(self, namespace: str, name: str, *, create: bool = True, duration: str = "1h",
                                   bound: tuple[str, str] | None = None) -> Path:
        """A kubeconfig with a TokenRequest token for ServiceAccount namespace/name (created if asked).

        `bound` (kind, name): a token bound to that Pod, Secret or Node; one bound to a Pod with a
        nodeName, or to a Node, carries the node claim (userInfo.extra authentication.kubernetes.io/node-name)."""
        if create:
            self.apply_yaml(json.dumps({"apiVersion": "v1", "kind": "ServiceAccount",
                                        "metadata": {"name": name, "namespace": namespace}}))
        binding = [f"--bound-object-kind={bound[0]}", f"--bound-object-name={bound[1]}"] if bound else []
        token = self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}", *binding).stdout.strip()
        suffix = f"-{bound[0].lower()}-{bound[1]}" if bound else ""
        path = self.users_dir / _file_safe(f"sa-{namespace}-{name}{suffix}.kubeconfig")
        return write_kubeconfig(path, self.server, self.ca_pem, f"system:serviceaccount:{namespace}:{name}", token=token)

    # --- objects -------------------------------------------------------------------------------------

    def apply_yaml(self, manifest: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-f", "-", *extra, input=manifest)

    def ensure_namespace(self, name: str) -> None:
        self.apply_yaml(json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))

    def apply_crds(self, directory: Path, timeout: float = 120.0) -> list[str]:
        """Apply every CRD in `directory`, wait until each is Established and served; return CRD names."""
        if not any(directory.glob("*.y*ml")):
            return []
        # Server-side apply: big CRDs overflow the client-side last-applied annotation (256 KiB).
        applied = self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=egw-tests",
                               "-f", str(directory.resolve()), "-o", "name", timeout=timeout)  # kubectl reads a linked directory as a file
        names = applied.stdout.split()
        self.kubectl("wait", "--for=condition=Established", f"--timeout={int(timeout)}s", *names, timeout=timeout + 30)
        crds = [self.kubectl_json("get", name) for name in names]
        served = {f"{c['spec']['names']['plural']}.{c['spec']['group']}" for c in crds}
        # Established precedes discovery: poll until kubectl can map every kind (no "no matches for kind").
        process = self.processes["kube-apiserver"]
        wait_until(lambda: served <= self._discovered_resources(), "CRDs in discovery", process, timeout)
        return [n.split("/", 1)[1] for n in names]

    def _discovered_resources(self) -> set[str]:
        result = self.kubectl("api-resources", "--cached=false", "-o", "name", check=False)
        return set(result.stdout.split())

    def add_fake_node(self, name: str, labels: dict[str, str] | None = None) -> None:
        """A Node object with a Ready status, so the scheduler binds pods to it (no kubelet behind it).

        kube-controller-manager's node-lifecycle controller marks it NotReady after
        --node-monitor-grace-period (50 s) because no kubelet renews its Lease.
        """
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}}}
        self.apply_yaml(json.dumps(node))
        resources = {"cpu": "8", "memory": "16Gi", "pods": "110"}
        status = {"status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "FakeNode", "message": "no kubelet"}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        }}
        self.kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps(status))

    # --- components ----------------------------------------------------------------------------------

    def _write_pki(self) -> None:
        serving = self._serving_ca.issue_server("kube-apiserver", ["localhost", "kubernetes", "kubernetes.default",
                                                                   "kubernetes.default.svc"],
                                                sorted({"127.0.0.1", self._bind_address, FIRST_SERVICE_IP}))
        serving.write(self.pki_dir, "apiserver")
        self._serving_ca.pair.write(self.pki_dir, "serving-ca")
        self._client_ca.pair.write(self.pki_dir, "client-ca")
        self._client_ca.issue_client("admin", ["system:masters"]).write(self.pki_dir, "admin")
        (self.pki_dir / "sa.pub").write_bytes(self._sa_key.public_pem)
        (self.pki_dir / "sa.key").touch(mode=0o600)
        (self.pki_dir / "sa.key").write_bytes(self._sa_key.private_pem)

    def _start_with_port_retry(self, name: str, start: Callable[[], T]) -> T:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                return start()
            except StartupError:
                process = self.processes[name]
                process.stop()
                if attempt == PORT_ATTEMPTS or not _port_clash(process):
                    raise  # the failed process stays listed, so log_tails() shows it
                del self.processes[name]
        raise AssertionError("unreachable")

    def _launch(self, name: str, argv: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, [str(self.bin_dir / name), *argv], self.log_dir)
        self.processes[name] = process
        process.start()
        return process

    def _start_etcd(self) -> str:
        client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        process = self._launch("etcd", [
            "--name=egw-test", f"--data-dir={self.work_dir / 'etcd-data'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=egw-test={peer}", "--unsafe-no-fsync=true",
        ])
        wait_until(lambda: http_ok(f"{client}/health"), "etcd /health", process, self.start_timeout)
        return client

    def _start_apiserver(self, etcd_url: str) -> None:
        port = free_port()
        self.server = f"https://{self._bind_address}:{port}"
        pki = self.pki_dir
        admission = [] if self._service_account_admission else ["--disable-admission-plugins=ServiceAccount"]
        # Endpoints may not hold a loopback IP: with 127.0.0.1 the `kubernetes` Service endpoint sync
        # fails every 10 s and floods the log, so skip it (nothing in-cluster dials 10.0.0.1 then).
        reconciler = ["--endpoint-reconciler-type=none"] if self._advertise_address.startswith("127.") else []
        process = self._launch("kube-apiserver", [
            f"--etcd-servers={etcd_url}",
            f"--bind-address={self._bind_address}", f"--advertise-address={self._advertise_address}", f"--secure-port={port}",
            f"--cert-dir={self.work_dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'client-ca.crt'}",
            "--authorization-mode=RBAC", "--allow-privileged=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--service-account-issuer={self.server}/",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            *admission, *reconciler, *self._extra_apiserver_args,
        ])
        write_kubeconfig(self.kubeconfig, self.server, self.ca_pem, "admin",
                         cert_pem=(pki / "admin.crt").read_bytes(), key_pem=(pki / "admin.key").read_bytes())
        trusted = ssl.create_default_context(cadata=self.ca_pem.decode())
        wait_until(lambda: http_ok(f"{self.server}/readyz", trusted), "kube-apiserver /readyz", process, self.start_timeout)
        admin = ssl.create_default_context(cadata=self.ca_pem.decode())
        admin.load_cert_chain(pki / "admin.crt", pki / "admin.key")
        wait_until(lambda: http_ok(f"{self.server}/api/v1/namespaces/default", admin), "namespace default",
                   process, self.start_timeout)

    def _component_args(self, user: str, port: int, cert_dir: str) -> list[str]:
        """Identity and serving flags shared by kube-controller-manager and kube-scheduler."""
        # The identities kubeadm gives these components; bootstrap RBAC grants exactly their needs.
        kubeconfig = self.user_kubeconfig(user)
        return [
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            # No front-proxy CA here: looking it up only logs "missing content for CA bundle" forever.
            "--authentication-skip-lookup=true",
            "--bind-address=127.0.0.1", f"--secure-port={port}", f"--cert-dir={self.work_dir / cert_dir}",
            "--leader-elect=false",
        ]

    def _start_controller_manager(self) -> None:
        port, pki = free_port(), self.pki_dir
        process = self._launch("kube-controller-manager", [
            *self._component_args("system:kube-controller-manager", port, "kcm-certs"),
            "--controllers=*,-node-ipam-controller", "--allocate-node-cidrs=false",
            f"--root-ca-file={pki / 'serving-ca.crt'}", f"--service-account-private-key-file={pki / 'sa.key'}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={pki / 'client-ca.crt'}", f"--cluster-signing-key-file={pki / 'client-ca.key'}",
        ])
        url = f"https://127.0.0.1:{port}/healthz"
        wait_until(lambda: http_ok(url, insecure_context()), "kube-controller-manager /healthz", process, self.start_timeout)

    def _start_scheduler(self) -> None:
        port = free_port()
        process = self._launch("kube-scheduler", self._component_args("system:kube-scheduler", port, "scheduler-certs"))
        url = f"https://127.0.0.1:{port}/healthz"
        wait_until(lambda: http_ok(url, insecure_context()), "kube-scheduler /healthz", process, self.start_timeout)


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
