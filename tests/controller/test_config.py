"""Controller flags and the installation ConfigMap (manifests/config.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from egress_cni.controller.config import parse_args

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_manifest_arguments_are_understood(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("enableIPv6: false\ntunnelIPv4Subnet: 172.30.0.0/16\nmaxEndpointsPerSlice: 7\nagentLeaseSeconds: 20\n")
    c = parse_args([f"--config={cfg}", "--health-port=5820", "--metrics-port=5821"])
    assert (c.tunnel_ipv4_subnet, c.tunnel_ipv6_subnet, c.max_endpoints_per_slice) == ("172.30.0.0/16", "", 7)
    assert c.health_address == "0.0.0.0:5820" and c.extra_addresses == ("0.0.0.0:5821",)
    assert parse_args([f"--config={cfg}", "--max-endpoints-per-slice=3"]).max_endpoints_per_slice == 3  # flags win


def test_defaults_and_bad_values() -> None:
    c = parse_args([])
    assert (c.tunnel_ipv4_subnet, c.tunnel_ipv6_subnet, c.max_endpoints_per_slice) == ("172.31.0.0/16", "fd11::/112", 100)
    with pytest.raises(SystemExit):
        parse_args(["--max-endpoints-per-slice=0"])
    assert parse_args(["--max-endpoints-per-slice=1000"]).max_endpoints_per_slice == 1000
    with pytest.raises(SystemExit):
        parse_args(["--max-endpoints-per-slice=1001"])  # the CRD holds at most 1000 endpoints per slice


def test_leader_renew_deadline_is_shorter_than_the_lease() -> None:
    assert parse_args(["--leader-lease-seconds=15"]).leader_renew_deadline == 10
    assert parse_args(["--leader-lease-seconds=3", "--leader-renew-deadline=1.5"]).leader_renew_deadline == 1.5
    with pytest.raises(SystemExit):
        parse_args(["--leader-lease-seconds=3", "--leader-renew-deadline=3"])
