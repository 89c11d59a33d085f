"""The parts of core/v1 Pods and Namespaces that policy selection reads (pure, stdlib only).

Not our kinds, so they have no `Resource` class: only the metadata a selector looks at and where
the pod runs. The parsers are lenient where the API server is the only writer (label values are
taken as strings) and raise `FieldError` where a shape is wrong, like the model's parsers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from egress_cni.api.errors import FieldError, join
from egress_cni.api.meta import get_map, get_str

FINISHED_PHASES = ("Succeeded", "Failed")


def _labels(meta: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in get_map(meta, "labels", "metadata").items()}


def _metadata(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise FieldError("", raw, "an object must be a JSON/YAML mapping")
    return get_map(raw, "metadata", "")


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    node: str = ""  # spec.nodeName; "" while unscheduled
    phase: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED_PHASES

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> PodInfo:
        meta = _metadata(raw)
        spec = get_map(raw, "spec", "")
        status = get_map(raw, "status", "")
        name = get_str(meta, "name", "metadata")
        if not name:
            raise FieldError(join("metadata", "name"), None, "is required")
        return cls(get_str(meta, "namespace", "metadata") or "default", name, _labels(meta),
                   get_str(spec, "nodeName", "spec"), get_str(status, "phase", "status"))


@dataclass(frozen=True)
class NamespaceInfo:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.name

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> NamespaceInfo:
        meta = _metadata(raw)
        name = get_str(meta, "name", "metadata")
        if not name:
            raise FieldError(join("metadata", "name"), None, "is required")
        return cls(name, _labels(meta))
