"""The pure part of the underlay hijack route sync: one pod's desired routes and the changes to reach them."""

from __future__ import annotations

import pytest

from egress_cni import registry
from egress_cni.agent import podroutes
from egress_cni.lowlevel.netlink import (
    AF_INET,
    AF_INET6,
    RT_SCOPE_LINK,
    RT_TABLE_MAIN,
    RTPROT_EGRESS_HIJACK,
    RTPROT_STATIC,
    Route,
)

pytestmark = pytest.mark.unit

OIF = 7


def record(**over: object) -> registry.Endpoint:
    values: dict[str, object] = dict(container_id="c1", ifname="eth0", namespace="ns", pod="p", ipv4=["10.33.0.10"],
                                     ipv6=["fd00:33::10"], mode="underlay", netns="/var/run/netns/p", netns_inode=99,
                                     pod_veth="veth0", node_ips=["10.33.0.1", "fd00:33::1"], static_hijack=["10.96.0.0/12"])
    values.update(over)
    return registry.Endpoint(**values)  # type: ignore[arg-type]


def facts(**over: object) -> podroutes.PodFacts:
    f = podroutes.pod_facts(record(**over))
    assert f is not None
    return f


def want(*cidrs: str, pod: podroutes.PodFacts | None = None) -> dict[podroutes.Key, Route]:
    parsed, bad = podroutes.hijack_cidrs(registry.Hijack([c for c in cidrs if ":" not in c], [c for c in cidrs if ":" in c]))
    assert not bad
    return podroutes.desired(parsed, pod or facts())


def ours(dst: str, plen: int, gw: str = "10.33.0.1", src: str = "10.33.0.10", oif: int = OIF) -> Route:
    fam = AF_INET6 if ":" in dst else AF_INET
    return Route(fam, dst, plen, RT_TABLE_MAIN, oif, gw, src if fam == AF_INET else "", 0, RTPROT_EGRESS_HIJACK)


def test_desired_routes_follow_the_plugins_shape_and_skip_static_and_missing_families() -> None:
    got = want("192.0.2.0/24", "10.96.0.0/12", "2001:db8::/64", "0.0.0.0/0")
    assert sorted(got.values(), key=podroutes.route_key) == sorted([
        ours("192.0.2.0", 24, oif=0), ours("0.0.0.0", 1, oif=0), ours("128.0.0.0", 1, oif=0),
        ours("2001:db8::", 64, "fd00:33::1", oif=0)], key=podroutes.route_key), "static 10.96.0.0/12 is the plugin's"
    v4_only = facts(ipv6=[], node_ips=["10.33.0.1"])
    assert list(want("192.0.2.0/24", "2001:db8::/64", pod=v4_only)) == [(AF_INET, "192.0.2.0", 24)]
    no_v6_node = facts(node_ips=["10.33.0.1"])
    assert list(want("2001:db8::/64", pod=no_v6_node)) == []


def test_records_of_older_plugins_and_overlay_pods_have_no_facts() -> None:
    assert podroutes.pod_facts(record(netns="", netns_inode=0, pod_veth="", node_ips=[], static_hijack=[])) is None
    assert podroutes.pod_facts(record(mode="overlay")) is None


def test_bad_hijack_entries_are_reported_and_skipped() -> None:
    parsed, bad = podroutes.hijack_cidrs(registry.Hijack(["192.0.2.0/24", "nonsense", "192.0.2.7"], []))
    assert [str(c) for c in parsed] == ["192.0.2.0/24", "192.0.2.7/32"] and bad == ["nonsense"]


def test_changes_add_missing_replace_changed_remove_stale_ours_only() -> None:
    have = [
        Route(AF_INET, "10.33.0.1", 32, RT_TABLE_MAIN, OIF, "", "10.33.0.10", RT_SCOPE_LINK, RTPROT_STATIC),  # the plugin's
        Route(AF_INET, "10.96.0.0", 12, RT_TABLE_MAIN, OIF, "10.33.0.1", "10.33.0.10", 0, RTPROT_STATIC),  # conflist's
        Route(AF_INET, "203.0.113.0", 24, RT_TABLE_MAIN, 3, "10.33.0.254", "", 0, 3),  # an operator's (proto boot)
        ours("198.51.100.0", 24),  # ours, still wanted
        ours("192.0.2.0", 24, gw="10.33.0.2"),  # ours, the node IP changed
        ours("2001:db8:1::", 64, "fd00:33::1"),  # ours, no longer in hijack.json
    ]
    got = podroutes.changes(want("198.51.100.0/24", "192.0.2.0/24", "203.0.113.0/24", "10.96.0.0/12", "100.64.0.0/10"), have, OIF)
    assert got.create == (ours("100.64.0.0", 10),), "the operator's 203.0.113.0/24 and the static route stay theirs"
    assert got.replace == (ours("192.0.2.0", 24),)
    assert got.remove == (ours("2001:db8:1::", 64, "fd00:33::1"),)


def test_changes_are_empty_once_applied() -> None:
    target = want("192.0.2.0/24", "2001:db8::/64")
    have = [Route(r.family, r.dst, r.dst_len, r.table, OIF, r.gateway, r.prefsrc, r.scope, r.protocol) for r in target.values()]
    assert not podroutes.changes(target, have, OIF)
    assert podroutes.changes({}, have, OIF).remove == tuple(sorted(have, key=podroutes.route_key))
