"""The `nftables` engine's kernel side: our own table per family, read with `nft -j`, written with one
`nft -f` transaction per family (the scripts come from dataplane/nftrender.py)."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from typing import Any

from egress_cni.dataplane.nftrender import BASE, nft_family, split_chain_name
from egress_cni.dataplane.plan import IPV4, IPV6, Chain, IPSet, rule_tag
from egress_cni.lowlevel.command import CommandError, run

log = logging.getLogger(__name__)
_HOOK_OF = {spec: key for key, spec in BASE.items()}  # (type, hook, priority) -> (table, built-in chain)


def usable() -> bool:
    """The `nft` tool is here and this kernel answers it."""
    if not shutil.which("nft"):
        return False
    try:
        run(["nft", "list", "tables"])
    except (CommandError, OSError):
        return False
    return True


@dataclass
class NftView:
    chains: set[Chain] = field(default_factory=set)
    jumps_ok: set[tuple[int, str, str]] = field(default_factory=set)  # base chains on their hook and priority
    sets: set[IPSet] = field(default_factory=set)
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)  # rule tag -> (packets, bytes)


class Nftables:
    def __init__(self, table: str) -> None:
        self.table = table

    def read(self, families: list[int]) -> NftView:
        view = NftView()
        for f in families:
            try:
                text = run(["nft", "-j", "list", "table", nft_family(f), self.table])
            except CommandError as exc:
                if "No such file" in str(exc):
                    continue  # not created yet
                raise
            parse_table(json.loads(text), f, view)
        return view

    def apply(self, script: str) -> None:
        run(["nft", "-f", "-"], stdin=script)

    def add_elements(self, entries: list[tuple[str, str]]) -> None:
        """The fast path's members in one transaction; when it is refused (a member inside a prefix
        already there: it matches already), one at a time, ignoring exactly that refusal."""
        lines = [f"add element {nft_family(IPV6 if ':' in m else IPV4)} {self.table} {name} {{ {m} }}" for name, m in entries]
        if not lines:
            return
        try:
            run(["nft", "-f", "-"], stdin="\n".join(lines) + "\n")
            return
        except CommandError:
            pass
        for line in lines:
            try:
                run(["nft", "-f", "-"], stdin=line + "\n")
            except CommandError as exc:
                if "overlaps" not in str(exc) and "conflicting" not in str(exc):
                    raise

    def delete_tables(self, families: list[int]) -> None:
        for f in families:
            try:
                run(["nft", "delete", "table", nft_family(f), self.table])
            except CommandError as exc:
                if "No such file" not in str(exc):
                    raise


def _member(elem: Any) -> str:
    if isinstance(elem, str):
        return elem
    if isinstance(elem, dict) and "prefix" in elem:
        p = elem["prefix"]
        full = 128 if ":" in p["addr"] else 32
        return p["addr"] if p["len"] == full else f"{p['addr']}/{p['len']}"
    if isinstance(elem, dict) and "range" in elem:
        return "-".join(elem["range"])  # never written by us: differs from every desired member
    return json.dumps(elem, sort_keys=True)


def parse_table(doc: dict[str, Any], family: int, view: NftView) -> None:
    """`nft -j list table` output of one of our tables -> its chains, sets and counters into `view`."""
    rules: dict[str, list[str]] = {}
    heads: dict[str, dict[str, Any]] = {}
    for item in doc.get("nftables", []):
        if "set" in item:
            s = item["set"]
            view.sets.add(IPSet(s["name"], family, frozenset(_member(e) for e in s.get("elem", []))))
        elif "chain" in item:
            heads[item["chain"]["name"]] = item["chain"]
            rules.setdefault(item["chain"]["name"], [])
        elif "rule" in item:
            r = item["rule"]
            comment = r.get("comment", "")
            spec = f"-m comment --comment {comment}" if comment else "?" + json.dumps(r.get("expr"), sort_keys=True)
            rules.setdefault(r["chain"], []).append(spec)
            counter = next((e["counter"] for e in r.get("expr", []) if isinstance(e, dict) and "counter" in e), None)
            if comment and isinstance(counter, dict):
                tag = rule_tag(spec)
                old = view.counters.get(tag, (0, 0))
                view.counters[tag] = (old[0] + int(counter.get("packets", 0)), old[1] + int(counter.get("bytes", 0)))
    for name, head in heads.items():
        table, chain = split_chain_name(name)
        hooked = _HOOK_OF.get((str(head.get("type", "")), str(head.get("hook", "")), int(head.get("prio", 0))))
        view.chains.add(Chain(family, table, chain, hooked[1] if hooked and hooked[0] == table else "", tuple(rules[name])))
        if hooked is not None and hooked[0] == table:
            view.jumps_ok.add((family, table, chain))
