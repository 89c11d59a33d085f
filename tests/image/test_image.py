"""The product image (`make image`, devtools/image.py) imported into a sandbox node's containerd the way
the sandbox imports its test images, and the tools the components need run in a container from it."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import image, oci
from devtools.sandbox import cgroups, containerd, images, netns, procs
from devtools.sandbox.cri import CRIClient, PodRef
from devtools.sandbox.plan import build_plan
from tests.support.tiers import in_ci

pytestmark = pytest.mark.cri

CONFLIST = json.dumps({"cniVersion": "1.0.0", "name": "primary", "plugins": [{"type": "bridge"}]})
# (argv, text its output must contain)
CHECKS = [
    (["egress-agent", "--help"], "usage: egress-agent"),
    (["egress-controller", "--help"], "usage: egress-controller"),
    (["egress-webhook", "--help"], "usage: egress-webhook"),
    (["python3", "-c", "import egress_cni, webhook, pyroute2, kubernetes, flask, gunicorn, cryptography, yaml, "
      "prometheus_client, sys; print(sys.executable, sys.version_info[:2])"], "/usr/bin/python3 (3, 11)"),
    (["iptables-legacy", "-V"], "(legacy)"),
    (["iptables-nft", "-V"], "(nf_tables)"),
    (["ipset", "-v"], "ipset v7"),
    (["nft", "--version"], "nftables v1.0"),
    (["ip", "-V"], "iproute2"),
    (["conntrack", "-V"], "conntrack v1.4"),
    (["id", "65532"], "uid=65532(nonroot) gid=65532(nonroot)"),
    # The controller and webhook run as 65532 (manifests' securityContext).
    (["setpriv", "--reuid=65532", "--regid=65532", "--clear-groups", "egress-webhook", "--help"], "usage: egress-webhook"),
    # The DaemonSet's init container: the plugin's private runtime copied out of Debian's python3 runs.
    (["sh", "-c", f"mkdir -p /tmp/c/net.d && echo '{CONFLIST}' > /tmp/c/net.d/10-primary.conflist && "
      "egress-cni install --bin-dir=/tmp/c/bin --conf-dir=/tmp/c/net.d --runtime-dir=/tmp/c/rt >/dev/null && "
      "CNI_COMMAND=VERSION /tmp/c/bin/egress-cni"], '"supportedVersions"'),
]


def image_archive() -> Path:
    """The archive `make image` wrote; built here (layers cached under build/) when it is missing."""
    if image.ARCHIVE.exists():
        return image.ARCHIVE
    if shutil.which("mmdebstrap") is None:
        reason = "mmdebstrap is not installed (run hack/install-deps.sh) and build/egressgateway-image.oci.tar is missing"
        pytest.fail(reason) if in_ci() else pytest.skip(reason)
    return image.build()


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CRIClient, str]]:
    archive = image_archive()
    tmp = tmp_path_factory.mktemp("image")
    plan = build_plan(node_count=1, state_dir=tmp, prefix=f"egwi-{uuid.uuid4().hex[:4]}")
    node, paths = plan.nodes[0], containerd.NodePaths(tmp / "node1")
    records: list[procs.ProcessRecord] = []
    client: CRIClient | None = None
    try:
        netns.apply_topology(plan)
        containerd.prepare_node(node, paths, plugin="stub")
        records.append(containerd.start(node, paths))
        containerd.import_images(paths, [*images.build_images(tmp / "images"), archive])
        client = CRIClient(str(paths.socket))
        assert client.has_image(image.IMAGE_NAME)
        pod = PodRef("egressgateway", "default", str(uuid.uuid4()))
        common = {"hostname": "egw", "log_dir": str(tmp / "pods"), "cgroup_parent": f"{cgroups.node_root(node)}/egw",
                  "labels": {"app": "egressgateway"}, "annotations": {}, "privileged": True}  # as the agent runs
        sandbox = client.run_pod(pod, **common)  # type: ignore[arg-type]
        # The manifests' short name, as the kubelet passes it: containerd resolves it to IMAGE_NAME.
        yield client, client.start_container(sandbox, pod, name="egw", image="egressgateway:dev",
                                             command=["sleep", "infinity"], args=[], env={}, **common)  # type: ignore[arg-type]
    finally:
        if client is not None:
            client.close()
        containerd.remove_all_pods(paths)
        for record in reversed(records):
            procs.stop(record)
        cgroups.kill_all(cgroups.node_root(node))
        cgroups.remove(cgroups.node_root(node))
        containerd.wipe(paths)
        netns.remove_topology(plan.netns_names)


@pytest.mark.parametrize(("argv", "expected"), CHECKS, ids=[" ".join(argv)[:40] for argv, _ in CHECKS])
def test_the_image_runs_what_the_components_need(container: tuple[CRIClient, str], argv: list[str], expected: str) -> None:
    client, container_id = container
    code, out, err = client.exec_sync(container_id, argv, timeout=60)
    assert code == 0, f"{argv} exited {code}: {out}{err}"
    assert expected in out + err


def test_overlay_whiteouts_become_oci_whiteouts(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc/opaque").mkdir(parents=True)
    os.setxattr(upper / "etc/opaque", "trusted.overlay.opaque", b"y")
    os.mknod(upper / "etc/gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    oci.directory_layer(upper, tmp_path / "layer.tar.gz")
    with tarfile.open(tmp_path / "layer.tar.gz") as tar:
        names = tar.getnames()
    assert names == ["etc", "etc/.wh.gone", "etc/opaque", "etc/opaque/.wh..wh..opq"]
