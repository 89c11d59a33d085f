"""The typed store over a stateful fake informer: each resourceVersion parsed once, frozen models
handed out again, invalid objects kept (never raised), `version` moving only on content changes."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest

from egress_cni.api import API_VERSION
from egress_cni.api.errors import FieldError
from egress_cni.api.model import EgressPolicy, parse_as
from egress_cni.api.workloads import NamespaceInfo, PodInfo
from egress_cni.store import Store, key_of

pytestmark = pytest.mark.unit


class FakeInformer:
    """Keeps objects by key like k8s.Informer; `put` stores a copy, as a watch event brings a new dict."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.synced = False

    def put(self, obj: Mapping[str, Any]) -> None:
        self.objects[key_of(obj)] = copy.deepcopy(dict(obj))

    def delete(self, key: str) -> None:
        del self.objects[key]

    def relist(self) -> None:
        """New dicts with the same resourceVersions (a 410 Gone and a fresh list)."""
        self.objects = copy.deepcopy(self.objects)
        self.synced = True

    def list(self) -> list[dict[str, Any]]:
        return list(self.objects.values())

    def get(self, key: str) -> dict[str, Any] | None:
        return self.objects.get(key)


def policy(name: str, rv: str, *, dest: Any = None, ns: str = "ns1") -> dict[str, Any]:
    spec: dict[str, Any] = {"egressGatewayName": "gw", "appliedTo": {"podSelector": {"matchLabels": {"app": name}}}}
    if dest is not None:
        spec["destSubnet"] = dest
    return {"apiVersion": API_VERSION, "kind": "EgressPolicy",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "generation": 3}, "spec": spec}


class Counting:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, raw: Mapping[str, Any]) -> EgressPolicy:
        self.calls.append(raw["metadata"]["resourceVersion"])
        return parse_as(EgressPolicy, raw)


def test_each_resource_version_is_parsed_once_and_the_model_is_shared() -> None:
    informer, parse = FakeInformer(), Counting()
    store = Store(informer, parse)
    informer.put(policy("b", "1"))
    informer.put(policy("a", "2"))
    first = store.items()
    assert [p.metadata.name for p in first] == ["a", "b"]  # sorted by key
    assert store.items() is first and store.get("ns1/a") is first[0]
    informer.relist()  # new dicts, same versions: nothing parsed again
    assert store.items() == first and store.items()[0] is first[0]
    assert sorted(parse.calls) == ["1", "2"]
    informer.put(policy("a", "5"))
    assert store.get("ns1/a") is not first[0] and sorted(parse.calls) == ["1", "2", "5"]
    assert store.items()[1] is first[1] and len(parse.calls) == 3


def test_version_moves_only_when_the_parsed_content_changes() -> None:
    informer = FakeInformer()
    store = Store(informer, Counting())
    v0 = store.version
    informer.put(policy("a", "1"))
    v1 = store.version
    assert v1 > v0 and store.version == v1
    informer.relist()
    assert store.version == v1
    informer.put(policy("a", "2"))
    assert store.get("ns1/a") is not None
    v2 = store.version
    assert v2 > v1
    informer.delete("ns1/a")
    assert store.get("ns1/a") is None and store.version > v2 and store.items() == ()


def test_an_invalid_object_is_kept_beside_the_valid_ones_never_raised() -> None:
    informer = FakeInformer()
    store = Store(informer, Counting())
    informer.put(policy("good", "1"))
    informer.put(policy("bad", "7", dest=["10.0.0.0/8", 5]))
    assert [p.metadata.name for p in store.items()] == ["good"]
    assert store.get("ns1/bad") is None
    (bad,) = store.invalid()
    assert (bad.key, bad.kind, bad.name, bad.namespace, bad.resource_version, bad.generation) == \
        ("ns1/bad", "EgressPolicy", "bad", "ns1", "7", 3)
    assert isinstance(bad.error, FieldError) and bad.error.path == "spec.destSubnet[1]"
    informer.put(policy("bad", "8"))  # fixed
    assert store.invalid() == () and [p.metadata.name for p in store.items()] == ["bad", "good"]


def test_malformed_metadata_is_reported_with_what_can_be_read() -> None:
    informer = FakeInformer()
    store = Store(informer, Counting())
    informer.objects["x"] = {"apiVersion": API_VERSION, "kind": "EgressPolicy",
                             "metadata": {"name": "x", "resourceVersion": "4", "generation": "two", "labels": []}}
    (bad,) = store.invalid()
    assert (bad.key, bad.name, bad.generation) == ("x", "x", 0) and bad.error.path.startswith("metadata")


def test_synced_follows_the_informer() -> None:
    informer = FakeInformer()
    store = Store(informer, Counting())
    assert not store.synced
    informer.relist()
    assert store.synced


def test_objects_without_resource_version_compare_by_content() -> None:
    """The YAML source has no resourceVersions: an unchanged object is not parsed again."""
    informer, parse = FakeInformer(), Counting()
    store = Store(informer, parse)
    informer.put(policy("a", ""))
    store.items()
    informer.relist()
    store.items()
    assert parse.calls == [""]
    informer.put(policy("a", "", dest=["10.0.0.0/8"]))
    assert store.items()[0].spec.dest_subnet and parse.calls == ["", ""]


def test_a_parse_that_returns_none_ignores_the_object() -> None:
    informer = FakeInformer()
    store = Store(informer, lambda raw: p if not (p := PodInfo.parse(raw)).finished else None)
    informer.put({"kind": "Pod", "metadata": {"name": "done", "namespace": "ns1"}, "status": {"phase": "Succeeded"}})
    informer.put({"kind": "Pod", "metadata": {"name": "web", "namespace": "ns1", "labels": {"app": "web"}},
                  "spec": {"nodeName": "n1"}})
    assert [p.key for p in store.items()] == ["ns1/web"] and store.invalid() == ()
    assert store.items()[0].labels == {"app": "web"} and store.items()[0].node == "n1"


def test_pods_and_namespaces_have_typed_views() -> None:
    pod = PodInfo.parse({"metadata": {"name": "p", "labels": {"tier": 1}}})
    assert (pod.key, pod.labels, pod.node, pod.finished) == ("default/p", {"tier": "1"}, "", False)
    assert NamespaceInfo.parse({"metadata": {"name": "ns1", "labels": {"team": "a"}}}).labels == {"team": "a"}
    with pytest.raises(FieldError) as err:
        NamespaceInfo.parse({"metadata": {"name": "ns1", "labels": ["a"]}})
    assert err.value.path == "metadata.labels"
    with pytest.raises(FieldError):
        PodInfo.parse({"metadata": {}})
