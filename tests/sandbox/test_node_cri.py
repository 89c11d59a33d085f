"""One sandbox node: containerd in its netns, local images, a CRI pod through the CNI chain reaching
the external server masqueraded to the node address (no egress policy yet), and a clean teardown."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.sandbox import cgroups, containerd, images, netns, procs
from devtools.sandbox.cri import CRIClient, PodRef
from devtools.sandbox.plan import SandboxPlan, build_plan

pytestmark = pytest.mark.cri


@pytest.fixture
def plan(tmp_path: Path) -> Iterator[SandboxPlan]:
    plan = build_plan(node_count=1, state_dir=tmp_path, prefix=f"egwc-{uuid.uuid4().hex[:4]}")
    paths = containerd.NodePaths(tmp_path / "node1")
    records: list[procs.ProcessRecord] = []
    try:
        netns.apply_topology(plan)
        records.append(procs.launch("ext", [sys.executable, "-m", "devtools.sandbox.extserver", "--record",
                                            str(tmp_path / "record.jsonl")], tmp_path, netns=plan.external.netns))
        containerd.prepare_node(plan.nodes[0], paths, plugin="stub")
        records.append(containerd.start(plan.nodes[0], paths))
        containerd.import_images(paths, images.build_images(tmp_path / "images"))
        yield plan
    finally:
        containerd.remove_all_pods(paths)
        for record in reversed(records):
            procs.stop(record)
        cgroups.kill_all(cgroups.node_root(plan.nodes[0]))
        assert cgroups.remove(cgroups.node_root(plan.nodes[0])) == []
        containerd.wipe(paths)
        netns.remove_topology(plan.netns_names)


def test_pod_reaches_external_server_through_the_cni_chain(plan: SandboxPlan, tmp_path: Path) -> None:
    paths = containerd.NodePaths(tmp_path / "node1")
    client = CRIClient(str(paths.socket))
    try:
        pod = PodRef("web", "default", str(uuid.uuid4()))
        common = {"hostname": "web", "log_dir": str(tmp_path / "pods"),
                  "cgroup_parent": f"{cgroups.node_root(plan.nodes[0])}/web",
                  "labels": {"app": "web"}, "annotations": {}}
        sandbox = client.run_pod(pod, **common)  # type: ignore[arg-type]
        assert client.sandbox_ips(sandbox) == ("10.244.1.2", "fd44:1::2")
        container = client.start_container(sandbox, pod, name="app", image=images.APP_IMAGES[0], command=[], args=[],
                                           env={}, **common)  # type: ignore[arg-type]
        assert client.exec_sync(container, ["wget", "-qO-", "http://10.6.168.63:8080/"])[1] == "Remote IP: 10.6.168.11\n"
        assert client.exec_sync(container, ["wget", "-qO-", "http://[fd10:6:168::63]:8080/"])[1] == "Remote IP: fd10:6:168::11\n"
        assert containerd.remove_all_pods(paths) == 1
        assert client.sandboxes() == []
    finally:
        client.close()
    assert containerd.leftover_shims(paths) == []
