"""k8s.py against the real API server: verbs, error types with the server's message, the
Informer (list, watch, delete), LeaseKeeper contention and events."""

from __future__ import annotations

import time
from typing import Any

import pytest

from egress_cni import k8s
from tests.controller.cluster import NAMESPACE, wait_for

pytestmark = pytest.mark.apiserver


@pytest.fixture
def client(control_plane: Any) -> k8s.Client:
    return k8s.Client.from_kubeconfig(str(control_plane.kubeconfig))


def test_verbs_and_errors(client: k8s.Client, namespace: str) -> None:
    # labelled: kube-controller-manager, when a test of the session runs it, publishes kube-root-ca.crt here too
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"test": "verbs"}}, "data": {"a": "1"}}
    cm = k8s.ResourceType("", "v1", "configmaps", "ConfigMap", True)
    with pytest.raises(k8s.NotFound, match="not found"):
        client.get(cm, "c", namespace)
    assert client.create(cm, body, namespace=namespace, dry_run=True)["data"] == {"a": "1"}
    created = client.create(cm, body, namespace=namespace)
    with pytest.raises(k8s.Conflict) as exists:
        client.create(cm, body, namespace=namespace)
    assert exists.value.reason == "AlreadyExists"
    client.patch(cm, "c", {"data": {"b": "2"}}, namespace)
    with pytest.raises(k8s.Conflict, match="modified"):
        client.replace(cm, created)  # stale resourceVersion
    items, version = client.list(cm, namespace, label_selector="test=verbs")
    assert [i["metadata"]["name"] for i in items] == ["c"] and version and items[0]["kind"] == "ConfigMap"
    with pytest.raises(k8s.Invalid, match=r"metadata\.name"):
        client.create(cm, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}}, namespace=namespace)
    client.delete(cm, "c", namespace)
    with pytest.raises(k8s.NotFound):
        client.delete(cm, "c", namespace)


def test_informer_sees_add_update_delete(client: k8s.Client, namespace: str) -> None:
    cm = k8s.ResourceType("", "v1", "configmaps", "ConfigMap", True)
    seen: list[tuple[str, bool, bool]] = []
    informer = k8s.Informer(client, cm, namespace=namespace, on_change=lambda k, o, n: seen.append((k, o is None, n is None)))
    informer.start()
    try:
        assert informer.wait_synced(10)
        client.create(cm, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}, namespace=namespace)
        client.patch(cm, "x", {"data": {"k": "v"}}, namespace)
        client.delete(cm, "x", namespace)
        key = f"{namespace}/x"
        wait_for("three events", lambda: len([s for s in seen if s[0] == key]) >= 3, timeout=10)
        assert [s for s in seen if s[0] == key] == [(key, True, False), (key, False, False), (key, False, True)]
        assert informer.get(key) is None
    finally:
        informer.stop()


def test_lease_keeper_contention_expiry_and_release(client: k8s.Client) -> None:
    name = f"k8s-test-{time.time_ns()}"
    a = k8s.LeaseKeeper(client, name, NAMESPACE, "a", 1)
    b = k8s.LeaseKeeper(client, name, NAMESPACE, "b", 1)
    try:
        assert a.try_acquire_or_renew() and not b.try_acquire_or_renew() and a.try_acquire_or_renew()
        wait_for("lease expiry", lambda: b.try_acquire_or_renew(), timeout=10)
        assert not a.try_acquire_or_renew()
        b.release()
        assert a.try_acquire_or_renew()
        assert client.get(k8s.LEASES, name, NAMESPACE)["spec"]["leaseTransitions"] == 2
    finally:
        client.delete(k8s.LEASES, name, NAMESPACE)


def test_emit_event(client: k8s.Client, namespace: str) -> None:
    involved = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "namespace": namespace, "uid": "u"}}
    client.emit_event(involved, "Tested", "hello")
    events, _ = client.list(k8s.EVENTS, namespace, field_selector=f"involvedObject.name={namespace}")
    assert [(e["reason"], e["message"]) for e in events] == [("Tested", "hello")]
