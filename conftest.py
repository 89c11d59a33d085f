"""Root conftest. Test tiers: every test carries one tier marker; a tier that cannot run here skips
and says why, except under CI (CI=true), where a tier this machine is meant to run fails instead
(tests/support/tiers.py: REQUIRED_IN_CI)."""

from __future__ import annotations

import pytest

from tests.support.tiers import REASONS, REQUIRED_IN_CI, in_ci

pytest_plugins = ["tests.harness.fixtures"]

TIERS = ("unit", *REASONS)
CANNOT_RUN = pytest.StashKey[str]()
_cannot_run_in_ci: dict[str, str] = {}  # tier -> why, for the closing summary


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ci = in_ci()
    for item in items:
        tiers = [m.name for m in item.iter_markers() if m.name in TIERS]
        if not tiers:
            raise pytest.UsageError(f"{item.nodeid} has no tier marker (one of {', '.join(TIERS)})")
        for tier in tiers:
            check = REASONS.get(tier)
            reason = check() if check else None
            if not reason:
                continue
            if ci and tier in REQUIRED_IN_CI:
                item.stash[CANNOT_RUN] = f"{tier} tier cannot set up under CI=true: {reason}"
                _cannot_run_in_ci[tier] = reason
            else:
                item.add_marker(pytest.mark.skip(reason=f"{tier} tier: {reason}"))
            break


def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = item.stash.get(CANNOT_RUN, None)
    if reason:
        pytest.fail(reason, pytrace=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _cannot_run_in_ci:
        terminalreporter.section("tiers that must run under CI but cannot", red=True)
        for tier, reason in sorted(_cannot_run_in_ci.items()):
            terminalreporter.line(f"{tier}: {reason}", red=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files from the current output")
