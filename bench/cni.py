#!/usr/bin/env python3
"""ADD/DEL latency of egress-cni vs Debian's `bridge` (+host-local) plugin, measured in the same run.

Every pod runs the chain bridge+host-local -> egress-cni (overlay), and macvlan+host-local ->
egress-cni (underlay); each plugin process is timed on its own (exec to exit, as the runtime sees
it). A third series runs overlay with a live fake agent that acks endpoints, so the ack round trip
is included. Everything happens in netns this script creates and removes; plugins run directly in
the bench's "host" netns (the script re-executes itself there), so no nsenter cost is measured.

    sudo .venv/bin/python bench/cni.py [--pods 60]
Bar (issue 5): median ADD of egress-cni <= 2x median ADD of bridge.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from egress_cni import registry  # noqa: E402
from tests.cni.lab import Lab  # noqa: E402
from tests.cni.runner import Runner, ip, netns_path  # noqa: E402


def fake_agent(root: str) -> None:
    """Heartbeat + ack every endpoint as not selected (what the real agent does when no policy applies)."""
    last_beat = 0.0
    while True:
        if time.monotonic() - last_beat > 0.2:
            registry.write_heartbeat(root, "bench-node")
            last_beat = time.monotonic()
        for ep in registry.list_endpoints(root):
            ack = registry.read_ack(root, ep.key)
            if ack is None or not ack.matches(ep):
                registry.write_ack(root, registry.Ack(ep.key, ep.ipv4, ep.ipv6, selected=False))
        time.sleep(0.001)


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def inner(args: argparse.Namespace) -> int:
    lab = Lab.__new__(Lab)  # reuse the conflists; the outer process owns the netns
    lab.tmp = Path(args.tmp)
    lab.prefix = args.prefix
    lab.state_dir, lab.registry_dir = lab.tmp / "state", lab.tmp / "registry"
    acked = {**lab.ours(), "registryDir": str(lab.tmp / "registry-acked")}
    chains = {
        "overlay": lab.overlay_conflist(name="bench-o"),
        "underlay": lab.underlay_conflist(name="bench-u", dual=False),
        "overlay+ack": {**lab.overlay_conflist(name="bench-a"), "plugins": [lab.overlay_conflist()["plugins"][0], {**acked, "mode": "overlay"}]},
    }
    runner = Runner(cache_dir=lab.tmp / "cache", host_netns=None)
    samples: dict[tuple[str, str, str], list[float]] = {}
    cpu: dict[tuple[str, str, str], list[float]] = {}

    def one_pod(i: int, series: str) -> None:
        pod = f"{args.prefix}-b{i % 4}"
        ip("netns", "add", pod)
        try:
            before = len(runner.timings)
            runner.add(chains[series], f"bench{i}{series[0]}{len(series)}", netns_path(pod))
            runner.delete(chains[series], f"bench{i}{series[0]}{len(series)}", netns_path(pod))
            for plugin, command, seconds, cpu_seconds in runner.timings[before:]:
                samples.setdefault((series, plugin, command), []).append(seconds)
                cpu.setdefault((series, plugin, command), []).append(cpu_seconds)
        finally:
            ip("netns", "del", pod, check=False)

    for i in range(args.pods):  # interleaved, so load changes hit both plugins alike
        one_pod(i, "overlay")
        one_pod(i, "underlay")
    # The fake agent is a separate process, running only for this series (it polls and would load the others).
    agent = subprocess.Popen([sys.executable, __file__, "--fake-agent", str(lab.tmp / "registry-acked")])
    try:
        for i in range(args.pods):
            one_pod(i, "overlay+ack")
    finally:
        agent.kill()
        agent.wait()
    bridge_add = median_ms(samples[("overlay", "bridge", "ADD")])
    bridge_del = median_ms(samples[("overlay", "bridge", "DEL")])
    print(f"pods per series: {args.pods}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"bridge+host-local   ADD median {bridge_add:6.1f} ms   DEL median {bridge_del:6.1f} ms")
    print(f"macvlan+host-local  ADD median {median_ms(samples[('underlay', 'macvlan', 'ADD')]):6.1f} ms   "
          f"DEL median {median_ms(samples[('underlay', 'macvlan', 'DEL')]):6.1f} ms")
    ack_bridge = median_ms(samples[("overlay+ack", "bridge", "ADD")])
    print(f"bridge+host-local   ADD median {ack_bridge:6.1f} ms   (during the overlay+ack series, fake agent running)")
    worst = 0.0
    for series in chains:
        add = median_ms(samples[(series, "egress-cni", "ADD")])
        dele = median_ms(samples[(series, "egress-cni", "DEL")])
        ratio = add / (ack_bridge if series == "overlay+ack" else bridge_add)
        worst = max(worst, ratio)
        print(f"egress-cni {series:<12} ADD median {add:6.1f} ms   DEL median {dele:6.1f} ms   ADD ratio vs bridge {ratio:4.2f}x")
    print("CPU time (user+sys) medians, less sensitive to other load on the machine:")
    for series, plugin in (("overlay", "bridge"), ("underlay", "macvlan"), ("overlay", "egress-cni"), ("underlay", "egress-cni"),
                           ("overlay+ack", "egress-cni")):
        print(f"  {plugin:<10} {series:<12} ADD cpu {median_ms(cpu[(series, plugin, 'ADD')]):5.1f} ms   "
              f"DEL cpu {median_ms(cpu[(series, plugin, 'DEL')]):5.1f} ms")
    verdict = "PASS" if worst <= 2.0 else "FAIL"
    print(f"bar: egress-cni ADD median <= 2x bridge ADD median (every series, same phase): {verdict} (worst {worst:.2f}x)")
    return 0 if verdict == "PASS" else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=60, help="pods per series (>= 50 for the bar)")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--fake-agent", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake_agent:
        fake_agent(args.fake_agent)
    if args.inner:
        return inner(args)
    if os.geteuid() != 0:
        print("needs root (creates network namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="egw-cni-bench-") as tmp:
        lab = Lab(Path(tmp), prefix="egwb")
        try:
            lab.underlay_parent()
            cmd = ["nsenter", f"--net={netns_path(lab.host)}", sys.executable, __file__, "--inner", "--pods", str(args.pods),
                   "--tmp", tmp, "--prefix", lab.prefix]
            return subprocess.run(cmd, check=False).returncode
        finally:
            lab.close()
            for i in range(4):
                ip("netns", "del", f"{lab.prefix}-b{i}", check=False)


if __name__ == "__main__":
    sys.exit(main())
