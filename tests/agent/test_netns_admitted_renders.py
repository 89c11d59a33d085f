"""Property: whatever the webhook admits, the agent renders, and the kernel's own tools accept it.

Hypothesis builds policies of both kinds with names of every legal length (up to 253 characters,
namespaces up to 63), destination lists up to thousands of CIDRs of both families, host bits and
all; each is put through the real admission review, and an admitted one is computed into the
gateway node's dataplane, whose `ipset restore` script and `iptables-restore --test` text must be
accepted inside a network namespace this test creates (never the host's).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from egress_cni.api.model import EgressClusterPolicy, EgressPolicy, parse_as
from egress_cni.dataplane.compute import desired_dataplane
from egress_cni.dataplane.inputs import ClusterState, DataplaneConfig, LocalEndpoint, NodeFacts
from egress_cni.dataplane.render import ipset_script, restore_text
from tests.webhook.builders import gateway, policy, validate

pytestmark = [pytest.mark.netns, pytest.mark.timeout(900)]

EIP = "10.6.168.201"
LABEL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def _run(ns: str, *cmd: str, text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], input=text, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    name = f"egw-render-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def dns_label(draw: st.DrawFn, max_size: int) -> str:
    size = draw(st.integers(1, max_size))
    body = draw(st.text(LABEL_CHARS + "-", min_size=size, max_size=size))
    return ("a" + body[1:-1] + "z")[:size] if size > 1 else "a"


@st.composite
def subdomain(draw: st.DrawFn) -> str:
    """A DNS subdomain name (what metadata.name allows): labels of <= 63, total <= 253."""
    labels = [dns_label(draw, 63) for _ in range(draw(st.integers(1, 5)))]
    return ".".join(labels)[:253].strip(".-") or "a"


def cidrs(count: int, seed: int) -> list[str]:
    out = []
    for i in range(count):
        n = (seed * 7919 + i) % 65536
        out.append(f"fd00:{n:x}::/64" if i % 5 == 4 else f"10.{n >> 8}.{n & 255}.{'7/24' if i % 7 == 3 else '0/24'}")
    return out


@st.composite
def admitted_candidates(draw: st.DrawFn) -> dict[str, Any]:
    cluster = draw(st.booleans())
    namespace = dns_label(draw, 63)
    dest = cidrs(draw(st.sampled_from([0, 1, 3, 40, 400])), draw(st.integers(0, 1000)))
    return policy(draw(subdomain()), namespace, cluster=cluster, dest=dest or None,
                  pod_subnet=["10.244.0.0/16"] if cluster else None, pod_labels=None if cluster else {"app": "x"},
                  egress_ip={"ipv4": EIP}, priority=draw(st.none() | st.integers(0, 1 << 31)))


def render_and_check(raw: dict[str, Any], ns: str) -> None:
    gw = gateway(ipv4=["10.6.168.201-10.6.168.205"])
    if not validate(raw, gw)["allowed"]:
        return
    cls = EgressClusterPolicy if raw["kind"] == "EgressClusterPolicy" else EgressPolicy
    p = parse_as(cls, {**raw, "status": {"eip": {"ipv4": EIP}, "node": "node1"}})
    namespace = p.metadata.namespace or "default"
    state = ClusterState(
        policies=(p,),
        local_endpoints=(LocalEndpoint.of("k1", namespace, "pod", ["10.244.1.5"], []),),
        pod_labels={f"{namespace}/pod": {"app": "x"}},
    )
    dp = desired_dataplane(state, NodeFacts("node1", "eth0", "192.168.0.1"), DataplaneConfig()).dataplane
    sets = ipset_script(sorted(dp.ipsets), ())
    names = [s.name for s in dp.ipsets]
    try:
        done = _run(ns, "ipset", "restore", "-exist", text=sets)
        assert done.returncode == 0, done.stderr
        text = restore_text([c for c in dp.chains if c.family == 4])
        done = _run(ns, "iptables-restore", "--test", "--noflush", text=text)
        assert done.returncode == 0, f"{done.stderr}\n{text[:2000]}"
        assert any(p.metadata.name[:40] in line or "~" in line for line in text.splitlines() if "snat:" in line)
    finally:
        _run(ns, "ipset", "restore", "-exist", text="".join(f"destroy {n}\n" for n in names))


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.data_too_large])
@given(raw=admitted_candidates())
@example(raw=policy("a" * 253, "n" * 63, dest=cidrs(3000, 1), egress_ip={"ipv4": EIP}, pod_labels={"app": "x"}))
@example(raw=policy("b" * 253, cluster=True, pod_subnet=["10.244.0.0/16"], dest=cidrs(3000, 2), egress_ip={"ipv4": EIP}))
def test_whatever_the_webhook_admits_the_kernel_accepts(raw: dict[str, Any], netns: str) -> None:
    render_and_check(raw, netns)
