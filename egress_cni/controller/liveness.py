"""Agent liveness from agent Lease renewals, as this controller observes them (pure; the caller
passes a monotonic clock).

- Skew-immune: a Lease is alive while less than `leaseDurationSeconds` + grace has passed on *our*
  clock since we last saw its renewTime change (what client-go's leader election does). Comparing
  the agent's renewTime with our wall clock would let a node whose clock runs 1 s behind look dead.
  A Lease seen for the first time gets one full duration, and so does every Lease when this
  controller starts leading again after it lost its own Lease (it was blind, not the agents).
- Stale together: when an agent's Lease runs out while more than `stale_fraction` of the agents
  that were recently alive are late too (no renewal seen for half a lease duration, where healthy
  agents renew five times per duration), the control plane (API server, etcd, our watch) is the
  likely laggard, not the nodes. Moving their EIPs would only make them flap, so the stale ones count
  as alive until they have been stale for `hold` seconds; an agent stale for longer is dead whatever
  the others do. A single node lost among several still fails over at once.
- Vouched for: gateway agents watch each other on the segment and list the peers they see alive in
  their Lease annotation `ANNOTATION_PEERS`. A node whose own Lease ran out while a fresh Lease of a
  peer lists it is alive (its agent lost the API, not the node; docs/ha.md point 10). A stale
  voucher vouches for nobody, so the stale-together hold above still decides an API freeze.
- Reports: `ANNOTATION_EIPS` lists the EIPs an agent holds; only fresh Leases' reports count.
- Uninstalled: a Lease carrying `ANNOTATION_UNINSTALLED` is an agent's confirmation to the chart's
  pre-delete hook that its node is clean (agent/uninstall.py). It is read as no Lease at all, whatever
  its spec says: no agent there, no reports, no vouching (a non-gateway node writes one too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from egress_cni.api.names import ANNOTATION_UNINSTALLED

LATE = 0.5  # an agent whose last renewal is older than this part of its duration is late
ANNOTATION_EIPS = "egressgateway.spidernet.io/eips"  # comma-separated EIPs the agent holds now
ANNOTATION_PEERS = "egressgateway.spidernet.io/peers"  # comma-separated nodes the agent sees alive


def _listed(annotations: dict[str, Any], key: str) -> tuple[str, ...]:
    text = annotations.get(key)
    return tuple(sorted({x.strip() for x in text.split(",") if x.strip()})) if isinstance(text, str) else ()


@dataclass(frozen=True)
class Verdict:
    alive: dict[str, bool]  # lease name -> alive
    held: frozenset[str]  # stale, but counted alive because most agents went stale together
    next_change: float | None  # monotonic time at which a verdict may change without a new event
    vouched: frozenset[str] = frozenset()  # stale, but a fresh peer Lease lists the node alive
    reports: dict[str, tuple[str, ...]] | None = None  # lease name -> EIPs, fresh Leases only


@dataclass
class _Seen:
    renewal: tuple[str, str]  # (holderIdentity, renewTime) as last seen
    at: float  # our monotonic clock when that renewal was first seen
    duration: float
    eips: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()  # lease names (prefix + node) of the peers it sees alive


class AgentLiveness:
    def __init__(self, grace: float = 0.0, stale_fraction: float = 0.5, hold: float = 10.0, prefix: str = "") -> None:
        self.grace, self.stale_fraction, self.hold, self.prefix = grace, stale_fraction, hold, prefix
        self._seen: dict[str, _Seen] = {}
        self._released: set[str] = set()  # deleted, or no holder: dead at once, never held

    def observe(self, name: str, lease: dict[str, Any] | None, now: float) -> bool:
        """Record a Lease event; True when its reports (EIPs held, peers seen) changed."""
        before = self._seen.get(name)
        was = (before.eips, before.peers) if before is not None else ((), ())
        self._observe(name, lease, now)
        after = self._seen.get(name)
        return was != ((after.eips, after.peers) if after is not None else ((), ()))

    def _observe(self, name: str, lease: dict[str, Any] | None, now: float) -> None:
        annotations = ((lease or {}).get("metadata") or {}).get("annotations") or {}
        if ANNOTATION_UNINSTALLED in annotations:
            lease = None
        spec = (lease or {}).get("spec") or {}
        holder, renewed = str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or "")
        if lease is None or not holder or not renewed:
            self._seen.pop(name, None)
            if lease is None:
                self._released.discard(name)
            else:
                self._released.add(name)
            return
        self._released.discard(name)
        renewal = (holder, renewed)
        duration = float(spec.get("leaseDurationSeconds") or 0)
        eips = _listed(annotations, ANNOTATION_EIPS)
        peers = tuple(self.prefix + p for p in _listed(annotations, ANNOTATION_PEERS) if self.prefix + p != name)
        seen = self._seen.get(name)
        if seen is None or seen.renewal != renewal:
            self._seen[name] = _Seen(renewal, now, duration, eips, peers)
        else:
            seen.duration, seen.eips, seen.peers = duration, eips, peers

    def regained_sight(self, now: float) -> None:
        """This controller could not see the API for a while (it had lost its own leader Lease): what
        it missed is no agent's fault, so every Lease counts as seen now for the first time."""
        for seen in self._seen.values():
            seen.at = max(seen.at, now)

    def fresh(self, name: str, now: float) -> bool:
        """This one Lease renewed within its duration (O(1): called on every renewal event; holds are
        the timed `evaluate`'s business)."""
        seen = self._seen.get(name)
        return seen is not None and now < seen.at + seen.duration + self.grace

    def evaluate(self, now: float) -> Verdict:
        expiry = {name: s.at + s.duration + self.grace for name, s in self._seen.items()}
        alive = {name: now < t for name, t in expiry.items()}
        fresh = {name for name, up in alive.items() if up}
        vouched = frozenset(p for name in fresh for p in self._seen[name].peers if p in expiry and not alive[p])
        alive.update({name: True for name in vouched})
        alive.update({name: False for name in self._released})
        recent = {name for name, t in expiry.items() if t <= now < t + self.hold and name not in vouched}
        considered = [name for name, t in expiry.items() if now < t + self.hold]  # alive or recently stale
        late = [name for name in considered if now - self._seen[name].at > LATE * self._seen[name].duration]
        held: frozenset[str] = frozenset()
        if recent and len(considered) >= 2 and len(late) > self.stale_fraction * len(considered):
            held = frozenset(recent)
            alive.update({name: True for name in held})
        upcoming = [t for t in expiry.values() if t > now] + [expiry[name] + self.hold for name in recent]
        reports = {name: self._seen[name].eips for name in fresh if self._seen[name].eips}
        return Verdict(alive, held, min(upcoming, default=None), vouched, reports)
