"""Our nftables table read over nfnetlink, in the shape of an `nft -j list table` document.

libnftables fetches every element of every set in the table before it lists a single rule, the
decision cache's pairs included (dataplane/nftcache.py): `bench/drift.py --cached-pairs 60000`. The kernel dumps
rules, chains, set declarations and one set's elements on their own, so all of it comes from
nfnetlink dumps here, skipping the sets the caller names (the cache's). What is read is what
`nft.parse_table` needs: chains with their hook and priority, each rule's chain, comment and counter,
set and map names, the other sets' members (an interval set's elements are starts and ends: they
read back as the addresses and prefixes written).
"""

from __future__ import annotations

import struct
from typing import Any

from egress_cni.api.net import format_address
from egress_cni.lowlevel import netlink as ll

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETSET, NFT_MSG_GETSETELEM = 4, 7, 10, 13
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_TYPE = 1, 3, 4, 7
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_HANDLE, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 1, 2, 3, 4, 7
NFTA_LIST_ELEM, NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 1, 2
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_FLAGS = 1, 2, 3
NFT_SET_ANONYMOUS, NFT_SET_MAP = 0x1, 0x8
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_FLAGS, NFTA_DATA_VALUE = 1, 3, 1
NFT_SET_ELEM_INTERVAL_END = 1
NFTNL_UDATA_RULE_COMMENT = 0
HOOKS = {0: "prerouting", 1: "input", 2: "forward", 3: "output", 4: "postrouting"}
NFPROTO = {4: 2, 6: 10}
_NFGEN = struct.Struct("=BBH")
_BE32, _BE64 = struct.Struct("!I"), struct.Struct("!Q")
_COUNTER = b"counter\0"


def _text(raw: bytes | None) -> str:
    return raw.split(b"\0", 1)[0].decode() if raw else ""


def _list(raw: bytes) -> list[bytes]:
    """The payloads of a nested list attribute (NFTA_LIST_ELEM each)."""
    out, offset = [], 0
    while offset + 4 <= len(raw):
        length, kind = struct.unpack_from("=HH", raw, offset)
        if length < 4:
            break
        if kind & 0x3FFF == NFTA_LIST_ELEM:
            out.append(raw[offset + 4:offset + length])
        offset += (length + 3) & ~3
    return out


def _comment(userdata: bytes) -> str:
    offset = 0
    while offset + 2 <= len(userdata):
        kind, length = userdata[offset], userdata[offset + 1]
        if kind == NFTNL_UDATA_RULE_COMMENT:
            return _text(userdata[offset + 2:offset + 2 + length])
        offset += 2 + length
    return ""


def rule_item(attrs: dict[int, bytes]) -> dict[str, Any]:
    """One NFT_MSG_NEWRULE's attributes -> {"chain", "comment"?, "expr": [counter?]}."""
    exprs: list[dict[str, Any]] = []
    for elem in _list(attrs.get(NFTA_RULE_EXPRESSIONS, b"")):
        if elem[4:12] != _COUNTER:  # its name comes first; only the counter is read (a rule has ~20 expressions)
            continue
        e = ll.parse_attrs(elem)
        if _text(e.get(NFTA_EXPR_NAME)) == "counter":
            data = ll.parse_attrs(e.get(NFTA_EXPR_DATA, b""))
            exprs.append({"counter": {"packets": _BE64.unpack(data[NFTA_COUNTER_PACKETS][:8])[0],
                                      "bytes": _BE64.unpack(data[NFTA_COUNTER_BYTES][:8])[0]}})
    if not exprs:
        exprs.append({"handle": _BE64.unpack(attrs[NFTA_RULE_HANDLE][:8])[0] if NFTA_RULE_HANDLE in attrs else 0})
    item: dict[str, Any] = {"chain": _text(attrs.get(NFTA_RULE_CHAIN)), "expr": exprs}
    comment = _comment(attrs.get(NFTA_RULE_USERDATA, b""))
    if comment:
        item["comment"] = comment
    return item


def chain_item(attrs: dict[int, bytes]) -> dict[str, Any]:
    item: dict[str, Any] = {"name": _text(attrs.get(NFTA_CHAIN_NAME))}
    if NFTA_CHAIN_HOOK in attrs:
        hook = ll.parse_attrs(attrs[NFTA_CHAIN_HOOK])
        item["type"] = _text(attrs.get(NFTA_CHAIN_TYPE))
        item["hook"] = HOOKS.get(_BE32.unpack(hook[NFTA_HOOK_HOOKNUM][:4])[0], "?")
        item["prio"] = struct.unpack("!i", hook[NFTA_HOOK_PRIORITY][:4])[0]
    return item


