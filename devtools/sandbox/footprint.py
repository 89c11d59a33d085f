"""What a node's kernel and node-local directories hold, in a form two moments can be compared by:
the sandbox records it before `helm install`; e2e/test_install.py compares it after `helm uninstall`.

Left out: what others own and change on their own (kube-proxy's KUBE-* rules, the bridge plugin's
per-pod CNI-* chains, pod veths and the pod bridge the first pod creates, IPAM leases), iptables
counters, and tables that hold nothing (`*raw` with its built-in chains at policy ACCEPT and no rule:
with the nft backend a table stays once created, and an empty one changes no packet's fate). Everything else counts: chains and rules of every table in both families, ip rules,
routes of every table, links and addresses, ipsets, nftables tables, and each file below the node-local paths a
DaemonSet's hostPath volumes name, with the conflists' content.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from devtools.sandbox import nodehost
from devtools.sandbox.netns import in_netns_argv
from devtools.sandbox.plan import NodePlan

FOREIGN = re.compile(r"KUBE-|CNI-|\bveth")
XTABLES = re.compile(r"^table (ip|ip6) (filter|nat|mangle|raw|security)$")  # iptables-nft's: they stay, empty
COUNTERS = re.compile(r"\[\d+:\d+\]")
EMPTY = re.compile(r"^(\*\w+|COMMIT|:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) ACCEPT)$")  # in every table
WATCHED_DIRS = ("/etc/cni/net.d", "/opt/cni/bin", "/opt/egressgateway", "/run/egressgateway", "/var/lib/egressgateway")


def _lines(netns: str, argv: list[str]) -> list[str]:
    out = subprocess.run(in_netns_argv(netns, argv), capture_output=True, text=True, timeout=30).stdout
    return [COUNTERS.sub("", line).strip() for line in out.splitlines()]


def kernel(node: NodePlan) -> dict[str, list[str]]:
    ns = node.netns
    bridge = re.compile(rf"\b{re.escape(node.pod_bridge)}\b")
    commands = {
        "iptables": ["iptables-save"], "ip6tables": ["ip6tables-save"],
        "rules4": ["ip", "-4", "rule", "show"], "rules6": ["ip", "-6", "rule", "show"],
        "routes4": ["ip", "-4", "route", "show", "table", "all"], "routes6": ["ip", "-6", "route", "show", "table", "all"],
        "links": ["ip", "-o", "link", "show"], "addresses": ["ip", "-o", "addr", "show"], "ipsets": ["ipset", "list", "-n"],
        "nftables": ["nft", "list", "tables"],  # the nftables engine's own table (iptables-nft's left out)
    }
    found = {}
    for key, argv in commands.items():
        lines = [line for line in _lines(ns, argv) if line and not line.startswith("#") and not FOREIGN.search(line)
                 and not bridge.search(line) and not (key.endswith("tables") and EMPTY.match(line)) and not XTABLES.match(line)]
        if key == "links":  # link indexes and state flags change with every veth: keep name and kind
            lines = [" ".join(line.split()[1:2]) for line in lines]
        found[key] = sorted(set(lines))
    return found


def files(root: Path) -> dict[str, list[str]]:
    """Every file and directory under the node's own copies of WATCHED_DIRS (conflists with their content)."""
    found: dict[str, list[str]] = {}
    for path in WATCHED_DIRS:
        base = nodehost.node_path(root, path)
        entries = []
        for directory, subdirs, names in os.walk(base):
            entries += [f"{path}/{(Path(directory) / d).relative_to(base)}/" for d in subdirs]
            for name in names:
                full = Path(directory) / name
                shown = f"{path}/{full.relative_to(base)}"
                if path == "/etc/cni/net.d":  # its content, not its formatting
                    shown += " " + json.dumps(json.loads(full.read_text()), sort_keys=True)
                entries.append(shown)
        found[path] = sorted(entries)
    return found


def snapshot(node: NodePlan, root: Path) -> dict[str, list[str]]:
    return {**kernel(node), **files(root)}


def differences(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[str]:
    """'+ key: line' for what is there now and was not, '- key: line' for what went."""
    out = []
    for key in sorted(set(before) | set(after)):
        old, new = set(before.get(key, [])), set(after.get(key, []))
        out += [f"+ {key}: {line}" for line in sorted(new - old)] + [f"- {key}: {line}" for line in sorted(old - new)]
    return out
