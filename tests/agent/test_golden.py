"""Golden scenarios: tests/golden/<case>/{input.yaml,node.yaml} -> expected_<part>.txt.

Run `pytest tests/agent/test_golden.py --update-golden` to rewrite the expected files, then read
the diff: it is the behaviour change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.scenario import config_from, load_scenario
from egress_cni.dataplane.compute import desired_dataplane
from egress_cni.dataplane.render import golden_files

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.yaml").exists())


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, request: pytest.FixtureRequest) -> None:
    state, facts = load_scenario(str(GOLDEN / case))
    desired = desired_dataplane(state, facts, config_from(str(GOLDEN / case)))
    files = golden_files(desired.dataplane)
    extra = [f"selection {k}: {', '.join(v) or '-'}" for k, v in sorted(desired.selection.items())]
    extra += [f"hijack v{f}: {', '.join(v) or '-'}" for f, v in sorted(desired.hijack.items())]
    extra += [f"gateway {k}: {v or '-'}" for k, v in sorted(desired.gateway_of.items())]
    files["agent"] = "\n".join(extra) + "\n"
    update = request.config.getoption("--update-golden")
    for part, text in files.items():
        path = GOLDEN / case / f"expected_{part}.txt"
        if update:
            path.write_text(text)
            continue
        assert path.exists(), f"{path} missing: run pytest --update-golden"
        assert text == path.read_text(), f"{case}/{path.name} differs (pytest --update-golden rewrites it)"
    stale = {p.name for p in (GOLDEN / case).glob("expected_*.txt")} - {f"expected_{p}.txt" for p in files}
    if update:
        for name in stale:
            (GOLDEN / case / name).unlink()
    else:
        assert not stale, f"stale golden files {sorted(stale)}"
