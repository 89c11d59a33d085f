"""The node agent, wired together: events only mark dirty; one worker runs the full reconcile.

Parts (each its own module):
- sources.py / state.py: the typed stores in, compute's `ClusterState` assembled from them;
- reconcile.py: compute -> diff -> apply behind narrow kernel ports, then acks and tunnel report;
- fencing.py: the EIPs' kernel lifetime renewed by its own thread (released on SIGTERM), Lease renewal, heartbeat;
- cni_bridge.py: the registry watch, the fast path for new endpoints, the acks;
- hijack_sync.py: running underlay pods' hijack routes kept in step with hijack.json (its own threads);
- uninstall.py: the chart's pre-delete signal; once seen the worker never reconciles again.

The worker coalesces events (at most one reconcile per `min_interval`), repeats the reconcile every
`resync_seconds`, glances at the kernel every `drift_seconds` in between and reconciles at once on
any drift (drift.py), and after a failure retries with exponential backoff and jitter (reset by a
success). A carrier flip or a contested EIP's retry cuts any wait short: fencing must not queue.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

from egress_cni import registry
from egress_cni.agent.cni_bridge import CniBridge, SetWriter
from egress_cni.agent.drift import DriftCheck, GlancePort
from egress_cni.agent.fencing import EipPort, EipRefresher, Fencing, Lease, NoLease
from egress_cni.agent.hijack_sync import HijackSync
from egress_cni.agent.peer_socket import PeerService
from egress_cni.agent.peers import HANDOVER
from egress_cni.agent.reconcile import Conntrack, Counters, DataplanePort, Reconciler, Status
from egress_cni.agent.sources import RecordingReporter, Source, TunnelReporter
from egress_cni.agent.state import StateView
from egress_cni.agent.uninstall import requested
from egress_cni.backoff import Backoff
from egress_cni.dataplane.inputs import ClusterState, DataplaneConfig, NodeFacts
from egress_cni.dataplane.plan import Plan
from egress_cni.lowlevel.cnifiles import UnderlayHost

log = logging.getLogger(__name__)
STOP_SECONDS = 5.0  # every thread joined within this, well inside the pod's termination grace

__all__ = ["Agent", "Kernel", "Lease", "NoLease", "Status"]


class Kernel(DataplanePort, GlancePort, Conntrack, SetWriter, Counters, EipPort, Protocol):
    """Every kernel port at once: what `dataplane.apply.KernelDataplane` (and the fake) provide."""

    def uninstall(self) -> None:
        """Remove everything we own from the node's kernel (the pre-delete hook's signal)."""

    def detach_underlay(self, host: UnderlayHost) -> list[str]:
        """The CNI plugin's shared host rule for underlay pods and its table, once none runs."""


