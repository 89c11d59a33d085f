"""Gateway peers watch each other over the underlay, and take over an EIP without the API server.

Design points 5-7 of issue 13 (docs/ha.md):
- Every agent listens on UDP `port` (7790) of its underlay address. A gateway-eligible agent (its node
  is in some gateway's `status.nodeList`) sends a heartbeat every `interval` (100 ms) to the other nodes
  of those nodeLists (their EgressTunnel `status.tunnel.parent`); a peer is lost after `missed` (3)
  intervals without one. A heartbeat carries node, incarnation (start time), sequence, the EIPs held.
- For an EIP entry whose current server (its nodeList node, or the last takeover seen) is lost, the
  first standby of the entry's `standbys` that is alive here takes it: standby k waits k * `step`
  (200 ms) after the loss, and only when every earlier standby is lost too. Taking it means an
  override (policy key -> this node) that compute reads (`ClusterState.overrides`); the reconcile then
  probes the segment before adding the address (dataplane/probe.py). A probe that finds the address
  answered (the owner is alive, only the heartbeat path is cut) never claims: the takeover is
  withdrawn after `claim_seconds` and not retried for `hold_off` seconds.
- Once the address is held (or at once for a useNodeIP entry, which has none), the new owner sends a
  takeover notice to every node of the EgressTunnels (workers steer to it) and repeats it in its
  heartbeats. Receivers keep the override while the API still places the entry where the takeover
  chain began (its `origin`); once the status agrees or names another placement, the override goes.
- With a key file, every datagram carries HMAC-SHA256 and datagrams without a valid one are dropped;
  without, messages are accepted unauthenticated (documented in docs/ha.md).

Everything here is pure (`Liveness`, `decide`, `PeerMonitor` on an injected clock), tested without
sockets; the datagrams are agent/peer_wire.py, the socket thread agent/peer_socket.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from egress_cni.agent.peer_wire import Message, MessageError, Takeover, decode, encode
from egress_cni.api import semantics
from egress_cni.api.gateway import EgressGateway
from egress_cni.dataplane.inputs import ClusterState

log = logging.getLogger(__name__)

PORT = 7790
INTERVAL = 0.1
MISSED = 3
# An agent stopped by SIGTERM (a DaemonSet rollout, most of the time) tells its peers it will be back:
# they hold off a takeover this long, so a restart moves nothing. A node that stays down fails over
# RESTART_GRACE later than a node that vanished without a word.
# A DaemonSet pod replacement (old container stopped, new sandbox, init container, imports, first
# renewal) outlasted 3 s on a loaded 2-core machine: the grace leaves room for twice as long.
RESTART_GRACE = 10.0
# The last lifetime (whole seconds) of the EIPs of an agent stopped by SIGTERM: it answers for them
# while it restarts; the kernel expires addresses up to ~1 s late, so this ends before RESTART_GRACE.
HANDOVER = int(RESTART_GRACE) - 2
STANDBY_STEP = 0.2
CLAIM_SECONDS = 3.0  # longer than a hung owner's address lives in its kernel (EIP lifetime 1 s) plus probes
HOLD_OFF = 10.0
NOTICE_EVERY = 1.0  # takeover notices to every node, repeated while the override stands
RETRY_CLAIM = 0.2  # while a takeover is not held yet, the reconcile is asked again this often



# --- what the status says -------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One EIP entry of a gateway's `status.nodeList[].eips[]`."""

    id: str
    owner: str
    eips: tuple[str, ...]
    policies: tuple[str, ...]
    standbys: tuple[str, ...]


def entries(gateways: Iterable[EgressGateway]) -> tuple[Entry, ...]:
    """Every EIP entry with its standby order; without `standbys` in the status (an older controller),
    the other nodes of the nodeList by name."""
    out = []
    for gw in gateways:
        names = sorted({n.name for n in gw.status.node_list if n.name})
        for n in gw.status.node_list:
            for e in n.eips:
                eips = tuple(str(ip) for ip in (e.ipv4, e.ipv6) if ip is not None)
                ident = f"{gw.metadata.name}|{'|'.join(eips) if eips else 'node:' + n.name}"
                standbys = tuple(s for s in e.standbys if s != n.name) or tuple(s for s in names if s != n.name)
                out.append(Entry(ident, n.name, eips, tuple(p.key for p in e.policies), standbys))
    return tuple(out)


