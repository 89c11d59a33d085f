"""Debian containerd runs our plugin itself: pod sandboxes created and removed over CRI from Python.

containerd (own root/state/socket) runs inside a test-made netns; the CNI bin dir is filled by
`egress-cni install` (private runtime) plus links to Debian's plugins; the conflist is
bridge+host-local, to which install appends our plugin. Assertions read the registry the plugin wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.oci import FileEntry, layer_tar, oci_archive
from devtools.sandbox import procs
from devtools.sandbox.containerd import NodePaths, containerd_config, import_images, leftover_shims, remove_all_pods, wipe
from devtools.sandbox.cri import CRIClient, PodRef
from devtools.sandbox.images import PAUSE_IMAGE, build_pause_binary
from egress_cni import registry
from tests.cni.runner import DEBIAN_CNI, REPO, ip, unique

pytestmark = pytest.mark.cri


class Node:
    def __init__(self, tmp: Path) -> None:
        self.netns = unique("egwcri")
        self.paths = NodePaths(tmp / "node")
        self.registry = tmp / "registry"
        self.state = tmp / "state"
        self.record: procs.ProcessRecord | None = None
        self.netns_before = set(Path("/var/run/netns").iterdir()) if Path("/var/run/netns").exists() else set()

    def start(self, tmp: Path) -> None:
        ip("netns", "add", self.netns)
        ip("link", "set", "lo", "up", netns=self.netns)
        p = self.paths
        for d in (p.containerd_root, p.containerd_state, p.cni_conf_dir, p.cni_bin_dir, p.ipam_dir, p.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        p.config.write_text(containerd_config(p))
        primary = {"cniVersion": "1.0.0", "name": "egw-cri", "plugins": [
            {"type": "bridge", "bridge": "egwcri0", "isGateway": True,
             "ipam": {"type": "host-local", "subnet": "10.55.0.0/24", "dataDir": str(p.ipam_dir), "routes": [{"dst": "0.0.0.0/0"}]}}]}
        (p.cni_conf_dir / "10-egw-cri.conflist").write_text(json.dumps(primary))
        for plugin in DEBIAN_CNI.iterdir():
            (p.cni_bin_dir / plugin.name).symlink_to(plugin)
        ours = {"mode": "overlay", "registryDir": str(self.registry), "stateDir": str(self.state), "nodeName": "cri-node",
                "logFile": str(p.log_dir / "egress-cni.log"), "capabilities": {"io.kubernetes.cri.pod-annotations": True}}
        subprocess.run([sys.executable, "-c", "from egress_cni.cni.main import main; main()", "install", "--bin-dir", str(p.cni_bin_dir),
                        "--conf-dir", str(p.cni_conf_dir), "--runtime-dir", str(tmp / "runtime"), "--plugin-config", json.dumps(ours)],
                       check=True, cwd=REPO, capture_output=True)
        layer = layer_tar([FileEntry("pause", build_pause_binary(tmp))])
        (tmp / "pause.tar").write_bytes(oci_archive((PAUSE_IMAGE,), layer, ["/pause"], []))
        self.record = procs.launch("containerd", ["containerd", "--config", str(p.config)], p.log_dir, netns=self.netns)
        self._wait_ready()
        import_images(p, [tmp / "pause.tar"])

    def _wait_ready(self, timeout: float = 120.0) -> None:
        assert self.record is not None
        client = CRIClient(str(self.paths.socket))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    if client.network_ready():
                        return
                except Exception:  # socket not there yet: poll again
                    pass
                assert procs.alive(self.record), procs.tail(self.record)
                time.sleep(0.2)
            raise TimeoutError(f"containerd not ready:\n{procs.tail(self.record)}")
        finally:
            client.close()

    def stop(self) -> None:
        if self.record is not None and procs.alive(self.record):
            remove_all_pods(self.paths)  # sandboxes first: their netns mounts live under /var/run/netns
            procs.stop(self.record)
        for pid in leftover_shims(self.paths):
            procs.stop(procs.ProcessRecord("shim", pid, procs.start_ticks(pid) or 0, ""))
        wipe(self.paths)
        ip("netns", "del", self.netns, check=False)
        for leftover in set(Path("/var/run/netns").iterdir()) - self.netns_before if Path("/var/run/netns").exists() else ():
            if leftover.name.startswith("cni-"):
                subprocess.run(["umount", str(leftover)], capture_output=True, check=False)
                leftover.unlink(missing_ok=True)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    try:
        n.start(tmp_path)
        yield n
    finally:
        n.stop()


def test_containerd_runs_the_plugin_with_real_pod_args_and_del_on_removal(node: Node, tmp_path: Path) -> None:
    client = CRIClient(str(node.paths.socket))
    try:
        pods = [PodRef("web-0", "shop", "uid-0001"), PodRef("web-1", "shop", "uid-0002")]
        ids = [client.run_pod(p, hostname=p.name, log_dir=str(tmp_path / "logs"), cgroup_parent="", labels={"app": "web"},
                              annotations={"note": "cri-test"}) for p in pods]
        for pod, sandbox_id in zip(pods, ids, strict=True):
            ep = registry.read_endpoint(str(node.registry), registry.endpoint_key(sandbox_id, "eth0"))
            assert ep is not None, (node.paths.log_dir / "egress-cni.log").read_text()
            assert (ep.namespace, ep.pod, ep.uid, ep.node, ep.mode) == (pod.namespace, pod.name, pod.uid, "cri-node", "overlay")
            assert ep.ipv4 == client.sandbox_ips(sandbox_id)
        client.remove_pod(ids[0])
        assert registry.read_endpoint(str(node.registry), registry.endpoint_key(ids[0], "eth0")) is None
        assert not (node.state / f"{ids[0]}_eth0.json").exists()
        assert [e.pod for e in registry.list_endpoints(str(node.registry))] == ["web-1"]
        client.remove_pod(ids[1])
        assert registry.list_endpoints(str(node.registry)) == [] and list(node.state.glob("*.json")) == []
        log = (node.paths.log_dir / "egress-cni.log").read_text()
        assert log.count(" cmd=ADD ") >= 2, log
    finally:
        client.close()
