"""The rule-order adversary of bench/adversary.py and tests/agent/test_netns_adversary.py: what
Calico's `chainInsertMode: Insert` does on every refresh, in the nodes' netns of a `Topology`, and
the prober that records which source each new flow of pod p1a left with."""

from __future__ import annotations

import subprocess
import threading
from collections import Counter

from tests.agent.topology import EXT4, PORT, PYTHON, Topology

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
