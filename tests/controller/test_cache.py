"""Read-your-writes overlay and the dirty set (pure, no API server)."""

from __future__ import annotations

from typing import Any

import pytest

from egress_cni.controller.cache import Overlay
from egress_cni.controller.watchers import Dirty

pytestmark = pytest.mark.unit


def obj(name: str, rv: int, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": str(rv)}, **extra}


class Store:
    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.items.get(key)

    def list(self) -> list[dict[str, Any]]:
        return list(self.items.values())


def test_overlay_serves_writes_until_the_informer_catches_up() -> None:
    store = Store()
    store.items["a"] = obj("a", 1, v="old")
    overlay = Overlay(store)
    overlay.wrote(obj("a", 5, v="mine"))
    overlay.wrote(obj("b", 6, v="created"))
    assert overlay.get("a")["v"] == "mine"  # type: ignore[index]
    assert sorted(o["metadata"]["name"] for o in overlay.list()) == ["a", "b"]
    store.items["a"] = obj("a", 7, v="someone else, later")
    assert overlay.get("a")["v"] == "someone else, later"  # type: ignore[index]
    overlay.deleted("a")
    assert overlay.get("a") is None and [o["metadata"]["name"] for o in overlay.list()] == ["b"]
    del store.items["a"]
    assert overlay.get("a") is None


def test_an_object_deleted_after_our_write_is_not_served_as_a_ghost() -> None:
    store = Store()
    store.items["p"] = obj("p", 1)
    overlay = Overlay(store)
    overlay.wrote(obj("p", 4, status="ours"))  # a status write; the watch has not delivered it yet
    del store.items["p"]  # the user deleted the policy: the informer dropped it
    assert overlay.get("p") is None and overlay.list() == []


def test_overlay_entries_expire() -> None:
    store = Store()
    overlay = Overlay(store, ttl=0.0)
    overlay.wrote(obj("x", 3))
    assert overlay.get("x") is None


def test_dirty_take_resets() -> None:
    dirty = Dirty()
    dirty.take()
    assert dirty.depth() == 0
    dirty.mark(policy=("egresspolicies", "ns/p"), namespace="ns")
    assert dirty.depth() == 2
    everything, all_slices, policies, namespaces = dirty.take()
    assert not everything and not all_slices and policies == {("egresspolicies", "ns/p")} and namespaces == {"ns"}
    assert dirty.depth() == 0


def test_status_only_changes_are_recognised() -> None:
    from egress_cni.controller.watchers import status_only_change

    old = {"kind": "EgressPolicy", "metadata": {"name": "p", "resourceVersion": "1"}, "spec": {"a": 1}, "status": {}}
    written = {**old, "metadata": {"name": "p", "resourceVersion": "2"}, "status": {"node": "n1"}}
    edited = {**written, "spec": {"a": 2}}
    assert status_only_change(old, written)
    assert not status_only_change(written, edited)
    assert not status_only_change(None, old) and not status_only_change(old, None)
    assert not status_only_change(old, old)  # the informer's resync replay
