"""The agent's uninstall path (what it runs at the chart's pre-delete signal) on a real kernel: a node
netns set up as a dual-stack gateway, EIPs on the EIP holder, leaves with none of our chains or jumps
(iptables-save and ip6tables-save), ip rules, ipsets, routes in our tables, EIP addresses,
egress.vxlan or egress.eip, and a node's CNI dirs keep no conflist entry, wrapper, runtime, state or
registry files. Checked while the helper still holds the EIP holder's descriptor, as the idle agent does."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.scenario import load_scenario
from tests.agent.topology import PYTHON, ROOT, scratch_netns, sh

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

SCENARIO = ROOT / "tests" / "golden" / "dual-stack-gateway"
HELPER = str(Path(__file__).resolve().parent / "uninstall_node.py")
ENV = {"PYTHONPATH": str(ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
PRIMARY = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [{"type": "bridge"}, {"type": "portmap"}]}


def in_ns(ns: str, *cmd: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=60, env=ENV,
                          check=True).stdout


@pytest.fixture
def node_ns() -> Iterator[str]:
    with scratch_netns("uninst") as name:
        yield name


XTABLES = re.compile(r"^table (ip|ip6) (filter|nat|mangle|raw|security)$")  # iptables-nft's own


def kernel_view(ns: str, backend: str) -> dict[str, Any]:
    """What the checks compare: rules, routes of every table, addresses, links, ipsets, xtables rules."""
    def rule_lines(text: str) -> list[str]:
        return sorted(line for line in text.splitlines() if line.startswith(("-A ", "-N ")) or
                      (line.startswith(":") and not line.split()[0][1:].isupper()))  # user chains only

    return {
        "rules": in_ns(ns, "ip", "rule") + in_ns(ns, "ip", "-6", "rule"),
        "routes": sorted(in_ns(ns, "ip", "route", "show", "table", "all").splitlines()
                         + in_ns(ns, "ip", "-6", "route", "show", "table", "all").splitlines()),
        "addresses": sorted(" ".join(line.split()[1:4]) for line in in_ns(ns, "ip", "-o", "addr").splitlines()),
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in in_ns(ns, "ip", "-o", "link").splitlines()),
        "ipsets": in_ns(ns, "ipset", "list", "-n").split(),
        "iptables": rule_lines(in_ns(ns, f"iptables-{xt(backend)}-save")),
        "ip6tables": rule_lines(in_ns(ns, f"ip6tables-{xt(backend)}-save")),
        "nftables": sorted(t for t in in_ns(ns, "nft", "list", "tables").splitlines() if not XTABLES.match(t)),
    }


def xt(backend: str) -> str:
    """The iptables backend to look at (the nftables engine's leftovers would be in iptables-nft)."""
    return "nft" if backend == "nftables" else backend


def cni_dirs(root: Path) -> list[str]:
    conf, bin_dir, runtime, state, registry = (root / n for n in ("net.d", "bin", "opt-egw/cni", "var-lib-egw/cni", "run-egw"))
    for d in (conf, bin_dir, runtime / "1.0-abc" / "bin", state, registry / "endpoints", registry / "acks"):
        d.mkdir(parents=True)
    (conf / "10-bridge.conflist").write_text(json.dumps({**PRIMARY, "plugins": [*PRIMARY["plugins"], {"type": "egress-cni", "hostRuleTable": 500}]}))
    (bin_dir / "egress-cni").write_text("#!/bin/sh\n")
    (bin_dir / "bridge").write_text("#!/bin/sh\n")
    (runtime / "current").symlink_to("1.0-abc")
    (state / "c1_eth0.json").write_text("{}")
    (registry / "endpoints" / "c1_eth0.json").write_text("{}")
    (registry / "agent.json").write_text("{}")
    return [str(registry), str(conf), str(bin_dir), str(runtime), str(state)]


def underlay_host_side(ns: str) -> None:
    """What the plugin leaves in the host netns once its last underlay pod is gone (cni/underlay.py):
    the shared rule, and a route in its table (one a pod's DEL did not get to)."""
    for family in ("-4", "-6"):
        sh("ip", family, "-n", ns, "rule", "add", "pref", "1000", "lookup", "500")
    sh("ip", "-n", ns, "route", "add", "10.100.0.50/32", "dev", "peer0", "table", "500")


@pytest.mark.parametrize("backend", ["nftables", "nft", "legacy"])
def test_the_agents_uninstall_path_leaves_the_node_as_before(backend: str, node_ns: str, tmp_path: Path) -> None:
    _, facts = load_scenario(str(SCENARIO))
    for scope in ("all", "default"):  # link-local addresses at once: no DAD finishing between two views
        in_ns(node_ns, "sysctl", "-qw", f"net.ipv6.conf.{scope}.accept_dad=0")
    sh("ip", "-n", node_ns, "link", "add", facts.parent, "type", "veth", "peer", "name", "peer0")
    sh("ip", "-n", node_ns, "addr", "add", f"{facts.parent_ipv4}/24", "dev", facts.parent)
    sh("ip", "-n", node_ns, "addr", "add", f"{facts.parent_ipv6}/64", "dev", facts.parent, "nodad")
    for link in (facts.parent, "peer0", "lo"):
        sh("ip", "-n", node_ns, "link", "set", link, "up")
    sh("ip", "-n", node_ns, "route", "add", "default", "via", "10.100.0.1", "dev", facts.parent)
    in_ns(node_ns, f"iptables-{xt(backend)}", "-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", "-j", "MASQUERADE")  # not ours
    before = kernel_view(node_ns, backend)
    underlay_host_side(node_ns)
    dirs = cni_dirs(tmp_path)
    registry, conf, bin_dir, runtime, state = (Path(d) for d in dirs)

    proc = subprocess.Popen(["ip", "netns", "exec", node_ns, PYTHON, HELPER, str(SCENARIO), backend, *dirs], cwd=ROOT, env=ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
        applied = json.loads(proc.stdout.readline() or "{}")
        assert applied.get("eip_dev") == "egress.eip", proc.stderr.read() if proc.poll() is not None else applied
        installed = kernel_view(node_ns, backend)  # the checks below are not vacuous: all of it was there
        assert {"egress.vxlan", "egress.eip"} <= set(installed["links"])
        if backend == "nftables":
            assert installed["nftables"] == ["table ip egress", "table ip6 egress"], installed
        else:
            assert any("EGRESS" in r for r in installed["iptables"]), installed
            assert any("EGRESS" in r for r in installed["ip6tables"]), installed
            assert installed["ipsets"]
        assert "0x26000001" in str(installed["rules"]) and "lookup 500" in str(installed["rules"])
        assert any("table 0x26000001" in r or "table 637534209" in r for r in installed["routes"])
        assert any("10.100.0.200" in a for a in installed["addresses"]) and any("fd00:100::200" in a for a in installed["addresses"])

        proc.stdin.write("uninstall\n")
        proc.stdin.flush()
        cleaned = json.loads(proc.stdout.readline() or "{}")
        assert cleaned == {"failed": []}, cleaned
        after = kernel_view(node_ns, backend)  # the helper still lives, holding the EIP holder's descriptor
        for key, value in before.items():
            assert after[key] == value, f"{key} differs after uninstall:\n{after[key]}\nbefore:\n{value}"
        saved = in_ns(node_ns, f"iptables-{xt(backend)}-save") + in_ns(node_ns, f"ip6tables-{xt(backend)}-save")
        assert "EGRESS" not in saved and "egw:" not in saved and "MASQUERADE" in saved
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=30)

    assert json.loads((conf / "10-bridge.conflist").read_text()) == PRIMARY
    assert sorted(p.name for p in conf.iterdir()) == ["10-bridge.conflist"]
    assert sorted(p.name for p in bin_dir.iterdir()) == ["bridge"]
    assert not runtime.exists() and not state.exists()
    assert registry.is_dir() and list(registry.iterdir()) == []