def gateway_peers(gateways: Iterable[EgressGateway], me: str) -> frozenset[str]:
    """The other nodes of every nodeList this node is in (empty: not gateway-eligible)."""
    out: set[str] = set()
    for gw in gateways:
        names = {n.name for n in gw.status.node_list if n.name}
        if me in names:
            out |= names
    return frozenset(out - {me})


def underlay_addresses(state: ClusterState) -> dict[str, str]:
    """node -> its underlay IP (EgressTunnel status.tunnel.parent; IPv4 first)."""
    return {t.metadata.name: ip for t in state.tunnels if (ip := t.status.parent.ipv4 or t.status.parent.ipv6)}


def placements(state: ClusterState) -> dict[str, str]:
    """policy key -> the node the API places it on."""
    return {p.ref.key: semantics.placement(p, state.gateways, state.namespace_labels)[0] for p in state.policies}


# --- liveness -------------------------------------------------------------------------------------

@dataclass
class _Heard:
    incarnation: float
    seq: int
    at: float


class Liveness:
    """Which peers are alive: heard within `timeout` (missed intervals). A peer first watched counts
    as heard then, so an agent that starts does not take over from peers it has not heard yet."""

    def __init__(self, timeout: float, clock: Callable[[], float]) -> None:
        self.timeout, self._clock = timeout, clock
        self._heard: dict[str, _Heard] = {}
        self._watched: frozenset[str] = frozenset()

    def watch(self, nodes: Iterable[str]) -> None:
        now = self._clock()
        self._watched = frozenset(nodes)
        for n in self._watched:
            self._heard.setdefault(n, _Heard(float("-inf"), -1, now))

    def heard(self, node: str, incarnation: float, seq: int, grace: float = 0.0) -> bool:
        """Record a message; False for a replayed or reordered one (not newer than the last). A
        restarting peer's farewell (`grace`) keeps it alive that much longer."""
        last = self._heard.get(node)
        if last is not None and (incarnation, seq) <= (last.incarnation, last.seq):
            return False
        at = self._clock() + grace
        if last is not None:
            at = max(at, last.at)  # a heartbeat sent after the farewell does not cut the grace short
        self._heard[node] = _Heard(incarnation, seq, at)
        return True

    def alive(self, node: str) -> bool:
        last = self._heard.get(node)
        return last is not None and self._clock() - last.at < self.timeout

    def lost_for(self, node: str) -> float:
        """Seconds since `node` counted as lost (0 while alive; never heard: since forever)."""
        last = self._heard.get(node)
        if last is None:
            return float("inf")
        return max(0.0, self._clock() - last.at - self.timeout)

    def seen_alive(self) -> frozenset[str]:
        return frozenset(n for n in self._watched if self.alive(n))


def decide(entries: Sequence[Entry], me: str, serving: Mapping[str, str], alive: Callable[[str], bool],
           lost_for: Callable[[str], float], step: float = STANDBY_STEP,
           skip: Callable[[str], bool] = lambda _entry: False) -> tuple[tuple[Entry, str], ...]:
    """The entries this node takes over now, each with the node it replaces.

    `serving`: entry id -> the node serving it by the last takeover seen (else its nodeList node).
    An entry is taken when its server is lost, this node is the k-th of its standbys then its owner
    (the server left out), every earlier one is lost too, and the server has been lost for k * `step`."""
    out = []
    for e in entries:
        server = serving.get(e.id, e.owner)
        if server == me or alive(server) or skip(e.id):
            continue
        # The API's owner is a candidate too, after the standbys, once someone else serves the entry:
        # a takeover that dies before the controller catches up goes back to it (it is no standby of
        # its own entry, and a lone pair would otherwise wait for the controller).
        candidates = [n for n in (*e.standbys, e.owner) if n != server]
        if me not in candidates:
            continue
        k = candidates.index(me)
        if any(alive(n) for n in candidates[:k]):
            continue
        if lost_for(server) >= k * step:
            out.append((e, server))
    return tuple(out)


# --- the monitor (no I/O) -------------------------------------------------------------------------

@dataclass
class _Claim:
    takeover: Takeover
    eips: tuple[str, ...]
    since: float
    announced_at: float | None = None
    notices_sent: int = 0
    last_notice: float = float("-inf")
    last_retry: float = float("-inf")


@dataclass
class _View:
    entries: tuple[Entry, ...] = ()
    peers: frozenset[str] = frozenset()  # heartbeat targets (gateway peers)
    addresses: Mapping[str, str] = field(default_factory=dict)
    placements: Mapping[str, str] = field(default_factory=dict)
    held: frozenset[str] = frozenset()


