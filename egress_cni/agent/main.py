"""egress-agent: `run` the node agent, reconcile `once`, or `uninstall` everything it owns.

    egress-agent run --node NODE [--source k8s|yaml:DIR] [--parent eth0] [--registry-dir DIR] ...
    egress-agent once --node NODE --source yaml:DIR     # one reconcile, prints the plan summary
    egress-agent uninstall [--parent eth0] [--cni-conf-dir DIR --cni-bin-dir DIR ...]

`run` also uninstalls, on the chart's pre-delete signal (agent/uninstall.py): it stops reconciling,
removes the dataplane and, given the --cni-* directories, the CNI files, confirms in its Lease and
stays idle until its pod is deleted.
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
from collections.abc import Callable, Mapping
from dataclasses import replace

from egress_cni import logs, registry, settings
from egress_cni.agent.facts import held_now, kernel_eips
from egress_cni.agent.loop import Agent, Lease
from egress_cni.agent.peer_socket import PeerService
from egress_cni.agent.peer_wire import read_key
from egress_cni.agent.peers import PeerMonitor
from egress_cni.agent.sources import RecordingReporter, Source, TunnelReporter, YamlSource
from egress_cni.agent.uninstall import NodePaths, clean_node
from egress_cni.backoff import Backoff
from egress_cni.dataplane.apply import KernelDataplane
from egress_cni.dataplane.inputs import DataplaneConfig, NodeFacts

log = logging.getLogger("egress_cni.agent")


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """Flags left unset stay None: `parse_args` fills them from the environment, then the settings file."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="egress-agent", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "once", "uninstall"):
        p = sub.add_parser(name)
        p.add_argument("--config", default=env.get(settings.CONFIG_ENV),
                       help="installation settings YAML (env EGRESS_CONFIG; docs/settings.md); flags and variables win over it")
        p.add_argument("--node", default=env.get("NODE_NAME", ""), help="this node's name (env NODE_NAME)")
        p.add_argument("--source", default="k8s", help="k8s (informers; $KUBECONFIG or in-cluster) or yaml:DIR")
        p.add_argument("--kubeconfig", default=None)
        p.add_argument("--parent", default=None, help="underlay link (file tunnelParent/tunnelDetectMethod; default: the default route's link)")
        p.add_argument("--registry-dir", default=registry.DEFAULT_DIR)
        p.add_argument("--ipv4", action=argparse.BooleanOptionalAction, default=None, help="file enableIPv4; default on")
        p.add_argument("--ipv6", action=argparse.BooleanOptionalAction, default=None, help="file enableIPv6; default off")
        p.add_argument("--vxlan-name", default=None, help=f"file vxlan.name; default {settings.Vxlan.name}")
        p.add_argument("--vni", type=int, default=None, help=f"file vxlan.vni/vxlan.id; default {settings.Vxlan.vni}")
        p.add_argument("--vxlan-port", type=int, default=None, help=f"file vxlan.port; default {settings.Vxlan.port}")
        p.add_argument("--mtu", type=int, default=None, help="VXLAN MTU (file vxlan.mtu); 0 = parent MTU minus the VXLAN overhead")
        p.add_argument("--vxlan-mode", default=None, choices=settings.VXLAN_MODES,
                       help="Always: the tunnel to every gateway; CrossSubnet: none to on-link gateways; Never: none "
                            "(off-link gateways unusable) (file vxlan.mode); default Always (docs/dataplane.md, No encapsulation)")
        p.add_argument("--iptables-backend", default=None, choices=settings.IPTABLES_BACKENDS,
                       help="file iptablesBackend/iptables.backendMode; default auto")
        p.add_argument("--resync-seconds", type=float, default=10.0)
        p.add_argument("--drift-seconds", type=float, default=1.0,
                       help="between reconciles, compare the kernel with the desired state this often and "
                            "reconcile at once on drift (docs/dataplane.md, Drift); 0 turns the check off; default 1")
        p.add_argument("--lease-seconds", type=int, default=None,
                       help=f"env EGRESS_LEASE_SECONDS, file agentLeaseSeconds; default {settings.Agent.lease_seconds}")
        p.add_argument("--lease-renew-seconds", type=float, default=None,
                       help=f"file agentLeaseRenewSeconds; default {settings.Agent.lease_renew_seconds}")
        p.add_argument("--peer-port", type=int, default=None,
                       help=f"UDP port of the gateway peers (file peers.port); default {settings.Peers.port}")
        p.add_argument("--peer-key-file", default=None, help="HMAC key file for peer messages (file peers.keyFile)")
        p.add_argument("--eip-lifetime-seconds", type=int, default=None,
                       help="valid lifetime of EIP addresses, renewed every 250 ms: a dead agent's EIPs are gone "
                            "after it (env EGRESS_EIP_LIFETIME_SECONDS); default 1")
        p.add_argument("--namespace", default=env.get("EGRESS_NAMESPACE", "egressgateway-system"))
        p.add_argument("--metrics-address", default=":9641", help="host:port for /healthz /readyz /metrics; '' disables")
        p.add_argument("--cni-conf-dir", default="", help="the node's CNI config dir, for uninstall ('' leaves the CNI files)")
        p.add_argument("--cni-bin-dir", default="", help="the node's CNI bin dir (our wrapper), for uninstall")
        p.add_argument("--cni-runtime-dir", default="", help="the plugin's private runtime, removed on uninstall")
        p.add_argument("--cni-state-dir", default="", help="the plugin's per-pod state dir, removed on uninstall")
        p.add_argument("--health-port", type=int, default=None, help="serve /healthz /readyz /metrics on 0.0.0.0:PORT")
        p.add_argument("--metrics-port", type=int, default=None, help="serve the same endpoints on this port too")
        logs.add_arguments(p)
    return parser


