"""The rule-order adversary against the drift check (root; the three-node netns topology of tests/agent).

    .venv/bin/python bench/adversary.py [--seconds 30] [--period 1.0] [--drift-seconds 1.0] [--resync-seconds 10]

Pod p1a (node1) is selected by default/web, gateway node2, EIP 10.100.0.200; agents run on node1 and
node2 with the given drift-check and resync periods. An adversary in both nodes' netns does what
Calico's `chainInsertMode: Insert` does on its refresh, every `--period` seconds: it takes its rules
out and inserts them again at position 1 of the built-in chains we hook (a jump to a chain of its
own everywhere, and an `ACCEPT` that ends the chain before our jump in mangle PREROUTING and nat
POSTROUTING). Meanwhile a prober in p1a's netns sends a UDP datagram from a new socket (a new flow)
every 50 ms and records the source the server saw: the EIP, node1's IP (left unsteered through the
CNI's MASQUERADE), the pod IP (left the gateway un-SNATed), or nothing. First the same probing
without the adversary (the peer: what the topology does undisturbed).

Prints the counts of both phases and the agents' repairs; exits 0 either way (it reports).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.agent.topology import EIP4, EXT4, PORT, PYTHON, Topology  # noqa: E402

FOREIGN = {  # (table, chain) -> the foreign rules Calico-like software keeps at the top
    ("raw", "PREROUTING"): ["-j ADV-RAW"],
    ("raw", "OUTPUT"): ["-j ADV-RAW"],
    ("mangle", "PREROUTING"): ["-j ADV-MANGLE", "-m comment --comment adv-accept -j ACCEPT"],
    ("mangle", "POSTROUTING"): ["-j ADV-MANGLE"],
    ("nat", "POSTROUTING"): ["-j ADV-NAT", "-m comment --comment adv-accept -j ACCEPT"],
    ("filter", "FORWARD"): ["-j ADV-FILTER"],
}
OWN = {"raw": "ADV-RAW", "mangle": "ADV-MANGLE", "nat": "ADV-NAT", "filter": "ADV-FILTER"}

PROBER = """
import socket, sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    t = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(b"x", (sys.argv[2], int(sys.argv[3])))
            print(s.recv(256).decode().strip(), flush=True)
        except OSError:
            print("-", flush=True)
    time.sleep(max(0.0, 0.05 - (time.monotonic() - t)))
"""


def restore_text(first: bool) -> str:
    lines = []
    for table in ("raw", "mangle", "nat", "filter"):
        lines.append(f"*{table}")
        if first:
            lines.append(f":{OWN[table]} - [0:0]")
        for (t, chain), rules in FOREIGN.items():
            if t != table:
                continue
            if not first:
                lines += [f"-D {chain} {r}" for r in rules]
            lines += [f"-I {chain} 1 {r}" for r in reversed(rules)]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def adversary(t: Topology, period: float, stop: threading.Event, rounds: Counter[str]) -> None:
    first = True
    while not stop.is_set():
        for n in (1, 2):
            proc = subprocess.run(["ip", "netns", "exec", t.node(n), "iptables-restore", "--noflush"],
                                  input=restore_text(first), capture_output=True, text=True, timeout=30)
            rounds["ok" if proc.returncode == 0 else "failed"] += 1
        first = False
        stop.wait(period)


def probe(t: Topology, seconds: float) -> Counter[str]:
    proc = subprocess.run(["ip", "netns", "exec", t.pod(1, "a"), PYTHON, "-c", PROBER, str(seconds), EXT4, str(PORT)],
                          capture_output=True, text=True, timeout=seconds + 60)
    return Counter(proc.stdout.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--drift-seconds", type=float, default=1.0)
    parser.add_argument("--resync-seconds", type=float, default=10.0)
    parser.add_argument("--verbose", action="store_true", help="print the agents' logs and rules at the end")
    args = parser.parse_args()
    t = Topology(pods={1: ["a"]})
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
                print(t.exec_in(t.node(n), "iptables-save").stdout)
    finally:
        stop.set()
        t.close()
    node_ip, pod_ip = "10.100.0.1", t.pod_ip(1, "a")
    for name, counts in (("peer: no adversary", quiet), (f"adversary every {args.period} s", loud)):
        total = sum(counts.values())
        print(f"{name}: {total} probes: EIP {counts[EIP4]}, node IP {counts[node_ip]}, pod IP {counts[pod_ip]}, "
              f"lost {counts['-']}, other {total - counts[EIP4] - counts[node_ip] - counts[pod_ip] - counts['-']}")
    leaked = loud[node_ip] + loud[pod_ip]
    print(f"leaked (not the EIP, answered): {leaked} of {sum(loud.values())} "
          f"({100.0 * leaked / max(1, sum(loud.values())):.1f} %); adversary rounds {dict(rounds)}; "
          f"drift repairs logged: node1 {repairs[1]}, node2 {repairs[2]}; drift check every {args.drift_seconds} s, "
          f"resync {args.resync_seconds} s")


if __name__ == "__main__":
    main()
