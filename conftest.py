"""Root conftest. Test tiers: every test carries one tier marker; a tier that cannot run here skips and says why."""

from __future__ import annotations

import pytest

from tests.support.tiers import REASONS

pytest_plugins = ["tests.harness.fixtures"]

TIERS = ("unit", *REASONS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tiers = [m.name for m in item.iter_markers() if m.name in TIERS]
        if not tiers:
            raise pytest.UsageError(f"{item.nodeid} has no tier marker (one of {', '.join(TIERS)})")
        for tier in tiers:
            check = REASONS.get(tier)
            reason = check() if check else None
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"{tier} tier: {reason}"))
                break


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files from the current output")
