"""Failover benchmark in the netns topology (root; namespaces created and removed by this script).

    .venv/bin/python bench/failover.py [--runs 10]

Each run: the current gateway node loses its link and its agent is killed; at the same instant the
"controller decision" (policy status.node -> the other gateway node, same EIP) is written to the YAML
source every agent reads, i.e. the controller's detection time (lease expiry, default 1 s) is NOT
included here and must be added for an end-to-end figure. Measured: loss -> first UDP reply from the
external server showing the EIP (probes every 50 ms from a selected pod on node1). Printed beside it,
from the same runs: loss -> EIP address present on the successor (the agent's share of the time).
The failed node is then restored (agent first, so it drops the EIP before its link returns) and the
next run fails the other direction.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.agent.topology import EIP4, EXT4, Topology  # noqa: E402


def has_eip(t: Topology, n: int) -> bool:
    return f"{EIP4}/32" in t.exec_in(t.node(n), "ip", "-4", "-o", "addr", "show", "dev", "eth0", check=False).stdout


def wait(cond: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (creates network namespaces)")
    t = Topology(pods={1: ["a"]})
    replies: list[float] = []
    claims: list[float] = []
    try:
        t.build()
        for n in (1, 2, 3):
            t.start_agent(n)
        assert t.wait_probe(1, "a", EIP4) == EIP4, t.agent_log(1)
        current, other = 2, 3
        for run in range(args.runs):
            assert wait(lambda c=current: has_eip(t, c)), f"run {run}: node{current} never claimed the EIP"
            assert t.wait_probe(1, "a", EIP4) == EIP4
            t0 = t.fail_gateway(current, f"node{other}")
            prober = t.start_until(1, "a", EIP4, EXT4, deadline=30)
            claimed = wait(lambda o=other: has_eip(t, o))
            claim_at = time.time()
            out, _ = prober.communicate(timeout=60)
            if prober.returncode != 0 or not claimed:
                print(f"run {run + 1}: no recovery within 30 s ({out.strip()})")
                continue
            replies.append(float(out.strip()) - t0)
            claims.append(claim_at - t0)
            print(f"run {run + 1}: node{current} -> node{other}: first reply with the EIP after {replies[-1]:.3f} s "
                  f"(EIP claimed on node{other} after <= {claims[-1]:.3f} s)", flush=True)
            t.start_agent(current)  # restore: agent first so the stale EIP goes before the link returns
            assert wait(lambda c=current: not has_eip(t, c)), "restored node kept the EIP"
            t.restore_link(current)
            current, other = other, current
    finally:
        t.close()
    if replies:
        ordered = sorted(replies)
        print(f"failover over {len(replies)} runs: median {statistics.median(replies):.3f} s, "
              f"min {ordered[0]:.3f} s, max {ordered[-1]:.3f} s, p90 {ordered[int(0.9 * (len(ordered) - 1))]:.3f} s (bar <= 2 s)")
        print(f"  of which loss -> EIP claimed by the successor's agent: median {statistics.median(claims):.3f} s "
              f"(ratio {statistics.median(claims) / statistics.median(replies) * 100:.0f}% of the total)")
    sys.exit(0 if replies else 1)


if __name__ == "__main__":
    main()
