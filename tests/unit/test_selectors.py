"""Label selectors behave exactly like metav1.LabelSelectorAsSelector."""

from __future__ import annotations

import pytest

from egress_cni.api.errors import FieldError
from egress_cni.api.selectors import LabelSelector

pytestmark = pytest.mark.unit

LABELS = {"app": "web", "tier": "front", "env": "prod"}


@pytest.mark.parametrize(
    ("raw", "labels", "expected"),
    [
        ({}, {}, True),  # empty selector matches everything
        ({}, LABELS, True),
        ({"matchLabels": {"app": "web"}}, LABELS, True),
        ({"matchLabels": {"app": "db"}}, LABELS, False),
        ({"matchLabels": {"app": "web", "tier": "back"}}, LABELS, False),
        ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "staging"]}]}, LABELS, True),
        ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["dev"]}]}, LABELS, False),
        ({"matchExpressions": [{"key": "missing", "operator": "In", "values": ["x"]}]}, LABELS, False),
        ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}, LABELS, True),
        ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}, LABELS, False),
        ({"matchExpressions": [{"key": "missing", "operator": "NotIn", "values": ["x"]}]}, LABELS, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, LABELS, True),
        ({"matchExpressions": [{"key": "missing", "operator": "Exists"}]}, LABELS, False),
        ({"matchExpressions": [{"key": "missing", "operator": "DoesNotExist"}]}, LABELS, True),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, LABELS, False),
        (  # labels and expressions are ANDed
            {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["dev"]}]},
            LABELS,
            False,
        ),
    ],
)
def test_matches(raw: dict[str, object], labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.parse(raw, "spec.appliedTo.podSelector").matches(labels) is expected


@pytest.mark.parametrize(
    ("raw", "path", "fragment"),
    [
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "sel.matchExpressions[0].values", "at least one value"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}, "sel.matchExpressions[0].values", "takes no values"),
        ({"matchExpressions": [{"key": "a", "operator": "Like", "values": ["x"]}]}, "sel.matchExpressions[0].operator", "must be one of"),
        ({"matchLabels": {"app": 3}}, "sel.matchLabels.app", "must be strings"),
        ({"matchLabels": {"bad key!": "x"}}, "sel.matchLabels.bad key!", "at most 63"),
        ({"matchLabels": {"app": "-x"}}, "sel.matchLabels.app", "starting and ending alphanumeric"),
        ({"matchLabel": {"app": "x"}}, "sel.matchLabel", "unknown field"),
        ("app=web", "sel", "label selector object"),
    ],
)
def test_invalid_selectors_name_the_field(raw: object, path: str, fragment: str) -> None:
    with pytest.raises(FieldError) as err:
        LabelSelector.parse(raw, "sel")
    assert err.value.path == path
    assert fragment in str(err.value)


def test_round_trip() -> None:
    raw = {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "env", "operator": "Exists"}]}
    assert LabelSelector.parse(raw, "s").to_dict() == raw
    assert LabelSelector.parse({}, "s").empty
