"""The user's walkthrough (shared/seeds/004): the YAML it applies and the YAML it shows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

SEEDS = Path(__file__).resolve().parents[2].parent / "shared" / "seeds"
WALKTHROUGH = SEEDS / "004_7c69096a364c9dd0.txt"


def walkthrough_text() -> str:
    return WALKTHROUGH.read_text()


def applied_objects() -> list[dict[str, Any]]:
    """The objects the walkthrough applies verbatim (its `<<EOF ... EOF` heredocs), in order."""
    return [yaml.safe_load(doc) for doc in re.findall(r"<<EOF[^\n]*\n(.*?)\nEOF", walkthrough_text(), re.S)]


def shown_objects() -> list[dict[str, Any]]:
    """Complete objects the walkthrough prints with `kubectl get ... -o yaml` (skips elided ones)."""
    shown = []
    for block in re.findall(r"-o yaml\n(apiVersion:.*?)```", walkthrough_text(), re.S):
        shown.append(yaml.safe_load(block))
    return shown
