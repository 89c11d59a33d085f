"""k8s.py pieces that need no API server: error mapping, paths, lease freshness, the Informer loop."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from egress_cni import k8s

pytestmark = pytest.mark.unit


def test_error_mapping_keeps_the_server_message() -> None:
    body = b'{"kind":"Status","code":409,"reason":"AlreadyExists","message":"egressgateways \\"g\\" already exists"}'
    err = k8s.error_for(409, body)
    assert isinstance(err, k8s.Conflict)
    assert err.reason == "AlreadyExists" and "already exists" in err.message
    assert isinstance(k8s.error_for(404, b"{}"), k8s.NotFound)
    assert isinstance(k8s.error_for(410, b"{}"), k8s.Gone)
    assert isinstance(k8s.error_for(403, b"not json"), k8s.Forbidden)
    assert isinstance(k8s.error_for(422, b"{}"), k8s.Invalid)
    denied = k8s.error_for(400, b'{"code":400,"message":"admission webhook \\"v.egw\\" denied the request: bad pool"}')
    assert isinstance(denied, k8s.Invalid) and "bad pool" in denied.message
    assert type(k8s.error_for(500, b"boom")) is k8s.APIError


def test_paths() -> None:
    assert k8s.PODS.path("ns1", "p") == "/api/v1/namespaces/ns1/pods/p"
    assert k8s.PODS.path() == "/api/v1/pods"
    assert k8s.NODES.path(None, "n1", "status") == "/api/v1/nodes/n1/status"
    assert k8s.EGRESS_POLICIES.path("a", "b", "status") == "/apis/egressgateway.spidernet.io/v1beta1/namespaces/a/egresspolicies/b/status"
    assert k8s.EGRESS_GATEWAYS.path("ignored", "g") == "/apis/egressgateway.spidernet.io/v1beta1/egressgateways/g"
    assert k8s.LEASES.api_version == "coordination.k8s.io/v1" and k8s.NODES.api_version == "v1"


def test_lease_freshness() -> None:
    now = time.time()
    lease = {"spec": {"holderIdentity": "n1", "leaseDurationSeconds": 2, "renewTime": k8s.now_micro()}}
    assert k8s.lease_fresh(lease, now)
    assert not k8s.lease_fresh(lease, now + 3)
    assert k8s.lease_fresh(lease, now + 3, grace=2)
    assert not k8s.lease_fresh({"spec": {"leaseDurationSeconds": 2, "renewTime": k8s.now_micro()}}, now)


def test_retry_on_conflict_retries_then_returns() -> None:
    calls = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise k8s.Conflict(409, "Conflict", "stale")
        return 7

    assert k8s.retry_on_conflict(flaky) == 7 and len(calls) == 3


def _obj(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}


class FakeWatchClient:
    """list() then scripted watch rounds; the second watch raises Gone to force a relist."""

    def __init__(self) -> None:
        self.lists = 0
        self.watches = 0
        self.release = threading.Event()

    def list(self, rt: Any, *args: Any) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        if self.lists == 1:
            return [_obj("a", "1"), _obj("b", "1")], "1"
        return [_obj("a", "5"), _obj("c", "5")], "5"  # b vanished while we were not watching

    def watch(self, rt: Any, ns: Any, version: str, *args: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        self.watches += 1
        if self.watches == 1:
            yield "MODIFIED", _obj("a", "2")
            yield "BOOKMARK", {"metadata": {"resourceVersion": "3"}}
            raise k8s.Gone(410, "Expired", "too old")
        self.release.wait(5)
        return


def test_informer_lists_watches_and_relists_on_gone() -> None:
    client = FakeWatchClient()
    seen: list[tuple[str, str | None, str | None]] = []

    def rv(o: dict[str, Any] | None) -> str | None:
        return None if o is None else str(o["metadata"]["resourceVersion"])

    inf = k8s.Informer(client, k8s.PODS, resync_seconds=3600,  # type: ignore[arg-type]
                       on_change=lambda key, old, new: seen.append((key, rv(old), rv(new))))
    inf.start()
    assert inf.wait_synced(5)
    deadline = time.time() + 5
    while client.lists < 2 and time.time() < deadline:
        time.sleep(0.01)
    client.release.set()
    inf.stop()
    assert ("ns/a", None, "1") in seen and ("ns/a", "1", "2") in seen
    assert ("ns/b", "1", None) in seen and ("ns/c", None, "5") in seen and ("ns/a", "2", "5") in seen
    assert inf.get("ns/c") is not None and inf.get("ns/b") is None


class _LeaseStore:
    """get/create/replace of one Lease, with resourceVersion checks (what LeaseKeeper calls)."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0

    def get(self, rt: Any, name: str, namespace: str | None = None) -> dict[str, Any]:
        if self.lease is None:
            raise k8s.NotFound(404, "NotFound", name)
        return copy.deepcopy(self.lease)

    def create(self, rt: Any, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        if self.lease is not None:
            raise k8s.Conflict(409, "AlreadyExists", "lease")
        return self._store(body)

    def replace(self, rt: Any, body: dict[str, Any]) -> dict[str, Any]:
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise k8s.Conflict(409, "Conflict", "stale")
        return self._store(body)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)


