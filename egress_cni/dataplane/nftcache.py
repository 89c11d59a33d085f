"""The nftables engine's decision cache: one map lookup per packet, whatever the number of policies (pure).

A selected pod's packet meets the policies' rules in order and the first match decides (a gateway's
mark, the local mark, a drop). The decision depends only on the packet's source and destination
(and on sets and rules that change only by a transaction of ours), so the first packet of each pair
walks the rules and leaves its decision in `decided` (source . destination -> slot); the pair's
later packets take it from there and jump to the slot's chain, which holds that policy's verdict
and a counter with the policy rule's own comment (the per-policy counters stay exact: a packet is
counted by the rule on its walk or by its slot chain, never both). A pair no policy matches is
kept in `undecided` and returns at once. The gateway's FORWARD chain looks the same pair up in
`decided` (the decision of its mangle chain, one rule per policy in the same order) to admit
tunnelled traffic, so it fills no map of its own: a full map costs speed, never a verdict.

Every transaction of ours that can change a decision (any chain, set or member) empties both maps in
the same commit. A packet still walking the old rules during the commit can leave a stale entry, so
the slot values carry a hash of the rules that made them (`generation`): an entry of an older
generation finds no slot, its mark is reset and the packet walks the rules again. Entries expire
`TIMEOUT` after their first packet (a hit does not refresh them), so each pair is decided again at
least that often. Drops (`nogateway`) are never kept: they stay on the walk.

IPv4 only for now: libnftables 1.0.6 (Debian bookworm, our image's) aborts on a dynamic update of a
map whose key is longer than 16 bytes (`netlink_gen_expr: Assertion dreg < ctx->reg_low`), and an
IPv6 pair is 32. IPv6 traffic walks the rules as before.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from egress_cni.dataplane.nftrender import nft_family, nft_matches, nft_rule
from egress_cni.dataplane.plan import DECIDING, IPV4, Chain

DECIDE, ADMIT = DECIDING  # mangle: first match wins (steer, local, nogateway); filter: the gateway admits its tunnel's
KEPT_ROLES = ("steer", "local")  # decisions kept in `decided` (a mark)
DECISION_ROLES = (*KEPT_ROLES, "nogateway")
DECIDED, UNDECIDED = "decided", "undecided"
ADMIT_ROLES = {"tunnel": "slots-filter", "direct": "slots-direct"}  # FORWARD's runs (tunnelled, routed) -> their verdict maps
SLOTS = {"mangle": ("slots-mangle",), "filter": tuple(ADMIT_ROLES.values())}  # table -> its verdict maps
NAMES = frozenset({DECIDED, UNDECIDED, *(m for ms in SLOTS.values() for m in ms)})
RULE_COMMENT = "egw-cache:"  # the cache's own rules (not the policies'): skipped when read back
SLOT_CHAIN = "slot-"  # slot-<table>-<digest of the policy rule>
TIMEOUT = "10s"
SIZE = 65536
MAX_SLOTS = 0xFFF
_TAG = re.compile(r"--comment (egw:([0-9a-f]{10}):([a-z-]+)(?::(\S*))?)")
_GUARD = re.compile(r"^-m mark ! --mark (0x[0-9a-f]+)/(0x[0-9a-f]+) ")
_SET_MARK = re.compile(r"-j MARK --set-xmark (0x[0-9a-f]+)/0xffffffff$")


@dataclass(frozen=True)
class Slot:
    value: int
    chain: str  # its chain in our table
    rule: str  # the nft rule in it: the policy's counter and verdict, under the policy rule's comment
    vmap: str  # the verdict map that jumps to it


@dataclass(frozen=True)
class CachedChain:
    rules: tuple[str, ...]  # the base chain's nft rule bodies
    slots: tuple[Slot, ...]


def declarations(where: str, family: int) -> list[str]:
    """The cache's maps, created if missing (the same declaration every time)."""
    addr = "ipv4_addr" if family == IPV4 else "ipv6_addr"
    dynamic = f"flags dynamic,timeout; timeout {TIMEOUT}; size {SIZE};"
    return [f"add map {where} {DECIDED} {{ type {addr} . {addr} : mark; {dynamic} }}",
            f"add set {where} {UNDECIDED} {{ type {addr} . {addr}; {dynamic} }}",
            *(f"add map {where} {name} {{ type mark : verdict; }}" for names in SLOTS.values() for name in names)]


def is_slot_chain(nft_name: str) -> bool:
    return nft_name.startswith(SLOT_CHAIN)


def _tag(spec: str) -> tuple[str, str, str, str]:
    """(comment, digest, role, policy key) of one of our rule specs."""
    m = _TAG.search(spec)
    return (m.group(1), m.group(2), m.group(3), m.group(4) or "") if m else ("", "", "", "")


def _pair(family: int) -> str:
    addr = nft_family(family)
    return f"{addr} saddr . {addr} daddr"


def _slot_rule(spec: str, table: str, family: int) -> str:
    """A policy rule's counter and verdict without its matches, under its comment."""
    comment = _tag(spec)[0]
    target = spec.rpartition(" -j ")[2]
    return nft_rule(f"-m comment --comment {comment} -j {target}", table, family)


@dataclass(frozen=True)
class Decisions:
    """What the mangle chain's cache decided: the filter chain's lookups need the same slots."""

    chain: CachedChain
    local: dict[str, int]  # policy key -> the slot of its `local` rule
    local_mark: str
    stale: str  # the match of a slot value of any generation


