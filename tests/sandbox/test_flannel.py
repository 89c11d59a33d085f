"""Pure parts of the sandbox's `--cni flannel`: net-conf.json, the conflist from subnet.env, the
flanneld version pick."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.devkube import binaries
from devtools.sandbox import flannel, nodehost
from devtools.sandbox.plan import OVERLAY_PODS, build_plan

pytestmark = pytest.mark.unit

# As flanneld v0.28 writes it for node2 (dual stack, --ip-masq).
SUBNET_ENV = """FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.2.1/24
FLANNEL_IPV6_NETWORK=fd44::/16
FLANNEL_IPV6_SUBNET=fd44:2::1/64
FLANNEL_MTU=1450
FLANNEL_IPMASQ=true
"""


def test_net_conf_is_the_clusters_pod_networks_over_flannels_own_vxlan() -> None:
    conf = flannel.net_conf(OVERLAY_PODS)
    assert conf == {"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd44::/16",
                    "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472}}
    # Not the agents' tunnel (chart values egress.vxlan: id 100, port 7789).
    assert (conf["Backend"]["VNI"], conf["Backend"]["Port"]) != (100, 7789)


def test_conflist_from_subnet_env_is_what_flannels_plugin_delegates() -> None:
    env = flannel.parse_subnet_env(SUBNET_ENV)
    assert env["FLANNEL_SUBNET"] == "10.244.2.1/24" and env["FLANNEL_IPMASQ"] == "true"
    plugin = flannel.cni_plugin(env, "cni0", "/x/ipam")
    assert plugin == {
        "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "mtu": 1450, "hairpinMode": True,
        "ipam": {"type": "host-local", "dataDir": "/x/ipam",
                 "ranges": [[{"subnet": "10.244.2.0/24"}], [{"subnet": "fd44:2::/64"}]],
                 "routes": [{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0"}, {"dst": "fd44::/16"}, {"dst": "::/0"}]},
    }


def test_conflist_masquerades_itself_when_flanneld_does_not_and_follows_the_families() -> None:
    v4_only = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n"
    plugin = flannel.cni_plugin(flannel.parse_subnet_env(v4_only), "cni0", "/x")
    assert plugin["ipMasq"] is True and plugin["mtu"] == 1400
    assert plugin["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]
    assert plugin["ipam"]["routes"] == [{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0"}]
    with pytest.raises(ValueError, match="neither"):
        flannel.cni_plugin(flannel.parse_subnet_env("FLANNEL_MTU=1450\n"), "cni0", "/x")


def test_flanneld_runs_on_the_nodes_underlay_link_with_the_kube_subnet_manager(tmp_path: Path) -> None:
    argv = flannel.argv(build_plan(cni="flannel").node("node3"), tmp_path / "kc", tmp_path / "net-conf.json")
    assert argv[:2] == ["env", "NODE_NAME=node3"]
    assert {"--kube-subnet-mgr", f"--kubeconfig-file={tmp_path}/kc", "--iface=eth0", "--ip-masq",
            f"--net-config-path={tmp_path}/net-conf.json", "--subnet-file=/run/flannel/subnet.env"} <= set(argv)
    assert flannel.SUBNET_ENV.rpartition("/")[0] in nodehost.NODE_LOCAL_DIRS  # each node its own subnet.env
    role = flannel.RBAC[0]
    assert {(r["resources"][0], tuple(r["verbs"])) for r in role["rules"]} == {
        ("pods", ("get",)), ("nodes", ("get", "list", "watch")), ("nodes/status", ("patch",))}


def test_flannel_binary_is_the_newest_plain_release_of_the_series_built(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert binaries.release_patch("v0.28.10", "v0.28") == 10
    assert [binaries.release_patch(v, "v0.28") for v in ("v0.28.0-rc1", "v0.29.1", "v0.28")] == [None, None, None]
    monkeypatch.setenv("EGW_FLANNEL_CACHE", str(tmp_path))
    monkeypatch.delenv("EGW_FLANNEL_VERSION", raising=False)
    assert binaries.flannel_binary() is None
    for version in ("v0.28.4", "v0.28.10", "v0.28.11-rc1", "v0.29.0"):
        built = tmp_path / version / "bin" / "flanneld"
        built.parent.mkdir(parents=True)
        built.write_text("")
        built.chmod(0o755)
    (tmp_path / "v0.28.12").mkdir()  # an interrupted build: no binary
    assert binaries.flannel_binary() == tmp_path / "v0.28.10" / "bin" / "flanneld"
    monkeypatch.setenv("EGW_FLANNEL_VERSION", "v0.28.4")
    assert binaries.flannel_binary() == tmp_path / "v0.28.4" / "bin" / "flanneld"
