"""One object's failure stays with that object (reconciler, no I/O): a pool FieldError raised in
placement and a bug in placement each cost their own gateway and its policies, never the other
gateways' policies; Invalid reports are not repeated on every pass; a failed write backs off."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from egress_cni import k8s
from egress_cni.api.errors import FieldError
from egress_cni.controller import reconciler as reconciler_module
from egress_cni.controller.config import Config
from egress_cni.controller.metrics import Metrics
from egress_cni.controller.reconciler import Reconciler
from egress_cni.controller.watchers import Dirty, Watchers
from tests.controller.cluster import gateway, policy

pytestmark = pytest.mark.unit


class FakeInformer:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.synced = True

    def list(self) -> list[dict[str, Any]]:
        return list(self.objects.values())

    def get(self, key: str) -> dict[str, Any] | None:
        return self.objects.get(key)

    def stop(self) -> None:
        pass


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class FakeClient:
    """Objects in the fake informers; writes update them (new resourceVersion) or fail on demand."""

    def __init__(self, informers: dict[str, FakeInformer]) -> None:
        self.informers = informers
        self.rv = 100
        self.fail_status: set[str] = set()  # object names whose status writes fail with 500

    def _put(self, rt: k8s.ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        obj.setdefault("apiVersion", rt.api_version)
        obj.setdefault("kind", rt.kind)
        self.informers[rt.plural].objects[k8s.object_key(obj)] = obj
        return obj

    def _key(self, name: str, namespace: str | None) -> str:
        return f"{namespace}/{name}" if namespace else name

    def patch_status(self, rt: k8s.ResourceType, name: str, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        if name in self.fail_status:
            raise k8s.APIError(500, "InternalError", "etcd is sad")
        current = self.informers[rt.plural].objects[self._key(name, namespace)]
        return self._put(rt, merge(current, body))

    def patch(self, rt: k8s.ResourceType, name: str, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        return self.patch_status(rt, name, body, namespace)

    def create(self, rt: k8s.ResourceType, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        return self._put(rt, body)

    def replace(self, rt: k8s.ResourceType, body: dict[str, Any]) -> dict[str, Any]:
        return self._put(rt, body)

    def get(self, rt: k8s.ResourceType, name: str, namespace: str | None = None) -> dict[str, Any]:
        raise k8s.NotFound(404, "NotFound", name)

    def delete(self, rt: k8s.ResourceType, name: str, namespace: str | None = None) -> None:
        self.informers[rt.plural].objects.pop(self._key(name, namespace), None)


class FakeEvents:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []  # (object key, reason, message)

    def emit(self, involved: dict[str, Any], reason: str, message: str, type_: str = "Normal") -> None:
        self.sent.append((k8s.object_key(involved), reason, message))


class World:
    def __init__(self) -> None:
        config = Config(identity="t")
        self.watchers = Watchers(None, config, Dirty())  # type: ignore[arg-type]
        self.informers = {plural: FakeInformer() for plural in self.watchers.informers}
        self.watchers.informers = self.informers  # type: ignore[assignment]
        self.client = FakeClient(self.informers)
        self.events = FakeEvents()
        self.reconciler = Reconciler(self.client, config, self.watchers, Metrics(), self.events)  # type: ignore[arg-type]
        for n in ("n1", "n2"):
            self.add(k8s.NODES, {"metadata": {"name": n, "labels": {"egw": "yes"}},
                                 "status": {"conditions": [{"type": "Ready", "status": "True"}]}})

    def add(self, rt: k8s.ResourceType, body: dict[str, Any]) -> None:
        body = {"apiVersion": rt.api_version, "kind": rt.kind, **body}
        body["metadata"] = {"uid": f"uid-{body['metadata']['name']}", "generation": 1, **body["metadata"]}
        self.client._put(rt, body)

    def status(self, rt: k8s.ResourceType, key: str) -> dict[str, Any]:
        return self.informers[rt.plural].objects[key].get("status") or {}

    def ready(self, rt: k8s.ResourceType, key: str) -> dict[str, Any]:
        return next((c for c in self.status(rt, key).get("conditions") or [] if c["type"] == "Ready"), {})

    def run(self) -> float | None:
        return self.reconciler.reconcile(True, True, set(), set())


@pytest.fixture
def world() -> Iterator[World]:
    yield World()


def _two_gateways(world: World) -> None:
    world.add(k8s.EGRESS_GATEWAYS, gateway("good", ["10.6.1.1-10.6.1.9"], {"egw": "yes"}))
    world.add(k8s.EGRESS_GATEWAYS, gateway("bad", ["10.6.2.1-10.6.2.9"], {"egw": "yes"}))
    world.add(k8s.EGRESS_POLICIES, policy("p-good", "ns", "good"))
    world.add(k8s.EGRESS_POLICIES, policy("p-bad", "ns", "bad"))


def test_a_pool_field_error_in_placement_is_invalid_and_contained(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    real = reconciler_module.place_gateway  # type: ignore[attr-defined]

    def place(gw: Any, *args: Any) -> Any:
        if gw.metadata.name == "bad":
            raise FieldError("spec.ippools.ipv4[0]", "10.6.2.9-10.6.2.1", "the range ends before it starts")
        return real(gw, *args)

    monkeypatch.setattr(reconciler_module, "place_gateway", place)
    _two_gateways(world)
    assert world.run() is None
    assert world.ready(k8s.EGRESS_GATEWAYS, "bad")["reason"] == "Invalid"
    assert "spec.ippools.ipv4[0]" in world.ready(k8s.EGRESS_GATEWAYS, "bad")["message"]
    bad = world.ready(k8s.EGRESS_POLICIES, "ns/p-bad")
    assert bad["status"] == "False" and bad["reason"] == "Invalid" and "EgressGateway bad" in bad["message"]
    assert not world.status(k8s.EGRESS_POLICIES, "ns/p-bad").get("eip")
    # the other gateway's policy is decided and written as usual (the fake agents are not alive)
    assert world.ready(k8s.EGRESS_POLICIES, "ns/p-good")["reason"] == "NoEligibleNode"
    assert world.status(k8s.EGRESS_POLICIES, "ns/p-good")["eip"]["ipv4"] == "10.6.1.1"
    invalid = [e for e in world.events.sent if e[1] == "Invalid"]
    assert [e[0] for e in invalid] == ["bad", "ns/p-bad"]  # the gateway, and the policy it leaves without an EIP
    for _ in range(3):  # a steady problem is reported once
        world.run()
    assert [e[0] for e in world.events.sent if e[1] == "Invalid"] == ["bad", "ns/p-bad"]


def test_a_bug_in_placement_costs_only_its_gateway(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    real = reconciler_module.place_gateway  # type: ignore[attr-defined]

    def place(gw: Any, *args: Any) -> Any:
        if gw.metadata.name == "bad":
            raise ZeroDivisionError("a bug")
        return real(gw, *args)

    monkeypatch.setattr(reconciler_module, "place_gateway", place)
    _two_gateways(world)
    retry = world.run()
    assert retry is not None  # come back later for the failed one
    assert world.ready(k8s.EGRESS_GATEWAYS, "bad")["reason"] == "ReconcileFailed"
    assert world.ready(k8s.EGRESS_POLICIES, "ns/p-bad")["reason"] == "ReconcileFailed"
    assert world.status(k8s.EGRESS_POLICIES, "ns/p-good")["eip"]["ipv4"] == "10.6.1.1"


def test_failed_writes_back_off_and_a_clean_pass_resets(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconciler_module.time, "time", lambda: 1000.0)  # type: ignore[attr-defined]
    world.reconciler.backoff._rand = lambda: 0.0  # the ceiling, no jitter drawn
    _two_gateways(world)
    world.client.fail_status = {"p-good"}
    delays = [round(r - 1000.0, 3) for r in (world.run(), world.run(), world.run()) if r is not None]
    assert delays == [0.25, 0.5, 1.0]
    # the failing policy never stopped the other one
    assert world.ready(k8s.EGRESS_POLICIES, "ns/p-bad")["reason"] == "NoEligibleNode"
    world.client.fail_status = set()
    assert world.run() is None and world.reconciler.backoff.failures == 0


def test_a_malformed_policy_is_invalid_and_keeps_its_slices(world: World) -> None:
    world.add(k8s.EGRESS_GATEWAYS, gateway("good", ["10.6.1.1-10.6.1.9"], {"egw": "yes"}))
    world.add(k8s.EGRESS_POLICIES, policy("p-good", "ns", "good"))
    broken = policy("p-broken", "ns", "good", egress_ip={"ipv4": "10.6.300.1"})
    world.add(k8s.EGRESS_POLICIES, broken)
    world.add(k8s.EGRESS_ENDPOINT_SLICES, {"metadata": {"name": "p-broken-x", "namespace": "ns",
                                                        "labels": {"spidernet.io/policy-name": "p-broken"}},
                                           "endpoints": []})
    world.run()
    cond = world.ready(k8s.EGRESS_POLICIES, "ns/p-broken")
    assert cond["reason"] == "Invalid" and "spec.egressIP.ipv4" in cond["message"], cond
    assert world.ready(k8s.EGRESS_POLICIES, "ns/p-good")["reason"] == "NoEligibleNode"
    assert "ns/p-broken-x" in world.informers[k8s.EGRESS_ENDPOINT_SLICES.plural].objects  # not pruned
    assert [e[1] for e in world.events.sent if e[0] == "ns/p-broken"] == ["Invalid"]
