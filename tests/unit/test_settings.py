"""The installation settings file (egress_cni.settings): our keys and upstream's mean the same,
nothing unknown passes silently, a bad value names its key, and flag > env > file > default holds
for every daemon that reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from egress_cni import settings
from egress_cni.agent.main import config_from, families
from egress_cni.agent.main import parse_args as agent_args
from egress_cni.controller.config import parse_args as controller_args
from egress_cni.settings import Settings, SettingsError, load, parse
from webhook.config import WebhookConfig

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

OURS = """\
enableIPv4: true
enableIPv6: false
tunnelIPv4Subnet: 10.200.0.0/16
tunnelIPv6Subnet: fd99::/112
tunnelParent: eth1
vxlan: {name: egw.vx, vni: 4242, port: 8472, mtu: 1400}
agentLeaseSeconds: 15
agentLeaseRenewSeconds: 5
iptablesBackend: nft
maxEndpointsPerSlice: 50
"""

# The same installation in upstream's ConfigMap (conf.yml = the chart's `feature` values).
UPSTREAM = """\
enableIPv4: true
enableIPv6: false
tunnelIpv4Subnet: 10.200.0.0/16
tunnelIpv6Subnet: fd99::/112
tunnelDetectMethod: interface=eth1
vxlan: {name: egw.vx, id: 4242, port: 8472, mtu: 1400, disableChecksumOffload: false}
gatewayFailover: {enable: true, eipEvictionTimeout: 15, tunnelUpdatePeriod: 5}
iptables: {backendMode: nft}
maxNumberEndpointPerSlice: 50
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error_of(raw: Any) -> str:
    with pytest.raises(SettingsError) as caught:
        parse(raw, "config.yaml")
    return str(caught.value)


# --- one tree, two spellings ----------------------------------------------------------------------

def test_upstream_keys_map_to_the_same_settings_as_ours() -> None:
    ours, upstream = parse(yaml.safe_load(OURS)), parse(yaml.safe_load(UPSTREAM))
    assert ours == upstream
    assert ours.tunnel == settings.Tunnel("10.200.0.0/16", "fd99::/112", "eth1")
    assert ours.vxlan == settings.Vxlan("egw.vx", 4242, 8472, 1400)
    assert ours.agent == settings.Agent(15, 5.0, "nft")
    assert (ours.families.ipv4, ours.families.ipv6, ours.controller.max_endpoints_per_slice) == (True, False, 50)
    assert ours.notes == ()


def test_upstream_chart_values_under_feature_are_read_too() -> None:
    wrapped = {"feature": yaml.safe_load(UPSTREAM)}
    assert parse(wrapped) == parse(yaml.safe_load(UPSTREAM))


def test_the_shipped_configmap_parses_and_is_what_the_daemons_default_to(tmp_path: Path) -> None:
    configmap = yaml.safe_load((REPO / "manifests" / "config.yaml").read_text())
    shipped = parse(yaml.safe_load(configmap["data"]["config.yaml"]), "manifests/config.yaml")
    assert shipped.notes == ()
    assert (shipped.families.ipv4, shipped.families.ipv6) == (True, True)
    assert (shipped.tunnel, shipped.vxlan, shipped.agent, shipped.controller) == (
        Settings().tunnel, Settings().vxlan, Settings().agent, Settings().controller)


def test_upstream_default_configmap_is_accepted_with_notes_for_what_we_do_not_do() -> None:
    # upstream's chart defaults (reference section 5), as its ConfigMap renders them
    raw = {"enableIPv4": True, "enableIPv6": False, "datapathMode": "iptables", "tunnelIpv4Subnet": "172.31.0.0/16",
           "tunnelIpv6Subnet": "fd11::/112", "tunnelDetectMethod": "defaultRouteInterface", "tunnelDetectCustomInterface": [],
           "enableGatewayReplyRoute": False, "gatewayReplyRouteTable": 600, "gatewayReplyRouteMark": 39,
           "iptables": {"backendMode": "auto"},
           "vxlan": {"name": "egress.vxlan", "port": 7789, "id": 100, "disableChecksumOffload": False},
           "clusterCIDR": {"autoDetect": {"podCidrMode": "auto", "clusterIP": True, "nodeIP": True}, "extraCidr": []},
           "maxNumberEndpointPerSlice": 100, "announcedInterfacesToExclude": ["^cali.*", "br-*"],
           "gatewayFailover": {"enable": False, "tunnelMonitorPeriod": 5, "tunnelUpdatePeriod": 5, "eipEvictionTimeout": 15}}
    s = parse(raw)
    # enable: false turns the peer takeover off, and upstream's failover timings with it
    assert s.tunnel.parent == "" and s.vxlan.vni == 100 and s.agent == settings.Agent(failover_enabled=False)
    assert settings.Agent().failover_enabled  # on by default here
    noted = {note.split(":")[0] for note in s.notes}
    assert {"gatewayReplyRouteTable", "clusterCIDR.autoDetect.clusterIP", "announcedInterfacesToExclude",
            "gatewayFailover.eipEvictionTimeout", "gatewayFailover.tunnelUpdatePeriod"} <= noted
    assert "gatewayFailover.enable" not in noted
    assert not noted & {"datapathMode", "vxlan.disableChecksumOffload", "enableGatewayReplyRoute", "clusterCIDR.extraCidr"}  # our behaviour anyway


