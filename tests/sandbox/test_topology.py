"""The sandbox topology in real namespaces: converges twice, reaches the echo server, leaves nothing."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.sandbox import netns, procs
from devtools.sandbox.plan import SandboxPlan, build_plan

pytestmark = pytest.mark.netns


@pytest.fixture
def plan(tmp_path: Path) -> Iterator[SandboxPlan]:
    plan = build_plan(node_count=2, state_dir=tmp_path, prefix=f"egwt-{uuid.uuid4().hex[:4]}")
    try:
        yield plan
    finally:
        netns.remove_topology(plan.netns_names)


def _fetch(plan: SandboxPlan, node: str, url: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(netns.in_netns_argv(plan.node(node).netns, ["curl", "-s", "-g", "--max-time", "2", url]),
                                capture_output=True, text=True)
        if result.returncode == 0 or time.monotonic() > deadline:
            return result.stdout
        time.sleep(0.1)


def test_nodes_reach_the_external_server_with_their_own_address(plan: SandboxPlan, tmp_path: Path) -> None:
    netns.apply_topology(plan)
    netns.apply_topology(plan)  # idempotent
    server = procs.launch("ext", [sys.executable, "-m", "devtools.sandbox.extserver", "--record",
                                  str(tmp_path / "record.jsonl")], tmp_path, netns=plan.external.netns)
    try:
        assert _fetch(plan, "node1", f"http://{plan.external.ipv4}:8080") == "Remote IP: 10.6.168.11\n"
        assert _fetch(plan, "node2", f"http://[{plan.external.ipv6}]:8080") == "Remote IP: fd10:6:168::12\n"
        worker = netns.NetnsWorker(plan.control_plane.netns)
        try:
            import urllib.request
            body = worker.call(lambda: urllib.request.urlopen(f"http://{plan.external.ipv4}:8080", timeout=5).read())
        finally:
            worker.close()
        assert body == b"Remote IP: 10.6.168.2\n"
    finally:
        assert procs.stop(server)
    assert not procs.alive(server)
    assert (tmp_path / "record.jsonl").read_text().count('"http"') == 3
    assert netns.remove_topology(plan.netns_names) == list(plan.netns_names)
    assert not set(plan.netns_names) & netns.existing_netns()
