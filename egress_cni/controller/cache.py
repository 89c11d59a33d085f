"""Read-your-writes view over the informers.

An informer learns about the controller's own writes a little later, through its watch. Until it
has, the next reconcile would work from the old object (and, for endpoint slices created with
generateName, create a second slice). `Overlay` remembers what each write returned and serves it
in place of the cached object until the informer has caught up (same or newer resourceVersion),
or for at most `ttl` seconds. An object the informer held when we wrote it and no longer holds has
been deleted since: its absence is the informer catching up, not the write still being on its way
(a ghost would keep, say, a deleted policy holding its gateway's finalizer for `ttl`).
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
        # key -> (obj|None=deleted, rv, at, whether the informer held the object when we wrote it)
        self._written: dict[str, tuple[dict[str, Any] | None, int, float, bool]] = {}
        self._lock = threading.Lock()

    def wrote(self, obj: dict[str, Any]) -> None:
        key = object_key(obj)
        existed = self._source.get(key) is not None
        with self._lock:
            self._written[key] = (obj, _version(obj), time.monotonic(), existed)

    def deleted(self, key: str, last_version: int = 0) -> None:
        with self._lock:
            self._written[key] = (None, last_version, time.monotonic(), True)

    def _resolve(self, key: str, cached: dict[str, Any] | None) -> tuple[bool, dict[str, Any] | None]:
        """(use_overlay, object) for one key; drops overlay entries the informer has caught up with."""
        entry = self._written.get(key)
        if entry is None:
            return False, cached
        obj, version, at, existed = entry
        if obj is None:
            caught_up = cached is None
        else:
            caught_up = (cached is None and existed) or (cached is not None and _version(cached) >= version)
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
