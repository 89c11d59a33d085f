"""The informer-fed view: watch events become parsed objects; a cache miss on a gateway reads through."""

from __future__ import annotations

from typing import Any

import pytest

from tests.webhook.builders import gateway, policy
from webhook.view import InformerView, MemoryView

pytestmark = pytest.mark.unit


class FakeInformer:
    def __init__(self) -> None:
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def wait_synced(self, timeout: float) -> bool:
        return self.started

    @property
    def synced(self) -> bool:
        return self.started

    failing = False

    @property
    def healthy(self) -> bool:
        return self.started and not self.failing


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    """List items may come without apiVersion/kind."""
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}


def test_events_update_the_view() -> None:
    view = InformerView()
    informer = FakeInformer()
    view.add_informer(informer)
    assert not view.synced and not view.healthy
    view.start()
    assert view.synced and view.wait_synced(1) and view.healthy
    informer.failing = True  # the watch broke: readiness drops, the cache keeps serving
    assert view.synced and not view.healthy
    informer.failing = False
    view.on_change("EgressGateway")("default", None, strip(gateway(ipv4=["10.0.0.1"])))
    view.on_change("EgressPolicy")("ns/p", None, strip(policy("p", "ns")))
    view.on_change("EgressClusterPolicy")("cp", None, strip(policy("cp", cluster=True)))
    view.on_change("Namespace")("ns", None, {"metadata": {"name": "ns", "labels": {"team": "a"}}})
    assert view.gateway("default") is not None and [g.metadata.name for g in view.gateways()] == ["default"]
    assert {p.metadata.key for p in view.policies()} == {"ns/p", "cp"}
    assert [p.metadata.key for p in view.policies_in("ns")] == ["ns/p"] and [p.metadata.key for p in view.policies_in("")] == ["cp"]
    assert view.namespace_labels("ns") == {"team": "a"}
    view.on_change("EgressPolicy")("ns/p", strip(policy("p", "ns")), None)
    view.on_change("Namespace")("ns", {"metadata": {"name": "ns"}}, None)
    assert {p.metadata.key for p in view.policies()} == {"cp"} and view.namespace_labels("ns") is None
    view.stop()
    assert informer.stopped


def test_unparsable_objects_are_ignored() -> None:
    view = InformerView()
    bad = gateway(ipv4=["10.0.0.1"])
    bad["spec"]["clusterDefault"] = "yes"
    view.on_change("EgressGateway")("default", None, bad)
    assert view.gateways() == ()


def test_gateway_cache_miss_reads_through_once() -> None:
    calls: list[str] = []

    def fetch(name: str) -> dict[str, Any]:
        calls.append(name)
        if name != "fresh":
            raise LookupError(name)
        return gateway("fresh", ipv4=["10.0.0.9"])

    view = InformerView(fallback_get=fetch)
    assert view.gateway("fresh") is not None and view.gateway("fresh") is not None
    assert view.gateway("missing") is None
    assert calls == ["fresh", "missing"]


def test_each_resource_version_is_parsed_once_and_invalid_objects_are_kept_aside() -> None:
    view = InformerView()
    first = strip(policy("p", "ns"))
    first["metadata"]["resourceVersion"] = "7"
    view.on_change("EgressPolicy")("ns/p", None, first)
    parsed = view.policies()[0]
    again = {**first, "metadata": dict(first["metadata"])}  # a relist: a new dict, the same resourceVersion
    view.on_change("EgressPolicy")("ns/p", first, again)
    assert view.policies()[0] is parsed
    bad = strip(gateway(ipv4=["10.0.0.9-10.0.0.1"]))  # reversed range: bypassed the webhook
    view.on_change("EgressGateway")("default", None, bad)
    assert view.gateway("default") is None
    assert [i.error.path for i in view.gateway_store.invalid()] == ["spec.ippools.ipv4[0]"]


def test_both_views_index_policies_by_namespace_and_by_address() -> None:
    objects = [policy("b", "ns2", egress_ip={"ipv4": "10.0.0.5"}), policy("a", "ns1", status_eip={"ipv4": "10.0.0.5"}),
               policy("c", "ns1", egress_ip={"ipv6": "fd00::5"}), policy("cp", cluster=True, egress_ip={"ipv4": "10.0.0.9"})]
    informed = InformerView()
    for obj in objects:
        kind, key = obj["kind"], obj["metadata"].get("namespace", "") + "/" + obj["metadata"]["name"]
        informed.on_change(kind)(key.lstrip("/"), None, strip(obj))
    for view in (MemoryView.of(objects), informed):
        assert list(view.policy_namespaces()) == ["ns1", "ns2"]  # the order policies() lists them in
        assert [p.metadata.key for p in view.policies_naming("10.0.0.5")] == ["ns1/a", "ns2/b"]  # spec or status
        assert [p.metadata.key for p in view.policies_naming("fd00::5")] == ["ns1/c"]
        assert [p.metadata.key for p in view.policies_naming("10.0.0.9")] == ["cp"] and view.policies_naming("10.0.0.1") == ()
        view_keys = [p.metadata.key for p in view.policies()]
        assert view_keys == ["cp", "ns1/a", "ns1/c", "ns2/b"]


def test_memory_view_takes_many_objects_at_once() -> None:
    view = MemoryView.of([policy(f"p{i}", f"ns{i % 3}") for i in range(30)])
    assert len(view.policies()) == 30 and [len(view.policies_in(f"ns{n}")) for n in range(3)] == [10, 10, 10]
