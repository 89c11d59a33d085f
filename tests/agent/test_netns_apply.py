"""Every golden scenario applied to a real kernel with iptables-nft and iptables-legacy: the second
reconcile is empty, the drift check's cheap read sees no drift then (so it reads the kernel as the
full read does), a foreign rule inserted above our jump is seen by the drift check and answered by
moving our jump back to the top (the foreign rule stays), and uninstall leaves nothing of ours behind."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.scenario import load_scenario
from tests.agent.topology import PYTHON, ROOT, scratch_netns, sh

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

GOLDEN = ROOT / "tests" / "golden"
HELPER = str(Path(__file__).resolve().parent / "apply_scenario.py")
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.yaml").exists())


def in_ns(ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


@pytest.fixture
def node_ns() -> Iterator[str]:
    with scratch_netns("apply") as name:
        yield name


@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.parametrize("case", CASES)
def test_scenario_applies_and_second_reconcile_is_empty(case: str, backend: str, node_ns: str) -> None:
    _, facts = load_scenario(str(GOLDEN / case))
    _node(node_ns, case)
    ipt = f"iptables-{backend}"
    in_ns(node_ns, ipt, "-t", "mangle", "-A", "PREROUTING", "-s", "192.0.2.1", "-j", "ACCEPT")  # someone else's rule
    proc = in_ns(node_ns, PYTHON, HELPER, str(GOLDEN / case), backend)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend and result["first"] and result["second"] == {}, result
    assert result["drift_before"] and result["drift_after"] == [[], []], result
    assert result["drift_tampered"] == ["jump"] and result["drift_untampered"] == [], result
    # a CNI/kube-proxy style rewrite puts its rule above our jump: the next reconcile moves ours back up
    in_ns(node_ns, ipt, "-t", "mangle", "-I", "PREROUTING", "1", "-s", "192.0.2.2", "-j", "ACCEPT")
    proc = in_ns(node_ns, PYTHON, HELPER, str(GOLDEN / case), backend)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["first"] == {"write_chains": 1} and result["second"] == {}, result
    assert result["drift_before"] == ["jump"] and result["drift_after"] == [[], []], result
    rules = [r for r in in_ns(node_ns, f"{ipt}-save", "-t", "mangle").stdout.splitlines() if r.startswith("-A PREROUTING")]
    assert "EGRESS-PREROUTING" in rules[0] and len(rules) == 3, rules
    proc = in_ns(node_ns, PYTHON, "-m", "egress_cni.agent.main", "uninstall", "--parent", facts.parent,
                 "--iptables-backend", backend, *(["--ipv6"] if facts.ipv6 else []))
    assert proc.returncode == 0, proc.stderr
    saved = in_ns(node_ns, f"{ipt}-save").stdout + in_ns(node_ns, f"ip6tables-{backend}-save").stdout
    assert "EGRESS" not in saved and "192.0.2.2" in saved
    assert "egress-" not in in_ns(node_ns, "ipset", "list", "-n").stdout
    assert "egress.vxlan" not in in_ns(node_ns, "ip", "link").stdout


def _node(node_ns: str, case: str) -> None:
    _, facts = load_scenario(str(GOLDEN / case))
    sh("ip", "-n", node_ns, "link", "add", facts.parent, "type", "veth", "peer", "name", "peer0")
    sh("ip", "-n", node_ns, "addr", "add", f"{facts.parent_ipv4}/24", "dev", facts.parent)
    if facts.parent_ipv6:
        sh("ip", "-n", node_ns, "addr", "add", f"{facts.parent_ipv6}/64", "dev", facts.parent, "nodad")
    for link in (facts.parent, "peer0", "lo"):
        sh("ip", "-n", node_ns, "link", "set", link, "up")


def _apply(node_ns: str, case: str, engine: str) -> dict[str, object]:
    proc = in_ns(node_ns, PYTHON, HELPER, str(GOLDEN / case), engine)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("case", CASES)
def test_nftables_engine_applies_each_scenario_in_its_own_table(case: str, node_ns: str) -> None:
    """Our own table: applied whole, the second reconcile empty, the drift check quiet; a rule inserted
    at the top of iptables' mangle PREROUTING moves nothing of ours (no drift, nothing rewritten);
    uninstall removes the table."""
    _node(node_ns, case)
    _, facts = load_scenario(str(GOLDEN / case))
    result = _apply(node_ns, case, "nftables")
    assert result["backend"] == "nftables" and result["first"] and result["second"] == {}, result
    assert result["drift_before"] and result["drift_after"] == [[], []], result
    assert result["drift_tampered"] == [] and result["drift_untampered"] == [], result
    tables = in_ns(node_ns, "nft", "list", "tables").stdout
    assert "table ip egress" in tables, tables
    for family in ["ip", *(["ip6"] if facts.ipv6 else [])]:  # what the kernel holds is the golden script's
        listed = in_ns(node_ns, "nft", "list", "table", family, "egress").stdout
        expected = (GOLDEN / case / f"expected_nft_v{4 if family == 'ip' else 6}.txt").read_text()
        for line in expected.splitlines():
            if line.startswith("add rule"):
                assert line.rsplit('comment "', 1)[1].rstrip('"') in listed, line
    proc = in_ns(node_ns, PYTHON, "-m", "egress_cni.agent.main", "uninstall", "--parent", facts.parent,
                 "--iptables-backend", "nftables", *(["--ipv6"] if facts.ipv6 else []))
    assert proc.returncode == 0, proc.stderr
    assert "egress" not in in_ns(node_ns, "nft", "list", "tables").stdout
    assert "egress.vxlan" not in in_ns(node_ns, "ip", "link").stdout


def test_nftables_engine_takes_over_from_the_iptables_engine(node_ns: str) -> None:
    """An upgrade from the iptables engine: the first nftables reconcile writes our table, then removes
    the old chains, their jumps and the ipsets; the next reconcile is empty."""
    case = "gateway-basic"
    _node(node_ns, case)
    _apply(node_ns, case, "nft")
    assert "EGRESS" in in_ns(node_ns, "iptables-nft-save").stdout
    result = _apply(node_ns, case, "nftables")
    assert result["second"] == {}, result
    assert "EGRESS" not in in_ns(node_ns, "iptables-nft-save").stdout
    assert "egress-" not in in_ns(node_ns, "ipset", "list", "-n").stdout
    assert "table ip egress" in in_ns(node_ns, "nft", "list", "tables").stdout
