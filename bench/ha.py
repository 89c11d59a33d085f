"""High-availability measurements on the sandbox (issue 13): runs e2e/test_ha.py and prints every
scenario's counts and medians (root; the sandbox is built and torn down by the e2e fixtures).

    sudo .venv/bin/python bench/ha.py [-k power_off] [--runs N] [--freeze-seconds S]

The scenarios and their bars are the test file's; this only collects the lines each scenario
records (also printed by `pytest -s e2e/test_ha.py`) into one summary, pass or fail.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", default="", help="pytest -k expression (a subset of the scenarios)")
    parser.add_argument("--runs", type=int, default=0, help="repetitions per failover scenario (0: the issue's 5 and 10)")
    parser.add_argument("--freeze-seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="egw-ha-") as logs:
        env = {**os.environ, "LOGDIR": logs, "EGW_E2E_HA_RUNS": str(args.runs),
               "EGW_E2E_HA_FREEZE_SECONDS": str(args.freeze_seconds)}
        argv = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", str(REPO / "e2e" / "test_ha.py")]
        if args.k:
            argv += ["-k", args.k]
        result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
        lines = [line for path in sorted(Path(logs).glob("*/ha-measurements.txt")) for line in path.read_text().splitlines()]
    print("\n".join(lines) or "(no measurements recorded)")
    outcome = [line for line in result.stdout.splitlines() if line.startswith(("FAILED", "PASSED", "ERROR"))]
    print("\n".join(outcome))
    print(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:])
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
