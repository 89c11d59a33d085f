"""egress-agent: `run` the node agent, reconcile `once`, or `uninstall` everything it owns.

    egress-agent run --node NODE [--source k8s|yaml:DIR] [--parent eth0] [--registry-dir DIR] ...
    egress-agent once --node NODE --source yaml:DIR     # one reconcile, prints the plan summary
    egress-agent uninstall [--parent eth0]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import yaml

from egress_cni import registry
from egress_cni.agent.loop import Agent, Lease
from egress_cni.agent.sources import RecordingReporter, Source, TunnelReporter, YamlSource
from egress_cni.dataplane.apply import KernelDataplane
from egress_cni.dataplane.inputs import DataplaneConfig, NodeFacts

log = logging.getLogger("egress_cni.agent")


# installation settings (manifests/config.yaml) -> our flag defaults; explicit flags still win
CONFIG_KEYS = {"enableIPv4": "ipv4", "enableIPv6": "ipv6", "agentLeaseSeconds": "lease_seconds",
               "vxlan.name": "vxlan_name", "vxlan.vni": "vni", "vxlan.port": "vxlan_port", "vxlan.mtu": "mtu",
               "iptablesBackend": "iptables_backend", "tunnelParent": "parent"}


def config_defaults(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise SystemExit(f"--config {path}: expected a YAML mapping, got {type(raw).__name__}")
    flat = {**{k: v for k, v in raw.items() if k != "vxlan"},
            **{f"vxlan.{k}": v for k, v in (raw.get("vxlan") or {}).items()}}
    return {CONFIG_KEYS[k]: v for k, v in flat.items() if k in CONFIG_KEYS}


def build_parser(defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egress-agent", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "once", "uninstall"):
        p = sub.add_parser(name)
        p.add_argument("--config", default=None, help="installation settings YAML (enableIPv4/6, vxlan, agentLeaseSeconds); flags win")
        p.add_argument("--node", default=os.environ.get("NODE_NAME", ""), help="this node's name (env NODE_NAME)")
        p.add_argument("--source", default="k8s", help="k8s (informers; $KUBECONFIG or in-cluster) or yaml:DIR")
        p.add_argument("--kubeconfig", default=None)
        p.add_argument("--parent", default=None, help="underlay link (default: the default route's link)")
        p.add_argument("--registry-dir", default=registry.DEFAULT_DIR)
        p.add_argument("--ipv4", action=argparse.BooleanOptionalAction, default=True)
        p.add_argument("--ipv6", action=argparse.BooleanOptionalAction, default=False)
        p.add_argument("--vxlan-name", default="egress.vxlan")
        p.add_argument("--vni", type=int, default=100)
        p.add_argument("--vxlan-port", type=int, default=7789)
        p.add_argument("--mtu", type=int, default=0, help="VXLAN MTU; 0 = parent MTU minus the VXLAN overhead")
        p.add_argument("--iptables-backend", default="auto", choices=("auto", "nft", "legacy"))
        p.add_argument("--resync-seconds", type=float, default=10.0)
        p.add_argument("--lease-seconds", type=int, default=int(os.environ.get("EGRESS_LEASE_SECONDS", "1")))
        p.add_argument("--lease-renew-seconds", type=float, default=0.2)
        p.add_argument("--namespace", default=os.environ.get("EGRESS_NAMESPACE", "egressgateway-system"))
        p.add_argument("--metrics-address", default=":9641", help="host:port for /healthz /readyz /metrics; '' disables")
        p.add_argument("--health-port", type=int, default=None, help="serve /healthz /readyz /metrics on 0.0.0.0:PORT")
        p.add_argument("--metrics-port", type=int, default=None, help="serve the same endpoints on this port too")
        p.add_argument("--log-level", default="INFO")
        p.set_defaults(**(defaults or {}))
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    return build_parser(config_defaults(known.config) if known.config else None).parse_args(argv)


def config_from(args: argparse.Namespace) -> DataplaneConfig:
    return DataplaneConfig(vxlan_name=args.vxlan_name, vni=args.vni, port=args.vxlan_port, mtu=args.mtu)


def families(args: argparse.Namespace) -> list[int]:
    return [f for f, on in ((4, args.ipv4), (6, args.ipv6)) if on]


def source_and_lease(args: argparse.Namespace) -> tuple[Source, Lease | None, TunnelReporter]:
    if args.source.startswith("yaml:"):
        return YamlSource(args.source[5:]), None, RecordingReporter()
    if args.source != "k8s":
        raise SystemExit(f"--source {args.source!r}: accepted k8s or yaml:DIR")
    from egress_cni import k8s
    from egress_cni.agent.k8s_source import KubernetesSource, KubernetesTunnelReporter

    client = k8s.Client.from_kubeconfig(args.kubeconfig)
    lease = k8s.LeaseKeeper(client, f"egress-agent-{args.node}", args.namespace, args.node, args.lease_seconds)
    return KubernetesSource(client, args.node), lease, KubernetesTunnelReporter(client)


def facts_reader(args: argparse.Namespace, config: DataplaneConfig) -> Callable[[bool], NodeFacts]:
    from egress_cni.agent.facts import read_facts

    def read(holds_lease: bool) -> NodeFacts:
        return read_facts(args.node, args.parent, config, ipv4=args.ipv4, ipv6=args.ipv6, holds_lease=holds_lease)

    return read


def make_agent(args: argparse.Namespace) -> Agent:
    config = config_from(args)
    source, lease, reporter = source_and_lease(args)
    facts = facts_reader(args, config)
    kernel = KernelDataplane(config, facts(True).parent, families(args), args.iptables_backend)
    return Agent(node=args.node, source=source, kernel=kernel, facts=facts, config=config, registry_dir=args.registry_dir,
                 lease=lease, reporter=reporter, resync_seconds=args.resync_seconds, lease_seconds=args.lease_seconds,
                 lease_renew=args.lease_renew_seconds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "uninstall":
        config = config_from(args)
        parent = facts_reader(args, config)(True).parent if args.node or args.parent else (args.parent or "")
        KernelDataplane(config, parent, families(args), args.iptables_backend).uninstall()
        print("uninstalled")
        return 0
    if not args.node:
        raise SystemExit("--node (or env NODE_NAME) is required")
    agent = make_agent(args)
    if args.command == "once":
        agent.source.start(agent.mark_dirty)
        deadline = time.monotonic() + 60
        while not agent.source.synced and time.monotonic() < deadline:
            time.sleep(0.05)  # a reconcile from a partial view would add but never remove
        plan = agent.reconcile()
        agent.source.stop()
        print(json.dumps({"ok": agent.status.last_ok, "error": agent.status.last_error,
                          "changes": plan.summary() if plan else None}))
        return 0 if agent.status.last_ok else 1
    return run(agent, args)


def run(agent: Agent, args: argparse.Namespace) -> int:
    from egress_cni.agent.health import AgentCollector, serve

    kernel = agent.kernel
    collector = AgentCollector(agent, kernel.counters)
    agent.on_reconciled = lambda _status: collector.observe()
    addresses = [f"0.0.0.0:{p}" for p in (args.health_port, args.metrics_port) if p]
    if not addresses and args.metrics_address:
        addresses = [args.metrics_address]
    for address in addresses:
        host, _, port = address.rpartition(":")
        serve(agent, collector, host or "0.0.0.0", int(port))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    agent.start()
    log.info("agent started", extra={"node": agent.node})
    done.wait()
    agent.stop()  # state stays in place: a restart must not interrupt established flows
    return 0


if __name__ == "__main__":
    sys.exit(main())
