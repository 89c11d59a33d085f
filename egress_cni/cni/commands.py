"""ADD, DEL, CHECK, GC and STATUS. Each returns the stdout document (or None) or raises CNIError.

Overlay mode touches no netlink at all (stdlib file writes only); underlay/auto import the netlink
and netns modules lazily.
"""

from __future__ import annotations

import os

from egress_cni import registry
from egress_cni.cni import errors, state
from egress_cni.cni.config import AF_INET, AF_INET6, Invocation, NetConf, parse_cidr, pod_ips
from egress_cni.cni.log import Logger
from egress_cni.cni.registration import register, wait_for_ack

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

UNDERLAY_KINDS = ("macvlan", "ipvlan", "ipvtap", "macvtap", "")  # "" = SR-IOV VF / physical device


def node_name(conf: NetConf) -> str:
    if conf.node_name:
        return conf.node_name
    for var in ("NODE_NAME", "KUBERNETES_NODE_NAME"):
        if os.environ.get(var):
            return os.environ[var]
    agent = registry.read_agent(conf.registry_dir)
    return agent.node if agent else os.uname().nodename


def _endpoint(conf: NetConf, inv: Invocation, v4: tuple[str, ...], v6: tuple[str, ...], mode: str,
              facts: dict[str, Any]) -> registry.Endpoint:
    """facts: underlay only, what the agent needs to keep the pod's hijack routes (netns, pod_veth, ...)."""
    return registry.Endpoint(
        container_id=inv.container_id, ifname=inv.ifname, namespace=inv.args.get("K8S_POD_NAMESPACE", ""),
        pod=inv.args.get("K8S_POD_NAME", ""), uid=inv.args.get("K8S_POD_UID", ""), node=node_name(conf),
        ipv4=v4, ipv6=v6, mode=mode, **facts,
    )  # fmt: skip


def _netns_error(inv: Invocation, exc: OSError) -> errors.CNIError:
    return errors.CNIError(errors.INVALID_NETNS if exc.errno != 2 else errors.INVALID_ENV,
                           f"CNI_NETNS {inv.netns!r} cannot be opened as a network namespace: {exc.strerror}")


def add(conf: NetConf, inv: Invocation, log: Logger) -> dict[str, Any]:
    if conf.prev_result is None:
        raise errors.CNIError(errors.INVALID_CONFIG, "required prevResult missing: egress-cni must be chained after the pod's main plugin")
    v4, v6 = pod_ips(conf.prev_result, inv.ifname)
    if not v4 and not v6:
        raise errors.CNIError(errors.INVALID_CONFIG, f"prevResult has no IP for interface {inv.ifname!r}",
                              "egress-cni registers the pod's IPs; chain it after the plugin that assigns them")
    mode = conf.mode
    base: dict[str, Any] = {"containerID": inv.container_id, "ifname": inv.ifname, "network": conf.name, "ipv4": list(v4), "ipv6": list(v6)}
    facts: dict[str, Any] = {}
    if mode != "overlay":
        mode, facts = _add_underlay(conf, inv, v4, v6, log, base)
    else:
        state.save(conf.state_dir, inv.container_id, inv.ifname, {**base, "mode": "overlay"})
    endpoint = _endpoint(conf, inv, v4, v6, mode, facts)
    try:
        register(conf, endpoint)
    except OSError as exc:
        raise errors.CNIError(errors.REGISTRY_FAILED, f"cannot write endpoint to registry {conf.registry_dir}: {exc.strerror}") from None
    wait_for_ack(conf, endpoint, log)
    return {**conf.prev_result, "cniVersion": conf.cni_version}


