"""A narrow CRI (runtime.v1) client over a node's containerd socket: what the sandbox needs, no more."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc

RPC_TIMEOUT = 120.0  # a CNI chain on a loaded 2-core machine can take seconds


@dataclass(frozen=True)
class PodRef:
    """Identity of a pod sandbox: what kubelet passes, hence what CNI sees as K8S_POD_*."""

    name: str
    namespace: str
    uid: str
    attempt: int = 0


@dataclass(frozen=True)
class SandboxInfo:
    id: str
    pod: PodRef
    ready: bool
    ips: tuple[str, ...]
    labels: Mapping[str, str]


class CRIClient:
    def __init__(self, socket_path: str) -> None:
        self._channel = grpc.insecure_channel(f"unix://{socket_path}")
        self._runtime: Any = pb_grpc.RuntimeServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._images: Any = pb_grpc.ImageServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()

    def version(self, timeout: float = 5.0) -> str:
        reply: Any = self._runtime.Version(pb.VersionRequest(), timeout=timeout)
        return f"{reply.runtime_name} {reply.runtime_version}"

    def network_ready(self) -> bool:
        reply: Any = self._runtime.Status(pb.StatusRequest(), timeout=10.0)
        return any(c.type == "NetworkReady" and c.status for c in reply.status.conditions)

    def has_image(self, ref: str) -> bool:
        reply: Any = self._images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)), timeout=10.0)
        return bool(reply.image.id)

    def run_pod(self, pod: PodRef, *, hostname: str, log_dir: str, cgroup_parent: str,
                labels: Mapping[str, str], annotations: Mapping[str, str], privileged: bool = False) -> str:
        config = self._sandbox_config(pod, hostname, log_dir, cgroup_parent, labels, annotations, privileged)
        reply: Any = self._runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=RPC_TIMEOUT)
        return str(reply.pod_sandbox_id)

    @staticmethod
    def _sandbox_config(pod: PodRef, hostname: str, log_dir: str, cgroup_parent: str,
                        labels: Mapping[str, str], annotations: Mapping[str, str], privileged: bool) -> Any:
        security = pb.LinuxSandboxSecurityContext(privileged=privileged)
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=pod.name, namespace=pod.namespace, uid=pod.uid, attempt=pod.attempt),
            hostname=hostname, log_directory=log_dir, labels=dict(labels), annotations=dict(annotations),
            linux=pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent, security_context=security),
        )

    def start_container(self, sandbox_id: str, pod: PodRef, *, name: str, image: str, command: Sequence[str],
                        args: Sequence[str], env: Mapping[str, str], hostname: str, log_dir: str, cgroup_parent: str,
                        labels: Mapping[str, str], annotations: Mapping[str, str], privileged: bool = False) -> str:
        """privileged (like the agent's DaemonSet) needs a sandbox started with privileged=True."""
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image),
            command=list(command), args=list(args), envs=[pb.KeyValue(key=k, value=v) for k, v in env.items()],
            log_path=f"{name}.log", labels={**labels, "io.kubernetes.container.name": name},
            linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(privileged=privileged)),
        )
        sandbox = self._sandbox_config(pod, hostname, log_dir, cgroup_parent, labels, annotations, privileged)
        created: Any = self._runtime.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox), timeout=RPC_TIMEOUT)
        self._runtime.StartContainer(pb.StartContainerRequest(container_id=created.container_id), timeout=RPC_TIMEOUT)
        return str(created.container_id)

    def sandboxes(self) -> list[SandboxInfo]:
        reply: Any = self._runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30.0)
        found = []
        for item in reply.items:
            meta = item.metadata
            ready = item.state == pb.SANDBOX_READY
            found.append(SandboxInfo(item.id, PodRef(meta.name, meta.namespace, meta.uid, meta.attempt), ready,
                                     self.sandbox_ips(item.id) if ready else (), dict(item.labels)))
        return found

    def sandbox_ips(self, sandbox_id: str) -> tuple[str, ...]:
        reply: Any = self._runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), timeout=30.0)
        network = reply.status.network
        return tuple(ip for ip in (network.ip, *(extra.ip for extra in network.additional_ips)) if ip)

    def containers(self, sandbox_id: str) -> list[tuple[str, str, bool]]:
        """(container id, name, running) of the sandbox's containers."""
        request = pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=sandbox_id))
        reply: Any = self._runtime.ListContainers(request, timeout=30.0)
        return [(c.id, c.metadata.name, c.state == pb.CONTAINER_RUNNING) for c in reply.containers]

    def exec_sync(self, container_id: str, cmd: Sequence[str], timeout: int = 30) -> tuple[int, str, str]:
        reply: Any = self._runtime.ExecSync(pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout),
                                            timeout=timeout + 30)
        return int(reply.exit_code), reply.stdout.decode(errors="replace"), reply.stderr.decode(errors="replace")

    def remove_pod(self, sandbox_id: str) -> None:
        """Stop (CNI DEL) then remove; NotFound means someone already did it."""
        try:
            self._runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=RPC_TIMEOUT)
            self._runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=RPC_TIMEOUT)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
