"""`egress-controller uninstall-nodes`: the chart's pre-delete hook Job (templates/uninstall-hook.yaml).

On SIGTERM an agent keeps its node's dataplane (a rollout must not interrupt traffic), so deleting
the DaemonSet alone would leave every node as the agents set it up. Before Helm deletes anything,
this Job

1. signals: sets the annotation `ANNOTATION_UNINSTALL` of EgressClusterInfo `default` to a fresh
   token (every agent watches that object; agent/uninstall.py is their side). A token already there
   (an earlier `helm uninstall` of this installation that did not finish, or a retried pod of this
   Job) is kept: agents that confirmed it are idle and would never see a new one. A reinstall
   starts without it (Helm deleted the object), so confirmations left from an earlier installation
   never match;
2. waits until every node that runs an agent pod has confirmed: the same token in the annotation
   `ANNOTATION_UNINSTALLED` of that node's Lease `egress-agent-<node>` (the agents' one writable
   object, limited to their own node by the node-claim policy);
3. gives up after `--timeout-seconds`, naming the nodes that did not confirm (a node that is down),
   and exits 0 all the same, so `helm uninstall` completes;
4. removes the annotation again. Agents that confirmed are idle and no longer watch, so nothing is
   set up again; but should EgressClusterInfo `default` outlive the release (a failed delete), a
   later install's agents must not find a signal and clean their nodes at once.

Its ServiceAccount may get and patch EgressClusterInfo `default` and list pods and Leases in the
release namespace, nothing else (docs/rbac.md).
"""

from __future__ import annotations

import argparse
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from egress_cni import k8s, logs
from egress_cni.api.names import ANNOTATION_UNINSTALL, ANNOTATION_UNINSTALLED
from egress_cni.controller.config import Config

log = logging.getLogger("egress_cni.controller.uninstall")

CLUSTER_INFO = "default"
AGENT_SELECTOR = "app.kubernetes.io/name=egressgateway-agent"  # the DaemonSet's pods
LEASE_PREFIX = Config.agent_lease_prefix


def agent_nodes(pods: Iterable[Mapping[str, Any]]) -> set[str]:
    """The nodes agent pods are scheduled on (a pod not yet scheduled has no node to clean)."""
    return {str((p.get("spec") or {}).get("nodeName") or "") for p in pods} - {""}


def confirmed_nodes(leases: Iterable[Mapping[str, Any]], token: str) -> set[str]:
    """Nodes whose agent Lease carries `token` in ANNOTATION_UNINSTALLED (another token is an earlier run's)."""
    found: set[str] = set()
    for lease in leases:
        meta = lease.get("metadata") or {}
        name = str(meta.get("name") or "")
        if name.startswith(LEASE_PREFIX) and (meta.get("annotations") or {}).get(ANNOTATION_UNINSTALLED) == token:
            found.add(name[len(LEASE_PREFIX):])
    return found


class NodeUninstall:
    """Signal every agent, then wait for their confirmations (the Job's whole work)."""

    def __init__(self, client: k8s.Client, namespace: str, token: str, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client, self.namespace, self.token = client, namespace, token
        self._clock, self._sleep = clock, sleep
        self.signalled = False

    def signal(self) -> None:
        info = self.client.get(k8s.EGRESS_CLUSTER_INFOS, CLUSTER_INFO)
        earlier = str(((info.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_UNINSTALL) or "")
        if earlier:
            self.token = earlier
        else:
            self.client.patch(k8s.EGRESS_CLUSTER_INFOS, CLUSTER_INFO, {"metadata": {"annotations": {ANNOTATION_UNINSTALL: self.token}}})
        self.signalled = True
        log.info("uninstall signalled", extra={"token": self.token, "namespace": self.namespace})

    def withdraw(self) -> None:
        """Remove the signal (merge patch null); a failure is logged, the Job's outcome is unchanged."""
        try:
            self.client.patch(k8s.EGRESS_CLUSTER_INFOS, CLUSTER_INFO, {"metadata": {"annotations": {ANNOTATION_UNINSTALL: None}}})
        except k8s.APIError as exc:
            log.warning("uninstall signal not withdrawn", extra={"error": str(exc)})

    def pending(self) -> set[str]:
        """Nodes with an agent pod that has not confirmed this token yet."""
        pods, _ = self.client.list(k8s.PODS, self.namespace, label_selector=AGENT_SELECTOR)
        leases, _ = self.client.list(k8s.LEASES, self.namespace)
        return agent_nodes(pods) - confirmed_nodes(leases, self.token)

    def run(self, timeout: float, poll: float = 1.0) -> set[str]:
        """Signal, wait up to `timeout` seconds, withdraw; the nodes that never confirmed (empty when all did)."""
        try:
            return self._wait(timeout, poll)
        finally:
            if self.signalled:
                self.withdraw()

    def _wait(self, timeout: float, poll: float) -> set[str]:
        deadline = self._clock() + timeout
        last: set[str] | None = None
        while True:
            try:
                if not self.signalled:
                    self.signal()
                last = self.pending()
                if not last:
                    log.info("every node confirmed its uninstall", extra={"token": self.token})
                    return set()
            except k8s.NotFound:
                log.warning("EgressClusterInfo default not found: no agent can be told; nothing to wait for")
                return set()
            except k8s.APIError as exc:
                log.warning("uninstall call failed; retrying", extra={"error": str(exc)})
            if self._clock() >= deadline:
                break
            self._sleep(min(poll, max(0.0, deadline - self._clock())))
        missing = last if last is not None else {"(not signalled: the API server did not answer)"}
        log.error("uninstall timed out: these nodes did not confirm and may keep our chains, rules, routes, "
                  "devices and CNI files", extra={"nodes": ",".join(sorted(missing)), "timeout_seconds": timeout})
        return missing


def main(argv: Sequence[str]) -> int:
    import os

    p = argparse.ArgumentParser(prog="egress-controller uninstall-nodes",
                                description="tell every agent to clean its node and wait for them (Helm pre-delete hook)")
    p.add_argument("--namespace", default=os.environ.get("EGRESS_NAMESPACE", "egressgateway-system"))
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="default: $KUBECONFIG, else in-cluster")
    p.add_argument("--timeout-seconds", type=float, default=120.0)
    p.add_argument("--poll-seconds", type=float, default=1.0)
    p.add_argument("--token", default="", help="the signal's value (default: a fresh UUID)")
    logs.add_arguments(p)
    a = p.parse_args(argv)
    level, fmt = logs.resolve(a.log_level, a.log_format, os.environ)
    logs.setup(level, fmt)
    client = k8s.Client.from_kubeconfig(a.kubeconfig, component="egressgateway-uninstall")
    missing = NodeUninstall(client, a.namespace, a.token or uuid.uuid4().hex).run(a.timeout_seconds, a.poll_seconds)
    print(f"uninstall: {'every node confirmed' if not missing else 'not confirmed: ' + ', '.join(sorted(missing))}")
    return 0  # helm uninstall must complete even with a node down (docs/install.md)
