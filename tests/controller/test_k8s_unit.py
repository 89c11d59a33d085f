"""k8s.py pieces that need no API server: error mapping, paths, lease freshness, the Informer loop."""

from __future__ import annotations

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
