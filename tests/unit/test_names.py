"""Names derived from policy names (api/names.py): a valid label value and a valid slice name at
every legal length, the plain name whenever it fits, and a slice's policy read from its owner."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_cni.api.model import EgressClusterEndpointSlice, EgressEndpointSlice
from egress_cni.api.names import (
    bounded,
    is_label_value,
    is_subdomain,
    policy_label_value,
    slice_generate_name,
    slice_policy,
)

pytestmark = pytest.mark.unit

_LABEL = st.from_regex(re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"), fullmatch=True)
SUBDOMAINS = st.lists(_LABEL, min_size=1, max_size=8).map(".".join).filter(lambda n: len(n) <= 253)


def long_name(length: int) -> str:
    """A legal DNS subdomain of exactly `length` characters, with dots and dashes near every cut."""
    parts, out = ["a-b", "c.d", "e1"], ""
    while len(out) < length:
        out += parts[len(out) % 3]
    out = out[:length]
    return out.rstrip(".-") + "z" * (length - len(out.rstrip(".-")))


@pytest.mark.parametrize("length", [1, 57, 58, 62, 63, 64, 100, 200, 252, 253])
def test_every_legal_length_gives_a_valid_label_and_slice_name(length: int) -> None:
    name = long_name(length)
    assert is_subdomain(name) and len(name) == length
    label = policy_label_value(name)
    assert is_label_value(label), label
    generated = slice_generate_name(name) + "x7k2q"  # the API server's 5 random characters
    assert is_subdomain(generated) and len(generated) <= 63, generated


@given(SUBDOMAINS)
def test_any_subdomain_gives_valid_values(name: str) -> None:
    assert is_label_value(policy_label_value(name))
    assert is_subdomain(slice_generate_name(name) + "abcde")


def test_a_name_that_fits_is_kept_as_the_reference_writes_it() -> None:
    assert policy_label_value("web") == "web"
    assert policy_label_value("a" * 63) == "a" * 63
    assert slice_generate_name("web") == "web-"
    assert slice_generate_name("a" * 57) == "a" * 57 + "-"


def test_a_long_name_keeps_its_head_and_a_hash_of_the_whole() -> None:
    a, b = "p" * 70 + "-one", "p" * 70 + "-two"
    assert policy_label_value(a) != policy_label_value(b)  # same head, different names
    assert policy_label_value(a).startswith("p" * 52 + "-") and len(policy_label_value(a)) == 63
    assert policy_label_value(a) == policy_label_value(a)  # deterministic
    assert len(slice_generate_name(a)) == 58


def test_a_cut_never_ends_a_dns_label_with_a_dot_or_dash() -> None:
    for cut in range(40, 60):
        name = "a" * cut + ".-" + "b" * 200
        value = bounded(name[:253].rstrip(".-"), 63)
        assert is_label_value(value) and is_subdomain(value), value


OWNER = {"apiVersion": "egressgateway.spidernet.io/v1beta1", "kind": "EgressPolicy", "name": "p" * 253,
         "uid": "u1", "controller": True}


def test_a_slice_belongs_to_its_controller_owner_not_to_its_label() -> None:
    labels = {"spidernet.io/policy-name": policy_label_value("p" * 253)}
    assert slice_policy([OWNER], labels, "EgressPolicy") == "p" * 253
    assert slice_policy([OWNER], labels, "EgressClusterPolicy") == labels["spidernet.io/policy-name"]  # other kind: not the owner
    assert slice_policy([{**OWNER, "controller": False}], {}, "EgressPolicy") == ""
    assert slice_policy([{**OWNER, "apiVersion": "other.io/v1"}], {}, "EgressPolicy") == ""
    assert slice_policy([], {"spidernet.io/policy-name": "web"}, "EgressPolicy") == "web"  # written by other tools


def test_the_model_reads_the_owner() -> None:
    raw = {"apiVersion": "egressgateway.spidernet.io/v1beta1", "kind": "EgressEndpointSlice",
           "metadata": {"name": "s-1", "namespace": "default", "ownerReferences": [OWNER],
                        "labels": {"spidernet.io/policy-name": policy_label_value("p" * 253)}}}
    assert EgressEndpointSlice.parse(raw).policy_name == "p" * 253
    cluster = {**raw, "kind": "EgressClusterEndpointSlice",
               "metadata": {"name": "s-1", "ownerReferences": [{**OWNER, "kind": "EgressClusterPolicy"}]}}
    assert EgressClusterEndpointSlice.parse(cluster).policy_name == "p" * 253
