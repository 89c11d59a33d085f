"""egress-controller: informers on every replica, reconciling on the Lease-elected leader only.

Two replicas share the Lease `egressgateway-controller`; the standby keeps its caches warm and
takes over once the leader stops renewing (at most one lease duration after a crash; at once
after a clean shutdown, which releases the Lease).

Leader election as client-go does it: the standby judges the leader's Lease on its own monotonic
clock (a lease duration after it saw holder or renewTime change, never renewTime against its wall
clock, so a skewed clock neither hastens nor delays a takeover); the leader acts only while its last
successful renewal is within `--leader-renew-deadline` (shorter than the lease), checked before
every pass and every write, so a leader paused past its lease (SIGSTOP, a long GC, a stalled VM)
writes nothing when it wakes; what it already sent is refused by resourceVersion preconditions.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from egress_cni import k8s, logs
from egress_cni.backoff import Backoff
from egress_cni.controller.config import Config, parse_args
from egress_cni.controller.events import EventSink
from egress_cni.controller.metrics import Metrics, serve
from egress_cni.controller.reconciler import Reconciler
from egress_cni.controller.watchers import Dirty, Watchers

log = logging.getLogger("egress_cni.controller")

SLOW_PASS_SECONDS = 0.5
DEBOUNCE_SECONDS = 0.005  # gather an event burst (a kubectl apply of many objects) into one pass


class Controller:
    def __init__(self, client: k8s.Client, config: Config) -> None:
        self.client, self.config = client, config
        self.metrics = Metrics()
        self.dirty = Dirty()
        self.watchers = Watchers(client, config, self.dirty)
        self.keeper = k8s.LeaseKeeper(client, config.leader_lease, config.namespace, config.identity,
                                      config.leader_lease_seconds)
        self.reconciler = Reconciler(client, config, self.watchers, self.metrics, EventSink(client), self.is_leader)
        self.leader = threading.Event()
        self.stopping = threading.Event()
        self._worker_beat = time.monotonic()
        self.crash_backoff = Backoff(base=0.5, cap=10.0)  # a pass that raised (per-object failures back off in the reconciler)

    def is_leader(self) -> bool:
        """Leading, and the last renewal is within the renew deadline on our monotonic clock."""
        renewed = self.keeper.renewed_at
        return self.leader.is_set() and renewed is not None and \
            time.monotonic() - renewed < self.config.leader_renew_deadline

    def healthy(self) -> bool:
        return time.monotonic() - self._worker_beat < max(60.0, 3 * self.config.resync_seconds)

    def ready(self) -> bool:
        return self.watchers.synced()

    def run_worker(self) -> None:
        retry_at: float | None = None
        last_resync = time.monotonic()
        leading = False
        while not self.stopping.is_set():
            self._worker_beat = time.monotonic()
            self.metrics.queue_depth.set(self.dirty.depth())
            if not self.is_leader() or not self.watchers.synced():
                leading = False
                self.stopping.wait(0.1)  # the standby only keeps its caches warm
                continue
            if not leading:  # leading (again): judge no agent by a time this replica may not have seen
                leading = True
                self.watchers.regained_sight()
            if time.monotonic() - last_resync > self.config.resync_seconds:
                last_resync = time.monotonic()
                self.watchers.start_optional()
                self.dirty.mark(everything=True, all_slices=True)
            # Agent Leases run out without an event: wake when the next one would, and run a pass
            # only if some agent's liveness really changed (renewals arrive 5 times a second).
            alive, lease_in = self.watchers.agent_liveness()
            self.metrics.agents_held.set(len(self.watchers.held_agents))
            if alive != self.reconciler.alive:
                self.dirty.mark(everything=True)
            lease_deadline = None if lease_in is None else time.time() + lease_in
            wake = min((t for t in (lease_deadline, retry_at) if t is not None), default=None)
            timeout = 1.0 if wake is None else max(0.0, min(1.0, wake - time.time()))
            with self.dirty.wake:
                if not self.dirty.depth():
                    self.dirty.wake.wait(timeout)
            if retry_at is not None and time.time() >= retry_at:
                retry_at = None
                self.dirty.mark(everything=True, all_slices=True)  # a failed slice write is retried too
            if not self.dirty.depth():
                continue
            self.stopping.wait(DEBOUNCE_SECONDS)
            work = self.dirty.take()
            started = time.perf_counter()
            try:
                retry_at = self.reconciler.reconcile(*work)
            except Exception:
                self.metrics.reconcile_errors.inc()
                delay = self.crash_backoff.next()
                log.exception("reconcile failed; retrying", extra={"retry_seconds": round(delay, 2)})
                self.dirty.mark(everything=True, all_slices=True)
                self.stopping.wait(delay)
            else:
                self.crash_backoff.reset()
            finally:
                took = time.perf_counter() - started
                self.metrics.reconcile_seconds.observe(took)
                if took > SLOW_PASS_SECONDS:
                    log.info("slow reconcile pass", extra={"seconds": round(took, 3), "everything": work[0],
                                                           "all_slices": work[1], "policies": len(work[2]), "namespaces": len(work[3])})

    def run_election(self) -> None:
        keeper = self.keeper
        # retry well within the renew deadline (client-go: 2 s against 10 s of a 15 s lease)
        period = max(0.1, min(2.0, self.config.leader_renew_deadline / 5))
        while not self.stopping.is_set():
            try:
                keeper.try_acquire_or_renew()
            except k8s.APIError as exc:
                log.warning("leader lease call failed", extra={"error": str(exc)})
            renewed = keeper.renewed_at
            held = renewed is not None and time.monotonic() - renewed < self.config.leader_renew_deadline
            if not held and self.leader.is_set() and renewed is not None:
                log.warning("leader lease not renewed within the renew deadline: no longer acting as leader",
                            extra={"renew_deadline": self.config.leader_renew_deadline})
            if held and not self.leader.is_set():
                log.info("became leader", extra={"identity": self.config.identity})
                self.dirty.mark(everything=True, all_slices=True)
                self.leader.set()
            elif not held and self.leader.is_set():
                log.warning("lost leadership", extra={"identity": self.config.identity})
                self.leader.clear()
            self.metrics.leader.set(1 if self.leader.is_set() else 0)
            self.stopping.wait(period)
        if self.leader.is_set():
            self.leader.clear()
            keeper.release()

    def start(self) -> list[threading.Thread]:
        self.watchers.start()
        threads = [threading.Thread(target=self.run_worker, name="worker", daemon=True),
                   threading.Thread(target=self.run_election, name="election", daemon=True)]
        for t in threads:
            t.start()
        return threads


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["uninstall-nodes"]:  # the chart's pre-delete hook Job (controller/uninstall.py)
        from egress_cni.controller import uninstall

        return uninstall.main(args[1:])
    config = parse_args(args)
    logs.setup(config.log_level, config.log_format)
    for note in config.notes:
        log.warning("setting has no effect", extra={"note": note})
    client = k8s.Client.from_kubeconfig(config.kubeconfig, component="egressgateway-controller")
    controller = Controller(client, config)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        controller.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for address in (config.health_address, *config.extra_addresses):
        try:
            serve(address, controller.metrics, controller.healthy, controller.ready)
        except OSError as exc:  # the controlling work matters more than its probes; the probes' absence shows
            log.error("probe/metrics endpoint not served", extra={"address": address, "error": str(exc)})
    threads = controller.start()
    log.info("controller started", extra={"identity": config.identity, "namespace": config.namespace})
    controller.stopping.wait()
    threads[1].join(timeout=5)  # the election thread releases the Lease on its way out
    controller.watchers.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
