"""Names derived from object names, valid at every legal length (pure).

A policy name is a DNS subdomain (up to 253 characters) but becomes a label value (at most 63) on
its endpoint slices and the stem of their generated names (the API server keeps 58 characters of a
`generateName`). A name that fits is used as it is, so the common case stays what the reference
writes; a longer one keeps its head and gets a hash of the whole, so two names never share a value.
Readers never parse the label back: a slice's policy is its controller owner reference.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from egress_cni.api import GROUP, limits

LABEL_POLICY_NAME = "spidernet.io/policy-name"  # on a policy's endpoint slices: policy_label_value(name)
# The chart's pre-delete hook (controller/uninstall.py) and the agents (agent/uninstall.py): its token on
# EgressClusterInfo `default`, and each agent's confirmation of that token on its own Lease.
ANNOTATION_UNINSTALL = f"{GROUP}/uninstall"
ANNOTATION_UNINSTALLED = f"{GROUP}/uninstalled"
LABEL_VALUE_MAX = limits.LABEL_VALUE
GENERATE_NAME_MAX = 58  # what the API server keeps of a generateName before its 5 random characters
DIGEST_LEN = 10

_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_SUBDOMAIN_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = re.compile(rf"{_SUBDOMAIN_LABEL}(?:\.{_SUBDOMAIN_LABEL})*")
_DNS_LABEL = re.compile(_SUBDOMAIN_LABEL)
SUBDOMAIN_MAX = limits.NAME


def is_label_value(text: str) -> bool:
    return len(text) <= LABEL_VALUE_MAX and _LABEL_VALUE.fullmatch(text) is not None


def is_subdomain(text: str) -> bool:
    return len(text) <= SUBDOMAIN_MAX and _SUBDOMAIN.fullmatch(text) is not None


def is_dns_label(text: str) -> bool:
    return len(text) <= limits.NAMESPACE and _DNS_LABEL.fullmatch(text) is not None


def bounded(name: str, limit: int) -> str:
    """`name` if it is a label value of at most `limit` characters, else `<head>-<hash>` of exactly
    that many or fewer, made of DNS-subdomain characters and ending in one (also a valid name stem)."""
    if len(name) <= limit and is_label_value(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:DIGEST_LEN]
    head = re.sub(r"[^a-z0-9.-]", "-", name.lower())[:limit - DIGEST_LEN - 1].strip(".-")
    head = re.sub(r"\.(?=[.-])|-(?=\.)", "", head)  # no empty or dash-edged DNS label at the cut
    return f"{head}-{digest}" if head else digest


def policy_label_value(name: str) -> str:
    """The `spidernet.io/policy-name` label value of a policy's slices (LABEL_POLICY_NAME)."""
    return bounded(name, LABEL_VALUE_MAX)


def slice_generate_name(name: str) -> str:
    """`generateName` of a policy's slices: `<name>-` (the reference's) when the API server keeps it whole."""
    return bounded(name, GENERATE_NAME_MAX - 1) + "-"


def controller_owner(owner_references: Iterable[Any], kind: str) -> str:
    """Name of the controller owner of `kind` in our API group, "" if there is none."""
    for ref in owner_references:
        if (isinstance(ref, Mapping) and ref.get("kind") == kind and ref.get("controller") is True
                and str(ref.get("apiVersion", "")).partition("/")[0] == GROUP and isinstance(ref.get("name"), str)):
            return str(ref["name"])
    return ""


def slice_policy(owner_references: Iterable[Any], labels: Mapping[str, Any], policy_kind: str) -> str:
    """The policy a slice belongs to: its controller owner; a slice without one (written by other
    tools) falls back to the label, which is the name itself whenever it fits."""
    owner = controller_owner(owner_references, policy_kind)
    if owner:
        return owner
    value = labels.get(LABEL_POLICY_NAME, "")
    return value if isinstance(value, str) else ""
