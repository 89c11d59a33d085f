"""The layering make lint enforces: the stdlib_only contract type, .importlinter itself, and what the
wheel and the image leave out (devtools stays in the checkout)."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import setuptools  # type: ignore[import-untyped]

from devtools.importcontracts import StdlibOnlyContract

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def graph(*imports: tuple[str, str]) -> grimp.ImportGraph:
    g = grimp.ImportGraph()
    for module in ("pkg", "pkg.core", "pkg.core.a", "pkg.core.b", "pkg.low", "pkg.other", "json", "yaml"):
        g.add_module(module, is_squashed=module in ("json", "yaml"))
    for n, (importer, imported) in enumerate(imports, 1):
        g.add_import(importer=importer, imported=imported, line_number=n, line_contents=f"import {imported}")
    return g


def violations(g: grimp.ImportGraph, sources: list[str], allowed: list[str] | None = None) -> list[tuple[object, object]]:
    options: dict[str, object] = {"source_modules": sources, **({"allowed_modules": allowed} if allowed else {})}
    check = StdlibOnlyContract("t", {}, options).check(g, verbose=False)
    found = [(v["importer"], v["imported"]) for v in check.metadata["violations"]]
    assert check.kept == (not found)
    return found


def test_stdlib_only_allows_the_standard_library_itself_its_ancestors_and_the_allowed() -> None:
    g = graph(("pkg.core.a", "json"), ("pkg.core.a", "pkg.core.b"), ("pkg.core.b", "pkg"), ("pkg.core.b", "pkg.low"))
    assert violations(g, ["pkg.core"], ["pkg.low"]) == []


def test_stdlib_only_names_every_other_import() -> None:
    g = graph(("pkg.core.a", "yaml"), ("pkg.core.b", "pkg.other"), ("pkg.core.b", "pkg.low"), ("pkg.low", "pkg.core"))
    assert violations(g, ["pkg.core"]) == [("pkg.core.a", "yaml"), ("pkg.core.b", "pkg.low"), ("pkg.core.b", "pkg.other")]
    # two sources in one contract may not import each other
    assert violations(g, ["pkg.core", "pkg.low"], []) == [("pkg.core.a", "yaml"), ("pkg.core.b", "pkg.low"),
                                                          ("pkg.core.b", "pkg.other"), ("pkg.low", "pkg.core")]


def test_stdlib_only_refuses_unknown_modules() -> None:
    with pytest.raises(ValueError, match=r"pkg\.nope"):
        violations(graph(), ["pkg.nope"])


def test_importlinter_config_names_what_make_lint_runs() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    assert {"egress_cni", "webhook", "devtools"} <= set(config["importlinter"]["root_packages"].split())
    kinds = {config[s]["type"] for s in config.sections() if s.startswith("importlinter:contract:")}
    assert {"stdlib_only", "protected", "forbidden", "independence"} <= kinds
    assert not any("ignore_imports" in config[s] for s in config.sections()), "fix a layering break by moving code"
    assert re.search(r"^\t\$\(VENV\)/bin/lint-imports\b", (ROOT / "Makefile").read_text(), re.M)


def test_the_wheel_holds_the_product_only() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    include = config["options.packages.find"]["include"].split()
    found = set(setuptools.find_packages(str(ROOT), include=include))
    assert {"egress_cni", "egress_cni.cni", "egress_cni.lowlevel", "webhook"} <= found
    assert not [p for p in found if p.startswith(("devtools", "tests", "e2e", "bench", "hack"))], found
    assert not (ROOT / "egress_cni" / "sandbox").exists() and not (ROOT / "egress_cni" / "devkube").exists()
    assert not (ROOT / "egress_cni" / "agent" / "scenario.py").exists()


def test_the_image_copies_the_product_only() -> None:
    # the pinned requirements are the build stage's input (pip install --require-hashes), not content
    copied = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ") and line.split()[1] != "hack/image-requirements.txt"]
    assert "egress_cni" in copied and "webhook" in copied
    assert not [c for c in copied if c.startswith(("devtools", "tests", "e2e", "bench", "hack", "."))], copied


def test_the_product_runs_without_devtools_on_the_path() -> None:
    """With devtools unimportable (as from an installed wheel), every product module still imports."""
    code = ("import importlib, pkgutil, sys\n"
            "class NoDevtools:\n"
            "    @staticmethod\n"
            "    def find_spec(name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'devtools':\n"
            "            raise ImportError(f'{name}: devtools are not in the wheel')\n"
            "sys.meta_path.insert(0, NoDevtools)\n"
            "import egress_cni, webhook\n"
            "for pkg in (egress_cni, webhook):\n"
            "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
            "        importlib.import_module(m.name)\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] == 'devtools'))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/",
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
