"""Addresses and CIDRs are parsed in one place (`egress_cni/api/net.py`): every other module of the
product works on the values it returns. This test fails when a module parses address text itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PARSER = "egress_cni/api/net.py"
PARSING = re.compile(r"\bimport ipaddress\b|\bfrom ipaddress\b|\binet_pton\b|\bip_network\(|\bip_address\(|\bip_interface\(")

# Where address text is turned into bytes outside the parser, and why that is not a second parser.
EXCEPTIONS = {
    # The CNI plugin runs once per pod start and keeps its import graph to the standard library's
    # bare minimum: `python3 -I -S -X importtime` puts its whole entry point at 3.5 ms and
    # egress_cni.api.net alone at 12.8 ms (typing, enum, re). It reads prevResult and hijack CIDRs
    # with inet_pton, the same strict syntax api/net.py accepts (tests/cni checks its errors).
    "egress_cni/cni/config.py": "the plugin's reader of prevResult addresses",
    "egress_cni/cni/underlay.py": "the plugin packs addresses it has read with cni/config.py",
    # The netlink encoder packs addresses its callers already parsed.
    "egress_cni/lowlevel/netlink.py": "netlink attribute encoding of parsed addresses",
    # cryptography takes ipaddress objects for SANs; the text is parsed by api.net first.
    "webhook/certs.py": "x509.IPAddress needs an ipaddress object built from parse_ip(...).packed",
}


def product_modules() -> list[Path]:
    return sorted(p for top in ("egress_cni", "webhook") for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_but_the_parser_parses_addresses() -> None:
    offenders = []
    for path in product_modules():
        rel = path.relative_to(REPO).as_posix()
        if rel == PARSER or rel in EXCEPTIONS:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PARSING.search(line):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "parse addresses with egress_cni.api.net instead:\n" + "\n".join(offenders)


def test_exceptions_are_still_needed() -> None:
    for rel in EXCEPTIONS:
        assert PARSING.search((REPO / rel).read_text()), f"{rel} no longer parses addresses: drop its exception"
