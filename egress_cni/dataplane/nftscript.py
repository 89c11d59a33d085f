"""One family's `nft -f` transaction for our table: sets, members, chains and the decision cache (pure)."""

from __future__ import annotations

from collections.abc import Iterable

from egress_cni.dataplane import nftcache
from egress_cni.dataplane.nftcache import ADMIT, DECIDE, CachedChain
from egress_cni.dataplane.nftrender import chain_decl, chain_name, nft_family, nft_rule, set_decl
from egress_cni.dataplane.plan import Chain, IPSet


def _elements(members: Iterable[str]) -> str:
    return ", ".join(sorted(members))


def script(table: str, family: int, *, sets: Iterable[IPSet] = (),
           add_members: Iterable[tuple[str, str]] = (), del_members: Iterable[tuple[str, str]] = (),
           chains: Iterable[Chain] = (), drop_chains: Iterable[Chain] = (), destroy_sets: Iterable[str] = (),
           slot_chains: Iterable[str] = ()) -> str:
    """One `nft -f` transaction for one family's table: it all applies or none of it does, so no
    packet meets half a change (no nat-before-mangle ordering as with iptables-restore's per-table
    commits). `sets` are created (idempotent) with their members; members are removed before others
    are added (an interval set refuses an overlap even with an element the same transaction deletes
    later); chains and sets are dropped last. Whatever it changes, it empties the decision cache
    (dataplane/nftcache.py) in the same commit; `slot_chains` are the cache's chains in the table
    now, dropped when the chain they serve is rewritten without them."""
    sets, chains, drop_chains = sorted(sets), sorted(chains), sorted(drop_chains)
    add_members, del_members, destroy_sets = list(add_members), list(del_members), sorted(destroy_sets)
    fam = nft_family(family)
    where = f"{fam} {table}"
    lines = [f"add table {where}"]
    if not (sets or add_members or del_members or chains or drop_chains or destroy_sets):
        return "\n".join(lines) + "\n"
    lines += nftcache.declarations(where, family)
    for s in sets:
        lines.append(f"add set {where} {s.name} {set_decl(s)}")
        if s.members:
            lines.append(f"add element {where} {s.name} {{ {_elements(s.members)} }}")
    lines += _member_lines("delete", where, del_members)  # first: a prefix replacing the addresses it covers
    lines += _member_lines("add", where, add_members)
    lines += [f"flush map {where} {nftcache.DECIDED}", f"flush set {where} {nftcache.UNDECIDED}"]

    by_key = {(c.table, c.hook): c for c in chains}
    decisions = nftcache.decide(by_key[DECIDE], family) if DECIDE in by_key else None
    cached: dict[tuple[str, str], CachedChain] = {}
    if decisions is not None:
        cached[DECIDE] = decisions.chain
    if ADMIT in by_key and (admitted := nftcache.admit(by_key[ADMIT], family, decisions)) is not None:
        cached[ADMIT] = admitted
    touched = {key[0] for key in by_key if key in (DECIDE, ADMIT)}
    touched |= {c.table for c in drop_chains if (c.table, c.hook) in (DECIDE, ADMIT)}
    kept: set[str] = set()
    for t in sorted(touched):
        for vmap in nftcache.SLOTS[t]:
            lines.append(f"flush map {where} {vmap}")
            slots = [s for key, cc in cached.items() if key[0] == t for s in cc.slots if s.vmap == vmap]
            for slot in slots:
                kept.add(slot.chain)
                lines += [f"add chain {where} {slot.chain}", f"flush chain {where} {slot.chain}",
                          f"add rule {where} {slot.chain} {slot.rule}"]
            if slots:
                lines.append(f"add element {where} {vmap} {{ {', '.join(f'0x{x.value:x} : goto {x.chain}' for x in slots)} }}")

    for c in chains:
        name = chain_name(c.table, c.name)
        lines += [f"add chain {where} {name} {chain_decl(c)}", f"flush chain {where} {name}"]
        bodies = cached[(c.table, c.hook)].rules if (c.table, c.hook) in cached else [nft_rule(r, c.table, family) for r in c.rules]
        lines += [f"add rule {where} {name} {body}" for body in bodies]
    for c in drop_chains:
        name = chain_name(c.table, c.name)
        lines += [f"flush chain {where} {name}", f"delete chain {where} {name}"]
    for name in sorted(slot_chains):
        if name not in kept and any(name.startswith(f"{nftcache.SLOT_CHAIN}{t}-") for t in touched):
            lines += [f"flush chain {where} {name}", f"delete chain {where} {name}"]
    lines += [f"delete set {where} {name}" for name in destroy_sets]
    return "\n".join(lines) + "\n"


def _member_lines(verb: str, where: str, members: Iterable[tuple[str, str]]) -> list[str]:
    by_set: dict[str, list[str]] = {}
    for name, member in members:
        by_set.setdefault(name, []).append(member)
    return [f"{verb} element {where} {name} {{ {_elements(ms)} }}" for name, ms in sorted(by_set.items())]


def golden_text(table: str, family: int, sets: Iterable[IPSet], chains: Iterable[Chain]) -> str:
    """The golden form: the script that creates the table from nothing."""
    return script(table, family, sets=[s for s in sets if s.family == family],
                  chains=[c for c in chains if c.family == family])
