"""The cheap drift check's data: what one glance at the kernel sees, and its comparison with the last
applied desired state (pure).

A `Glance` is `read_actual` without its expensive parts: set member *counts* (`ipset list -t`)
instead of members, one `iptables-save` per family instead of one per table and family, no rule
counters and no sysctls. `compare(desired, glance)` names every difference as a `Drift`; any one of
them makes the agent run a full reconcile at once (agent/drift.py). The apply stays the only code
that changes the kernel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from egress_cni.dataplane.plan import Dataplane, fingerprint

ChainKey = tuple[int, str, str]  # (family, table, chain)
KINDS = ("link", "address", "eip", "route", "rule", "neighbour", "fdb", "ipset", "chain", "jump")


@dataclass(frozen=True)
class Glance:
    """`net` holds what netlink shows as the full read would (link, addresses, routes, rules,
    neighbours, FDB entries, and `jumps_ok`); sets and chains are summed up instead."""

    net: Dataplane = field(default_factory=Dataplane)
    set_sizes: tuple[tuple[str, int], ...] = ()  # our sets (by prefix) and their member counts
    chains: tuple[tuple[ChainKey, tuple[str, ...]], ...] = ()  # our chains and their rules' tags


@dataclass(frozen=True, order=True)
class Drift:
    kind: str  # one of KINDS
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


def glance_of(dp: Dataplane) -> Glance:
    """What a glance at a kernel holding exactly `dp` sees (the fake kernel, tests)."""
    return Glance(net=replace(dp, ipsets=frozenset(), chains=frozenset(), sysctls=frozenset()),
                  set_sizes=tuple(sorted((s.name, len(s.members)) for s in dp.ipsets)),
                  chains=tuple(sorted((c.key, fingerprint(c)) for c in dp.chains)))


def _sets_of(kind: str, want: Iterable[object], have: Iterable[object]) -> list[Drift]:
    want, have = set(want), set(have)
    return ([Drift(kind, f"missing {x!r}") for x in sorted(want - have, key=repr)]
            + [Drift(kind, f"unexpected {x!r}") for x in sorted(have - want, key=repr)])


def compare(desired: Dataplane, seen: Glance, *, pending: Iterable[tuple[str, str]] = (),
            contested: frozenset[str] = frozenset()) -> tuple[Drift, ...]:
    """Every difference between the desired dataplane of the last successful, complete reconcile and
    a glance at the kernel. `pending`: (set, member) pairs the CNI fast path added since, which count
    as desired; `contested`: EIPs that apply left unclaimed because another node answers for them
    (retried by the fencing thread's backoff, not here)."""
    out: list[Drift] = []
    if desired.link != seen.net.link:
        out.append(Drift("link", "missing" if seen.net.link is None else f"differs: {seen.net.link!r}"))
    want_addr = {a for a in desired.addresses if not (a.eip and a.cidr.split("/")[0] in contested)}
    out += _sets_of("eip", (a for a in want_addr if a.eip), (a for a in seen.net.addresses if a.eip))
    out += _sets_of("address", (a for a in want_addr if not a.eip), (a for a in seen.net.addresses if not a.eip))
    out += _sets_of("route", desired.routes, seen.net.routes)
    out += _sets_of("rule", desired.rules, seen.net.rules)
    out += _sets_of("neighbour", desired.neighbours, seen.net.neighbours)
    out += _sets_of("fdb", desired.fdb, seen.net.fdb)
    out += _set_sizes(desired, dict(seen.set_sizes), pending)
    have_chains: Mapping[ChainKey, tuple[str, ...]] = dict(seen.chains)
    for c in sorted(desired.chains):
        have = have_chains.get(c.key)
        if have is None:
            out.append(Drift("chain", f"{c.table} {c.name} (v{c.family}) missing"))
        elif have != fingerprint(c):
            counts = f"has {len(have)} rules, want {len(c.rules)}" if len(have) != len(c.rules) else "rules differ"
            out.append(Drift("chain", f"{c.table} {c.name} (v{c.family}) {counts}"))
        if c.key not in seen.net.jumps_ok:
            out.append(Drift("jump", f"{c.table} {c.hook} -> {c.name} (v{c.family}) not first"))
    want_keys = {c.key for c in desired.chains}
    out += [Drift("chain", f"{t} {n} (v{f}) unexpected") for (f, t, n) in sorted(have_chains) if (f, t, n) not in want_keys]
    return tuple(out)


def _set_sizes(desired: Dataplane, have: Mapping[str, int], pending: Iterable[tuple[str, str]]) -> list[Drift]:
    extra: dict[str, set[str]] = {}
    for name, member in pending:
        extra.setdefault(name, set()).add(member)
    out = []
    for s in sorted(desired.ipsets):
        want = len(s.members | extra.get(s.name, set()))
        got = have.get(s.name)
        if got is None:
            out.append(Drift("ipset", f"{s.name} missing"))
        elif got != want:
            out.append(Drift("ipset", f"{s.name} has {got} members, want {want}"))
    names = {s.name for s in desired.ipsets}
    out += [Drift("ipset", f"{n} unexpected") for n in sorted(have) if n not in names]
    return out
