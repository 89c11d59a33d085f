"""The local multi-node sandbox (`make sandbox`): see docs/sandbox.md.

It runs from a source checkout and reuses the checkout's test harness (tests/harness, tests/support),
so the checkout root is put on sys.path when the package is imported from elsewhere.
"""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if (REPO_ROOT / "tests" / "harness").is_dir() and str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))
