"""/healthz, /readyz and /metrics for the agent (prometheus_client, own registry).

Per-policy packet/byte counters come from our iptables rules' counters (rule tag egw:<hash>:<role>:<policy>).
A chain rewrite resets kernel counters, so the exported counters add the deltas and treat a drop as a reset.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from egress_cni.agent.loop import Agent
from egress_cni.dataplane.drift import KINDS

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class AgentCollector:
    def __init__(self, agent: Agent, counters: Any) -> None:
        self.agent = agent
        self.counters = counters  # callable -> {tag: (packets, bytes)}
        self._last: dict[str, tuple[int, int]] = {}
        self._total: dict[str, list[int]] = {}
        self._hist = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0
        self._seen = 0
        self._lock = threading.Lock()

    def observe(self) -> None:
        """Called after every reconcile: fold the kernel counters and the duration into our totals."""
        st = self.agent.status
        with self._lock:
            if st.reconciles != self._seen:
                self._seen = st.reconciles
                self._sum += st.reconcile_seconds
                i = next((i for i, b in enumerate(BUCKETS) if st.reconcile_seconds <= b), len(BUCKETS))
                self._hist[i] += 1
            for tag, (p, b) in self.counters().items():
                lp, lb = self._last.get(tag, (0, 0))
                total = self._total.setdefault(tag, [0, 0])
                total[0] += p - lp if p >= lp else p
                total[1] += b - lb if b >= lb else b
                self._last[tag] = (p, b)

    def collect(self) -> Iterator[Any]:
        st = self.agent.status
        packets = CounterMetricFamily("egress_agent_policy_packets", "Packets matched by a policy rule", labels=["policy", "role"])
        octets = CounterMetricFamily("egress_agent_policy_bytes", "Bytes matched by a policy rule", labels=["policy", "role"])
        with self._lock:
            for tag, (p, b) in sorted(self._total.items()):
                _, _, role_policy = tag.split(":", 2)
                role, _, policy = role_policy.partition(":")
                packets.add_metric([policy or "-", role], p)
                octets.add_metric([policy or "-", role], b)
            buckets, acc = [], 0
            for bound, n in zip([*map(str, BUCKETS), "+Inf"], self._hist, strict=True):
                acc += n
                buckets.append((bound, acc))
            hist = HistogramMetricFamily("egress_agent_reconcile_seconds", "Full reconcile duration",
                                         buckets=buckets, sum_value=self._sum)
        yield packets
        yield octets
        yield hist
        errors = CounterMetricFamily("egress_agent_reconcile_errors", "Failed reconciles")
        errors.add_metric([], st.errors)
        yield errors
        eips = GaugeMetricFamily("egress_agent_eip_owned", "1 for each EIP this node claims", labels=["eip"])
        for ip in sorted(st.eips):
            eips.add_metric([ip], 1)
        yield eips
        lease = GaugeMetricFamily("egress_agent_lease_held", "1 while the liveness lease is renewed in time")
        lease.add_metric([], 1 if st.lease_held else 0)
        yield lease
        drift = self.agent.drift
        repairs = CounterMetricFamily("egress_agent_drift_repairs", "Reconciles the drift check asked for that "
                                      "repaired a drift, by what had drifted", labels=["kind"])
        for kind in KINDS:
            repairs.add_metric([kind], drift.repairs[kind])
        yield repairs
        checks = CounterMetricFamily("egress_agent_drift_checks", "Drift checks run")
        checks.add_metric([], drift.checks)
        yield checks
        took = GaugeMetricFamily("egress_agent_drift_check_seconds", "Duration of the last drift check")
        took.add_metric([], drift.last_seconds)
        yield took
        invalid = GaugeMetricFamily("egress_agent_invalid_objects", "Objects skipped because they do not parse")
        invalid.add_metric([], st.invalid)
        yield invalid


def serve(agent: Agent, collector: AgentCollector, host: str, port: int) -> ThreadingHTTPServer:
    registry = CollectorRegistry()
    registry.register(collector)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                ok, body = agent.alive(), b"ok\n" if agent.alive() else b"worker stopped\n"
            elif self.path == "/readyz":
                ok = agent.source.synced and agent.status.last_ok
                body = b"ok\n" if ok else f"not ready: synced={agent.source.synced} error={agent.status.last_error}\n".encode()
            elif self.path == "/metrics":
                ok, body = True, generate_latest(registry)
            else:
                self.send_error(404)
                return
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "text/plain; version=0.0.4" if self.path == "/metrics" else "text/plain")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
