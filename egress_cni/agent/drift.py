"""The drift check: between reconciles the worker glances at the kernel every `drift_seconds` and
asks for a full reconcile at once when it differs from the last applied desired state.

- It runs in the reconcile worker's idle wait (agent/loop.py), so it never races an apply and never
  delays the fencing thread. It reads through the dataplane port (`glance`) and compares with the
  pure `dataplane.drift.compare`; the repair is the ordinary full reconcile, the only writer.
- It compares only after a successful reconcile from a complete view (before that the plan does not
  prune, so the kernel may hold more than is desired; the worker's retries cover a failure).
- A drift that the repair did not remove (the same differences found again right after it) is
  repaired again at the check's pace twice (someone re-tampering at once, as a rule-order adversary
  does now and then, must not delay the next repair), then only after a growing backoff (2 s, 4 s,
  ... up to 10 s): a rule the kernel refuses never turns the check into a reconcile every second.
- Repairs are counted by kind (`repairs`, exported as `egress_agent_drift_repairs_total{kind}`) and
  each is logged with what drifted.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from egress_cni.agent.reconcile import Status
from egress_cni.backoff import Backoff
from egress_cni.dataplane.drift import Drift, Glance, compare

log = logging.getLogger(__name__)
SHOWN = 20  # differences named in one log record
STRIKES = 2  # repairs that did not hold, retried at the check's pace before the backoff starts


class GlancePort(Protocol):
    def glance(self) -> Glance:
        """The kernel's state as the drift check compares it (cheap: counts, one save per family)."""


class DriftCheck:
    def __init__(self, port: GlancePort, *, pending: Callable[[], frozenset[tuple[str, str]]],
                 contested: Callable[[], frozenset[str]], clock: Callable[[], float] = time.monotonic,
                 backoff: Backoff | None = None) -> None:
        self.port, self._pending, self._contested, self._clock = port, pending, contested, clock
        self._backoff = backoff or Backoff(base=2.0, cap=10.0, jitter=0.0)
        self._strikes = 0  # verifies in a row that found the drift still there
        self._retry_at = 0.0  # an unrepaired drift is not repaired again before this
        self.repairs: Counter[str] = Counter()  # by kind
        self.checks = 0
        self.last_seconds = 0.0  # how long the last check took
        self.found: tuple[Drift, ...] = ()  # what the last check found, until the repair is reported
        self._unrepaired: tuple[Drift, ...] = ()  # found again right after its repair

    def check(self, status: Status) -> tuple[Drift, ...]:
        """Glance and compare; the differences that call for a reconcile now (none: nothing to do)."""
        found = self._compare(status)
        if not found:
            if found is not None:  # compared and equal: an unrepaired drift is gone too
                self._unrepaired, self._strikes = (), 0
                self._backoff.reset()
            return ()
        if found == self._unrepaired and self._clock() < self._retry_at:
            return ()
        log.warning("drift found", extra={"kinds": kinds(found), "drift": [str(d) for d in found[:SHOWN]],
                                          "differences": len(found)})
        self.found = found
        return found

    def verify(self, status: Status) -> None:
        """After the reconcile the last check asked for: glance again, count each kind that is gone
        and log the repair; what is still there is left to the resync (see the module docstring)."""
        found, self.found = self.found, ()
        if not found:
            return
        if not status.last_ok:
            log.warning("drift repair failed", extra={"kinds": kinds(found), "error": status.last_error})
            return
        left = self._compare(status) or ()
        repaired = [k for k in kinds(found) if k not in kinds(left)]
        for kind in repaired:
            self.repairs[kind] += 1
        if repaired:
            log.warning("drift repaired", extra={"kinds": repaired, "drift": [str(d) for d in found[:SHOWN]],
                                                 "reconcile_seconds": round(status.reconcile_seconds, 3)})
        self._unrepaired = left
        if left:
            self._strikes += 1
            delay = self._backoff.next() if self._strikes > STRIKES else 0.0
            self._retry_at = self._clock() + delay
            log.warning("drift persists after its repair", extra={
                "kinds": kinds(left), "drift": [str(d) for d in left[:SHOWN]], "retry_seconds": delay})
        else:
            self._strikes = 0
            self._backoff.reset()

    def _compare(self, status: Status) -> tuple[Drift, ...] | None:
        """The differences now; None when there is nothing to compare with, or the glance failed."""
        plan, desired = status.last_plan, status.desired
        if not status.last_ok or desired is None or plan is None or not plan.prune:
            return None
        start = self._clock()
        try:
            pending = self._pending()  # before and after the glance: a fast-path add in between counts
            seen = self.port.glance()
            return compare(desired.dataplane, seen, pending=pending | self._pending(), contested=self._contested())
        except Exception as exc:  # a failed glance is no drift: the resync still runs
            log.warning("drift check failed", extra={"error": str(exc)})
            return None
        finally:
            self.last_seconds = self._clock() - start
            self.checks += 1


def kinds(found: tuple[Drift, ...]) -> list[str]:
    return sorted({d.kind for d in found})