def test_lease_keeper_judges_another_holder_on_its_own_clock() -> None:
    store, now = _LeaseStore(), [100.0]
    a = k8s.LeaseKeeper(store, "l", "ns", "a", 2, clock=lambda: now[0])  # type: ignore[arg-type]
    b = k8s.LeaseKeeper(store, "l", "ns", "b", 2, clock=lambda: now[0])  # type: ignore[arg-type]
    assert a.try_acquire_or_renew() and a.renewed_at == 100.0
    assert store.lease is not None
    store.lease["spec"]["renewTime"] = "2000-01-01T00:00:00.000000Z"  # a's clock far behind: changes nothing
    assert not b.try_acquire_or_renew() and b.renewed_at is None
    now[0] = 101.9
    assert not b.try_acquire_or_renew()  # 1.9 s of b's clock since it saw that renewal
    now[0] = 102.0
    assert b.try_acquire_or_renew() and store.lease["spec"]["holderIdentity"] == "b"
    assert store.lease["spec"]["leaseTransitions"] == 1
    # a renewal seen later restarts the count: b renews, a (now the contender) waits a full duration
    assert not a.try_acquire_or_renew() and a.renewed_at is None
    now[0] = 103.5
    assert b.try_acquire_or_renew()
    now[0] = 105.4
    assert not a.try_acquire_or_renew()  # first sight of b's new renewal: 2 s from now on a's clock
    now[0] = 107.3
    assert not a.try_acquire_or_renew()
    now[0] = 107.5
    assert a.try_acquire_or_renew()


def test_lease_keeper_writes_its_annotations() -> None:
    store = _LeaseStore()
    keeper = k8s.LeaseKeeper(store, "l", "ns", "n1", 20, annotations=lambda: {"x/eips": "10.6.1.1"})  # type: ignore[arg-type]
    assert keeper.try_acquire_or_renew() and keeper.try_acquire_or_renew()
    assert store.lease is not None and store.lease["metadata"]["annotations"] == {"x/eips": "10.6.1.1"}


def test_lease_keeper_removes_an_annotation_given_as_none() -> None:
    """A running agent drops an earlier release's uninstall confirmation from its Lease (agent/k8s_source.py)."""
    store = _LeaseStore()
    store.lease = {"metadata": {"name": "l", "namespace": "ns", "resourceVersion": "0",
                                "annotations": {"x/uninstalled": "t", "other": "kept"}}, "spec": {}}
    keeper = k8s.LeaseKeeper(store, "l", "ns", "n1", 20, annotations=lambda: {"x/eips": "", "x/uninstalled": None})  # type: ignore[arg-type]
    assert keeper.try_acquire_or_renew()
    assert store.lease["metadata"]["annotations"] == {"other": "kept", "x/eips": ""}