def test_a_value_we_cannot_honour_is_a_note_naming_the_key() -> None:
    s = parse({"vxlan": {"disableChecksumOffload": True}, "datapathMode": "ebpf", "mark": "0x27000000"})
    assert [n.split(":")[0] for n in s.notes] == ["vxlan.disableChecksumOffload", "datapathMode", "mark"]
    assert parse({"mark": "0x26000000"}).notes == ()


def test_empty_or_absent_file_means_defaults(tmp_path: Path) -> None:
    assert load(None) == Settings() and load("") == Settings()
    assert load(write(tmp_path, "")) == Settings(source=str(tmp_path / "config.yaml"))
    assert parse({"vxlan": None}) == Settings()


# --- refusals -------------------------------------------------------------------------------------

def test_unknown_keys_are_an_error_naming_them_and_the_nearest_known() -> None:
    assert "tunnelIPV4Subnet: unknown key (did you mean tunnelIPv4Subnet or tunnelIpv4Subnet?)" in error_of({"tunnelIPV4Subnet": "x"})
    assert "vxlan.vnid: unknown key (did you mean vxlan.vni" in error_of({"vxlan": {"vnid": 1}})
    assert "maxEndpointPerSlice: unknown key (did you mean maxEndpointsPerSlice or maxNumberEndpointPerSlice?)" in error_of(
        {"maxEndpointPerSlice": 3})
    nothing_close = error_of({"vxlan": {"zzz": 1}})
    assert "vxlan.zzz: unknown key (known in vxlan: " in nothing_close and "vxlan.vni" in nothing_close
    assert "bogus.key: unknown key (no section 'bogus'" in error_of({"bogus": {"key": 1}})


def test_every_problem_is_reported_at_once() -> None:
    message = error_of({"foo": 1, "vxlan": {"port": "x"}, "enableIPv6": "no"})
    assert message.startswith("config.yaml: invalid settings:")
    assert all(part in message for part in ("foo: unknown key", "vxlan.port: expected an integer, got 'x' (string)",
                                            "enableIPv6: expected true or false, got 'no' (string)"))


@pytest.mark.parametrize(("raw", "expected"), [
    ({"maxNumberEndpointPerSlice": "100"}, "maxNumberEndpointPerSlice: expected an integer, got '100' (string)"),
    ({"maxEndpointsPerSlice": 0}, "maxEndpointsPerSlice: must be at least 1, got 0"),
    ({"vxlan": {"id": 2**24}}, "vxlan.id: must be between 0 and 16777215"),
    ({"vxlan": {"port": True}}, "vxlan.port: expected an integer, got true (boolean)"),
    ({"vxlan": {"name": "a-name-longer-than-15"}}, "vxlan.name: must be a link name"),
    ({"tunnelIPv4Subnet": 10}, "tunnelIPv4Subnet: expected a string, got 10 (integer)"),
    ({"tunnelDetectMethod": "eth0"}, "tunnelDetectMethod: must be defaultRouteInterface or interface=<link name>"),
    ({"iptables": {"backendMode": "xt"}}, "iptables.backendMode: must be one of auto, nftables, nft, legacy, got 'xt'"),
    ({"vxlan": 5}, "vxlan: expected a mapping of "),
    ({"tunnelParent": {"name": "eth0"}}, "tunnelParent: expected a string, got a mapping"),
    ({"clusterCIDR": {"extraCidr": "10.0.0.0/8"}}, "clusterCIDR.extraCidr: expected a list"),
    ({"enableIPv4": False, "enableIPv6": False}, "at least one family must be enabled"),
    ({"gatewayFailover": {"tunnelUpdatePeriod": 25}}, "gatewayFailover.tunnelUpdatePeriod (25.0) must be shorter than agentLeaseSeconds (20)"),
    ({"tunnelIPv4Subnet": "10.1.0.0/16", "tunnelIpv4Subnet": "10.2.0.0/16"},
     "tunnelIPv4Subnet ('10.1.0.0/16') and tunnelIpv4Subnet ('10.2.0.0/16') set the same setting differently"),
    ({"agentLeaseSeconds": 2, "gatewayFailover": {"eipEvictionTimeout": 3}}, "agentLeaseSeconds (2) and gatewayFailover.eipEvictionTimeout (3)"),
    ({"feature": {"vxlan": {"port": 1}}, "vxlan": {"port": 2}}, "vxlan.port and feature.vxlan.port set the same setting differently"),
    (["enableIPv4"], "expected a mapping of settings, got list"),
])
def test_bad_values_name_their_key(raw: Any, expected: str) -> None:
    assert expected in error_of(raw)


