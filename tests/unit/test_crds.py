"""manifests/crds: seven kinds, the reference's names and columns, generated files up to date."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

from egress_cni.api.model import KINDS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "manifests" / "crds"


def load() -> dict[str, dict[str, Any]]:
    docs = [yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml"))]
    return {d["spec"]["names"]["kind"]: d for d in docs}


def test_one_crd_per_kind_with_model_names() -> None:
    crds = load()
    assert sorted(crds) == sorted(KINDS)
    for kind, cls in KINDS.items():
        spec = crds[kind]["spec"]
        assert spec["group"] == "egressgateway.spidernet.io"
        assert spec["names"]["plural"] == cls.PLURAL
        assert spec["names"]["shortNames"] == [cls.SHORT_NAME]
        assert spec["scope"] == ("Namespaced" if cls.NAMESPACED else "Cluster")
        (version,) = spec["versions"]
        assert version["name"] == "v1beta1" and version["served"] and version["storage"]
        assert version["subresources"] == {"status": {}}


def test_conditions_and_observed_generation_added() -> None:
    crds = load()
    for kind in ("EgressGateway", "EgressPolicy", "EgressClusterPolicy"):
        status = crds[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        assert "conditions" in status and "observedGeneration" in status


def test_policy_printer_columns_match_the_walkthrough() -> None:
    columns = load()["EgressPolicy"]["spec"]["versions"][0]["additionalPrinterColumns"]
    visible = [c["name"].upper() for c in columns if not c.get("priority")]
    assert visible[:4] == ["GATEWAY", "IPV4", "IPV6", "EGRESSNODE"]


def test_generated_files_are_current() -> None:
    spec = importlib.util.spec_from_file_location("gen_crds", ROOT / "hack" / "gen_crds.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, text in module.render().items():
        assert (CRD_DIR / name).read_text() == text, f"{name} is stale: run python hack/gen_crds.py"


def test_gateway_eip_entries_allow_standbys() -> None:
    status = load()["EgressGateway"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    eip = status["properties"]["nodeList"]["items"]["properties"]["eips"]["items"]["properties"]
    assert eip["standbys"] == {"type": "array", "maxItems": 65536, "items": {"type": "string", "maxLength": 253},
                               "description": eip["standbys"]["description"]}


def unbounded(schema: dict[str, Any], path: str) -> list[str]:
    """Paths of arrays without maxItems and free strings (no enum, no format) without maxLength."""
    out: list[str] = []
    if schema.get("type") == "array":
        out += [] if "maxItems" in schema else [path]
        out += unbounded(schema["items"], f"{path}[]")
    elif schema.get("type") == "string" and not ({"maxLength", "enum", "format"} & schema.keys()):
        out.append(path)
    for key, sub in (schema.get("properties") or {}).items():
        out += unbounded(sub, f"{path}.{key}")
    if isinstance(schema.get("additionalProperties"), dict):
        out += unbounded(schema["additionalProperties"], f"{path}.*")
    return out


def test_every_list_and_free_string_is_bounded() -> None:
    for kind, crd in load().items():
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        found = [p for p in unbounded(root, kind) if p not in (f"{kind}.apiVersion", f"{kind}.kind")]  # the API server's
        assert not found, f"unbounded in {kind}: {found}"
