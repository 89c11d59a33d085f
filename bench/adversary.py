"""The rule-order adversary against the drift check (root; the three-node netns topology of tests/agent).

    .venv/bin/python bench/adversary.py [--engine nftables,nft] [--seconds 30] [--period 1.0] [--drift-seconds 1.0]
                                        [--resync-seconds 10]

Pod p1a (node1) is selected by default/web, gateway node2, EIP 10.100.0.200; agents run on node1 and
node2 with the given drift-check and resync periods. An adversary in both nodes' netns does what
Calico's `chainInsertMode: Insert` does on its refresh, every `--period` seconds: it takes its rules
out and inserts them again at position 1 of the built-in chains we hook (a jump to a chain of its
own everywhere, and an `ACCEPT` that ends the chain before our jump in mangle PREROUTING and nat
POSTROUTING). Meanwhile a prober in p1a's netns sends a UDP datagram from a new socket (a new flow)
every 50 ms and records the source the server saw: the EIP, node1's IP (left unsteered through the
CNI's MASQUERADE), the pod IP (left the gateway un-SNATed), or nothing. First the same probing
without the adversary (the peer: what the topology does undisturbed).

Runs once per `--engine` (the agents' --iptables-backend): `nftables`, our own table whose base
chains run before iptables' (nothing anyone inserts in a built-in chain comes first), and `nft`, the
iptables engine (iptables-nft + ipset, jumps at position 1 kept there by the drift check). Prints
the counts of both phases per engine and the agents' repairs; exits 0 either way (it reports).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.agent.adversary import adversary, probe  # noqa: E402
from tests.agent.topology import EIP4, Topology  # noqa: E402


class Result(NamedTuple):
    quiet: Counter[str]
    loud: Counter[str]
    rounds: Counter[str]
    repairs: dict[int, int]
    pod_ip: str


def run(engine: str, args: argparse.Namespace) -> Result:
    t = Topology(pods={1: ["a"]})
    t.engine = engine
    t.resync_seconds = args.resync_seconds
    t.agent_extra = ["--drift-seconds", str(args.drift_seconds)]
    stop = threading.Event()
    try:
        if not t.start_web_on_node2():
            raise SystemExit("the pod never left with the EIP:\n" + t.agent_log(1))
        # the server can answer a pod IP too, so a datagram that left un-NATed is counted, not lost
        subprocess.run(["ip", "-n", t.ns("ext"), "route", "add", "10.244.1.0/24", "via", "10.100.0.1"], check=True)
        quiet = probe(t, min(10.0, args.seconds))
        rounds: Counter[str] = Counter()
        adv = threading.Thread(target=adversary, args=(t, args.period, stop, rounds), daemon=True)
        adv.start()
        time.sleep(0.05)
        loud = probe(t, args.seconds)
        stop.set()
        adv.join(timeout=30)
        repairs = {n: t.agent_log(n).count("drift repaired") for n in (1, 2)}
        if args.verbose:
            for n in (1, 2):
                print(f"--- node{n} log (tail)\n{t.agent_log(n)[-3000:]}")
        return Result(quiet, loud, rounds, repairs, t.pod_ip(1, "a"))
    finally:
        stop.set()
        t.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="nftables,nft", help="comma-separated agent engines")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--drift-seconds", type=float, default=1.0)
    parser.add_argument("--resync-seconds", type=float, default=10.0)
    parser.add_argument("--verbose", action="store_true", help="print the agents' logs at the end")
    args = parser.parse_args()
    node_ip = "10.100.0.1"
    for engine in args.engine.split(","):
        r = run(engine, args)
        print(f"== engine {engine}")
        for name, counts in (("peer: no adversary", r.quiet), (f"adversary every {args.period} s", r.loud)):
            total = sum(counts.values())
            print(f"{name}: {total} probes: EIP {counts[EIP4]}, node IP {counts[node_ip]}, pod IP {counts[r.pod_ip]}, "
                  f"lost {counts['-']}, other {total - counts[EIP4] - counts[node_ip] - counts[r.pod_ip] - counts['-']}")
        leaked = r.loud[node_ip] + r.loud[r.pod_ip]
        eip_share = r.loud[EIP4] / max(1, sum(r.loud.values())) / max(1e-9, r.quiet[EIP4] / max(1, sum(r.quiet.values())))
        print(f"leaked (not the EIP, answered): {leaked} of {sum(r.loud.values())} "
              f"({100.0 * leaked / max(1, sum(r.loud.values())):.1f} %); share with the EIP vs the peer {eip_share:.2f}x; "
              f"adversary rounds {dict(r.rounds)}; drift repairs logged: node1 {r.repairs[1]}, node2 {r.repairs[2]}; "
              f"drift check every {args.drift_seconds} s, resync {args.resync_seconds} s")


if __name__ == "__main__":
    main()