def test_the_same_value_under_both_names_is_fine() -> None:
    assert parse({"vxlan": {"vni": 7, "id": 7}}).vxlan.vni == 7


def test_unreadable_or_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"missing\.yaml: cannot read"):
        load(str(tmp_path / "missing.yaml"))
    with pytest.raises(SettingsError, match=r"bad\.yaml: not YAML"):
        load(write(tmp_path, "vxlan: [\n", "bad.yaml"))


# --- precedence: flag > env > file > default ------------------------------------------------------

def test_layered_order() -> None:
    env = {"V": "7"}
    assert settings.layered(9, env, "V", settings.parse_int, 5) == 9  # flag
    assert settings.layered(None, env, "V", settings.parse_int, 5) == 7  # variable
    assert settings.layered(None, {}, "V", settings.parse_int, 5) == 5  # file (over the default)
    assert settings.layered(None, {"V": ""}, "V", str, "fd11::/112") == ""  # set but empty still counts
    with pytest.raises(SettingsError, match="V='seven': expected an integer"):
        settings.layered(None, {"V": "seven"}, "V", settings.parse_int, 5)


def test_controller_precedence(tmp_path: Path) -> None:
    cfg = write(tmp_path, "maxNumberEndpointPerSlice: 20\ntunnelIpv4Subnet: 10.1.0.0/16\n")
    env = {"EGRESS_MAX_ENDPOINTS_PER_SLICE": "30"}
    assert controller_args([], env={}).max_endpoints_per_slice == 100  # default
    assert controller_args([f"--config={cfg}"], env={}).max_endpoints_per_slice == 20  # file
    assert controller_args([f"--config={cfg}"], env=env).max_endpoints_per_slice == 30  # env over file
    assert controller_args([f"--config={cfg}", "--max-endpoints-per-slice=40"], env=env).max_endpoints_per_slice == 40  # flag
    c = controller_args([f"--config={cfg}"], env={"EGRESS_TUNNEL_IPV6_SUBNET": ""})
    assert (c.tunnel_ipv4_subnet, c.tunnel_ipv6_subnet) == ("10.1.0.0/16", "")
    assert controller_args([], env={"EGRESS_AGENT_LEASE_GRACE": "0.5"}).agent_lease_grace == 0.5


def test_controller_refuses_bad_files_and_variables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        controller_args([f"--config={write(tmp_path, 'tunnelIPV4Subnet: 10.0.0.0/16')}"], env={})
    assert "tunnelIPV4Subnet: unknown key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        controller_args([], env={"EGRESS_RESYNC_SECONDS": "soon"})
    assert "EGRESS_RESYNC_SECONDS='soon': expected a number" in capsys.readouterr().err


def test_controller_carries_the_notes_to_log(tmp_path: Path) -> None:
    c = controller_args([f"--config={write(tmp_path, 'gatewayFailover: {enable: false, tunnelUpdatePeriod: 5}')}"], env={})
    assert c.notes and c.notes[0].startswith("gatewayFailover.tunnelUpdatePeriod: 5 has no effect here")


