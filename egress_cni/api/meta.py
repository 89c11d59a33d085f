"""Object metadata, conditions and the typed readers the model's parsers share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from egress_cni.api.errors import FieldError, join
from egress_cni.api.names import is_dns_label, is_subdomain
from egress_cni.api.net import IP, AddressError, Cidr, CidrMode, Mac, parse_cidr, parse_ip, parse_mac

Raw = Mapping[str, Any]

# Lists of CIDRs in specs and status: parsed leniently (a bare address is a host prefix, host bits
# are dropped) and remembered as written, so the webhook can deny or warn with the original text
# and an object that bypassed it still reaches controller and agent with a usable meaning.
LENIENT = CidrMode.BARE_IP | CidrMode.HOST_BITS


def get_map(raw: Raw, key: str, path: str, *, required: bool = False) -> Raw:
    value = raw.get(key)
    if value is None:
        if required:
            raise FieldError(join(path, key), None, "is required")
        return {}
    if not isinstance(value, Mapping):
        raise FieldError(join(path, key), value, "must be an object")
    return value


def get_str(raw: Raw, key: str, path: str, default: str = "") -> str:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise FieldError(join(path, key), value, "must be a string")
    return value


def get_bool(raw: Raw, key: str, path: str, default: bool = False) -> bool:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise FieldError(join(path, key), value, "must be true or false")
    return value


def get_int(raw: Raw, key: str, path: str, default: int = 0) -> int:
    value = raw.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(join(path, key), value, "must be an integer")
    return value


def get_str_list(raw: Raw, key: str, path: str) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise FieldError(join(path, key), value, "must be a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise FieldError(join(join(path, key), i), item, "must be a string")
    return tuple(value)


def settle(obj: object, **values: object) -> None:
    """Store coerced field values on a frozen dataclass (its __post_init__), only where they changed."""
    for name, value in values.items():
        if value is not getattr(obj, name):
            object.__setattr__(obj, name, value)


def get_ip(raw: Raw, key: str, path: str, family: int | None = None) -> IP | None:
    """An optional address; "" and absent are None."""
    text = get_str(raw, key, path)
    if not text:
        return None
    try:
        return parse_ip(text, family)
    except AddressError as exc:
        raise FieldError(join(path, key), text, exc.reason) from None


def get_ip_list(raw: Raw, key: str, path: str, family: int | None = None) -> tuple[IP, ...]:
    out = []
    for i, text in enumerate(get_str_list(raw, key, path)):
        try:
            out.append(parse_ip(text, family))
        except AddressError as exc:
            raise FieldError(join(join(path, key), i), text, exc.reason) from None
    return tuple(out)


def get_cidr_list(raw: Raw, key: str, path: str, mode: CidrMode = LENIENT) -> tuple[Cidr, ...]:
    out = []
    for i, text in enumerate(get_str_list(raw, key, path)):
        try:
            out.append(parse_cidr(text.strip(), mode))
        except AddressError as exc:
            raise FieldError(join(join(path, key), i), text, exc.reason) from None
    return tuple(out)


def get_mac(raw: Raw, key: str, path: str) -> Mac | None:
    text = get_str(raw, key, path)
    if not text:
        return None
    try:
        return parse_mac(text)
    except AddressError as exc:
        raise FieldError(join(path, key), text, exc.reason) from None


def texts(values: tuple[Cidr, ...]) -> list[str]:
    """CIDRs as the user wrote them (round trips keep `10.6.1.7/24` as it was)."""
    return [c.given for c in values]


def get_list(raw: Raw, key: str, path: str) -> list[Any]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise FieldError(join(path, key), value, "must be a list")
    return value


def compact(d: dict[str, Any]) -> dict[str, Any]:
    """Drop keys whose value is empty (Go's omitempty); an absent address is None."""
    return {k: v for k, v in d.items() if v not in (None, "", [], {}, ())}


_META_KEYS = (
    "name", "namespace", "generateName", "uid", "resourceVersion", "generation",
    "labels", "annotations", "finalizers", "deletionTimestamp", "ownerReferences",
)


@dataclass(frozen=True)
class ObjectMeta:
    name: str = ""
    namespace: str = ""
    generate_name: str = ""
    uid: str = ""
    resource_version: str = ""
    generation: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    finalizers: tuple[str, ...] = ()
    deletion_timestamp: str = ""
    owner_references: tuple[Mapping[str, Any], ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)  # every other key, kept for round trips

    @classmethod
    def parse(cls, raw: Raw, path: str = "metadata") -> ObjectMeta:
        for key in ("labels", "annotations"):
            for k, v in get_map(raw, key, path).items():
                if not isinstance(v, str):
                    raise FieldError(join(join(path, key), k), v, "must be a string")
        # The API server enforces both on our kinds; checked here too because names reach
        # iptables comments, and objects may come from files (agent/sources.py) that it never saw.
        name, namespace = get_str(raw, "name", path), get_str(raw, "namespace", path)
        if name and not is_subdomain(name):
            raise FieldError(join(path, "name"), name, "must be a DNS subdomain (lowercase letters, digits, '-', '.'; at most 253)")
        if namespace and not is_dns_label(namespace):
            raise FieldError(join(path, "namespace"), namespace, "must be a DNS label (lowercase letters, digits, '-'; at most 63)")
        return cls(
            name=name,
            namespace=namespace,
            generate_name=get_str(raw, "generateName", path),
            uid=get_str(raw, "uid", path),
            resource_version=get_str(raw, "resourceVersion", path),
            generation=get_int(raw, "generation", path),
            labels=dict(get_map(raw, "labels", path)),
            annotations=dict(get_map(raw, "annotations", path)),
            finalizers=get_str_list(raw, "finalizers", path),
            deletion_timestamp=get_str(raw, "deletionTimestamp", path),
            owner_references=tuple(get_list(raw, "ownerReferences", path)),
            extra={k: v for k, v in raw.items() if k not in _META_KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update(compact({
            "name": self.name,
            "namespace": self.namespace,
            "generateName": self.generate_name,
            "uid": self.uid,
            "resourceVersion": self.resource_version,
            "generation": self.generation or None,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "finalizers": list(self.finalizers),
            "deletionTimestamp": self.deletion_timestamp,
            "ownerReferences": [dict(o) for o in self.owner_references],
        }))
        return out

    @property
    def key(self) -> str:
        """`namespace/name`, or `name` for cluster-scoped objects."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class Condition:
    """metav1.Condition."""

    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str = ""
    message: str = ""
    last_transition_time: str = ""
    observed_generation: int = 0

    @classmethod
    def parse(cls, raw: Any, path: str) -> Condition:
        if not isinstance(raw, Mapping):
            raise FieldError(path, raw, "must be an object")
        status = get_str(raw, "status", path)
        if status not in ("True", "False", "Unknown"):
            raise FieldError(join(path, "status"), status, "must be True, False or Unknown")
        return cls(
            type=get_str(raw, "type", path),
            status=status,
            reason=get_str(raw, "reason", path),
            message=get_str(raw, "message", path),
            last_transition_time=get_str(raw, "lastTransitionTime", path),
            observed_generation=get_int(raw, "observedGeneration", path),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": self.last_transition_time,
            **({"observedGeneration": self.observed_generation} if self.observed_generation else {}),
        }


def parse_conditions(raw: Raw, path: str) -> tuple[Condition, ...]:
    return tuple(Condition.parse(c, join(join(path, "conditions"), i)) for i, c in enumerate(get_list(raw, "conditions", path)))
