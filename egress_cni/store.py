"""Typed stores at the Kubernetes edge: an informer's raw objects, parsed once, handed out frozen.

A `Store` wraps one informer (`k8s.Informer` in production, any `Listing` in tests) and a parse
function. Each (key, resourceVersion) is parsed once: asking again returns the same frozen model,
so a consumer that re-reads the whole store on every change pays for a dict lookup per object, not
for a parse. An object that fails to parse is kept as an `Invalid` (with the `FieldError` naming the
field) and reported in `invalid()`; it never raises out of the store, so one bad object cannot stop
a pass over the others.

The store follows its informer lazily: every read compares the informer's current objects with
what it parsed before (by identity first, then by resourceVersion), so it needs no callback of its
own and cannot miss an event. `version` counts the changes it has seen; a consumer caches whatever
it derives from `items()` under that number.

A store can instead be fed by events (`record`, e.g. as an informer's `on_change`): it then follows
those and never rescans its listing, so a read costs a lookup whatever the number of objects (the
webhook reads its stores several times per admission review).

A parse function may return None for an object that is valid but of no interest (a finished pod):
it is then neither an item nor invalid.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from egress_cni.api.errors import FieldError

log = logging.getLogger(__name__)

R = TypeVar("R")


class Listing(Protocol):
    """What a store needs of an informer (`k8s.Informer` has it)."""

    @property
    def synced(self) -> bool: ...
    def list(self) -> Sequence[Mapping[str, Any]]: ...
    def get(self, key: str) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True)
class Invalid:
    """An object that failed to parse: enough to name it in a condition or an Event."""

    key: str  # informer key ("ns/name" or "name")
    kind: str
    name: str
    namespace: str
    resource_version: str
    generation: int
    error: FieldError  # names the field path


@dataclass(frozen=True)
class _Entry(Generic[R]):
    raw: Mapping[str, Any]  # kept so that identity is a valid cache check (the id cannot be reused)
    resource_version: str
    value: R | None
    invalid: Invalid | None


def _meta(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = raw.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def key_of(raw: Mapping[str, Any]) -> str:
    """The informer's key: `namespace/name`, or `name` for cluster-scoped objects."""
    meta = _meta(raw)
    ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    return f"{ns}/{name}" if ns else name


def invalid_of(key: str, raw: Mapping[str, Any], error: FieldError) -> Invalid:
    """The identity of a malformed object, read leniently (its metadata may be what is malformed)."""
    meta = _meta(raw)
    generation = meta.get("generation")
    return Invalid(key, str(raw.get("kind") or ""), str(meta.get("name") or ""), str(meta.get("namespace") or ""),
                   str(meta.get("resourceVersion") or ""),
                   generation if isinstance(generation, int) and not isinstance(generation, bool) else 0, error)


class Store(Generic[R]):
    """Frozen models of one informer's objects; thread-safe."""

    def __init__(self, informer: Listing, parse: Callable[[Mapping[str, Any]], R | None]) -> None:
        self._informer = informer
        self._parse = parse
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry[R]] = {}
        self._by_id: dict[int, tuple[str, _Entry[R]]] = {}
        self._version = 0
        self._items: tuple[R, ...] | None = None
        self._invalid: tuple[Invalid, ...] | None = None
        self._pushed = False  # fed by record(): the entries are the truth, the listing only says `synced`

    @property
    def synced(self) -> bool:
        """The informer has listed once."""
        return self._informer.synced

    @property
    def version(self) -> int:
        """Increments whenever the parsed content changes."""
        with self._lock:
            self._refresh()
            return self._version

    def record(self, key: str, raw: Mapping[str, Any] | None) -> None:
        """One event: `raw` added or changed under `key`, or deleted (None). From the first event on,
        the store follows its events instead of rescanning the listing."""
        with self._lock:
            self._pushed = True
            old = self._entries.get(key)
            if raw is None:
                if old is not None:
                    self._drop(key, old)
                    self._changed()
                return
            entry, changed = self._entry(key, raw, old)
            self._entries[key] = entry
            if changed:
                self._changed()

    def get(self, key: str) -> R | None:
        """The valid object under `key`, None if absent, invalid or ignored (O(1))."""
        if self._pushed:
            with self._lock:
                found = self._entries.get(key)
            return found.value if found is not None else None
        raw = self._informer.get(key)
        with self._lock:
            old = self._entries.get(key)
            if raw is None:
                if old is not None:
                    self._drop(key, old)
                    self._changed()
                return None
            entry, changed = self._entry(key, raw, old)
            if entry is not old:
                if old is not None:
                    self._by_id.pop(id(old.raw), None)
                self._entries[key] = entry
                self._by_id[id(raw)] = (key, entry)
            if changed:
                self._changed()
            return entry.value

    def items(self) -> tuple[R, ...]:
        """Valid objects, sorted by key."""
        with self._lock:
            self._refresh()
            if self._items is None:
                self._items = tuple(e.value for _, e in sorted(self._entries.items()) if e.value is not None)
            return self._items

    def invalid(self) -> tuple[Invalid, ...]:
        """Objects that failed to parse, sorted by key."""
        with self._lock:
            self._refresh()
            if self._invalid is None:
                self._invalid = tuple(e.invalid for _, e in sorted(self._entries.items()) if e.invalid is not None)
            return self._invalid

    # --- under the lock -----------------------------------------------------------------------

    def _entry(self, key: str, raw: Mapping[str, Any], old: _Entry[R] | None) -> tuple[_Entry[R], bool]:
        """The entry for `raw` and whether its content differs from `old`'s (parsed at most once)."""
        rv = str(_meta(raw).get("resourceVersion") or "")
        if old is not None:
            if old.raw is raw:
                return old, False
            if (rv and old.resource_version == rv) or (not rv and old.raw == raw):
                return _Entry(raw, rv, old.value, old.invalid), False  # same content, a new dict (a relist)
        try:
            value = self._parse(raw)
        except FieldError as exc:
            bad = invalid_of(key, raw, exc)
            log.warning("skipping invalid object", extra={"kind": bad.kind, "key": key, "field": exc.path,
                                                          "error": str(exc)})
            return _Entry(raw, rv, None, bad), True
        return _Entry(raw, rv, value, None), True

    def _refresh(self) -> None:
        if self._pushed:
            return
        fresh: dict[str, _Entry[R]] = {}
        by_id: dict[int, tuple[str, _Entry[R]]] = {}
        changed = False
        for raw in self._informer.list():
            hit = self._by_id.get(id(raw))
            if hit is not None and hit[1].raw is raw:
                key, entry = hit  # the very object parsed before: no key, no parse
            else:
                key = key_of(raw)
                entry, differs = self._entry(key, raw, self._entries.get(key))
                changed = changed or differs
            fresh[key] = entry
            by_id[id(raw)] = (key, entry)
        if changed or fresh.keys() != self._entries.keys():
            self._changed()
        self._entries, self._by_id = fresh, by_id

    def _drop(self, key: str, entry: _Entry[R]) -> None:
        del self._entries[key]
        self._by_id.pop(id(entry.raw), None)

    def _changed(self) -> None:
        self._version += 1
        self._items = self._invalid = None
