"""Cost of the agent's drift check (root; everything inside a network namespace this script creates and removes).

    .venv/bin/python bench/drift.py [--policies 200] [--endpoints 1000] [--runs 30] [--backend nftables|nft|legacy]
                                    [--cached-pairs 60000]  (pairs in the decision cache's map, nftables engine)

One node of bench/agent.py's synthetic cluster (P policies, N endpoints; gateway of half the
policies) is applied into a fresh netns with the real dataplane. Then, interleaved in each round:

- the drift check: `KernelDataplane.glance()` (raw netlink dumps; with the nftables engine one
  `nft -j list table`, with the iptables engines ipset list -t and iptables-save, each skipped while
  the nftables generation is unchanged) and the pure `compare` with the desired state (which must
  find nothing); measured twice: as it runs on a quiet node (generation unchanged) and with the read
  of the rules forced (a node where someone committed rules since);
- peer: one bare `nft -j list table` (nftables engine) or `iptables-save`, the cheapest full read of
  the rules there is;
- second peer: the full `read_actual` + `diff` the periodic resync does.

Each is measured in wall time and in CPU time (this process plus the commands it ran). Prints the
medians and the ratios against the peers; exits 0 either way (it reports, it does not assert).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def _synthetic_objects(endpoints: int, policies: int) -> list[dict[str, Any]]:
    spec = importlib.util.spec_from_file_location("bench_agent", Path(__file__).with_name("agent.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return list(module.synthetic_objects(endpoints, policies))


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _measure(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - wall, _cpu() - cpu


def inner(args: argparse.Namespace) -> None:
    from egress_cni.agent.sources import state_from_objects
    from egress_cni.dataplane.apply import KernelDataplane
    from egress_cni.dataplane.compute import desired_dataplane
    from egress_cni.dataplane.drift import compare
    from egress_cni.dataplane.inputs import DataplaneConfig, NodeFacts
    from egress_cni.dataplane.plan import diff
    from egress_cni.dataplane.xtables import run

    config = DataplaneConfig(eip_lifetime=3600)  # no fencing thread renews them here
    facts = NodeFacts("node1", "eth0", "10.100.0.1", "", 1500)
    state = state_from_objects(_synthetic_objects(args.endpoints, args.policies), "node1")
    desired = desired_dataplane(state, facts, config).dataplane
    kernel = KernelDataplane(config, "eth0", [4], args.backend, probe=lambda _dev, _ip: False)
    kernel.hint_tables({r.table for r in desired.routes})
    kernel.apply(diff(desired, kernel.read_actual(desired.sysctls)))
    assert diff(desired, kernel.read_actual(desired.sysctls)).empty
    if args.cached_pairs and kernel.nft is not None:  # what a busy node's decision cache holds (dataplane/nftcache.py)
        pairs = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255} . 192.0.2.1 timeout 1h : 0xd9000001" for i in range(args.cached_pairs)]
        for start in range(0, len(pairs), 2000):  # one argument stays under the kernel's 128 KiB
            run(["nft", "add", "element", "ip", config.ipset_prefix, "decided", "{ " + ", ".join(pairs[start:start + 2000]) + " }"])

    def check() -> None:
        found = compare(desired, kernel.glance())
        assert not found, found[:5]

    def forget() -> None:
        kernel._glanced = None  # as after a commit by anyone: the next glance reads the rules again

    def peer() -> None:  # the cheapest full read of the rules there is, for the engine
        run(["nft", "-j", "list", "table", "ip", config.ipset_prefix] if kernel.nft else [kernel.xtables._bin(4, "save")])

    def resync() -> None:
        assert diff(desired, kernel.read_actual(desired.sysctls)).empty

    runs: dict[str, list[tuple[float, float]]] = {"check": [], "forced": [], "peer": [], "resync": []}
    check()
    for _ in range(args.runs):
        for name, fn in (("check", check), ("forced", check), ("peer", peer), ("resync", resync)):
            if name == "forced":
                forget()
            runs[name].append(_measure(fn))
    out: dict[str, Any] = {
        "members": sum(len(s.members) for s in desired.ipsets), "sets": len(desired.ipsets),
        "rules": sum(len(c.rules) for c in desired.chains), "backend": kernel.engine,
    }
    for name, values in runs.items():
        out[f"{name}_wall_s"] = statistics.median(w for w, _ in values)
        out[f"{name}_cpu_s"] = statistics.median(c for _, c in values)
    kernel.uninstall()
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="outer", choices=["outer", "inner"])
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--backend", default="nftables", choices=["nftables", "nft", "legacy"])
    parser.add_argument("--cached-pairs", type=int, default=0, help="pairs in the decision cache's map (nftables engine)")
    args = parser.parse_args()
    if args.mode == "inner":
        inner(args)
        return
    ns = f"egwb-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"], ["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
                    ["addr", "add", "10.100.0.1/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
                    ["link", "set", "eth1", "up"]):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        proc = subprocess.run(["ip", "netns", "exec", ns, PYTHON, __file__, "inner", "--policies", str(args.policies),
                               "--endpoints", str(args.endpoints), "--runs", str(args.runs), "--backend", args.backend,
                               "--cached-pairs", str(args.cached_pairs)],
                              check=True, capture_output=True, text=True, timeout=600)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"{args.policies} policies, {r['members']} set members in {r['sets']} sets, {r['rules']} rules "
          f"(engine {r['backend']}), medians of {args.runs} interleaved rounds:")
    read = "nft -j list table" if r["backend"] == "nftables" else "iptables-save"
    for name, label in (("check", "drift check (glance + compare)"), ("forced", f"drift check, {read} forced"),
                        ("peer", f"peer: one {read}"),
                        ("resync", "second peer: full read + diff (the resync)")):
        print(f"  {label:45s} wall {r[f'{name}_wall_s'] * 1000:7.2f} ms   cpu {r[f'{name}_cpu_s'] * 1000:7.2f} ms")
    for check in ("check", "forced"):
        for peer in ("peer", "resync"):
            print(f"  {check} / {peer}: wall {r[f'{check}_wall_s'] / r[f'{peer}_wall_s']:.2f}x, "
                  f"cpu {r[f'{check}_cpu_s'] / r[f'{peer}_cpu_s']:.2f}x")


if __name__ == "__main__":
    main()
