"""Read-your-writes view over the informers.

An informer learns about the controller's own writes a little later, through its watch. Until it
has, the next reconcile would work from the old object (and, for endpoint slices created with
generateName, create a second slice). `Overlay` remembers what each write returned and serves it
in place of the cached object until the informer has caught up (same or newer resourceVersion),
or for at most `ttl` seconds.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from egress_cni.k8s import object_key


class Source(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def list(self) -> list[dict[str, Any]]: ...


def _version(obj: dict[str, Any] | None) -> int:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


class Overlay:
    def __init__(self, source: Source, ttl: float = 30.0) -> None:
        self._source = source
        self._ttl = ttl
        self._written: dict[str, tuple[dict[str, Any] | None, int, float]] = {}  # key -> (obj|None=deleted, rv, at)
        self._lock = threading.Lock()

    def wrote(self, obj: dict[str, Any]) -> None:
        with self._lock:
            self._written[object_key(obj)] = (obj, _version(obj), time.monotonic())

    def deleted(self, key: str, last_version: int = 0) -> None:
        with self._lock:
            self._written[key] = (None, last_version, time.monotonic())

    def _resolve(self, key: str, cached: dict[str, Any] | None) -> tuple[bool, dict[str, Any] | None]:
        """(use_overlay, object) for one key; drops overlay entries the informer has caught up with."""
        entry = self._written.get(key)
        if entry is None:
            return False, cached
        obj, version, at = entry
        caught_up = (cached is None) if obj is None else (cached is not None and _version(cached) >= version)
        if caught_up or time.monotonic() - at > self._ttl:
            del self._written[key]
            return False, cached
        return True, obj

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._resolve(key, self._source.get(key))[1]

    def list(self) -> list[dict[str, Any]]:
        cached = {object_key(o): o for o in self._source.list()}
        with self._lock:
            keys = set(cached) | set(self._written)
            out = []
            for key in keys:
                obj = self._resolve(key, cached.get(key))[1]
                if obj is not None:
                    out.append(obj)
            return out
