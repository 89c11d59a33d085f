"""The nftables fast path against a real kernel: addresses added by one raw nfnetlink batch read back
as nft wrote them, an address already there is no error, one inside a prefix refuses the batch
(nothing of it applied) and `Nftables.add_elements` then falls back without failing."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.agent.topology import PYTHON, ROOT, scratch_netns

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

SCRIPT = """
import json
from egress_cni.dataplane import nftlink
from egress_cni.dataplane.nft import Nftables, library
lib = library()
lib.run("add table ip egress\\nadd set ip egress src { type ipv4_addr; flags interval; }\\n"
        "add element ip egress src { 10.50.0.0/16 }\\nadd table ip6 egress\\n"
        "add set ip6 egress src6 { type ipv6_addr; flags interval; }\\n")
nftlink.add_addresses("egress", [("src", "10.244.1.10"), ("src", "10.244.1.11"), ("src6", "fd00::10")])
nftlink.add_addresses("egress", [("src", "10.244.1.10")])  # already there
try:
    nftlink.add_addresses("egress", [("src", "10.244.1.12"), ("src", "10.50.1.1")])
    refused = ""
except nftlink.Refused as exc:
    refused = str(exc)
Nftables("egress").add_elements([("src", "10.244.1.13"), ("src", "10.50.1.2")])
print(json.dumps({"refused": refused}))
"""


@pytest.fixture
def ns() -> Iterator[str]:
    with scratch_netns("nftlink") as name:
        yield name


def test_addresses_go_in_by_netlink_and_a_covered_one_falls_back(ns: str) -> None:
    proc = subprocess.run(["ip", "netns", "exec", ns, PYTHON, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "EEXIST" in json.loads(proc.stdout.splitlines()[-1])["refused"]
    listing = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset"], capture_output=True,
                             text=True, check=True).stdout
    elems = {s["set"]["name"]: s["set"].get("elem", []) for s in json.loads(listing)["nftables"] if "set" in s}
    assert sorted(map(json.dumps, elems["src"])) == sorted(map(json.dumps, [
        {"prefix": {"addr": "10.50.0.0", "len": 16}}, "10.244.1.10", "10.244.1.11", "10.244.1.13"])), elems
    assert elems["src6"] == ["fd00::10"], elems