def members(keys: list[tuple[int, bool]], width: int) -> list[str]:
    """An interval set's elements (key, is an interval end) -> its addresses, prefixes and ranges."""
    out, start = [], None
    top = 1 << (8 * width)
    for key, end in sorted(keys, key=lambda k: (k[0], not k[1])):  # an end before a start at the same key
        if end:
            if start is not None:
                out.append(_interval(start, key, width))
            start = None
        else:
            if start is not None:  # a start with no end: it reaches the next start (never written by us)
                out.append(_interval(start, key, width))
            start = key
    if start is not None:
        out.append(_interval(start, top, width))  # the last interval has no end element
    return out


def _interval(first: int, after: int, width: int) -> str:
    family = 4 if width == 4 else 6

    def text(v: int) -> str:
        return format_address(v, family)
    size = after - first
    bits = 8 * width
    if size > 0 and size & (size - 1) == 0 and first % size == 0:
        length = bits - size.bit_length() + 1
        return text(first) if length == bits else f"{text(first)}/{length}"
    return f"{text(first)}-{text(after - 1)}"


def _set_elements(nl: ll.Netlink, body: bytes, table: str, name: str, width: int) -> list[str]:
    keys: list[tuple[int, bool]] = []
    req = body + ll.attr_str(NFTA_SET_ELEM_LIST_TABLE, table) + ll.attr_str(NFTA_SET_ELEM_LIST_SET, name)
    for payload in nl.dump((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM, req):
        attrs = ll.parse_attrs(payload, _NFGEN.size)
        for elem in _list(attrs.get(NFTA_SET_ELEM_LIST_ELEMENTS, b"")):
            e = ll.parse_attrs(elem)
            key = ll.parse_attrs(e.get(NFTA_SET_ELEM_KEY, b"")).get(NFTA_DATA_VALUE, b"")
            flags = _BE32.unpack(e[NFTA_SET_ELEM_FLAGS][:4])[0] if NFTA_SET_ELEM_FLAGS in e else 0
            if len(key) == width:
                keys.append((int.from_bytes(key, "big"), bool(flags & NFT_SET_ELEM_INTERVAL_END)))
    return members(keys, width)


def read_table(table: str, family: int, skip: frozenset[str] = frozenset()) -> dict[str, Any] | None:
    """The table as `{"nftables": [...]}`, or None when it does not exist; the sets in `skip` are
    named without their elements."""
    items: list[dict[str, Any]] = []
    body = _NFGEN.pack(NFPROTO[family], 0, 0)
    width = 4 if family == 4 else 16
    with ll.Netlink(NETLINK_NETFILTER) as nl:
        try:
            chains = nl.dump((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN, body)
            rules = nl.dump((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE, body + ll.attr_str(NFTA_RULE_TABLE, table))
            sets = nl.dump((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSET, body + ll.attr_str(NFTA_SET_TABLE, table))
        except OSError as exc:
            if exc.errno == 2:  # ENOENT: no such table
                return None
            raise
        found = False
        for payload in chains:
            attrs = ll.parse_attrs(payload, _NFGEN.size)
            if _text(attrs.get(NFTA_CHAIN_TABLE)) == table:
                found = True
                items.append({"chain": chain_item(attrs)})
        for payload in sets:
            attrs = ll.parse_attrs(payload, _NFGEN.size)
            if _text(attrs.get(NFTA_SET_TABLE)) != table:
                continue
            found = True
            name = _text(attrs.get(NFTA_SET_NAME))
            flags = _BE32.unpack(attrs[NFTA_SET_FLAGS][:4])[0] if NFTA_SET_FLAGS in attrs else 0
            if flags & NFT_SET_ANONYMOUS:
                continue  # a rule's inline set ({a, b}): part of that rule
            if flags & NFT_SET_MAP:
                items.append({"map": {"name": name}})
            elif name in skip:
                items.append({"set": {"name": name}})
            else:
                items.append({"set": {"name": name, "elem": _set_elements(nl, body, table, name, width)}})
    items += [{"rule": rule_item(ll.parse_attrs(p, _NFGEN.size))} for p in rules]
    return {"nftables": items} if found or rules else None
