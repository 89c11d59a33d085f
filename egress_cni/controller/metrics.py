"""Prometheus metrics and the /healthz, /readyz, /metrics endpoint."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.allocations = Counter("egress_controller_eip_allocations", "EIPs assigned to policies", registry=self.registry)
        self.moves = Counter("egress_controller_eip_moves", "EIPs moved to another node", ["reason"], registry=self.registry)
        self.reconcile_seconds = Histogram(
            "egress_controller_reconcile_seconds", "Duration of one reconcile pass", registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.reconcile_errors = Counter("egress_controller_reconcile_errors", "Failed reconcile passes", registry=self.registry)
        self.queue_depth = Gauge("egress_controller_queue_depth", "Dirty items waiting for the worker", registry=self.registry)
        self.agents_held = Gauge("egress_controller_agents_held", "Agents whose Lease is stale but held alive because "
                                 "most agents went stale together", registry=self.registry)
        self.leader = Gauge("egress_controller_is_leader", "1 while this replica holds the leader Lease", registry=self.registry)
        self.policies_ready = Gauge("egress_controller_policies", "Policies by Ready condition", ["ready"], registry=self.registry)


def serve(address: str, metrics: Metrics, healthy: Callable[[], bool], ready: Callable[[], bool]) -> ThreadingHTTPServer:
    """Serve the probes and metrics on `host:port` from a daemon thread."""
    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path in ("/healthz", "/readyz"):
                ok = healthy() if self.path == "/healthz" else ready()
                self._reply(200 if ok else 503, b"ok\n" if ok else b"not ready\n", "text/plain")
            else:
                self._reply(404, b"not found\n", "text/plain")

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return  # probes every few seconds would drown the log

    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