def parse_args(argv: list[str] | None, env: Mapping[str, str] | None = None) -> argparse.Namespace:
    """The flags, each unset one filled from its variable, else the settings file, else the default."""
    env = os.environ if env is None else env
    parser = build_parser(env)
    args = parser.parse_args(argv)
    try:
        installed = settings.load(args.config)
        args.log_level, args.log_format = logs.resolve(args.log_level, args.log_format, env)
        args.lease_seconds = settings.layered(args.lease_seconds, env, "EGRESS_LEASE_SECONDS", settings.parse_int,
                                              installed.agent.lease_seconds)
    except ValueError as exc:  # SettingsError included: the message names the key or variable
        parser.error(str(exc))
    families, vxlan, agent = installed.families, installed.vxlan, installed.agent
    for attr, configured in (
        ("ipv4", True if families.ipv4 is None else families.ipv4),
        ("ipv6", False if families.ipv6 is None else families.ipv6),
        ("parent", installed.tunnel.parent or None),
        ("vxlan_name", vxlan.name), ("vni", vxlan.vni), ("vxlan_port", vxlan.port), ("mtu", vxlan.mtu),
        ("vxlan_mode", vxlan.mode),
        ("iptables_backend", agent.iptables_backend), ("lease_renew_seconds", agent.lease_renew_seconds),
        ("peer_port", installed.peers.port), ("peer_key_file", installed.peers.key_file),
    ):
        if getattr(args, attr) is None:
            setattr(args, attr, configured)
    if args.eip_lifetime_seconds is None:
        try:
            args.eip_lifetime_seconds = int(env.get("EGRESS_EIP_LIFETIME_SECONDS", "1"))
        except ValueError:
            parser.error("EGRESS_EIP_LIFETIME_SECONDS: not a whole number of seconds")
    if args.eip_lifetime_seconds < 1:
        parser.error("--eip-lifetime-seconds must be at least 1")
    if args.drift_seconds < 0:
        parser.error("--drift-seconds must not be negative")
    if args.lease_renew_seconds >= args.lease_seconds:
        parser.error(f"--lease-renew-seconds ({args.lease_renew_seconds}) must be shorter than --lease-seconds ({args.lease_seconds})")
    args.settings = installed
    return args


def config_from(args: argparse.Namespace) -> DataplaneConfig:
    return DataplaneConfig(vxlan_name=args.vxlan_name, vni=args.vni, port=args.vxlan_port, mtu=args.mtu,
                           vxlan_mode=args.vxlan_mode, eip_lifetime=args.eip_lifetime_seconds)


def node_paths(args: argparse.Namespace) -> NodePaths:
    return NodePaths(registry_dir=args.registry_dir, cni_conf_dir=args.cni_conf_dir, cni_bin_dir=args.cni_bin_dir,
                     cni_runtime_dir=args.cni_runtime_dir, cni_state_dir=args.cni_state_dir)


def families(args: argparse.Namespace) -> list[int]:
    return [f for f, on in ((4, args.ipv4), (6, args.ipv6)) if on]


def source_and_lease(args: argparse.Namespace) -> tuple[Source, Lease | None, TunnelReporter]:
    if args.source.startswith("yaml:"):
        return YamlSource(args.source[5:]), None, RecordingReporter()
    if args.source != "k8s":
        raise SystemExit(f"--source {args.source!r}: accepted k8s or yaml:DIR")
    from egress_cni import k8s
    from egress_cni.agent.k8s_source import GatewayLease, KubernetesSource, KubernetesTunnelReporter

    client = k8s.Client.from_kubeconfig(args.kubeconfig)
    source = KubernetesSource(client, args.node)
    # held only while this node is in some gateway's nodeList: other agents write no Lease at all
    lease = GatewayLease(client, args.node, args.namespace, args.lease_seconds,
                         gateways=source.stores.gateways.items, synced=lambda: source.synced)
    return source, lease, KubernetesTunnelReporter(client)


def facts_reader(args: argparse.Namespace, config: DataplaneConfig, eip_dev: str = "") -> Callable[[], NodeFacts]:
    from egress_cni.agent.facts import read_facts

    def read() -> NodeFacts:
        return read_facts(args.node, args.parent, config, ipv4=args.ipv4, ipv6=args.ipv6, eip_dev=eip_dev)

    return read