class PeerMonitor:
    """Liveness of the gateway peers, takeovers, and the overrides compute reads.

    Feed it with `update` (the API's view without overrides, and the EIPs held here), `receive`
    (datagrams) and `tick` (every interval: decide, then the datagrams to send). `version` moves
    whenever `overrides` may answer differently; `on_change` is called then (and while a takeover
    waits for its claim, so the reconcile probes again)."""

    def __init__(self, node: str, *, key: bytes | None = None, interval: float = INTERVAL, missed: int = MISSED,
                 step: float = STANDBY_STEP, claim_seconds: float = CLAIM_SECONDS, hold_off: float = HOLD_OFF,
                 takeover: bool = True, clock: Callable[[], float] = time.monotonic,
                 incarnation: float | None = None, on_change: Callable[[], None] = lambda: None) -> None:
        self.node, self.key, self.interval, self.step = node, key, interval, step
        self.claim_seconds, self.hold_off, self.takeover = claim_seconds, hold_off, takeover
        self.on_change = on_change
        self._clock = clock
        self.incarnation = time.time() if incarnation is None else incarnation
        self.liveness = Liveness(interval * missed, clock)
        self._lock = threading.Lock()
        self._seq = 0
        self._view = _View()
        self._mine: dict[str, _Claim] = {}
        self._seen: dict[str, Takeover] = {}
        self._suppressed: dict[str, float] = {}
        self._adopt: frozenset[str] = frozenset()  # EIPs found held at start, until the first view places them
        self.version = 0
        self.rejected = 0  # datagrams dropped (malformed, unauthenticated, bad MAC, replayed)

    # --- inputs ---------------------------------------------------------------------------------

    def adopt(self, held: Iterable[str]) -> None:
        """The EIP addresses this node holds at start (before the first reconcile): one the API places
        elsewhere was ours by a takeover before a restart, and we keep serving it (the probe let us claim
        it once; nobody else can hold it)."""
        with self._lock:
            self._adopt = frozenset(held)

    def _adopted(self, view: _View) -> list[Entry]:
        return [e for e in view.entries if e.owner != self.node and e.eips and set(e.eips) <= self._adopt
                and e.id not in self._mine and e.id not in self._seen]

    def update(self, state: ClusterState, held: frozenset[str]) -> None:
        view = _View(entries(state.gateways), gateway_peers(state.gateways, self.node), underlay_addresses(state),
                     placements(state), held)
        with self._lock:
            self._view = view
            self.liveness.watch(view.peers)
            changed = self._prune()
            if self._adopt and view.entries:
                now = self._clock()
                for e in self._adopted(view):
                    self._mine[e.id] = _Claim(Takeover(e.id, self.node, e.owner, e.owner, e.policies), e.eips, now,
                                              announced_at=now)
                    log.warning("eip kept across a restart", extra={"entry": e.id, "placed_on": e.owner})
                    changed = True
                self._adopt = frozenset()
        if changed:
            self._changed()

    def receive(self, data: bytes) -> bool:
        try:
            msg = decode(data, self.key)
        except MessageError as exc:
            self.rejected += 1
            log.debug("peer datagram dropped", extra={"error": str(exc)})
            return False
        if msg.node == self.node:
            return False
        with self._lock:
            if not self.liveness.heard(msg.node, msg.incarnation, msg.seq, msg.grace):
                self.rejected += 1
                return False
            changed = any([self._accept(t) for t in msg.takeovers if t.node == msg.node])
        if changed:
            self._changed()
        return True

    def _accept(self, t: Takeover) -> bool:
        """A takeover notice from its new owner; True when the overrides change."""
        api = self._view.placements
        if t.policies and not any(api.get(k) == t.origin for k in t.policies):
            return False  # the API already places it elsewhere: nothing to override
        mine = self._mine.get(t.entry)
        if mine is not None:
            if t.replaced != self.node or mine.takeover.origin != t.origin:
                return False  # we serve it; a notice that did not take it from us changes nothing
            del self._mine[t.entry]  # taken from us (we were lost to them): theirs now
            log.warning("eip taken over from us", extra={"entry": t.entry, "node": t.node})
        cur = self._seen.get(t.entry)
        current = cur.node if cur is not None and cur.origin == t.origin else t.origin
        if t.node == current and cur == t:
            return False  # a repeat
        if t.replaced != current and t.node != current:
            return False  # does not follow from what we know
        self._seen[t.entry] = t
        return True

    # --- decisions ------------------------------------------------------------------------------

    def tick(self) -> list[tuple[str, bytes]]:
        """Decide takeovers, follow pending claims; the datagrams to send now as (address, bytes)."""
        now = self._clock()
        retry = False
        with self._lock:
            changed = self._prune()
            view = self._view
            if self.takeover:
                serving = {**{i: t.node for i, t in self._seen.items()}, **{i: self.node for i in self._mine}}
                for e, replaced in decide(view.entries, self.node, serving, self.liveness.alive,
                                          self.liveness.lost_for, self.step,
                                          skip=lambda i: self._suppressed.get(i, 0.0) > now):
                    origin = cur.origin if (cur := self._seen.get(e.id)) is not None else e.owner
                    self._mine[e.id] = _Claim(Takeover(e.id, self.node, replaced, origin, e.policies), e.eips, now)
                    self._seen.pop(e.id, None)
                    log.warning("taking over eip", extra={"entry": e.id, "from": replaced})
                    changed = True
            for entry, claim in list(self._mine.items()):
                if claim.announced_at is None:
                    if all(ip in view.held for ip in claim.eips):
                        claim.announced_at = now
                        log.warning("eip taken over", extra={"entry": entry, "seconds": round(now - claim.since, 3)})
                    elif now - claim.since > self.claim_seconds:
                        del self._mine[entry]  # the probe keeps finding it answered: someone serves it
                        self._suppressed[entry] = now + self.hold_off
                        log.warning("eip takeover withdrawn: address still answered", extra={"entry": entry})
                        changed = True
                    elif now - claim.last_retry >= RETRY_CLAIM:
                        claim.last_retry = now
                        retry = True
            out = self._datagrams(now)
        if changed:
            self._changed()
        elif retry:
            self.on_change()
        return out

    def _datagrams(self, now: float) -> list[tuple[str, bytes]]:
        view = self._view
        announced = [c for c in self._mine.values() if c.announced_at is not None]
        targets: set[str] = set(view.peers)
        for c in announced:  # a burst of three at takeover, then every NOTICE_EVERY, to every node
            if c.notices_sent < 3 or now - c.last_notice >= NOTICE_EVERY:
                c.notices_sent += 1
                c.last_notice = now
                targets |= set(view.addresses) - {self.node}
        if not targets:
            return []
        self._seq += 1
        msg = Message(self.node, self.incarnation, self._seq, tuple(sorted(view.held)),
                      tuple(c.takeover for c in announced))
        data = encode(msg, self.key)
        return [(view.addresses[n], data) for n in sorted(targets) if n in view.addresses]

    def farewell(self, grace: float = RESTART_GRACE) -> list[tuple[str, bytes]]:
        """The datagrams that tell every peer this agent is restarting (SIGTERM): hold off for `grace`."""
        with self._lock:
            view = self._view
            self._seq += 1
            data = encode(Message(self.node, self.incarnation, self._seq, (), (), grace), self.key)
            return [(view.addresses[n], data) for n in sorted(view.peers) if n in view.addresses]

    def _prune(self) -> bool:
        """Drop the takeovers the API has caught up with (it no longer places them on their origin)."""
        api = self._view.placements
        changed = False
        for store in (self._mine, self._seen):
            for entry in list(store):
                value = store[entry]
                t = value.takeover if isinstance(value, _Claim) else value
                if t.policies and not any(api.get(k) == t.origin for k in t.policies):
                    del store[entry]
                    changed = True
        return changed

    def _changed(self) -> None:
        with self._lock:
            self.version += 1
        self.on_change()

    # --- outputs --------------------------------------------------------------------------------

    def overrides(self, state: ClusterState) -> dict[str, str]:
        """policy key -> the node serving it now, for the policies the API still places on the
        takeover's origin (our own takeovers win over notices)."""
        api = placements(state)
        with self._lock:
            takeovers = [*self._seen.values(), *(c.takeover for c in self._mine.values())]
            if self._adopt:  # the first reconcile may come before our first update: keep them from the start
                view = _View(entries(state.gateways))
                takeovers += [Takeover(e.id, self.node, e.owner, e.owner, e.policies) for e in self._adopted(view)]
        return {k: t.node for t in takeovers for k in t.policies if api.get(k) == t.origin}

    def serving(self) -> dict[str, str]:
        """entry id -> the node serving it by takeover (ours and those seen)."""
        with self._lock:
            return {**{i: t.node for i, t in self._seen.items()}, **{i: self.node for i in self._mine}}

    def peers_alive(self) -> frozenset[str]:
        with self._lock:
            return self.liveness.seen_alive()
