"""Forgetting un-NATed flows on a large conntrack table (root; inside a namespace this script makes).

    sudo .venv/bin/python bench/conntrack.py [--entries 50000] [--runs 5]

The table holds --entries UDP flows: 1% un-NATed flows of 100 selected pods to outside
destinations (what the agent deletes after a gateway move), the rest SNATed flows of other sources.
Figures, medians over --runs (each run refills the deleted entries):
- ours: `forget_unnatted_flows` (conntrack -L, pure filter, batched ctnetlink deletes by tuple)
- peer: what the agent did before, a pyroute2 netlink dump with the same predicate and
  `Conntrack.delete` of each match
- floor: `conntrack -L` alone
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PYTHON = str(ROOT / ".venv" / "bin" / "python")
CLUSTER = frozenset({"10.244.0.0/16", "10.96.0.0/12"})


def flows(entries: int) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]], frozenset[str]]:
    """(unnatted, natted) as (source, destination, source port), and the selected pod IPs."""
    pods = [f"10.244.1.{i}" for i in range(1, 101)]
    unnatted = [(pods[i % 100], f"198.51.{i % 7}.{1 + i % 200}", 10000 + i) for i in range(entries // 100)]
    natted = [(f"10.{100 + i // 60000}.{i // 240 % 250}.{1 + i % 240}", f"203.0.{i % 100}.{1 + i // 50000}", 10000 + i % 50000)
              for i in range(entries - len(unnatted))]
    return unnatted, natted, frozenset(pods)


def fill(ct: object, items: list[tuple[str, str, int]], snat: str | None) -> None:
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    for src, dst, sport in items:
        orig = NFCTAttrTuple(saddr=src, daddr=dst, proto=socket.IPPROTO_UDP, sport=sport, dport=53)
        reply = NFCTAttrTuple(saddr=dst, daddr=snat or src, proto=socket.IPPROTO_UDP, sport=53, dport=sport)
        ct.entry("add", tuple_orig=orig, tuple_reply=reply, timeout=3600)  # type: ignore[attr-defined]


def inner(args: argparse.Namespace) -> None:
    from pyroute2 import Conntrack

    from egress_cni.api.net import Cidr
    from egress_cni.dataplane.conntrack import forget_unnatted_flows, unnatted_outbound

    unnatted, natted, pods = flows(args.entries)
    ct = Conntrack()
    started = time.perf_counter()
    fill(ct, natted, "10.100.0.200")
    fill(ct, unnatted, None)
    fill_s = time.perf_counter() - started
    ours, peer, floor, deleted = [], [], [], []
    inside = [Cidr(c) for c in CLUSTER]
    for _ in range(args.runs):
        t = time.perf_counter()
        subprocess.run(["conntrack", "-L", "-f", "ipv4"], capture_output=True, check=True)
        floor.append(time.perf_counter() - t)
        t = time.perf_counter()
        found = 0
        for e in list(ct.dump_entries()):
            if unnatted_outbound(e.tuple_orig.saddr, e.tuple_orig.daddr, e.tuple_reply.saddr, e.tuple_reply.daddr,
                                 pods, inside):
                ct.delete(e)
                found += 1
        peer.append(time.perf_counter() - t)
        fill(ct, unnatted, None)
        t = time.perf_counter()
        deleted.append(forget_unnatted_flows(pods, CLUSTER))
        ours.append(time.perf_counter() - t)
        assert deleted[-1] == found == len(unnatted), (deleted[-1], found, len(unnatted))
        fill(ct, unnatted, None)
    ct.close()
    print(json.dumps({"fill_s": fill_s, "ours": ours, "peer": peer, "floor": floor, "deleted": deleted}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="outer", choices=("outer", "inner"))
    parser.add_argument("--entries", type=int, default=50000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.mode == "inner":
        inner(args)
        return
    if os.geteuid() != 0:
        sys.exit("needs root (creates a network namespace)")
    ns = f"egwb-ct-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, PYTHON, __file__, "inner", "--entries", str(args.entries),
                               "--runs", str(args.runs)], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            sys.exit(f"inner run failed:\n{proc.stderr}")
        out = proc.stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    r = json.loads(out.strip().splitlines()[-1])
    ours, peer, floor = (statistics.median(r[k]) for k in ("ours", "peer", "floor"))
    print(f"conntrack table of {args.entries} entries ({args.entries // 100} un-NATed of 100 selected pods; "
          f"filled in {r['fill_s']:.1f} s), medians of {args.runs}:")
    print(f"  ours, forget_unnatted_flows (list, filter, delete {r['deleted'][0]}): {ours * 1000:.0f} ms")
    print(f"  peer, pyroute2 dump + the same filter + pyroute2 deletes (the agent's previous code): {peer * 1000:.0f} ms "
          f"({peer / ours:.0f}x ours)")
    print(f"  floor, conntrack -L alone: {floor * 1000:.0f} ms (ours {ours / floor:.1f}x)")


if __name__ == "__main__":
    main()
