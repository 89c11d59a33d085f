"""Helper run inside a test netns: apply a golden scenario with a given engine (nftables, nft, legacy), then
report what a second reconcile would change (must be nothing), and what the drift check saw before
the first and after the second (twice: the second glance may reuse the last iptables-save).

    python apply_scenario.py SCENARIO_DIR BACKEND
    -> prints JSON {"first": {...}, "second": {...}, "drift_before": [kinds], "drift_after": [...], ...}
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from devtools.scenario import config_from, load_scenario
from egress_cni.dataplane.apply import KernelDataplane
from egress_cni.dataplane.compute import desired_dataplane
from egress_cni.dataplane.drift import compare
from egress_cni.dataplane.inputs import DataplaneConfig
from egress_cni.dataplane.plan import diff
from egress_cni.dataplane.xtables import run

# one-shot runs: no agent stays to renew EIPs, so the 1 s default would let them lapse between two runs
CONFIG = DataplaneConfig(eip_lifetime=60)


def config(directory: str) -> DataplaneConfig:
    return replace(config_from(directory), eip_lifetime=CONFIG.eip_lifetime)


def reconcile(kernel: KernelDataplane, directory: str) -> dict[str, int]:
    state, facts = load_scenario(directory)
    desired = desired_dataplane(state, facts, config(directory)).dataplane
    kernel.hint_tables({r.table for r in desired.routes})
    plan = diff(desired, kernel.read_actual(desired.sysctls), together=kernel.writes_decisions_together)
    kernel.apply(plan)
    return plan.summary()


def main() -> None:
    directory, backend = sys.argv[1], sys.argv[2]
    _, facts = load_scenario(directory)
    families = [f for f, on in ((4, facts.ipv4), (6, facts.ipv6)) if on]
    kernel = KernelDataplane(CONFIG, facts.parent, families, backend)
    state, _ = load_scenario(directory)
    desired = desired_dataplane(state, facts, config(directory)).dataplane
    kernel.hint_tables({r.table for r in desired.routes})
    before = sorted({d.kind for d in compare(desired, kernel.glance())})
    first = reconcile(kernel, directory)
    second = reconcile(kernel, directory)
    after = [[str(d) for d in compare(desired, kernel.glance())] for _ in range(2)]
    # someone else's rule above our jump: seen although the glance may reuse its last iptables-save
    # (nft generation, legacy blob hash), and gone again once that rule is
    # (the nftables engine's chains are its own: nothing of ours is moved, so nothing is seen)
    foreign = ["-t", "mangle", "PREROUTING", "-s", "192.0.2.3", "-j", "ACCEPT"]
    ipt = "iptables-nft" if backend == "nftables" else f"iptables-{backend}"
    run([ipt, *foreign[:2], "-I", *foreign[2:3], "1", *foreign[3:]])
    tampered = sorted({d.kind for d in compare(desired, kernel.glance())})
    run([ipt, *foreign[:2], "-D", *foreign[2:]])
    untampered = [str(d) for d in compare(desired, kernel.glance())]
    print(json.dumps({"first": first, "second": second, "backend": kernel.engine,
                      "drift_before": before, "drift_after": after, "drift_tampered": tampered,
                      "drift_untampered": untampered}))


if __name__ == "__main__":
    main()
