"""Pure parts of the sandbox: the walkthrough's heredocs, the chart install and its readiness, the node
mount namespace, CNI, containerd, kubelet and kube-proxy configs, deterministic images, the external
server's DNS parsing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from devtools import oci
from devtools.sandbox import cni, components, containerd, kubelet, kubeproxy, nodehost
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


def test_install_is_the_seeds_command_from_the_chart_directory(tmp_path: Path) -> None:
    argv = components.install_command("/x/helm", tmp_path / "admin.kubeconfig")
    assert argv[:6] == ["/x/helm", "install", "egressgateway", str(components.CHART), "-n", "kube-system"]
    assert argv[-4:] == ["--set", "feature.tunnelIpv4Subnet=192.200.0.1/16", "--set", "feature.enableGatewayReplyRoute=true"]
    assert components.shown() == ('helm install egressgateway manifests/chart/egressgateway -n kube-system '
                                  '--set feature.tunnelIpv4Subnet="192.200.0.1/16" --set feature.enableGatewayReplyRoute=true')


def test_workloads_ready_names_what_is_missing() -> None:
    ds = {"status": {"numberReady": 3, "updatedNumberScheduled": 3}}
    ready = {"spec": {"replicas": 2}, "status": {"readyReplicas": 2, "updatedReplicas": 2}}
    assert components.workloads_ready(ds, [ready, ready], 3) == ""
    assert components.workloads_ready(None, [ready, ready], 3) == "no DaemonSet egressgateway-agent"
    assert components.workloads_ready({"status": {"numberReady": 2}}, [ready, ready], 3) == "agents ready 2/3"
    half = {"spec": {"replicas": 2}, "status": {"readyReplicas": 1, "updatedReplicas": 2}}
    assert components.workloads_ready(ds, [ready, half], 3) == "egress-webhook ready 1/2"


def test_node_mount_namespace_binds_each_node_local_path(tmp_path: Path) -> None:
    script = nodehost.setup_script(tmp_path, [(tmp_path / "shadow", Path("/proc/sys/vm/overcommit_memory"))])
    assert script.startswith("mount -t tmpfs -o mode=0755 egw-node-netns /run/netns && ")
    for path in (*nodehost.NODE_LOCAL_DIRS, *nodehost.NODE_LOCAL_FILES):
        assert f"mount --bind {tmp_path}/host{path} {path}" in script
        assert (tmp_path / "host" / path.lstrip("/")).exists()
    assert f"mount --bind {tmp_path}/shadow /proc/sys/vm/overcommit_memory" in script
    assert script.endswith(f"touch {tmp_path}/host/.mounted && exec sleep infinity")


def test_conflist_chains_our_plugin_after_bridge_with_per_node_state(tmp_path: Path) -> None:
    node = build_plan().node("node2")
    paths = containerd.NodePaths(tmp_path / "node2")
    conf = containerd.conflist(node, paths)
    assert [p["type"] for p in conf["plugins"]] == ["bridge", "egress-cni"]
    assert [p["type"] for p in containerd.conflist(node, paths, chained=False)["plugins"]] == ["bridge"]
    assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.2.0/24"}], [{"subnet": "fd44:2::/64"}]]
    assert conf["plugins"][0]["ipam"]["dataDir"].startswith(str(tmp_path))
    assert conf["plugins"][1]["registryDir"] == str(paths.registry_dir)
    config = containerd.containerd_config(paths)
    assert "restrict_oom_score_adj = true" in config and "SystemdCgroup = false" in config
    assert f'address = "{paths.socket}"' in config
    assert f'bin_dir = "{tmp_path}/node2/host/opt/cni/bin"' in config
    in_node = containerd.containerd_config(paths, in_node_namespace=True)
    assert 'bin_dir = "/opt/cni/bin"' in in_node and 'conf_dir = "/etc/cni/net.d"' in in_node


def test_kubelet_never_rewrites_host_kernel_tunables(tmp_path: Path) -> None:
    node = build_plan().node("node1")
    config = kubelet.kubelet_config(node, tmp_path / "sock", tmp_path / "ca.crt", tmp_path / "static")
    assert config["protectKernelDefaults"] is True and config["failCgroupV1"] is False
    assert config["cgroupRoot"] == "/egw-sb-node1" and config["podLogsDir"].startswith(str(tmp_path))
    assert config["crashLoopBackOff"] == {"maxContainerRestartPeriod": "1s"}


def test_kube_proxy_leaves_host_global_conntrack_settings_alone(tmp_path: Path) -> None:
    plan = build_plan()
    config = kubeproxy.proxy_config(plan.node("node3"), tmp_path / "kubeconfig", plan.cluster_pod_cidrs)
    assert config["hostnameOverride"] == "node3" and config["mode"] == "iptables"
    assert config["conntrack"]["maxPerCore"] == 0 and config["conntrack"]["tcpEstablishedTimeout"] == "0s"
    assert config["clusterCIDR"] == "10.244.0.0/16,fd44::/16" and config["iptables"]["masqueradeAll"] is False


def test_macvlan_pods_get_a_slice_of_the_underlay_beside_the_nodes() -> None:
    plan = build_plan(cni="macvlan")
    conf = cni.main_plugin(plan, plan.node("node2"), "/x/ipam")
    assert conf["type"] == "macvlan" and conf["master"] == "eth0"
    v4, v6 = conf["ipam"]["ranges"]
    assert v4 == [{"subnet": "10.6.168.0/24", "rangeStart": "10.6.168.129", "rangeEnd": "10.6.168.158", "gateway": "10.6.168.1"}]
    assert v6[0]["subnet"] == "fd10:6:168::/64" and v6[0]["rangeStart"] == "fd10:6:168:0:1:2:0:1"
    assert plan.cluster_pod_cidrs == () and plan.underlay_pods
    assert [n.pod_cidr_v4 for n in plan.nodes] == ["10.6.168.96/27", "10.6.168.128/27", "10.6.168.160/27"]
    assert components.environment_values(True, "10.0.0.0/24") == ("--set", "agent.cni.hijackCIDR={10.0.0.0/24,10.6.168.63/32}")
    assert components.environment_values(False, "10.0.0.0/24") == ()
    with pytest.raises(ValueError, match="expected one of"):
        build_plan(cni="calico")


def test_images_are_deterministic() -> None:
    layer = oci.layer_tar([oci.FileEntry("bin/x", b"x"), oci.FileEntry("bin/y", link="x")])
    first = oci.oci_archive(("a/b:c",), layer, ["/x"], [])
    assert hashlib.sha256(first).digest() == hashlib.sha256(oci.oci_archive(("a/b:c",), layer, ["/x"], [])).digest()


def test_dns_question_parses_the_tag_and_rejects_garbage() -> None:
    query = b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6 + b"\x03pod\x02ns\x04leak\x00" + b"\x00\x01\x00\x01"
    assert dns_question(query) == ("pod.ns.leak", len(query))
    assert dns_question(b"\x00" * 13 + b"\x05ab") == ("", 0)
    assert json.dumps(dns_question(b"")) == '["", 0]'
