"""An import-linter contract type the built-in ones cannot express: "each of these packages imports
only the standard library, itself and the first-party modules named here". .importlinter uses it for
egress_cni.api, egress_cni.lowlevel, egress_cni.registry and the CNI plugin (`make lint`).

A forbidden contract can only list what may not be imported; this one lists what may, so a new
third-party import (or a first-party one outside the allowed set) breaks it without anyone having
to foresee the package's name. Importing one's own ancestor packages is always allowed: Python loads
them on any import of the module anyway.
"""

from __future__ import annotations

import sys
from typing import cast

import grimp
from importlinter import Contract, ContractCheck, fields, output
from importlinter.domain.imports import Module


def _names(value: object) -> list[str]:
    """A ListField of modules once the contract is populated (None when an optional one is absent)."""
    return [m.name for m in cast("list[Module] | None", value) or []]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


class StdlibOnlyContract(Contract):
    type_name = "stdlib_only"

    source_modules = fields.ListField(subfield=fields.ModuleField())
    allowed_modules = fields.ListField(subfield=fields.ModuleField(), required=False)

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        sources, allowed = _names(self.source_modules), _names(self.allowed_modules)
        missing = [s for s in sources + allowed if s not in graph.modules]
        if missing:
            raise ValueError(f"stdlib_only contract {self.name!r}: no such modules {missing}")
        violations: list[dict[str, object]] = []
        for source in sources:
            for importer in sorted({source, *graph.find_descendants(source)}):
                for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                    if (imported.split(".")[0] in sys.stdlib_module_names or _within(importer, imported)
                            or any(_within(imported, p) for p in [source, *allowed])):
                        continue
                    lines = sorted(d["line_number"] for d in graph.get_import_details(importer=importer, imported=imported))
                    violations.append({"importer": importer, "imported": imported, "lines": lines})
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for v in check.metadata["violations"]:
            output.print_error(f"{v['importer']} -> {v['imported']} (l. {', '.join(map(str, v['lines']))})", bold=False)
        output.new_line()
        also = ", ".join(_names(self.allowed_modules))
        output.print("Allowed: the standard library and the source package itself" + (f"; also {also}" if also else ""))
