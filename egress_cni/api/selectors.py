"""metav1.LabelSelector, evaluated exactly as Kubernetes does.

- `matchLabels` and `matchExpressions` are ANDed.
- An empty selector (`{}`) matches everything; an absent selector (None) matches nothing
  (`metav1.LabelSelectorAsSelector`).
- `In` / `NotIn` need at least one value; `Exists` / `DoesNotExist` take none.
- `NotIn` and `DoesNotExist` match objects that lack the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from egress_cni.api.errors import FieldError, join

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

# Label syntax (k8s.io/apimachinery/pkg/util/validation): an optional DNS-subdomain prefix, a name
# of at most 63 characters; values are at most 63 characters of the same alphabet, or empty.
_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_key_error(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _PREFIX.match(prefix)):
        return "the prefix must be a DNS subdomain (example.com/)"
    if not name or len(name) > 63 or not _NAME.match(name):
        return "must be at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
    return None


def label_value_error(value: str) -> str | None:
    if len(value) > 63 or not _NAME.match(value):
        return "must be empty or at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
    return None


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values  # NotIn


@dataclass(frozen=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    @classmethod
    def parse(cls, raw: Any, path: str) -> LabelSelector:
        if not isinstance(raw, Mapping):
            raise FieldError(path, raw, "must be a label selector object (matchLabels/matchExpressions)")
        unknown = set(raw) - {"matchLabels", "matchExpressions"}
        if unknown:
            raise FieldError(join(path, sorted(unknown)[0]), None, "unknown field; a selector has matchLabels and matchExpressions")
        labels = raw.get("matchLabels") or {}
        if not isinstance(labels, Mapping):
            raise FieldError(join(path, "matchLabels"), labels, "must be a map of label key to value")
        for key, value in labels.items():
            where = join(join(path, "matchLabels"), key)
            if not isinstance(value, str):
                raise FieldError(where, value, "label values must be strings (quote numbers and booleans)")
            problem = label_key_error(key) or label_value_error(value)
            if problem:
                raise FieldError(where, value, problem)
        exprs = raw.get("matchExpressions") or []
        if not isinstance(exprs, list):
            raise FieldError(join(path, "matchExpressions"), exprs, "must be a list")
        reqs = tuple(_parse_requirement(e, join(join(path, "matchExpressions"), i)) for i, e in enumerate(exprs))
        return cls(tuple(sorted(labels.items())), reqs)

    def describe(self) -> str:
        """The selector in kubectl's syntax (`team=a,env in (x,y),!legacy`), quoted; `{}` when empty."""
        verbs = {"In": "in", "NotIn": "notin"}
        parts = [f"{k}={v}" for k, v in self.match_labels] + [
            f"{r.key} {verbs[r.operator]} ({','.join(r.values)})" if r.operator in verbs else
            (r.key if r.operator == "Exists" else f"!{r.key}") for r in self.match_expressions]
        return f'"{",".join(parts)}"' if parts else "{}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [
                {"key": r.key, "operator": r.operator, **({"values": list(r.values)} if r.values else {})}
                for r in self.match_expressions
            ]
        return out


def _parse_requirement(raw: Any, path: str) -> Requirement:
    if not isinstance(raw, Mapping):
        raise FieldError(path, raw, "must be an object with key, operator and values")
    key, op, values = raw.get("key"), raw.get("operator"), raw.get("values") or []
    if not isinstance(key, str):
        raise FieldError(join(path, "key"), key, "is a required string")
    if problem := label_key_error(key):
        raise FieldError(join(path, "key"), key, problem)
    if op not in OPERATORS:
        raise FieldError(join(path, "operator"), op, f"must be one of {', '.join(OPERATORS)}")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise FieldError(join(path, "values"), values, "must be a list of strings")
    if op in ("In", "NotIn") and not values:
        raise FieldError(join(path, "values"), values, f"operator {op} needs at least one value")
    if op in ("Exists", "DoesNotExist") and values:
        raise FieldError(join(path, "values"), values, f"operator {op} takes no values")
    return Requirement(key, op, tuple(values))
