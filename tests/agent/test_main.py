"""The agent's command line: installation settings from --config become defaults, flags win."""

from __future__ import annotations

from pathlib import Path

import pytest

from egress_cni.agent.main import config_from, families, parse_args

pytestmark = pytest.mark.unit

MANIFEST_CONFIG = """\
enableIPv4: true
enableIPv6: true
tunnelIPv4Subnet: 172.31.0.0/16
vxlan: {name: egress.vxlan, vni: 101, port: 7790, mtu: 0}
agentLeaseSeconds: 30
maxEndpointsPerSlice: 100
"""


def test_config_file_sets_defaults_and_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(MANIFEST_CONFIG)
    args = parse_args(["run", f"--config={path}", "--registry-dir=/run/egressgateway", "--health-port=5810",
                       "--metrics-port=5811", "--vni=102"])
    assert families(args) == [4, 6] and args.lease_seconds == 30 and args.health_port == 5810
    config = config_from(args)
    assert (config.vni, config.port, config.mtu, config.vxlan_name) == (102, 7790, 0, "egress.vxlan")


def test_without_config_the_documented_defaults_apply() -> None:
    args = parse_args(["run", "--node=n1"])
    assert families(args) == [4] and config_from(args).vni == 100 and args.lease_seconds == 20