def make_agent(args: argparse.Namespace) -> Agent:
    config = config_from(args)
    source, lease, reporter = source_and_lease(args)
    node_facts = facts_reader(args, config)()
    kernel = KernelDataplane(config, node_facts.parent, families(args), args.iptables_backend)
    # the EIP holder dies with this process (SIGKILL fences at once); a one-shot run leaves it in place
    eip_dev = kernel.hold_eips(persist=args.command == "once")
    facts = facts_reader(args, config, eip_dev)
    node_facts = replace(node_facts, eip_dev=eip_dev)
    peers = peer_service(args, config, node_facts)
    report_in_lease(lease, peers, node_facts, config)
    return Agent(node=args.node, source=source, kernel=kernel, facts=facts, config=config, registry_dir=args.registry_dir,
                 lease=lease, reporter=reporter, resync_seconds=args.resync_seconds, lease_seconds=args.lease_seconds,
                 lease_renew=args.lease_renew_seconds, peers=peers, drift_seconds=args.drift_seconds)


def report_in_lease(lease: Lease | None, peers: PeerService, node: NodeFacts, config: DataplaneConfig) -> None:
    """A gateway agent's Lease carries the EIPs it holds and the peers it sees alive (the controller
    follows takeovers and holds moves by them; controller/liveness.py)."""
    from egress_cni.agent.k8s_source import GatewayLease

    if isinstance(lease, GatewayLease):
        lease.report(eips=kernel_eips(node.parent, config), peers=peers.monitor.peers_alive)


def peer_service(args: argparse.Namespace, config: DataplaneConfig, node: NodeFacts) -> PeerService:
    """Heartbeats and takeovers between gateway peers on the underlay address (agent/peers.py)."""
    try:
        key = read_key(args.peer_key_file)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--peer-key-file: {exc}") from None
    monitor = PeerMonitor(args.node, key=key, takeover=args.settings.failover_enabled)  # gatewayFailover.enable
    monitor.adopt(held_now(node.parent, config))  # before the first reconcile could drop them
    return PeerService(monitor, address=node.parent_ipv4 or node.parent_ipv6, port=args.peer_port,
                       held=lambda: kernel_eips(node.parent, config))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    for note in args.settings.notes:
        log.warning("setting has no effect", extra={"note": note})
    if args.command == "uninstall":
        config = config_from(args)
        parent = facts_reader(args, config)().parent if args.node or args.parent else (args.parent or "")
        kernel = KernelDataplane(config, parent, families(args), args.iptables_backend)
        failed = clean_node(kernel.uninstall, node_paths(args), kernel.detach_underlay)
        print("uninstalled" if not failed else f"uninstall incomplete: {'; '.join(failed)}")
        return 1 if failed else 0
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
    done = threading.Event()  # a signal, or the uninstall signal
    terminated = threading.Event()  # a signal only
    got: list[int] = []

    def stop_on(signum: int, _frame: object) -> None:
        got.append(signum)
        terminated.set()
        done.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_on)
    agent.on_uninstall = lambda _token: done.set()
    agent.start()
    log.info("agent started", extra={"node": agent.node})
    done.wait()
    if agent.uninstalling and not got:
        uninstall_node(agent, args, stopped=terminated.is_set)
        terminated.wait()  # idle until the pod is deleted: nothing may be set up again
        return 0
    # SIGTERM hands the EIPs over to the next agent (a short last lifetime; the peers hold off
    # meanwhile) and leaves the rest in place: a restart must not interrupt flows. SIGINT (a
    # developer's ^C) keeps the IPv6 EIPs on the parent for their lifetime; IPv4 EIPs go with the EIP
    # holder whenever this process ends.
    agent.stop(hand_over=signal.SIGTERM in got)
    return 0


def uninstall_node(agent: Agent, args: argparse.Namespace, stopped: Callable[[], bool],
                   confirm: Callable[[str], None] | None = None) -> None:
    """The pre-delete signal was seen: every thread stops (the EIPs go at once, peers are told, as on
    SIGTERM), then the node is cleaned and the hook told so, retried until it is or a signal comes."""
    agent.stop(release_eips=True)
    failed = clean_node(agent.kernel.uninstall, node_paths(args), agent.kernel.detach_underlay)
    confirm = confirm or confirmer(agent, args.namespace)
    retry = Backoff(base=0.5, cap=10.0)
    while not stopped():
        try:
            confirm(agent.uninstalling)
        except Exception as exc:
            log.warning("uninstall not confirmed yet; retrying", extra={"error": str(exc)})
            time.sleep(retry.next())  # at most 10 s; a signal meanwhile is seen after it
            continue
        log.info("node uninstalled and confirmed", extra={"node": agent.node, "failed": failed or None})
        return


def confirmer(agent: Agent, namespace: str) -> Callable[[str], None]:
    from egress_cni.agent.k8s_source import KubernetesSource, confirm_uninstalled

    source = agent.source
    if isinstance(source, KubernetesSource):
        return lambda token: confirm_uninstalled(source.client, agent.node, namespace, token)
    return lambda _token: None  # a file source has nobody to tell


if __name__ == "__main__":
    sys.exit(main())