def test_agent_precedence(tmp_path: Path) -> None:
    cfg = write(tmp_path, UPSTREAM)
    args = agent_args(["run", f"--config={cfg}"], env={})
    assert families(args) == [4] and args.parent == "eth1" and args.iptables_backend == "nft"
    assert (args.lease_seconds, args.lease_renew_seconds) == (15, 5.0)
    assert config_from(args) == config_from(agent_args(["run", f"--config={write(tmp_path, OURS, 'ours.yaml')}"], env={}))
    assert (config_from(args).vni, config_from(args).port, config_from(args).vxlan_name) == (4242, 8472, "egw.vx")
    assert agent_args(["run", f"--config={cfg}"], env={"EGRESS_LEASE_SECONDS": "20"}).lease_seconds == 20  # env over file
    flags = agent_args(["run", f"--config={cfg}", "--lease-seconds=30", "--ipv6", "--vni=9", "--parent=eth2"],
                       env={"EGRESS_LEASE_SECONDS": "20"})
    assert (flags.lease_seconds, families(flags), config_from(flags).vni, flags.parent) == (30, [4, 6], 9, "eth2")
    default = agent_args(["run"], env={})
    assert (families(default), default.parent, default.lease_seconds, default.lease_renew_seconds) == ([4], None, 20, 2.0)


def test_the_file_path_comes_from_the_flag_else_egress_config(tmp_path: Path) -> None:
    by_env, by_flag = write(tmp_path, "maxEndpointsPerSlice: 5\n", "env.yaml"), write(tmp_path, "maxEndpointsPerSlice: 6\n")
    env = {"EGRESS_CONFIG": by_env}
    assert controller_args([], env=env).max_endpoints_per_slice == 5
    assert controller_args([f"--config={by_flag}"], env=env).max_endpoints_per_slice == 6
    assert agent_args(["run"], env={"EGRESS_CONFIG": write(tmp_path, "vxlan: {id: 7}\n", "agent.yaml")}).vni == 7


def test_agent_refuses_a_renewal_slower_than_its_lease(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        agent_args(["run", "--lease-seconds=1", "--lease-renew-seconds=1"], env={})
    assert "--lease-renew-seconds (1.0) must be shorter than --lease-seconds (1)" in capsys.readouterr().err


def test_webhook_precedence(tmp_path: Path) -> None:
    v4_only = load(write(tmp_path, "enableIPv6: false\n"))
    assert WebhookConfig.layered(Settings(), {}) == WebhookConfig()  # default: both families
    assert WebhookConfig.layered(v4_only, {}).enable_ipv6 is False  # file
    assert WebhookConfig.layered(v4_only, {"EGRESS_ENABLE_IPV6": "true"}).enable_ipv6 is True  # env over file
    assert WebhookConfig.layered(v4_only, {"EGRESS_ENABLE_IPV6": "true"}, enable_ipv6="false").enable_ipv6 is False  # flag
    with pytest.raises(ValueError, match="--enable-ipv4='maybe'"):
        WebhookConfig.layered(Settings(), {}, enable_ipv4="maybe")
    with pytest.raises(ValueError, match="EGRESS_ENABLE_IPV4='maybe'"):
        WebhookConfig.layered(Settings(), {"EGRESS_ENABLE_IPV4": "maybe"})
    config = WebhookConfig.layered(v4_only, {}, namespace="egw")
    assert WebhookConfig.from_env(config.to_env()) == config  # what the gunicorn workers read back


def test_docs_list_every_key() -> None:
    text = (REPO / "docs" / "settings.md").read_text()
    missing = [name for name in settings.KNOWN if f"`{name}`" not in text]
    assert not missing, f"keys without a line in docs/settings.md: {missing}"


def test_every_daemon_reads_the_shared_configmap() -> None:
    """controller, agent and webhook mount `egressgateway-config` and pass it as --config, and set no
    variable that would shadow one of its settings."""
    shadowing = {"EGRESS_ENABLE_IPV4", "EGRESS_ENABLE_IPV6", "EGRESS_TUNNEL_IPV4_SUBNET", "EGRESS_TUNNEL_IPV6_SUBNET",
                 "EGRESS_MAX_ENDPOINTS_PER_SLICE", "EGRESS_LEASE_SECONDS"}
    seen = set()
    for manifest in ("controller.yaml", "agent.yaml", "webhook.yaml"):
        for doc in yaml.safe_load_all((REPO / "manifests" / manifest).read_text()):
            if not doc or doc["kind"] not in ("Deployment", "DaemonSet"):
                continue
            pod = doc["spec"]["template"]["spec"]
            volumes = {v["name"]: v for v in pod["volumes"]}
            (container,) = pod["containers"]
            assert "--config=/etc/egressgateway/config.yaml" in container["args"], manifest
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/egressgateway"]
            assert volumes[mount["name"]]["configMap"]["name"] == "egressgateway-config"
            assert not shadowing & {e["name"] for e in container.get("env", [])}, manifest
            seen.add(doc["metadata"]["name"])
    assert seen == {"egressgateway-controller", "egressgateway-agent", "egress-webhook"}
