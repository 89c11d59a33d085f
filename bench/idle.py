"""The agents' own CPU while nothing changes: three agents in the netns topology of bench/agent.py
(tests/agent/topology.py) at their default 10 s resync, idle, with 0 and then 200 more policies (each
with an EIP on gateway node2 and a pod on node1 and node3). Their fencing and peer threads tick ten
times a second; every node shares the machine's cores, so this is part of what a busy cluster's
policies cost the traffic in `bench/agent.py iperf`.

    sudo .venv/bin/python bench/idle.py [--windows 5] [--seconds 10]

Prints the median CPU seconds per second of the three agents over the windows, for each arm, and
the ratio of the 200-policy arm to the empty one (the peer, measured in the same run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def _windows(pids: list[int], count: int, seconds: float) -> list[float]:
    out = []
    for _ in range(count):
        start = _cpu_seconds(pids)
        time.sleep(seconds)
        out.append((_cpu_seconds(pids) - start) / seconds)
    return out


def main() -> None:
    from tests.agent.topology import EIP4, Topology

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    t = Topology(pods={1: ["a", "b"]})
    t.resync_seconds = 10.0  # the agent's default
    try:
        t.build()
        for n in (1, 2, 3):
            t.start_agent(n)
        assert t.wait_probe(1, "a", EIP4) == EIP4
        pids = [p.pid for p in t.agents.values()]
        time.sleep(args.seconds)
        empty = _windows(pids, args.windows, args.seconds)
        extra = [o for i in range(200)
                 for o in t.policy(f"other{i:03d}", [(1, "y"), (3, "x")], "node2", eip4=f"10.100.1.{1 + i % 250}")]
        t.set_policies("node2", extra)
        time.sleep(2.5 * args.seconds)  # programmed and the EIPs claimed
        crowded = _windows(pids, args.windows, args.seconds)
    finally:
        t.close()
    e, c = statistics.median(empty), statistics.median(crowded)
    print(f"three idle agents, CPU-s per s, medians of {args.windows} windows of {args.seconds:g} s: "
          f"no other policy {e:.3f} {[round(v, 3) for v in empty]}, 200 more policies (200 EIPs on node2) "
          f"{c:.3f} {[round(v, 3) for v in crowded]}; ratio {c / e:.1f}x")


if __name__ == "__main__":
    main()