def decide(c: Chain, family: int) -> Decisions | None:
    """The mangle chain with its cache, or None when its rules are not of the expected shape (then
    it is written as it is, and every packet walks it)."""
    if family != IPV4:
        return None  # libnftables 1.0.6 (bookworm) cannot write an update of a map keyed by two IPv6 addresses
    tags = [_tag(r) for r in c.rules]
    start = next((i for i, t in enumerate(tags) if t[2] in DECISION_ROLES), None)
    if start is None or any(t[2] not in DECISION_ROLES for t in tags[start:]):
        return None
    guards = {(m.group(1), m.group(2)) if (m := _GUARD.match(r)) else ("", "") for r in c.rules[start:]}
    kept = [i for i in range(start, len(c.rules)) if tags[i][2] in KEPT_ROLES]
    if len(guards) != 1 or ("", "") in guards or not kept or len(kept) > MAX_SLOTS:
        return None
    base, mask = (int(v, 16) for v in next(iter(guards)))
    if mask & 0xFFFFFF or not mask:
        return None  # the slot bits live below the mask: 24 of them
    top = (base ^ mask) & mask  # under the mask never our own marks, so the policy rules still match a stale one
    generation = int(hashlib.sha1("|".join(t[0] for t in tags[start:]).encode()).hexdigest()[:3], 16)
    pair, guard = _pair(family), f"meta mark & 0x{mask:x} != 0x{base:x} ct direction original"
    stale = f"meta mark & 0x{mask:x} == 0x{top:x}"
    rules = [nft_rule(r, c.table, family) for r in c.rules[:start]]
    rules += [f'{guard} meta mark set {pair} map @{DECIDED} meta mark vmap @{SLOTS["mangle"][0]} comment "{RULE_COMMENT}hit"',
              f'{stale} meta mark set 0x0 comment "{RULE_COMMENT}stale"',
              f'{pair} @{UNDECIDED} return comment "{RULE_COMMENT}none"']
    slots: list[Slot] = []
    local: dict[str, int] = {}
    local_marks: set[str] = set()
    for i in range(start, len(c.rules)):
        spec, (_, digest, role, key) = c.rules[i], tags[i]
        if role not in KEPT_ROLES:
            rules.append(nft_rule(spec, c.table, family))
            continue
        value = top | generation << 12 | len(slots) + 1
        rules.append(nft_rule(spec, c.table, family, then=f"add @{DECIDED} {{ {pair} : 0x{value:x} }}"))
        slots.append(Slot(value, f"{SLOT_CHAIN}mangle-{digest}", _slot_rule(spec, c.table, family), SLOTS["mangle"][0]))
        if role == "local" and (m := _SET_MARK.search(spec)):
            local.setdefault(key, value)
            local_marks.add(m.group(1))
    rules.append(f'{guard} add @{UNDECIDED} {{ {pair} }} comment "{RULE_COMMENT}tail"')
    mark = next(iter(local_marks)) if len(local_marks) == 1 else ""
    return Decisions(CachedChain(tuple(rules), tuple(slots)), local if mark else {}, mark, stale)


def admit(c: Chain, family: int, decisions: Decisions | None) -> CachedChain | None:
    """The gateway's FORWARD chain with a lookup of the mangle chain's decisions in front of each run
    of its policy rules (`tunnel`, `direct`: a tunnelled or routed packet's first matching `local` rule
    there is the first matching rule of the run here: the same policies in the same order), or None:
    written as it is."""
    if decisions is None or not decisions.local:
        return None
    tags = [_tag(r) for r in c.rules]
    runs: dict[int, tuple[str, list[int], str]] = {}  # first index -> (role, indices, link)
    for role in ADMIT_ROLES:
        run = [i for i, t in enumerate(tags) if t[2] == role]
        if not run:
            continue
        shared = {r.partition(" -m set ")[0] for r in (c.rules[i] for i in run)}
        if run != list(range(run[0], run[-1] + 1)) or len(shared) != 1:
            return None
        runs[run[0]] = (role, run, next(iter(shared)))
    if not runs:
        return None
    mark = decisions.local_mark
    rules: list[str] = []
    slots: list[Slot] = []
    for i, spec in enumerate(c.rules):
        if i in runs:
            role, run, link = runs[i]
            vmap = ADMIT_ROLES[role]
            if len(runs) == 1 and link.startswith("-i ") and len(link.split()) == 2 and all(
                    r.startswith(link + " ") for r in c.rules[i:]):
                # every rule from here on needs the link: the rest (the replies' ACKs) leave at once
                rules.append(f'{nft_matches("! " + link, family)} return comment "{RULE_COMMENT}other-link"')
            rules += [f'{nft_matches(link, family)} meta mark {mark} ct direction original meta mark set {_pair(family)}'
                      f' map @{DECIDED} meta mark vmap @{vmap} comment "{RULE_COMMENT}hit"',
                      f'{decisions.stale} meta mark set {mark} comment "{RULE_COMMENT}stale"']  # it was `mark`: see the hit
            for j in run:
                comment, digest, _, key = tags[j]
                value = decisions.local.get(key)
                if value is not None:
                    slots.append(Slot(value, f"{SLOT_CHAIN}filter-{digest}", nft_rule(
                        f"-m comment --comment {comment} -j MARK --set-xmark {mark}/0xffffffff", c.table, family), vmap))
        rules.append(nft_rule(spec, c.table, family))
    return CachedChain(tuple(rules), tuple(slots))
