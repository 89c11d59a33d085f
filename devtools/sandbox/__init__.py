"""The local multi-node sandbox (`make sandbox`, `python -m devtools.sandbox`): see docs/sandbox.md.

It runs from a source checkout (manifests/, plugin-bin/ and devtools.devkube come from it) and is not
part of the installed package.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