def _add_underlay(conf: NetConf, inv: Invocation, v4: tuple[str, ...], v6: tuple[str, ...], log: Logger,
                  base: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Set up the veth and routes: the mode, and the facts for the endpoint record (the agent's view of the pod)."""
    from egress_cni.cni import underlay
    from egress_cni.lowlevel import netns

    try:
        if netns.same_as_current(inv.netns):
            raise errors.CNIError(errors.INVALID_NETNS, f"CNI_NETNS {inv.netns!r} is the plugin's own netns; refusing to touch it")
        switch = netns.Switch(inv.netns)
    except OSError as exc:
        raise _netns_error(inv, exc) from None
    with switch:
        if conf.mode == "auto":
            kind = underlay.pod_link_kind(switch, inv.ifname)
            if kind not in UNDERLAY_KINDS:
                log.info("pod interface is not underlay; overlay mode", kind=kind)
                state.save(conf.state_dir, inv.container_id, inv.ifname, {**base, "mode": "overlay"})
                return "overlay", {}
        extra = registry.read_hijack(conf.registry_dir)
        dynamic = []
        for text in (*extra.ipv4, *extra.ipv6):
            try:
                dynamic.append(parse_cidr(text, strict=False))
            except ValueError as exc:
                log.warning("ignoring bad hijack.json entry", error=str(exc))
        pods = tuple((AF_INET, ip) for ip in v4) + tuple((AF_INET6, ip) for ip in v6)
        identity = underlay.veth_identity(conf.host_veth_prefix, conf.name, inv.container_id, inv.ifname)
        with state.HostLock(conf.state_dir):
            from egress_cni.lowlevel.netlink import Netlink

            with Netlink() as host:
                nodes, uplinks = underlay.node_ips_for(host, pods)
            if not nodes:
                raise errors.CNIError(errors.SETUP_FAILED, f"no host route towards pod IPs {', '.join(v4 + v6)}; cannot pick the node IP")
            plan, warnings = underlay.plan(identity=identity, pod_veth=conf.pod_veth_name, mtu=conf.veth_mtu, pod_ips=pods,
                                           node_ips=nodes, hijack=conf.hijack, table=conf.host_rule_table, priority=conf.host_rule_priority,
                                           reply_via_veth=conf.reply_via_veth, dynamic=tuple(dynamic))
            for w in warnings:
                log.warning("hijack route skipped", detail=w)
            # State first: a DEL after a half-done ADD must know the veth name.
            state.save(conf.state_dir, inv.container_id, inv.ifname, {**base, "mode": "underlay", "plan": plan.to_state()})
            try:
                underlay.apply(plan, switch, uplinks)
            except OSError as exc:
                underlay.teardown(plan.host_veth)
                raise errors.CNIError(errors.SETUP_FAILED, f"underlay setup failed: {exc.strerror or exc}",
                                      f"hostVeth={plan.host_veth} podVeth={plan.pod_veth}") from None
        facts = {"netns": inv.netns, "netns_inode": os.fstat(switch.target_fd).st_ino, "pod_veth": plan.pod_veth,
                 "node_ips": tuple(ip for _, ip in nodes), "static_hijack": tuple(str(c) for c in conf.hijack)}
    log.info("underlay routes installed", hostVeth=plan.host_veth, routes=len(plan.pod_routes))
    return "underlay", facts


def delete(conf: NetConf, inv: Invocation, log: Logger) -> None:
    """Undo ADD from the state file; works without prevResult, netns or a previous ADD."""
    saved = state.load(conf.state_dir, inv.container_id, inv.ifname)
    mode = saved.get("mode") if saved else None
    if mode == "underlay" or (saved is None and conf.mode != "overlay"):
        from egress_cni.cni import underlay

        host_veth = saved["plan"]["hostVeth"] if saved and "plan" in saved else \
            underlay.veth_identity(conf.host_veth_prefix, conf.name, inv.container_id, inv.ifname)[0]
        with state.HostLock(conf.state_dir):
            if underlay.teardown(host_veth):
                log.info("host veth deleted", hostVeth=host_veth)
    registry.remove_endpoint(conf.registry_dir, registry.endpoint_key(inv.container_id, inv.ifname))
    state.remove(conf.state_dir, inv.container_id, inv.ifname)


def check(conf: NetConf, inv: Invocation, log: Logger) -> None:
    saved = state.load(conf.state_dir, inv.container_id, inv.ifname)
    if saved is None:
        raise errors.CNIError(errors.CHECK_FAILED, f"no state for attachment {inv.container_id}/{inv.ifname}: ADD did not run or DEL already ran")
    problems: list[str] = []
    v4, v6 = pod_ips(conf.prev_result, inv.ifname) if conf.prev_result else (tuple(saved["ipv4"]), tuple(saved["ipv6"]))
    if sorted(v4) != sorted(saved["ipv4"]) or sorted(v6) != sorted(saved["ipv6"]):
        problems.append(f"pod IPs changed since ADD: {saved['ipv4'] + saved['ipv6']} -> {list(v4 + v6)}")
    endpoint = registry.read_endpoint(conf.registry_dir, registry.endpoint_key(inv.container_id, inv.ifname))
    if endpoint is None:
        problems.append(f"endpoint {inv.container_id}_{inv.ifname} is not registered in {conf.registry_dir}")
    elif sorted(endpoint.ipv4) != sorted(saved["ipv4"]) or sorted(endpoint.ipv6) != sorted(saved["ipv6"]):
        problems.append("registered endpoint IPs differ from the ADD state")
    if saved.get("mode") == "underlay":
        from egress_cni.cni import underlay
        from egress_cni.lowlevel import netns

        try:
            switch = netns.Switch(inv.netns)
        except OSError as exc:
            raise _netns_error(inv, exc) from None
        with switch:
            problems += underlay.check(underlay.Plan.from_state(saved["plan"]), switch)
    if problems:
        raise errors.CNIError(errors.CHECK_FAILED, "; ".join(problems))


def gc(conf: NetConf, log: Logger) -> None:
    """Remove the state, veth and endpoint of every attachment of this network not in the valid list."""
    valid = set(conf.valid_attachments or ())
    failures = []
    for saved in state.list_all(conf.state_dir):
        if saved.get("network") != conf.name or (saved.get("containerID"), saved.get("ifname")) in valid:
            continue
        inv = Invocation("DEL", str(saved.get("containerID")), "", str(saved.get("ifname")))
        try:
            delete(conf, inv, log)
            log.info("garbage-collected attachment", containerID=inv.container_id, ifname=inv.ifname)
        except (OSError, errors.CNIError) as exc:
            failures.append(f"{inv.container_id}/{inv.ifname}: {exc}")
    if failures:
        raise errors.CNIError(errors.SETUP_FAILED, f"GC could not clean {len(failures)} attachment(s)", "; ".join(failures))


def status(conf: NetConf) -> None:
    for folder in (conf.state_dir, conf.registry_dir):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise errors.CNIError(errors.NOT_AVAILABLE, f"{folder} is not usable: {exc.strerror}") from None
    if conf.fail_policy == "closed" and not registry.agent_alive(conf.registry_dir, conf.agent_alive_seconds):
        raise errors.CNIError(errors.NOT_AVAILABLE, f"egress agent is not alive (no fresh heartbeat in {conf.registry_dir}/agent.json) and failPolicy is closed")
