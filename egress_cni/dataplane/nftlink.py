"""Addresses into our nftables interval sets straight over nfnetlink: the new-endpoint fast path.

libnftables reads the netns' whole ruleset into its cache before every command (its cost grows with
our sets and with kube-proxy's rules); one `NFT_MSG_NEWSETELEM` batch costs what the kernel's insert
does (`bench/agent.py reconcile --engine nftables`: new endpoint -> ack). An address in an interval set is two elements, its start and the
next address flagged `NFT_SET_ELEM_INTERVAL_END` (how nft itself writes it). Anything else (a prefix,
a refused batch) is left to the caller's libnftables path.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable

from egress_cni.api.net import parse_ip
from egress_cni.lowlevel import netlink as ll

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_FLAGS = 1, 3
NFTA_DATA_VALUE = 1
NFT_SET_ELEM_INTERVAL_END = 1
NLA_F_NESTED = 0x8000
NLM_F_CREATE, NLM_F_ACK, NLMSG_ERROR = 0x400, 0x4, 2
NFPROTO = {4: 2, 6: 10}
_HDR = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")


class Refused(OSError):
    """The kernel refused the batch (errno set): nothing of it applied."""


def _msg(kind: int, flags: int, seq: int, family: int, body: bytes, res_id: int = 0) -> bytes:
    payload = _NFGEN.pack(family, 0, socket.htons(res_id)) + body
    return _HDR.pack(_HDR.size + len(payload), kind, ll.NLM_F_REQUEST | flags, seq, 0) + payload


def _element(key: bytes, end: bool) -> bytes:
    inner = ll.attr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, ll.attr(NFTA_DATA_VALUE, key))
    if end:
        inner += ll.attr(NFTA_SET_ELEM_FLAGS, struct.pack("!I", NFT_SET_ELEM_INTERVAL_END))
    return ll.attr(NFTA_LIST_ELEM | NLA_F_NESTED, inner)


def interval_elements(address: str) -> tuple[int, bytes]:
    """(family, the NFTA_SET_ELEM_LIST_ELEMENTS payload) of one address as an interval."""
    ip = parse_ip(address)
    width = 4 if ip.family == 4 else 16
    if ip.value == (1 << (8 * width)) - 1:
        raise ValueError(f"{address}: the last address has no interval end")
    start = ip.value.to_bytes(width, "big")
    end = (ip.value + 1).to_bytes(width, "big")
    return ip.family, _element(start, False) + _element(end, True)


def batch(table: str, entries: Iterable[tuple[str, str]], seq: int = 1, flush: Iterable[tuple[int, str]] = ()) -> bytes:
    """One transaction adding each (set, address) of `entries` to `table`'s set of its family, then
    emptying each (family, set) of `flush` (a NFT_MSG_DELSETELEM without elements)."""
    parts = [_msg(NFNL_MSG_BATCH_BEGIN, 0, seq, socket.AF_UNSPEC, b"", NFNL_SUBSYS_NFTABLES)]
    for name, address in entries:
        family, elements = interval_elements(address)
        body = (ll.attr_str(NFTA_SET_ELEM_LIST_TABLE, table) + ll.attr_str(NFTA_SET_ELEM_LIST_SET, name)
                + ll.attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, elements))
        parts.append(_msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_ACK,
                          seq + len(parts), NFPROTO[family], body))
    for family, name in flush:
        body = ll.attr_str(NFTA_SET_ELEM_LIST_TABLE, table) + ll.attr_str(NFTA_SET_ELEM_LIST_SET, name)
        parts.append(_msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM, NLM_F_ACK, seq + len(parts), NFPROTO[family], body))
    parts.append(_msg(NFNL_MSG_BATCH_END, 0, seq + len(parts), socket.AF_UNSPEC, b"", NFNL_SUBSYS_NFTABLES))
    return b"".join(parts)


def add_addresses(table: str, entries: list[tuple[str, str]], flush: Iterable[tuple[int, str]] = ()) -> None:
    """Add the addresses (and empty the `flush` sets) in one batch; Refused (nothing applied) when
    the kernel says no, e.g. EEXIST/ENOTEMPTY for an address inside a prefix already in the set."""
    flush = list(flush)
    data = batch(table, entries, flush=flush)
    want = set(range(2, len(entries) + len(flush) + 2))  # the SETELEM messages' sequence numbers
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER) as s:
        s.settimeout(2.0)
        s.send(data)
        while want:
            reply = s.recv(65536)
            offset = 0
            while offset + _HDR.size <= len(reply):
                length, kind, _, seq, _ = _HDR.unpack_from(reply, offset)
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", reply, offset + _HDR.size)
                    if code < 0:
                        raise Refused(-code, f"{errno.errorcode.get(-code, -code)} adding {entries}")
                    want.discard(seq)
                offset += max(length, _HDR.size)
