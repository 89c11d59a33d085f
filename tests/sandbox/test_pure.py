"""Pure parts of the sandbox: the walkthrough's heredocs, manifests -> process install, CNI and
containerd configs, kubelet config, deterministic images, the external server's DNS parsing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from devtools import oci
from devtools.sandbox import components, containerd, kubelet
from devtools.sandbox.extserver import dns_question
from devtools.sandbox.plan import build_plan
from devtools.sandbox.walkthrough import SEED, heredocs, seed_heredocs

pytestmark = pytest.mark.unit


def test_walkthrough_heredocs_are_taken_verbatim() -> None:
    docs = seed_heredocs()
    assert [d.command for d in heredocs(SEED.read_text())] == ["kubectl apply -f -", "kubectl create -f -", "kubectl apply -f -"]
    assert docs["EgressGateway"].manifest in SEED.read_text()
    assert '    - "10.6.168.201-10.6.168.205"' in docs["EgressGateway"].manifest
    assert "imagePullPolicy: IfNotPresent" in docs["Deployment"].manifest


def test_webhook_configurations_point_at_the_url_not_a_service() -> None:
    hooks = components.webhook_configurations("https://10.6.168.2:9443")
    assert {h["kind"] for h in hooks} == set(components.WEBHOOK_KINDS)
    for hook in (w for h in hooks for w in h["webhooks"]):
        assert "service" not in hook["clientConfig"]
        assert hook["clientConfig"]["url"] in {"https://10.6.168.2:9443/mutate", "https://10.6.168.2:9443/validate"}


def test_setup_objects_exclude_workloads_and_order_namespaces_first() -> None:
    kinds = [o["kind"] for o in components.setup_objects()]
    assert kinds[0] == "Namespace"
    assert not {"Deployment", "DaemonSet", "Service"} & set(kinds)
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"} <= set(kinds)


def test_conflist_chains_our_plugin_after_bridge_with_per_node_state(tmp_path: Path) -> None:
    node = build_plan().node("node2")
    paths = containerd.NodePaths(tmp_path / "node2")
    conf = containerd.conflist(node, paths)
    assert [p["type"] for p in conf["plugins"]] == ["bridge", "egress-cni"]
    assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.2.0/24"}], [{"subnet": "fd44:2::/64"}]]
    assert conf["plugins"][0]["ipam"]["dataDir"].startswith(str(tmp_path))
    assert conf["plugins"][1]["registryDir"] == str(paths.registry_dir)
    config = containerd.containerd_config(paths)
    assert "restrict_oom_score_adj = true" in config and "SystemdCgroup = false" in config
    assert f'address = "{paths.socket}"' in config


def test_kubelet_never_rewrites_host_kernel_tunables(tmp_path: Path) -> None:
    node = build_plan().node("node1")
    config = kubelet.kubelet_config(node, tmp_path / "sock", tmp_path / "ca.crt", tmp_path / "static")
    assert config["protectKernelDefaults"] is True and config["failCgroupV1"] is False
    assert config["cgroupRoot"] == "/egw-sb-node1" and config["podLogsDir"].startswith(str(tmp_path))
    argv = kubelet.private_mounts_argv([(tmp_path / "one", Path("/proc/sys/vm/overcommit_memory"))], ["kubelet", "--v=2"])
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert f"mount --bind '{tmp_path / 'one'}' '/proc/sys/vm/overcommit_memory'" in argv[7]


def test_images_are_deterministic() -> None:
    layer = oci.layer_tar([oci.FileEntry("bin/x", b"x"), oci.FileEntry("bin/y", link="x")])
    first = oci.oci_archive(("a/b:c",), layer, ["/x"], [])
    assert hashlib.sha256(first).digest() == hashlib.sha256(oci.oci_archive(("a/b:c",), layer, ["/x"], [])).digest()


def test_dns_question_parses_the_tag_and_rejects_garbage() -> None:
    query = b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6 + b"\x03pod\x02ns\x04leak\x00" + b"\x00\x01\x00\x01"
    assert dns_question(query) == ("pod.ns.leak", len(query))
    assert dns_question(b"\x00" * 13 + b"\x05ab") == ("", 0)
    assert json.dumps(dns_question(b"")) == '["", 0]'
