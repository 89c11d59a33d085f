"""admission.k8s.io/v1 AdmissionRequest / AdmissionResponse, as plain data.

`AdmissionRequest.parse` accepts anything (bodies come from the network) and raises `BadRequest`
with the field that is wrong; responses are built by `allowed`, `denied`, `patched` and `error`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")


class BadRequest(ValueError):
    """The AdmissionReview itself is malformed (not a problem with the reviewed object)."""


@dataclass(frozen=True)
class AdmissionRequest:
    uid: str
    kind: str                        # request.kind.kind, e.g. "EgressGateway"
    operation: str                   # CREATE | UPDATE | DELETE | CONNECT
    name: str
    namespace: str
    obj: Mapping[str, Any] | None    # request.object (None on DELETE)
    old: Mapping[str, Any] | None    # request.oldObject (UPDATE and DELETE)
    dry_run: bool = False

    @classmethod
    def parse(cls, raw: Any) -> AdmissionRequest:
        if not isinstance(raw, Mapping):
            raise BadRequest("request: must be an object")
        uid = raw.get("uid")
        if not isinstance(uid, str) or not uid:
            raise BadRequest("request.uid: must be a non-empty string")
        kind = raw.get("kind")
        kind_name = kind.get("kind") if isinstance(kind, Mapping) else None
        if not isinstance(kind_name, str):
            raise BadRequest("request.kind.kind: must be a string")
        operation = raw.get("operation")
        if operation not in OPERATIONS:
            raise BadRequest(f"request.operation: must be one of {', '.join(OPERATIONS)}")
        obj, old = raw.get("object"), raw.get("oldObject")
        for key, value in (("object", obj), ("oldObject", old)):
            if value is not None and not isinstance(value, Mapping):
                raise BadRequest(f"request.{key}: must be an object or null")
        name, namespace = raw.get("name") or "", raw.get("namespace") or ""
        if not isinstance(name, str) or not isinstance(namespace, str):
            raise BadRequest("request.name and request.namespace: must be strings")
        if operation in ("CREATE", "UPDATE") and obj is None:
            raise BadRequest(f"request.object: required for {operation}")
        return cls(uid, kind_name, str(operation), name, namespace, obj, old, raw.get("dryRun") is True)


@dataclass(frozen=True)
class Denial:
    """One broken rule: where, the offending value, and what would be accepted."""

    rule: str      # stable id, the `reason` label of the denial metric
    path: str
    value: Any
    message: str
    warning: bool = False  # admitted, and the user is told (AdmissionResponse.warnings)

    def text(self) -> str:
        shown = "" if self.value is None else f" (got {_render(self.value)})"
        return f"{self.path}: {self.message}{shown}" if self.path else f"{self.message}{shown}"


def _render(value: Any) -> str:
    try:
        text = json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


# --- JSON Patch ---------------------------------------------------------------------------------


def pointer(*parts: str | int) -> str:
    """RFC 6901 JSON pointer; `~` and `/` inside a key become `~0` and `~1`."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def add(value: Any, *parts: str | int) -> dict[str, Any]:
    return {"op": "add", "path": pointer(*parts), "value": value}


# --- responses ----------------------------------------------------------------------------------


def allowed(uid: str, warnings: Sequence[str] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"uid": uid, "allowed": True, "status": {"code": 200, "message": "", "reason": ""}}
    if warnings:
        out["warnings"] = list(warnings)
    return out


def patched(uid: str, ops: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out = allowed(uid)
    if ops:
        out["patchType"] = "JSONPatch"
        out["patch"] = base64.b64encode(json.dumps(list(ops), separators=(",", ":")).encode()).decode()
    return out


def denied(uid: str, denials: Sequence[Denial]) -> dict[str, Any]:
    message = "; ".join(d.text() for d in denials)
    return {"uid": uid, "allowed": False, "status": {"code": 403, "message": message, "reason": "Forbidden"}}


def error(uid: str, code: int, message: str) -> dict[str, Any]:
    reason = {400: "BadRequest", 500: "InternalError"}.get(code, "Unknown")
    return {"uid": uid, "allowed": False, "status": {"code": code, "message": message, "reason": reason}}


def review_envelope(response: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": dict(response)}
