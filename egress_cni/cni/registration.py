"""Publish the pod's endpoint to the agent and wait (bounded) until the agent says its IPs are programmed.

Ack protocol: see egress_cni.registry. The ack must name exactly the endpoint's IPs. When the agent
is down or silent past `ackTimeoutSeconds`, `failPolicy` decides: "open" lets the pod start
(logged), "closed" fails ADD with code 11 so the runtime retries the sandbox later.
"""

from __future__ import annotations

import time

from egress_cni import registry
from egress_cni.cni import errors
from egress_cni.cni.config import NetConf
from egress_cni.cni.log import Logger


def register(conf: NetConf, endpoint: registry.Endpoint) -> None:
    # A stale ack (earlier ADD of the same attachment) must not confirm this one: drop it first.
    registry.remove_ack(conf.registry_dir, endpoint.key)
    registry.write_endpoint(conf.registry_dir, endpoint)


def wait_for_ack(conf: NetConf, endpoint: registry.Endpoint, log: Logger) -> str:
    """'acked' | 'agent-down' | 'timeout' (the last two only under failPolicy open; closed raises)."""
    root = conf.registry_dir
    deadline = time.monotonic() + conf.ack_timeout
    delay = 0.001
    while True:
        ack = registry.read_ack(root, endpoint.key)
        if ack is not None and ack.matches(endpoint):
            log.info("agent confirmed endpoint", selected=ack.selected, policies=",".join(ack.policies) or "-")
            return "acked"
        if not registry.agent_alive(root, conf.agent_alive_seconds):
            outcome = "agent-down"
            break
        if time.monotonic() >= deadline:
            outcome = "timeout"
            break
        time.sleep(delay)  # the agent answers within milliseconds; poll tightly at first
        delay = 0.001 if time.monotonic() < deadline - conf.ack_timeout + 0.1 else 0.02
    if conf.fail_policy == "closed":
        raise errors.CNIError(
            errors.TRY_AGAIN_LATER,
            f"egress agent did not confirm endpoint {endpoint.key} ({outcome}); failPolicy is closed",
            f"registryDir={root} ackTimeoutSeconds={conf.ack_timeout:g} agentAliveSeconds={conf.agent_alive_seconds:g}",
        )
    log.warning("starting pod without agent confirmation (failPolicy open)", outcome=outcome)
    return outcome
