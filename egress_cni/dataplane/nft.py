"""The `nftables` engine's kernel side: our own table per family, read as JSON and written as one
transaction per family (the scripts come from dataplane/nftscript.py), through libnftables in this
process (ctypes): the `nft` program initialises its parser and tables on every run, the library once.
"""

from __future__ import annotations

import ctypes
import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from egress_cni.dataplane import nftcache, nftlink, nftread
from egress_cni.dataplane.nftrender import BASE, nft_family, split_chain_name
from egress_cni.dataplane.plan import IPV4, IPV6, Chain, IPSet, rule_tag
from egress_cni.lowlevel.command import CommandError

log = logging.getLogger(__name__)
_HOOK_OF = {spec: key for key, spec in BASE.items()}  # (type, hook, priority) -> (table, built-in chain)
_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON (libnftables.h)


class NftError(CommandError):
    """libnftables refused a command; the message is its error buffer."""


class Libnft:
    """One libnftables context for the life of the process (not thread-safe: one lock)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_int
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def run(self, commands: str, *, json_output: bool = False) -> str:
        with self._lock:
            self._lib.nft_ctx_output_set_flags(self._ctx, _OUTPUT_JSON if json_output else 0)
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
            out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if rc != 0:
            raise NftError(["libnftables"], rc, err, commands)
        return out


_shared: Libnft | None = None
_shared_lock = threading.Lock()


def library() -> Libnft:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Libnft()
        return _shared


def usable() -> bool:
    """libnftables loads and this kernel answers it."""
    try:
        library().run("list tables")
    except (OSError, CommandError):
        return False
    return True


@dataclass
class NftView:
    chains: set[Chain] = field(default_factory=set)
    jumps_ok: set[tuple[int, str, str]] = field(default_factory=set)  # base chains on their hook and priority
    sets: set[IPSet] = field(default_factory=set)
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)  # rule tag -> (packets, bytes)
    slot_chains: set[tuple[int, str]] = field(default_factory=set)  # the decision cache's (dataplane/nftcache.py)
    caches: set[tuple[int, str]] = field(default_factory=set)  # its maps of pairs: emptied with every new member


class Nftables:
    def __init__(self, table: str) -> None:
        self.table = table
        self.lib = library()

    def read(self, families: list[int]) -> NftView:
        """Chains, rules and sets over nfnetlink, never the decision cache's pairs (dataplane/nftread.py)."""
        view = NftView()
        for f in families:
            doc = nftread.read_table(self.table, f, skip=nftcache.NAMES)
            if doc is not None:  # else: not created yet
                parse_table(doc, f, view)
        return view

    def apply(self, script: str) -> None:
        self.lib.run(script)

    def add_elements(self, entries: list[tuple[str, str]], caches: Iterable[tuple[int, str]] = ()) -> None:
        """The fast path's members in one nfnetlink batch (dataplane/nftlink.py), which also empties
        the decision cache's maps of pairs (`caches`: (family, name)): a new member can change a pair's
        decision. When the batch is refused (a member inside a prefix already there: it matches
        already), one at a time through libnftables, ignoring exactly that refusal."""
        if not entries:
            return
        caches = sorted(caches)
        if all("/" not in m for _, m in entries):
            try:
                nftlink.add_addresses(self.table, entries, flush=caches)
                return
            except (OSError, ValueError) as exc:  # refused as a whole (e.g. inside a prefix): the slow path says which
                log.debug("fast path batch refused", extra={"error": str(exc)})
        lines = [f"add element {nft_family(IPV6 if ':' in m else IPV4)} {self.table} {name} {{ {m} }}" for name, m in entries]
        flushes = [f"flush {'map' if name == nftcache.DECIDED else 'set'} {nft_family(f)} {self.table} {name}" for f, name in caches]
        try:
            self.lib.run("\n".join(lines + flushes) + "\n")
            return
        except CommandError:
            pass
        for line in lines:
            try:
                self.lib.run(line + "\n")
            except CommandError as exc:
                if "overlaps" not in str(exc) and "conflicting" not in str(exc):
                    raise
        if flushes:
            self.lib.run("\n".join(flushes) + "\n")

    def delete_tables(self, families: list[int]) -> None:
        for f in families:
            try:
                self.lib.run(f"delete table {nft_family(f)} {self.table}")
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
        if "set" in item or "map" in item:
            s = item.get("set") or item["map"]
            if s["name"] in nftcache.NAMES:  # the cache's: their elements are the packets', not ours
                if s["name"] in (nftcache.DECIDED, nftcache.UNDECIDED):
                    view.caches.add((family, s["name"]))
            elif "set" in item:
                view.sets.add(IPSet(s["name"], family, frozenset(_member(e) for e in s.get("elem", []))))
        elif "chain" in item:
            name = item["chain"]["name"]
            if nftcache.is_slot_chain(name):
                view.slot_chains.add((family, name))
                continue
            heads[name] = item["chain"]
            rules.setdefault(name, [])
        elif "rule" in item:
            r = item["rule"]
            comment = r.get("comment", "")
            if comment.startswith(nftcache.RULE_COMMENT):
                continue
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
