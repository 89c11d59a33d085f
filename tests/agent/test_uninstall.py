"""`helm uninstall`'s node side and its hook, the pure parts: the agent stops reconciling at the
signal and never adds anything again, cleans the dataplane, the CNI files and its registry/state
dirs; the hook Job signals, keeps an earlier token, waits, names the nodes that never confirmed and
withdraws the signal; the controller reads a confirming Lease as no Lease."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.scenario import load_scenario
from egress_cni import k8s
from egress_cni.agent import main as agent_main
from egress_cni.agent.loop import Agent
from egress_cni.agent.sources import MemorySource, load_yaml_objects
from egress_cni.agent.uninstall import NodePaths, clean_node, empty_dir, requested
from egress_cni.api.names import ANNOTATION_UNINSTALL, ANNOTATION_UNINSTALLED
from egress_cni.controller.liveness import AgentLiveness
from egress_cni.controller.uninstall import NodeUninstall, agent_nodes, confirmed_nodes
from egress_cni.dataplane.fake import FakeKernel
from egress_cni.dataplane.inputs import DataplaneConfig
from egress_cni.dataplane.plan import Dataplane
from egress_cni.lowlevel import cnifiles

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
PRIMARY = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [{"type": "calico"}, {"type": "portmap"}]}


def wait(what: str, check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# --- the node's files --------------------------------------------------------------------------------


def cni_dirs(tmp_path: Path) -> NodePaths:
    conf, bin_dir, runtime, state, reg = (tmp_path / n for n in ("net.d", "bin", "opt-egw", "var-lib-egw", "run-egw"))
    for d in (conf, bin_dir, runtime / "cni" / "1.0-abc" / "bin", state / "cni", reg / "endpoints", reg / "acks"):
        d.mkdir(parents=True)
    (conf / "10-calico.conflist").write_text(json.dumps({**PRIMARY, "plugins": [*PRIMARY["plugins"], {"type": "egress-cni"}]}))
    (conf / "99-other.conf").write_text(json.dumps({"cniVersion": "0.3.1", "name": "x", "type": "bridge"}))
    (conf / "README").write_text("not a config\n")
    (bin_dir / "egress-cni").write_text("#!/bin/sh\n")
    (bin_dir / "calico").write_text("#!/bin/sh\n")
    (runtime / "cni" / "current").symlink_to("1.0-abc")
    (state / "cni" / "abc_eth0.json").write_text("{}")
    (reg / "endpoints" / "abc_eth0.json").write_text("{}")
    (reg / "agent.json").write_text("{}")
    return NodePaths(registry_dir=str(reg), cni_conf_dir=str(conf), cni_bin_dir=str(bin_dir),
                     cni_runtime_dir=str(runtime / "cni"), cni_state_dir=str(state / "cni"))


def test_cni_files_removal_takes_only_ours_and_is_idempotent(tmp_path: Path) -> None:
    paths = cni_dirs(tmp_path)
    conf, bin_dir, runtime = Path(paths.cni_conf_dir), Path(paths.cni_bin_dir), Path(paths.cni_runtime_dir)
    before_other = (conf / "99-other.conf").read_text()
    changed = cnifiles.remove(conf, bin_dir, runtime)
    assert changed == [str(conf / "10-calico.conflist"), str(bin_dir / "egress-cni"), str(runtime)]
    assert json.loads((conf / "10-calico.conflist").read_text()) == PRIMARY
    assert (conf / "99-other.conf").read_text() == before_other and (conf / "README").exists()
    assert sorted(p.name for p in bin_dir.iterdir()) == ["calico"] and not runtime.exists()
    assert sorted(p.name for p in conf.iterdir()) == ["10-calico.conflist", "99-other.conf", "README"]  # no temp file left
    assert cnifiles.remove(conf, bin_dir, runtime) == []


def test_clean_node_runs_every_step_even_when_one_fails(tmp_path: Path) -> None:
    paths = cni_dirs(tmp_path)

    def broken() -> None:
        raise RuntimeError("iptables-restore: exit 4")

    failed = clean_node(broken, paths)
    assert failed == ["dataplane: iptables-restore: exit 4"]
    assert not Path(paths.cni_runtime_dir).exists() and not Path(paths.cni_state_dir).exists()
    assert not (Path(paths.cni_bin_dir) / "egress-cni").exists()
    assert Path(paths.registry_dir).is_dir() and list(Path(paths.registry_dir).iterdir()) == []  # the mount point stays
    assert clean_node(lambda: None, paths) == []  # again: nothing left, nothing fails


def test_empty_dir_keeps_the_dir_and_a_missing_one_is_nothing(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "d" / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    assert len(empty_dir(str(tmp_path / "d"))) == 3
    assert (tmp_path / "d").is_dir() and (tmp_path / "elsewhere").is_dir()  # a symlink is removed, not followed
    assert empty_dir(str(tmp_path / "absent")) == [] and empty_dir("") == []


# --- the agent ---------------------------------------------------------------------------------------


def signalled(objects: list[dict[str, Any]], token: str) -> list[dict[str, Any]]:
    out = []
    for raw in objects:
        if raw.get("kind") == "EgressClusterInfo":
            raw = {**raw, "metadata": {**raw["metadata"], "annotations": {ANNOTATION_UNINSTALL: token}}}
        out.append(raw)
    return out


def gateway_agent(tmp_path: Path) -> tuple[Agent, MemorySource, FakeKernel, list[dict[str, Any]]]:
    _, facts = load_scenario(str(GOLDEN / "gateway-basic"))
    objects = load_yaml_objects([str(GOLDEN / "gateway-basic" / "input.yaml")])
    source, kernel = MemorySource(objects), FakeKernel()
    agent = Agent(node=facts.name, source=source, kernel=kernel, facts=lambda: facts, config=DataplaneConfig(),
                  registry_dir=str(tmp_path / "registry"), resync_seconds=0.05, min_interval=0.0)
    return agent, source, kernel, objects


def test_the_signal_is_read_from_egressclusterinfo_default(tmp_path: Path) -> None:
    _, source, _, objects = gateway_agent(tmp_path)
    assert requested(source.stores) == ""
    source.replace(signalled(objects, "t-1"))
    assert requested(source.stores) == "t-1"


def test_at_the_signal_the_agent_stops_reconciling_and_never_adds_again(tmp_path: Path) -> None:
    agent, source, kernel, objects = gateway_agent(tmp_path)
    seen: list[str] = []
    done = threading.Event()

    def on_uninstall(token: str) -> None:
        seen.append(token)
        done.set()

    agent.on_uninstall = on_uninstall
    agent.start()
    try:
        wait("a first reconcile", lambda: agent.status.reconciles >= 1 and kernel.state != Dataplane())
        source.replace(signalled(objects, "t-2"))
        assert done.wait(5)
        assert seen == ["t-2"] and agent.uninstalling == "t-2"
        reconciles = agent.status.reconciles
        kernel.uninstall()  # what the caller does next (main.uninstall_node)
        agent.mark_dirty()
        time.sleep(0.3)  # resync is 50 ms: several passes would have run
        assert agent.reconcile() is None and agent.status.reconciles == reconciles
        assert kernel.state == Dataplane()
        assert agent.alive()  # idle by design: the liveness probe must not restart it into setting up again
    finally:
        agent.stop()
    assert agent.alive()


def test_uninstall_node_cleans_everything_then_confirms(tmp_path: Path) -> None:
    agent, source, kernel, objects = gateway_agent(tmp_path)
    paths = cni_dirs(tmp_path)
    args = argparse.Namespace(registry_dir=agent.registry_dir, cni_conf_dir=paths.cni_conf_dir, cni_bin_dir=paths.cni_bin_dir,
                              cni_runtime_dir=paths.cni_runtime_dir, cni_state_dir=paths.cni_state_dir, namespace="ns")
    confirmed: list[str] = []
    agent.start()
    wait("a first reconcile", lambda: kernel.state != Dataplane())
    source.replace(signalled(objects, "t-3"))
    wait("the signal", lambda: agent.uninstalling == "t-3")
    agent_main.uninstall_node(agent, args, stopped=lambda: False, confirm=confirmed.append)
    assert confirmed == ["t-3"]
    assert kernel.uninstalled and kernel.state == Dataplane()
    assert list(Path(agent.registry_dir).iterdir()) == []  # the heartbeat thread stopped first: nothing rewritten
    assert not Path(paths.cni_runtime_dir).exists() and not Path(paths.cni_state_dir).exists()
    assert "egress-cni" not in (Path(paths.cni_conf_dir) / "10-calico.conflist").read_text()


# --- the hook Job ------------------------------------------------------------------------------------


def agent_lease(node: str, token: str | None, holder: str | None = None) -> dict[str, Any]:
    annotations = {ANNOTATION_UNINSTALLED: token} if token is not None else {}
    return {"metadata": {"name": f"egress-agent-{node}", "annotations": annotations},
            "spec": {"holderIdentity": holder, "renewTime": "t1", "leaseDurationSeconds": 20}}


def test_nodes_to_wait_for_and_their_confirmations() -> None:
    pods: list[dict[str, Any]] = [{"spec": {"nodeName": "a"}}, {"spec": {"nodeName": "b"}}, {"spec": {}}]
    assert agent_nodes(pods) == {"a", "b"}
    leases = [agent_lease("a", "t"), agent_lease("b", "earlier"), agent_lease("c", None),
              {"metadata": {"name": "egressgateway-controller", "annotations": {ANNOTATION_UNINSTALLED: "t"}}}]
    assert confirmed_nodes(leases, "t") == {"a"}


class FakeApi:
    """The three calls of the Job, against in-memory objects (tests/apiserver/test_uninstall_hook.py
    runs the same class on the real API server under its real grants)."""

    def __init__(self, pods: list[str], annotations: dict[str, str] | None = None) -> None:
        self.info: dict[str, Any] = {"metadata": {"name": "default", "annotations": dict(annotations or {})}}
        self.pods = [{"spec": {"nodeName": n}} for n in pods]
        self.leases: list[dict[str, Any]] = []
        self.fail_next = 0

    def get(self, rt: k8s.ResourceType, name: str, namespace: str | None = None) -> dict[str, Any]:
        if self.fail_next:
            self.fail_next -= 1
            raise k8s.APIError(0, "Unreachable", "connection refused")
        return self.info

    def patch(self, rt: k8s.ResourceType, name: str, patch: Any, namespace: str | None = None) -> dict[str, Any]:
        for key, value in patch["metadata"]["annotations"].items():
            if value is None:
                self.info["metadata"]["annotations"].pop(key, None)
            else:
                self.info["metadata"]["annotations"][key] = value
        return self.info

    def list(self, rt: k8s.ResourceType, namespace: str | None = None, label_selector: str | None = None,
             **_: Any) -> tuple[list[dict[str, Any]], str]:
        return (self.pods if rt == k8s.PODS else self.leases), "1"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.on_sleep: list[Any] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for hook in self.on_sleep:
            hook(self.now)


def test_the_job_signals_waits_for_every_agent_node_then_withdraws() -> None:
    api, clock = FakeApi(["a", "b"]), Clock()
    job = NodeUninstall(api, "ns", "tok", clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    seen: list[str] = []

    def agents_confirm(now: float) -> None:
        seen.append(api.info["metadata"]["annotations"].get(ANNOTATION_UNINSTALL, ""))
        if now >= 3 and not api.leases:
            api.leases = [agent_lease("a", "tok"), agent_lease("b", "tok")]

    clock.on_sleep.append(agents_confirm)
    assert job.run(timeout=60) == set()
    assert seen[0] == "tok" and 3 <= clock.now < 5
    assert ANNOTATION_UNINSTALL not in api.info["metadata"]["annotations"]  # withdrawn: a reinstall finds no signal


def test_the_job_names_the_nodes_that_never_confirmed_and_still_finishes() -> None:
    api, clock = FakeApi(["a", "b", "down"]), Clock()
    api.leases = [agent_lease("a", "tok"), agent_lease("b", "tok"), agent_lease("down", "from-an-earlier-install")]
    job = NodeUninstall(api, "ns", "tok", clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert job.run(timeout=10, poll=1) == {"down"}
    assert clock.now == 10
    assert ANNOTATION_UNINSTALL not in api.info["metadata"]["annotations"]


def test_the_job_keeps_an_earlier_runs_token_and_retries_the_api() -> None:
    api, clock = FakeApi(["a"], {ANNOTATION_UNINSTALL: "earlier"}), Clock()
    api.fail_next = 2
    api.leases = [agent_lease("a", "earlier")]  # confirmed before this Job's pod was retried
    job = NodeUninstall(api, "ns", "fresh", clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert job.run(timeout=10) == set()
    assert job.token == "earlier" and clock.now == 2


def test_the_job_with_the_api_down_throughout_gives_up_at_its_timeout() -> None:
    api, clock = FakeApi(["a"]), Clock()
    api.fail_next = 1000
    job = NodeUninstall(api, "ns", "tok", clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    missing = job.run(timeout=5)
    assert len(missing) == 1 and "not signalled" in next(iter(missing)) and clock.now == 5


# --- the controller ----------------------------------------------------------------------------------


def test_a_confirming_lease_is_read_as_no_lease() -> None:
    live = AgentLiveness(prefix="egress-agent-")
    live.observe("egress-agent-a", agent_lease("a", None, holder="a"), 100.0)
    assert live.evaluate(100.5).alive == {"egress-agent-a": True}
    # even with a holder left in its spec (an agent that confirmed without clearing it)
    live.observe("egress-agent-a", agent_lease("a", "tok", holder="a"), 101.0)
    assert live.evaluate(101.5).alive == {}
    live.observe("egress-agent-b", {**agent_lease("b", "tok"), "metadata": {
        "name": "egress-agent-b", "annotations": {ANNOTATION_UNINSTALLED: "tok", "egressgateway.spidernet.io/peers": "a"}}}, 101.0)
    verdict = live.evaluate(101.5)
    assert verdict.alive == {} and not verdict.vouched and not verdict.reports


def test_the_controllers_entry_point_runs_the_hook_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    from egress_cni.controller import main as controller_main

    with pytest.raises(SystemExit) as ended:
        controller_main.main(["uninstall-nodes", "--help"])
    assert ended.value.code == 0 and "--timeout-seconds" in capsys.readouterr().out


def test_confirmation_is_retried_until_it_goes_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    agent, _, kernel, _ = gateway_agent(tmp_path)
    agent.uninstalling = "t-4"
    monkeypatch.setattr("egress_cni.agent.main.time.sleep", lambda _s: None)
    calls: list[str] = []

    def flaky(token: str) -> None:
        calls.append(token)
        if len(calls) < 3:
            raise k8s.APIError(0, "Unreachable", "connection refused")

    args = argparse.Namespace(registry_dir=agent.registry_dir, cni_conf_dir="", cni_bin_dir="", cni_runtime_dir="",
                              cni_state_dir="", namespace="ns")
    agent_main.uninstall_node(agent, args, stopped=lambda: False, confirm=flaky)
    assert calls == ["t-4"] * 3 and kernel.uninstalled
