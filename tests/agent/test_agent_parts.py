"""The agent's parts through their public seams: the state assembled from the stores (no re-parse),
an invalid object next to valid ones, fencing on a clock, and retries that back off."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from egress_cni.agent.fencing import Fencing
from egress_cni.agent.health import AgentCollector
from egress_cni.agent.sources import RecordingReporter
from egress_cni.backoff import Backoff
from egress_cni.dataplane.fake import FakeKernel
from egress_cni.dataplane.plan import Dataplane
from tests.agent.test_loop import Clock, make_agent, memory

pytestmark = pytest.mark.unit


def eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout} s")


def test_a_pod_change_reuses_every_other_parsed_object(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, "worker-basic")
    before = agent.state()
    assert agent.state() is before  # nothing changed: not even reassembled
    source = memory(agent)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "new", "namespace": "ns1", "labels": {"app": "x"}},
           "spec": {"nodeName": "node1"}}
    source.replace([*source.objects(), pod])
    after = agent.state()
    assert after.pod_labels["ns1/new"] == {"app": "x"}
    assert all(a is b for a, b in zip(after.policies, before.policies, strict=True))
    assert all(a is b for a, b in zip(after.slices, before.slices, strict=True)) and after.tunnels == before.tunnels


def test_an_invalid_policy_is_skipped_and_counted_the_others_are_programmed(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, "worker-basic")
    source = memory(agent)
    web = next(o for o in source.objects() if o["kind"] == "EgressPolicy")
    broken = {**web, "metadata": {**web["metadata"], "name": "broken"}, "spec": {**web["spec"], "destSubnet": [7]}}
    source.replace([*source.objects(), broken])
    assert agent.reconcile() is not None and agent.status.last_ok
    assert agent.status.invalid == 1
    (bad,) = source.stores.invalid()
    assert (bad.key, bad.error.path) == ("ns1/broken", "spec.destSubnet[0]")
    kernel = agent.kernel
    assert isinstance(kernel, FakeKernel)
    assert any("steer:ns1/web" in r for c in kernel.state.chains for r in c.rules)
    text = _metrics(agent)
    assert "egress_agent_invalid_objects 1.0" in text


def _metrics(agent: Any) -> str:
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent, dict))
    return generate_latest(registry).decode()


class FlakyLease:
    def __init__(self) -> None:
        self.ok = True

    def try_acquire_or_renew(self) -> bool:
        if self.ok:
            return True
        raise OSError("apiserver unreachable")

    def release(self) -> None:
        return None


def test_fencing_judges_the_lease_on_its_clock_and_reports_each_flip_once() -> None:
    clock, lease, flips = Clock(), FlakyLease(), []
    fencing = Fencing(lease, lease_seconds=1.0, on_change=lambda: flips.append(clock.now), clock=clock)
    assert fencing.renew() and fencing.holds_lease
    lease.ok = False
    clock.now += 0.6
    assert not fencing.renew() and fencing.holds_lease  # one missed renewal: still within the lease
    clock.now += 0.5
    assert not fencing.check() and not fencing.check() and flips == [clock.now]
    lease.ok = True
    assert fencing.renew() and fencing.holds_lease and len(flips) == 2


class FailingKernel(FakeKernel):
    """Fails `failures` reads, recording when each reconcile reached it."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts: list[float] = []

    def read_actual(self, sysctls: Any = frozenset()) -> Dataplane:
        self.attempts.append(time.monotonic())
        if len(self.attempts) <= self.failures:
            raise OSError("netlink busy")
        return super().read_actual(sysctls)


def test_failed_reconciles_are_retried_with_growing_delays_and_a_success_resets_them(tmp_path: Path) -> None:
    kernel = FailingKernel(failures=4)
    retry = Backoff(base=0.05, cap=0.2, jitter=0.5, rand=lambda: 0.0)  # no jitter drawn: exact ceilings
    agent = make_agent(tmp_path, "worker-basic", kernel=kernel, retry=retry, min_interval=0.01, resync_seconds=30)
    agent.start()
    try:
        eventually(lambda: agent.status.last_ok)
    finally:
        agent.stop()
    gaps = [b - a for a, b in zip(kernel.attempts, kernel.attempts[1:], strict=False)][:4]
    for gap, want in zip(gaps, (0.05, 0.1, 0.2, 0.2), strict=True):  # doubling from base, capped
        assert gap >= want * 0.9, gaps
    assert retry.failures == 0 and agent.status.errors == 4


class RefusingReporter(RecordingReporter):
    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals, self.calls = refusals, 0

    def report_tunnel(self, node: str, parent: Mapping[str, str], ready: bool) -> None:
        self.calls += 1
        if self.calls <= self.refusals:
            raise OSError("egresstunnel not created yet")
        super().report_tunnel(node, parent, ready)


def test_a_refused_tunnel_report_is_retried_after_a_backoff_not_on_every_reconcile(tmp_path: Path) -> None:
    clock, reporter = Clock(), RefusingReporter(refusals=2)
    agent = make_agent(tmp_path, "gateway-basic", reporter=reporter, clock=clock)
    agent.reconcile()
    assert reporter.calls == 1
    agent.reconcile()
    assert reporter.calls == 1  # within the backoff: not asked again
    clock.now += 0.6  # past the first delay (at most 0.5 s)
    agent.reconcile()
    assert reporter.calls == 2 and not reporter.reported
    clock.now += 1.1  # past the second (at most 1 s)
    agent.reconcile()
    assert reporter.calls == 3 and reporter.reported["node2"]["ready"] == "True"
    agent.reconcile()
    assert reporter.calls == 3  # reported: nothing new to say
