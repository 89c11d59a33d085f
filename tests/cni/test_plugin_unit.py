"""Pure parts of the plugin: config/env parsing, the underlay plan, ack waiting, conflist editing, the CLI contract."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from egress_cni import registry
from egress_cni.cni import config, errors, install, underlay
from egress_cni.cni.config import AF_INET, AF_INET6, parse_cidr
from egress_cni.cni.log import Logger
from egress_cni.cni.main import run
from egress_cni.cni.registration import register, wait_for_ack
from tests.cni.runner import OUR_BIN

pytestmark = pytest.mark.unit

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/var/run/netns/x"}


def conf(**over: Any) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "net", **over}).encode()


def code_of(env: dict[str, str], stdin: bytes) -> int:
    rc, out = run(env, stdin)
    assert rc == 1
    return int(json.loads(out)["code"])


def test_version_echoes_the_request_and_tolerates_empty_stdin() -> None:
    assert run({"CNI_COMMAND": "VERSION"}, b"") == (0, '{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}\n')
    assert json.loads(run({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.1.0"}')[1])["cniVersion"] == "1.1.0"


@pytest.mark.parametrize(
    ("env", "stdin", "code"),
    [
        ({"CNI_COMMAND": "FOO"}, conf(), errors.INVALID_ENV),
        ({**ENV, "CNI_NETNS": ""}, conf(), errors.INVALID_ENV),
        ({**ENV, "CNI_CONTAINERID": "-bad"}, conf(), errors.INVALID_ENV),
        ({**ENV, "CNI_IFNAME": "x" * 16}, conf(), errors.INVALID_ENV),
        (ENV, b"not json", errors.DECODE_FAILURE),
        (ENV, b"[]", errors.DECODE_FAILURE),
        (ENV, conf(cniVersion="0.2.0"), errors.INCOMPATIBLE_VERSION),
        ({**ENV, "CNI_COMMAND": "CHECK"}, conf(cniVersion="0.3.1"), errors.INCOMPATIBLE_VERSION),
        ({"CNI_COMMAND": "GC"}, conf(), errors.INCOMPATIBLE_VERSION),
        (ENV, conf(name=""), errors.INVALID_CONFIG),
        (ENV, conf(failPolicy="maybe"), errors.INVALID_CONFIG),
        (ENV, conf(hostRuleTable=255), errors.INVALID_CONFIG),
        (ENV, conf(hostVethPrefix="toolong"), errors.INVALID_CONFIG),
        (ENV, conf(hijackCIDR=["10.0.0.0/33"]), errors.INVALID_CONFIG),
        (ENV, conf(vethMTU=True), errors.INVALID_CONFIG),
        (ENV, conf(), errors.INVALID_CONFIG),  # no prevResult
        (ENV, conf(prevResult={"cniVersion": "1.0.0", "ips": []}), errors.INVALID_CONFIG),  # no IP for eth0
    ],
)
def test_errors_carry_the_spec_code(env: dict[str, str], stdin: bytes, code: int) -> None:
    assert code_of(env, stdin) == code


def test_error_messages_name_the_key_and_the_accepted_values() -> None:
    _, out = run(ENV, conf(mode="bridge"))
    assert json.loads(out)["msg"] == "config key 'mode': 'bridge' is invalid; expected auto or overlay or underlay"
    _, out = run(ENV, conf(hijackCIDR=["10.1.2.3/16"]))
    assert "did you mean 10.1.0.0/16" in json.loads(out)["msg"]


def test_cni_args_are_order_independent_and_tolerant() -> None:
    assert config.parse_cni_args("K8S_POD_UID=u;IgnoreUnknown=1;K8S_POD_NAME=a=b;junk;K8S_POD_NAMESPACE=ns") == {
        "K8S_POD_UID": "u", "IgnoreUnknown": "1", "K8S_POD_NAME": "a=b", "K8S_POD_NAMESPACE": "ns"}


def test_pod_ips_only_from_the_sandbox_interface() -> None:
    prev = {"interfaces": [{"name": "cni0"}, {"name": "vethX"}, {"name": "eth0", "sandbox": "/x"}, {"name": "eth1", "sandbox": "/x"}],
            "ips": [{"address": "10.0.0.5/24", "interface": 2}, {"address": "fd00::5/64", "interface": 2},
                    {"address": "10.9.0.5/24", "interface": 3}, {"address": "10.0.0.1/24", "interface": 0}]}
    assert config.pod_ips(prev, "eth0") == (("10.0.0.5",), ("fd00::5",))
    assert config.pod_ips({"ips": [{"address": "10.1.1.1/32"}]}, "eth0") == (("10.1.1.1",), ())


def test_cidr_parsing() -> None:
    assert str(parse_cidr("10.96.0.0/12")) == "10.96.0.0/12"
    assert str(parse_cidr("fd00:96::/108")) == "fd00:96::/108"
    assert str(parse_cidr("1.1.1.1")) == "1.1.1.1/32"
    assert str(parse_cidr("10.1.2.3/16", strict=False)) == "10.1.0.0/16"
    for bad in ("10.0.0.0/x", "300.0.0.0/8", "", "fd00::/129"):
        with pytest.raises(ValueError):
            parse_cidr(bad)


def test_veth_identity_is_stable_short_and_distinct_per_attachment() -> None:
    a = underlay.veth_identity("egw", "net", "c1", "eth0")
    assert a == underlay.veth_identity("egw", "net", "c1", "eth0")
    assert len(a[0]) == 15 and a[0].startswith("egw")
    assert a[0] != underlay.veth_identity("egw", "net", "c1", "net1")[0]
    assert a[1][0] & 0x02 and not a[1][0] & 0x01 and a[1] != a[2], "locally administered unicast MACs"


def test_plan_orders_host_routes_before_hijack_routes_and_skips_missing_families() -> None:
    ident = underlay.veth_identity("egw", "net", "c1", "eth0")
    p, warnings = underlay.plan(identity=ident, pod_veth="veth0", mtu=1500,
                                pod_ips=((AF_INET, "10.33.0.10"),), node_ips=((AF_INET, "10.33.0.1"),),
                                hijack=(parse_cidr("10.96.0.0/12"), parse_cidr("10.96.0.0/12"), parse_cidr("fd00::/64")), table=500, priority=1000)
    assert [(r.dst, r.dst_len, r.gateway, r.prefsrc) for r in p.pod_routes] == [
        ("10.33.0.1", 32, "", "10.33.0.10"), ("10.96.0.0", 12, "10.33.0.1", "10.33.0.10")]
    assert [(r.dst, r.dst_len, r.table) for r in p.host_routes] == [("10.33.0.10", 32, 500)]
    assert p.rules == ((AF_INET, 1000, 500),)
    assert warnings == ["hijackCIDR fd00::/64 skipped: no IPv6 on the pod or the node"]
    assert underlay.Plan.from_state(json.loads(json.dumps(p.to_state()))) == p
    main, _ = underlay.plan(identity=ident, pod_veth="veth0", mtu=1500, pod_ips=((AF_INET, "10.33.0.10"),),
                            node_ips=((AF_INET, "10.33.0.1"),), hijack=(), table=254, priority=1000)
    assert main.rules == () and [r.table for r in main.host_routes] == [254]  # main: the default, no rule


def test_plan_gives_hijack_json_routes_our_protocol_and_conflist_ones_static() -> None:
    from egress_cni.lowlevel.netlink import RTPROT_EGRESS_HIJACK, RTPROT_STATIC

    p, _ = underlay.plan(identity=underlay.veth_identity("egw", "n", "c", "eth0"), pod_veth="veth0", mtu=1500,
                         pod_ips=((AF_INET, "10.0.0.5"),), node_ips=((AF_INET, "10.0.0.1"),), hijack=(parse_cidr("10.96.0.0/12"),),
                         dynamic=(parse_cidr("10.96.0.0/12"), parse_cidr("192.0.2.0/24"), parse_cidr("0.0.0.0/0")), table=500, priority=1000)
    assert [(r.dst, r.dst_len, r.protocol) for r in p.pod_routes] == [
        ("10.0.0.1", 32, RTPROT_STATIC), ("10.96.0.0", 12, RTPROT_STATIC), ("192.0.2.0", 24, RTPROT_EGRESS_HIJACK),
        ("0.0.0.0", 1, RTPROT_EGRESS_HIJACK), ("128.0.0.0", 1, RTPROT_EGRESS_HIJACK)]
    assert underlay.Plan.from_state(json.loads(json.dumps(p.to_state()))) == p


def test_plan_dual_stack_v6_routes_have_no_src() -> None:
    p, _ = underlay.plan(identity=underlay.veth_identity("egw", "n", "c", "eth0"), pod_veth="veth0", mtu=1500,
                         pod_ips=((AF_INET, "10.0.0.5"), (AF_INET6, "fd00::5")), node_ips=((AF_INET, "10.0.0.1"), (AF_INET6, "fd00::1")),
                         hijack=(parse_cidr("fd00:96::/108"),), table=500, priority=1000)
    assert [(r.dst, r.gateway, r.prefsrc) for r in p.pod_routes if r.family == AF_INET6] == [("fd00::1", "", ""), ("fd00:96::", "fd00::1", "")]
    assert {r[0] for r in p.rules} == {AF_INET, AF_INET6}


def _netconf(tmp_path: Path, **over: Any) -> config.NetConf:
    raw = {"registryDir": str(tmp_path), "stateDir": str(tmp_path / "s"), "ackTimeoutSeconds": 1, **over}
    return config.parse_netconf(conf(**raw), "ADD")


def test_ack_wait_returns_when_the_agent_acks_the_same_ips(tmp_path: Path) -> None:
    c = _netconf(tmp_path, failPolicy="closed")
    ep = registry.Endpoint("c1", "eth0", ipv4=["10.0.0.5"])
    registry.write_heartbeat(str(tmp_path), "n1")
    registry.write_ack(str(tmp_path), registry.Ack(ep.key, ["10.0.0.5"]))  # stale ack from an earlier ADD
    register(c, ep)
    assert registry.read_ack(str(tmp_path), ep.key) is None, "register drops a stale ack"

    def agent() -> None:
        time.sleep(0.05)
        registry.write_ack(str(tmp_path), registry.Ack(ep.key, ["10.0.0.9"]))  # wrong IPs: must not count
        time.sleep(0.05)
        registry.write_ack(str(tmp_path), registry.Ack(ep.key, ["10.0.0.5"], selected=True, policies=["ns/p"]))

    t = threading.Thread(target=agent)
    t.start()
    assert wait_for_ack(c, ep, Logger()) == "acked"
    t.join()


def test_fail_policy_open_and_closed(tmp_path: Path) -> None:
    ep = registry.Endpoint("c1", "eth0", ipv4=["10.0.0.5"])
    assert wait_for_ack(_netconf(tmp_path), ep, Logger()) == "agent-down"
    with pytest.raises(errors.CNIError) as err:
        wait_for_ack(_netconf(tmp_path, failPolicy="closed"), ep, Logger())
    assert err.value.code == errors.TRY_AGAIN_LATER and "agent-down" in err.value.msg
    registry.write_heartbeat(str(tmp_path), "n1")
    assert wait_for_ack(_netconf(tmp_path, ackTimeoutSeconds=0.05), ep, Logger()) == "timeout"


def test_overlay_add_del_check_gc_in_process(tmp_path: Path) -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}], "ips": [{"address": "10.0.0.5/24", "interface": 0}]}
    base = {"registryDir": str(tmp_path / "r"), "stateDir": str(tmp_path / "s"), "mode": "overlay", "nodeName": "n1"}
    env = {**ENV, "CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u"}
    rc, out = run(env, conf(prevResult=prev, **base))
    assert rc == 0 and json.loads(out) == prev
    assert run({**env, "CNI_COMMAND": "CHECK"}, conf(prevResult=prev, **base)) == (0, "")
    gc = {**base, "cniVersion": "1.1.0", "cni.dev/valid-attachments": [{"containerID": "other", "ifname": "eth0"}]}
    assert run({"CNI_COMMAND": "GC"}, conf(**gc)) == (0, "")
    assert registry.list_endpoints(str(tmp_path / "r")) == [] and list((tmp_path / "s").glob("*.json")) == []
    assert code_of({**env, "CNI_COMMAND": "CHECK"}, conf(prevResult=prev, **base)) == errors.CHECK_FAILED
    assert run({**env, "CNI_COMMAND": "DEL"}, conf(**base)) == (0, "")


def test_status(tmp_path: Path) -> None:
    base = {"cniVersion": "1.1.0", "registryDir": str(tmp_path / "r"), "stateDir": str(tmp_path / "s")}
    assert run({"CNI_COMMAND": "STATUS"}, conf(**base)) == (0, "")
    assert code_of({"CNI_COMMAND": "STATUS"}, conf(failPolicy="closed", **base)) == errors.NOT_AVAILABLE
    registry.write_heartbeat(str(tmp_path / "r"), "n1")
    assert run({"CNI_COMMAND": "STATUS"}, conf(failPolicy="closed", **base)) == (0, "")


def test_conflist_editing_is_idempotent_and_reversible() -> None:
    primary = {"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "calico"}, {"type": "portmap"}]}
    once = install.with_plugin(primary, {"type": "egress-cni", "mode": "overlay"})
    twice = install.with_plugin(once, {"type": "egress-cni", "mode": "underlay"})
    assert [p["type"] for p in twice["plugins"]] == ["calico", "portmap", "egress-cni"] and twice["plugins"][-1]["mode"] == "underlay"
    assert install.without_plugin(twice) == primary
    single = install.with_plugin({"cniVersion": "0.3.1", "name": "n", "type": "flannel", "delegate": {}}, {"type": "egress-cni"})
    assert single == {"cniVersion": "0.3.1", "name": "n", "plugins": [{"type": "flannel", "delegate": {}}, {"type": "egress-cni"}]}


def test_switch_current_is_a_rename_and_keeps_the_previous_tree(tmp_path: Path) -> None:
    for name in ("v1", "v2", "v3"):
        (tmp_path / name).mkdir()
        install.switch_current(tmp_path, tmp_path / name)
        if name == "v2":
            assert (tmp_path / "current").readlink() == Path("v2") and (tmp_path / "v1").exists()
    assert (tmp_path / "current").readlink() == Path("v3") and (tmp_path / "v2").exists() and not (tmp_path / "v1").exists()


def test_light_commands_import_nothing_heavy() -> None:
    code = ("import sys, subprocess; sys.path.insert(0, '.'); from egress_cni.cni.main import run; "
            "run({'CNI_COMMAND': 'VERSION'}, b''); run({'CNI_COMMAND': 'ADD'}, b''); "
            "heavy = [m for m in ('pyroute2', 'yaml', 'kubernetes', 'json', 'dataclasses', 'ctypes', 'typing', 're') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([str(OUR_BIN.parent / ".venv/bin/python"), "-I", "-S", "-c", code.replace("import sys, subprocess; ", "import sys; ")],
                         capture_output=True, text=True, check=True, cwd=OUR_BIN.parent).stdout
    assert out.strip() == "[]"


def test_overlay_add_imports_no_netlink_or_pyroute2(tmp_path: Path) -> None:
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/24"}]}
    stdin = conf(prevResult=prev, mode="overlay", registryDir=str(tmp_path / "r"), stateDir=str(tmp_path / "s"))
    code = ("import sys, os; sys.path.insert(0, '.'); from egress_cni.cni.main import run; "
            f"rc, _ = run(dict(os.environ), {stdin!r}); "
            "print(rc, [m for m in sys.modules if m.startswith(('pyroute2', 'kubernetes', 'yaml', 'egress_cni.lowlevel.netlink', 'ctypes', '_ctypes'))])")
    out = subprocess.run([str(OUR_BIN.parent / ".venv/bin/python"), "-I", "-S", "-c", code], capture_output=True, text=True, check=True,
                         cwd=OUR_BIN.parent, env=ENV).stdout
    assert out.strip() == "0 []"


def test_wrapper_points_at_the_host_view_of_the_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "net.d").mkdir()
    (tmp_path / "net.d" / "10-a.conflist").write_text('{"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge"}]}')
    monkeypatch.setattr(install, "build_runtime", lambda runtime_dir: runtime_dir / "v1")
    (tmp_path / "rt" / "v1").mkdir(parents=True)
    argv = ["install", "--bin-dir", str(tmp_path / "bin"), "--conf-dir", str(tmp_path / "net.d"), "--runtime-dir", str(tmp_path / "rt"),
            "--host-runtime-dir", "/opt/egressgateway/cni"]
    assert install.main(argv) == 0
    wrapper = (tmp_path / "bin" / "egress-cni").read_text()
    assert "R=/opt/egressgateway/cni/current\n" in wrapper and str(tmp_path) not in wrapper
