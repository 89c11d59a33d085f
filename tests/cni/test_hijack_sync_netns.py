"""The agent's hijack route sync (agent/hijack_sync.py) against an underlay pod started by the real plugin.

The plugins run in the lab's host netns through the libcni-style runner; the sync's threads are the
ones the agent starts (`run`: a sync per kick and per resync; `watch`: inotify on hijack.json). The
test changes hijack.json and polls the pod netns for the routes (deadlines, no fixed sleeps).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from egress_cni import registry
from egress_cni.agent.hijack_sync import HijackSync
from egress_cni.lowlevel.netlink import RTPROT_EGRESS_HIJACK
from tests.cni.lab import NODE_V4, NODE_V6, Lab
from tests.cni.runner import ip, ip_json

pytestmark = pytest.mark.netns

ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;K8S_POD_UID=uid-1;K8S_POD_INFRA_CONTAINER_ID=c1"
BUDGET = 2.0  # seconds from a hijack.json change to the pod's routes


LAB_PREFIX = "egwh"  # tests/cni/conftest.py


def routes(pod: str) -> dict[str, tuple[str, str]]:
    """dst -> (protocol, gateway) of every route in the pod's table main, both families."""
    out = {}
    for fam in ("-4", "-6"):
        for r in ip_json(fam, "route", "show", "table", "main", netns=pod):
            out[r["dst"]] = (str(r.get("protocol", "")), r.get("gateway", ""))
    return out


def ours(pod: str) -> set[str]:
    return {dst for dst, (proto, _) in routes(pod).items() if proto == str(RTPROT_EGRESS_HIJACK)}


def within(budget: float, done: Callable[[], bool], what: str) -> float:
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > budget:
            raise AssertionError(f"not within {budget}s: {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def test_running_underlay_pod_follows_hijack_json(lab: Lab, record_property: Callable[[str, object], None]) -> None:
    lab.underlay_parent()
    pod, path = lab.pod()
    reg = str(lab.registry_dir)
    registry.write_hijack(reg, registry.Hijack(["192.0.2.0/24"], []))
    lab.runner.add(lab.underlay_conflist(), "c1", path, args=ARGS)
    ep = registry.read_endpoint(reg, "c1_eth0")
    assert ep is not None and ep.routable and ep.netns == path and ep.pod_veth == "veth0"
    assert ep.node_ips == (NODE_V4, NODE_V6) and ep.static_hijack == ("10.96.0.0/12", "fd00:96::/108")
    assert ours(pod) == {"192.0.2.0/24"}, "ADD gives hijack.json's routes our protocol"
    static = {dst: r for dst, r in routes(pod).items() if dst in ("10.96.0.0/12", "fd00:96::/108", NODE_V4)}
    assert {p for p, _ in static.values()} == {"static"} and len(static) == 3
    # an operator's route in the pod for a destination hijack.json will name: never the agent's
    ip("route", "add", "203.0.113.0/24", "via", NODE_V4, "dev", "veth0", "proto", "dhcp", netns=pod)

    sync = HijackSync(reg, resync_seconds=30.0)  # far beyond the budget: the watch must do it
    stop = threading.Event()
    threads = [threading.Thread(target=body, args=(stop,), daemon=True) for body in (sync.run, sync.watch)]
    for t in threads:
        t.start()
    try:
        within(BUDGET, lambda: sync.syncs >= 1, "the first sync")
        assert ours(pod) == {"192.0.2.0/24"}

        registry.write_hijack(reg, registry.Hijack(["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "10.96.0.0/12"],
                                                   ["2001:db8::/64"]))
        added = within(BUDGET, lambda: ours(pod) == {"192.0.2.0/24", "198.51.100.0/24", "2001:db8::/64"}, "new CIDRs routed")
        now = routes(pod)
        assert now["198.51.100.0/24"][1] == NODE_V4 and now["2001:db8::/64"][1] == NODE_V6
        assert now["203.0.113.0/24"][0] == "dhcp" and now["10.96.0.0/12"][0] == "static", "other owners' routes untouched"

        registry.write_hijack(reg, registry.Hijack(["198.51.100.0/24", "0.0.0.0/0"], []))
        removed = within(BUDGET, lambda: ours(pod) == {"198.51.100.0/24", "0.0.0.0/1", "128.0.0.0/1"}, "old CIDRs removed")
        now = routes(pod)
        assert {"10.96.0.0/12", "fd00:96::/108", NODE_V4, "203.0.113.0/24"} <= set(now), "static and foreign routes stay"

        # drift: a route of ours deleted by hand comes back with the resync
        sync.resync_seconds = 0.5
        sync.kick()
        ip("route", "del", "198.51.100.0/24", "proto", str(RTPROT_EGRESS_HIJACK), netns=pod)
        repaired = within(BUDGET, lambda: "198.51.100.0/24" in ours(pod), "a deleted route restored by the resync")

        registry.write_hijack(reg, registry.Hijack())
        within(BUDGET, lambda: not ours(pod), "every route of ours gone")
        assert {"10.96.0.0/12", "fd00:96::/108", NODE_V4, NODE_V6, "203.0.113.0/24"} <= set(routes(pod))
        record_property("hijack_route_seconds", {"added": round(added, 3), "removed": round(removed, 3),
                                                 "repaired": round(repaired, 3)})
        print(f"hijack route sync: added {added:.3f}s, removed {removed:.3f}s, drift repaired {repaired:.3f}s")
    finally:
        stop.set()
        sync.kick()
        for t in threads:
            t.join(timeout=5)
    lab.runner.check(lab.underlay_conflist(), "c1", path, args=ARGS)  # CHECK leaves the agent's routes to the agent
    lab.runner.delete(lab.underlay_conflist(), "c1", path, args=ARGS)


def test_sync_is_idempotent_and_skips_gone_reused_and_old_records(lab: Lab) -> None:
    lab.underlay_parent()
    pod, path = lab.pod()
    reg = str(lab.registry_dir)
    lab.runner.add(lab.underlay_conflist(dual=False), "c1", path, args=ARGS)
    ep = registry.read_endpoint(reg, "c1_eth0")
    assert ep is not None
    old = registry.Endpoint("c0", "eth0", "ns1", "old-0", ipv4=["10.33.0.99"], mode="underlay")  # an older plugin's record
    registry.write_endpoint(reg, old)
    registry.write_hijack(reg, registry.Hijack(["192.0.2.0/24"], []))
    sync = HijackSync(reg)
    results = sync.sync()
    assert [(r.key, r.error) for r in results] == [("c1_eth0", "")] and ours(pod) == {"192.0.2.0/24"}
    assert results[0].changes.create and not sync.sync()[0].changes, "a second sync changes nothing"
    lab.drop_pod(pod)  # the pod's netns is gone before its DEL: reported, nothing else entered
    results = sync.sync()
    assert [r.key for r in results] == ["c1_eth0"] and "FileNotFoundError" in results[0].error
    # a reused path (another netns at the same name) is not the recorded one
    ip("netns", "add", pod)
    lab.pods.append(pod)
    results = sync.sync()
    assert "inode changed" in results[0].error and not ours(pod)