class Agent:
    def __init__(self, *, node: str, source: Source, kernel: Kernel, facts: Callable[[], NodeFacts],
                 config: DataplaneConfig, registry_dir: str, lease: Lease | None = None,
                 reporter: TunnelReporter | None = None, resync_seconds: float = 10.0, lease_seconds: float = 1.0,
                 lease_renew: float = 0.2, heartbeat_seconds: float = 0.25, min_interval: float = 0.1,
                 retry: Backoff | None = None, clock: Callable[[], float] = time.monotonic,
                 peers: PeerService | None = None, drift_seconds: float = 1.0) -> None:
        self.node, self.source, self.kernel, self.config = node, source, kernel, config
        self.registry_dir = registry_dir
        self.reporter: TunnelReporter = reporter or RecordingReporter()
        self.resync_seconds, self.lease_renew, self.heartbeat_seconds = resync_seconds, lease_renew, heartbeat_seconds
        self.min_interval = min_interval  # coalesces event bursts: at most one full reconcile per interval
        self.drift_seconds = drift_seconds  # the drift check's period between reconciles; 0: none
        self.retry = retry or Backoff(base=0.5, cap=10.0)
        self.on_reconciled: Callable[[Status], None] | None = None
        self.on_uninstall: Callable[[str], None] | None = None  # the pre-delete hook's token was seen
        self.uninstalling = ""  # that token: from then on nothing is reconciled again
        self._dirty = threading.Event()
        self._urgent = threading.Event()  # cuts the worker's wait short (a Lease verdict changed, stop)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.peers = peers  # gateway peers' heartbeats and takeovers (agent/peers.py); None: none
        self._view = StateView(source.stores, node, overrides=peers.monitor if peers else None)
        if peers is not None:
            peers.state = self._view.base
            peers.monitor.on_change = self._peers_changed
        self.fencing = Fencing(lease or NoLease(), lease_seconds=lease_seconds, on_change=self._lease_changed,
                               clock=clock)
        self.refresher = EipRefresher(kernel, wake=self._wake)
        self.cni = CniBridge(node=node, registry_dir=registry_dir, sets=kernel, state=self.state,
                             synced=lambda: self.source.synced, last=lambda: self.reconciler.status.desired)
        self.reconciler = Reconciler(node=node, config=config, facts=facts, state=self.state,
                                     synced=lambda: self.source.synced, holds_lease=lambda: self.fencing.holds_lease,
                                     dataplane=kernel, conntrack=kernel, reporter=self.reporter, cni=self.cni,
                                     clock=clock, on_reconciled=self._reconciled)
        self.drift = DriftCheck(kernel, pending=lambda: self.cni.pending, contested=lambda: kernel.contested)
        self.hijack = HijackSync(registry_dir, resync_seconds=resync_seconds)

    @property
    def status(self) -> Status:
        return self.reconciler.status

    # --- events -------------------------------------------------------------------------------

    def mark_dirty(self) -> None:
        self._dirty.set()

    def _lease_changed(self) -> None:
        self.mark_dirty()
        self._urgent.set()

    def _registry_changed(self) -> None:
        """An endpoint came or went: a reconcile, and a hijack route sync (its ADD may have read an older hijack.json)."""
        self.mark_dirty()
        self.hijack.kick()

    def _wake(self) -> None:
        """A reconcile now: the parent link's carrier flipped, or a contested EIP is due a new probe."""
        self.mark_dirty()
        self._urgent.set()

    def _peers_changed(self) -> None:
        """A takeover (ours or a peer's) must not queue behind the coalescing interval either."""
        self.mark_dirty()
        self._urgent.set()

    def state(self) -> ClusterState:
        """The cluster as the stores have it now (reassembled only when a store changed)."""
        return self._view.state()

    # --- threads ------------------------------------------------------------------------------

    def start(self) -> None:
        os.makedirs(self.registry_dir, exist_ok=True)
        # first: EIPs a previous run left are renewed from now on, before any source has synced
        fence = threading.Thread(target=lambda: self.refresher.run(self._stop), name="fencing", daemon=True)
        fence.start()
        self._threads.append(fence)
        registry.write_heartbeat(self.registry_dir, self.node)
        self.source.start(self.mark_dirty)
        bodies: list[tuple[Callable[[], None], str]] = [
            (self._worker, "reconcile"),
            (lambda: self.cni.watch(self._stop, self._registry_changed), "registry"),
            (lambda: self.hijack.run(self._stop), "hijack-routes"),
            (lambda: self.hijack.watch(self._stop), "hijack-watch"),
            (lambda: self.fencing.heartbeat(self._stop, self.heartbeat_seconds, self.registry_dir, self.node), "heartbeat"),
            (lambda: self.fencing.keep(self._stop, self.lease_renew), "lease")]
        if self.peers is not None:
            peers = self.peers
            bodies.append((lambda: peers.run(self._stop), "peers"))
        for target, name in bodies:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, *, hand_over: bool = False, release_eips: bool = False) -> None:
        """Stop every thread. `hand_over` (SIGTERM, a restart most of the time): the EIPs stay HANDOVER
        seconds for the next agent and the peers hold off RESTART_GRACE, so nothing moves;
        `release_eips` (uninstall): the peers are told the same, the EIPs go at once. Either is done
        again once the worker has stopped (a reconcile in flight may have added one)."""
        self._stop.set()
        self._urgent.set()
        self._dirty.set()
        self.hijack.kick()
        if hand_over:
            self.refresher.hand_over(HANDOVER)  # before the farewell: they expire before a peer may claim
        if (hand_over or release_eips) and self.peers is not None:
            self.peers.farewell()  # no peer takes an EIP over meanwhile
        if release_eips:
            self.refresher.release()
        self.source.stop()
        deadline = time.monotonic() + STOP_SECONDS  # one budget for all: a pod has terminationGracePeriod
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        late = [t.name for t in self._threads if t.is_alive()]
        if late:
            log.warning("threads still running at stop", extra={"threads": late})
        if hand_over:
            self.refresher.hand_over(HANDOVER)
        if release_eips:
            self.refresher.release()
        if self.peers is not None:
            self.peers.close()

    def alive(self) -> bool:
        """Every thread runs; or the node is being uninstalled, when stopping them is the point (the
        agent then stays idle until its pod is deleted, and a restart would only set things up again)."""
        return bool(self.uninstalling) or (all(t.is_alive() for t in self._threads) and not self._stop.is_set())

    def _uninstall_requested(self) -> bool:
        token = requested(self.source.stores)
        if not token:
            return False
        self.uninstalling = token
        log.info("uninstall requested: reconciling stops", extra={"node": self.node, "token": token})
        if self.on_uninstall is not None:
            self.on_uninstall(token)
        return True

    def _idle(self, since: float) -> bool:
        """Wait for an event, the resync (`since` the last reconcile) or a drift; False: none of them
        yet (a drift check found nothing), wait again."""
        due = since + self.resync_seconds - time.monotonic()
        if self.drift_seconds <= 0 or due <= self.drift_seconds:
            self._dirty.wait(max(0.0, due))
            return True
        if self._dirty.wait(self.drift_seconds) or self._stop.is_set():
            return True
        return bool(self.drift.check(self.status))

    def _worker(self) -> None:
        not_before, since = 0.0, time.monotonic()
        while not self._stop.is_set():
            if not self._idle(since):
                continue
            hold = not_before - time.monotonic()
            if hold > 0 and self._urgent.wait(hold):
                self._urgent.clear()
            if self._stop.is_set() or self._uninstall_requested():
                break
            self._dirty.clear()
            ok = self.reconcile() is not None
            since = time.monotonic()
            self.drift.verify(self.status)  # after a reconcile the drift check asked for: was it repaired?
            if ok:
                self.retry.reset()
                not_before = time.monotonic() + self.min_interval
            else:
                delay = self.retry.next()
                log.info("reconcile retry scheduled", extra={"retry_seconds": round(delay, 2),
                                                             "failures": self.retry.failures})
                not_before = time.monotonic() + max(self.min_interval, delay)
                self._dirty.set()  # retry once the backoff has passed, even without an event
            # The cluster state is a large, long-lived object graph: freezing it keeps the cyclic GC
            # from walking it in the middle of a fast path (pauses of 10+ ms at 10k endpoints).
            # A full collection now and then bounds what freezing could keep alive.
            if self.status.reconciles % 100 == 0:
                gc.unfreeze()
                gc.collect()
            gc.freeze()

    # --- reconcile ----------------------------------------------------------------------------

    def reconcile(self) -> Plan | None:
        """One full reconcile now (the worker's, or a caller's own: `once`, tests, benches); none
        once an uninstall was requested."""
        if self.uninstalling:
            return None
        complete = self.source.synced
        plan = self.reconciler.reconcile()
        if plan is not None and self.status.desired is not None:
            self.refresher.desired(self.status.desired.dataplane, complete=complete)
        return plan

    def _reconciled(self, status: Status) -> None:
        status.invalid = len(self.source.stores.invalid())
        if self.on_reconciled is not None:
            self.on_reconciled(status)
