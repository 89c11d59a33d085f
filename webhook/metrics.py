"""Prometheus metrics: reviews by action/kind/result, denials by rule, review latency.

gunicorn runs several worker processes; with PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets
it to a private directory) every worker writes its samples there and /metrics, served by any
worker, aggregates all of them. Without it (tests, a single process) the default registry is used.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

REQUESTS = Counter("egress_webhook_requests_total", "Admission reviews answered", ["action", "kind", "result"])
DENIALS = Counter("egress_webhook_denials_total", "Admission reviews denied, by the first broken rule", ["kind", "reason"])
LATENCY = Histogram(
    "egress_webhook_review_seconds", "Time to decode, review and encode one AdmissionReview", ["action"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


# Label values come from a closed set: the kind is the request's, so anything else is "other"
# (a client sending random kinds must not grow the series without bound); reasons are rule ids.
KINDS = frozenset({"EgressGateway", "EgressPolicy", "EgressClusterPolicy", "EgressClusterInfo"})


def observe(action: str, kind: str, result: str, reason: str) -> None:
    label = kind if kind in KINDS else ("unknown" if not kind else "other")
    REQUESTS.labels(action, label, result).inc()
    if result in ("denied", "bad-request", "error"):
        DENIALS.labels(label, reason or result).inc()


@contextmanager
def timed(action: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        LATENCY.labels(action).observe(time.perf_counter() - start)


def exposition() -> tuple[bytes, str]:
    """The text exposition and its content type, aggregated across workers when multiprocess."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """gunicorn child_exit hook: drop a dead worker's live gauges (counters are kept)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
