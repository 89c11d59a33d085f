"""Helper run inside a test netns: the agent's uninstall path on a node set up as the agent sets it up.

    python uninstall_node.py SCENARIO_DIR BACKEND REGISTRY CONF BIN RUNTIME STATE

1. holds the EIP holder open (as `egress-agent run` does) and applies the scenario with its EIPs on it;
   prints {"applied": plan summary, "eip_dev": name} and waits for a line on stdin (the test looks first);
2. runs `agent.uninstall.clean_node` with the same kernel object and the given directories (what
   `agent.main.uninstall_node` runs at the pre-delete signal); prints {"failed": [...]};
3. stays, the holder's descriptor still open, until stdin closes: the uninstalled agent idles until
   its pod is deleted, so the test checks the node while this process lives.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from devtools.scenario import load_scenario
from egress_cni.agent.uninstall import NodePaths, clean_node
from egress_cni.dataplane.apply import KernelDataplane
from egress_cni.dataplane.compute import desired_dataplane
from egress_cni.dataplane.inputs import DataplaneConfig
from egress_cni.dataplane.plan import diff

CONFIG = DataplaneConfig(eip_lifetime=60)  # nobody renews them here


def main() -> None:
    directory, backend, registry_dir, conf, bin_dir, runtime, state_dir = sys.argv[1:8]
    state, facts = load_scenario(directory)
    families = [f for f, on in ((4, facts.ipv4), (6, facts.ipv6)) if on]
    kernel = KernelDataplane(CONFIG, facts.parent, families, backend)
    facts = replace(facts, eip_dev=kernel.hold_eips())
    desired = desired_dataplane(state, facts, CONFIG).dataplane
    kernel.hint_tables({r.table for r in desired.routes})
    plan = diff(desired, kernel.read_actual(desired.sysctls), together=kernel.writes_decisions_together)
    kernel.apply(plan)
    print(json.dumps({"applied": plan.summary(), "eip_dev": facts.eip_dev}), flush=True)
    sys.stdin.readline()
    failed = clean_node(kernel.uninstall, NodePaths(registry_dir=registry_dir, cni_conf_dir=conf, cni_bin_dir=bin_dir,
                                                    cni_runtime_dir=runtime, cni_state_dir=state_dir),
                        kernel.detach_underlay)
    print(json.dumps({"failed": failed}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
