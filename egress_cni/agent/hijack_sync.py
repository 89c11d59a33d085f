"""Keep every running underlay pod's hijack routes in step with the registry's hijack.json.

Level-based: each sync reads hijack.json and every endpoint record, computes each pod's full route
set (agent/podroutes.py, pure), reads the pod's table main and applies the difference, creating
before removing. Only routes of our protocol (RTPROT_EGRESS_HIJACK) are touched. A sync runs when
hijack.json is replaced (inotify on the registry dir), when an endpoint appears (`kick`, from the
registry watch) and every `resync_seconds` (drift: a route deleted by hand comes back).

Pod netns are entered in a short-lived thread of their own (setns affects the calling thread only),
so no agent thread ever changes netns. A pod is entered only through the CNI_NETNS path its record
names and only when that path's inode is the one ADD recorded (a reused path is another pod's, or
nobody's); a record without these facts (an older plugin) is skipped and logged once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from egress_cni import registry
from egress_cni.agent import dirwatch, podroutes
from egress_cni.agent.podroutes import Changes, PodFacts
from egress_cni.api.net import Cidr
from egress_cni.lowlevel.netlink import AF_INET, AF_INET6, RT_TABLE_MAIN, Netlink, Route
from egress_cni.lowlevel.netns import Switch, same_as_current

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PodResult:
    key: str
    changes: Changes
    error: str = ""


class HijackSync:
    def __init__(self, registry_dir: str, resync_seconds: float = 10.0) -> None:
        self.registry_dir = registry_dir
        self.resync_seconds = resync_seconds
        self._kick = threading.Event()
        self._skipped: set[str] = set()  # keys logged as not routable (once each)
        self._failing: dict[str, str] = {}  # key -> last error logged (logged again only when it changes)
        self._bad: frozenset[str] = frozenset()
        self.syncs = 0

    def kick(self) -> None:
        """A sync soon (an endpoint appeared, hijack.json changed)."""
        self._kick.set()

    # --- threads ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Thread body: a sync per kick, and every resync_seconds."""
        while not stop.is_set():
            self._kick.wait(self.resync_seconds)
            self._kick.clear()
            if stop.is_set():
                break
            try:
                self.sync()
            except Exception:
                log.exception("hijack route sync failed; the next kick or resync retries")

    def watch(self, stop: threading.Event) -> None:
        """Thread body: kick on every replacement of hijack.json."""
        dirwatch.watch(self.registry_dir, self.kick, stop.is_set, only=lambda name: name == registry.HIJACK_FILE)

    # --- one sync -----------------------------------------------------------------------------

    def sync(self) -> list[PodResult]:
        start = time.monotonic()
        hijack = registry.load_hijack(self.registry_dir)
        if hijack is None:
            log.warning("hijack.json unreadable: underlay pods' hijack routes left as they are")
            return []
        cidrs, bad = podroutes.hijack_cidrs(hijack)
        if frozenset(bad) != self._bad:
            self._bad = frozenset(bad)
            if bad:
                log.warning("hijack.json entries skipped: not CIDRs", extra={"entries": sorted(bad)})
        pods: list[PodFacts] = []
        keys: set[str] = set()
        for e in registry.list_endpoints(self.registry_dir):
            if e.mode != "underlay":
                continue
            keys.add(e.key)
            facts = podroutes.pod_facts(e)
            if facts is None:
                if e.key not in self._skipped:
                    self._skipped.add(e.key)
                    log.info("underlay pod's hijack routes not kept: its record lacks netns facts (older plugin)",
                             extra={"endpoint": e.key, "pod": f"{e.namespace}/{e.pod}"})
                continue
            pods.append(facts)
        self._skipped &= keys
        results = in_pods(pods, cidrs)
        for r in results:
            if r.error:
                if self._failing.get(r.key) != r.error:
                    log.warning("hijack routes of an underlay pod not synced", extra={"endpoint": r.key, "error": r.error})
                self._failing[r.key] = r.error
                continue
            self._failing.pop(r.key, None)
            if r.changes:
                log.info("hijack routes synced", extra={
                    "endpoint": r.key, "added": [_text(x) for x in r.changes.create + r.changes.replace],
                    "removed": [_text(x) for x in r.changes.remove]})
        for gone in set(self._failing) - keys:
            del self._failing[gone]
        self.syncs += 1
        log.debug("hijack route sync", extra={"pods": len(pods), "seconds": round(time.monotonic() - start, 4)})
        return results


def in_pods(pods: list[PodFacts], cidrs: tuple[Cidr, ...]) -> list[PodResult]:
    """Apply each pod's routes from a dedicated thread that enters the pod netns (and dies after)."""
    results: list[PodResult] = []
    if not pods:
        return results

    def body() -> None:
        for pod in pods:
            try:
                results.append(PodResult(pod.key, _sync_pod(pod, podroutes.desired(cidrs, pod))))
            except OSError as exc:
                results.append(PodResult(pod.key, Changes(), f"{type(exc).__name__}: {exc.strerror or exc}"))

    t = threading.Thread(target=body, name="hijack-netns", daemon=True)
    t.start()
    t.join()
    return results


def _sync_pod(pod: PodFacts, want: dict[podroutes.Key, Route]) -> Changes:
    """Runs on the dedicated thread: enter, diff against table main, create then replace then remove, leave."""
    with Switch(pod.netns) as switch:  # FileNotFoundError: the pod is gone (its DEL comes next)
        if os.fstat(switch.target_fd).st_ino != pod.netns_inode:
            raise OSError(116, f"{pod.netns} is not the netns ADD recorded (inode changed)")  # ESTALE
        if same_as_current(pod.netns):
            raise OSError(22, f"{pod.netns} is the agent's own netns")
        with switch.inside(), Netlink() as nl:
            link = nl.existing_link(pod.pod_veth, "pod veth")
            have = [r for fam in (AF_INET, AF_INET6) for r in nl.routes(fam, RT_TABLE_MAIN)]
            todo = podroutes.changes(want, have, link.index)
            for r in todo.create:
                nl.route_add(r)  # False: someone routed it meanwhile; theirs stays
            for r in todo.replace:
                nl.route_replace(r)
            for r in todo.remove:
                nl.route_delete(r)  # the kernel matches our protocol: nobody else's route goes
    return todo


def _text(r: Route) -> str:
    return f"{r.dst}/{r.dst_len} via {r.gateway}"
