"""iptables/ip6tables and ipset: read what we own, write whole chains atomically (the other half of apply).

Writes go through `iptables-restore --noflush` (declaring one of our chains flushes and refills it in
one transaction, nobody else's rules are touched) and `ipset restore -exist`. The backend (legacy or
nft) is detected once: whichever already holds rules of kube-proxy/kubelet, else the one with more.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass

from egress_cni.dataplane.plan import IPV4, IPV6, TABLES, Chain, IPSet, rule_tag
from egress_cni.dataplane.render import JUMP_COMMENT
from egress_cni.lowlevel.command import CommandError as CommandError  # re-exported: callers catch xtables.CommandError
from egress_cni.lowlevel.command import run as run  # conntrack -L and the benches run through here

log = logging.getLogger(__name__)
_COUNTED = re.compile(r"^\[(\d+):(\d+)\]\s+")
BACKENDS = ("nft", "legacy")


def detect_backend(mode: str = "auto") -> str:
    if mode in BACKENDS:
        return mode
    if mode != "auto":
        raise ValueError(f"iptables backend {mode!r}: accepted auto, nft, legacy")
    scores = {}
    for backend in BACKENDS:
        binary = f"iptables-{backend}-save"
        if not shutil.which(binary):
            continue
        try:
            text = run([binary])
        except (CommandError, OSError):
            continue
        scores[backend] = (("KUBE-IPTABLES" in text or "KUBE-KUBELET" in text), len(text.splitlines()))
    if not scores:
        return "nft" if shutil.which("iptables-nft-restore") else "legacy"
    return max(scores, key=lambda b: (scores[b], b == "nft"))


@dataclass
class SavedTable:
    chains: dict[str, list[str]]  # our chains -> rule specs
    hooks: dict[str, list[str]]  # built-in chains -> rule specs
    counters: dict[str, tuple[int, int]]  # rule tag -> (packets, bytes)


class Xtables:
    def __init__(self, backend: str, prefix: str) -> None:
        self.backend = backend
        self.prefix = prefix + "-"

    def _bin(self, family: int, tool: str) -> str:
        return f"{'iptables' if family == IPV4 else 'ip6tables'}-{self.backend}-{tool}"

    def save(self, family: int, table: str) -> SavedTable:
        return parse_save(run([self._bin(family, "save"), "-c", "-t", table]), self.prefix)

    def read(self, families: list[int]) -> tuple[set[Chain], set[tuple[int, str, str]], dict[tuple[int, str], SavedTable]]:
        """Our chains (with empty hook), the keys whose jump is first in its built-in chain, raw tables."""
        chains: set[Chain] = set()
        jumps_ok: set[tuple[int, str, str]] = set()
        saved: dict[tuple[int, str], SavedTable] = {}
        for f in families:
            for table in TABLES:
                st = saved[(f, table)] = self.save(f, table)
                _collect(f, table, st, chains, jumps_ok)
        return chains, jumps_ok, saved

    def glance(self, families: list[int]) -> tuple[set[Chain], set[tuple[int, str, str]]]:
        """`read` for the drift check: one `iptables-save` per family (every table), no counters."""
        chains: set[Chain] = set()
        jumps_ok: set[tuple[int, str, str]] = set()
        for f in families:
            for table, text in split_tables(run([self._bin(f, "save")])).items():
                if table in TABLES:
                    _collect(f, table, parse_save(text, self.prefix), chains, jumps_ok)
        return chains, jumps_ok

    def restore(self, family: int, text: str) -> None:
        if text.strip():
            run([self._bin(family, "restore"), "--noflush", "-w", "5"], stdin=text)


def parse_save(text: str, prefix: str) -> SavedTable:
    """`iptables-save -c` output of one table -> our chains, the built-in chains, our rules' counters."""
    chains: dict[str, list[str]] = {}
    hooks: dict[str, list[str]] = {}
    counters: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        if line.startswith(":"):
            name = line[1:].split()[0]
            (chains if name.startswith(prefix) else hooks).setdefault(name, [])
            continue
        m = _COUNTED.match(line)
        if m:
            line = line[m.end():]
        if not line.startswith("-A "):
            continue
        _, chain, spec = line.split(" ", 2)
        ours = chain.startswith(prefix)
        (chains if ours else hooks).setdefault(chain, []).append(spec)
        if m and ours:
            counters[rule_tag(spec)] = (int(m.group(1)), int(m.group(2)))
    return SavedTable(chains, hooks, counters)


def _collect(family: int, table: str, st: SavedTable, chains: set[Chain], jumps_ok: set[tuple[int, str, str]]) -> None:
    """Our chains of one saved table into `chains`, the keys whose jump is first in its built-in chain
    (and there once) into `jumps_ok`."""
    hook_of = {_target(r): hook for hook, rules in st.hooks.items() for r in rules if JUMP_COMMENT in r}
    for name, rules in st.chains.items():
        chains.add(Chain(family, table, name, hook_of.get(name, ""), tuple(rules)))
    for rules in st.hooks.values():
        jumps = [_target(r) for r in rules if JUMP_COMMENT in r]
        if jumps and JUMP_COMMENT in rules[0] and jumps.count(jumps[0]) == 1:
            jumps_ok.add((family, table, jumps[0]))


def split_tables(text: str) -> dict[str, str]:
    """Whole `iptables-save` output -> each table's part (from its `*table` line to its COMMIT)."""
    out: dict[str, list[str]] = {}
    lines: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            lines = out.setdefault(line[1:].strip(), [])
        elif lines is not None:
            lines.append(line)
    return {table: "\n".join(lines) for table, lines in out.items()}


def _target(spec: str) -> str:
    return spec.rstrip().rsplit(" ", 1)[-1]


def read_ipsets(prefix: str) -> set[IPSet]:
    """Our sets (name starts with `<prefix>-`) with their members, from `ipset save`."""
    sets: dict[str, tuple[int, set[str]]] = {}
    for line in run(["ipset", "save"]).splitlines():
        parts = line.split()
        if len(parts) < 3 or not parts[1].startswith(prefix + "-"):
            continue
        if parts[0] == "create":
            family = IPV6 if "inet6" in parts else IPV4
            sets[parts[1]] = (family, set())
        elif parts[0] == "add" and parts[1] in sets:
            sets[parts[1]][1].add(parts[2])
    return {IPSet(n, f, frozenset(m)) for n, (f, m) in sets.items()}


def ipset_sizes(prefix: str) -> dict[str, int]:
    """Our sets and their member counts, from `ipset list -t` (headers only: its cost does not grow
    with the members)."""
    return parse_ipset_terse(run(["ipset", "list", "-t"]), prefix)


def parse_ipset_terse(text: str, prefix: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    name = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "Name":
            name = value.strip()
        elif key == "Number of entries" and name.startswith(prefix + "-"):
            sizes[name] = int(value)
    return sizes


def ipset_restore(script: str) -> None:
    if script.strip():
        run(["ipset", "restore", "-exist"], stdin=script)
