"""Flask adapter: decode an AdmissionReview, call `review`, encode the answer. Nothing else.

Every answer to /mutate and /validate is HTTP 200 with an AdmissionReview, including for bodies
that are not JSON or not a review (allowed: false, code 400 inside): the API server, and anyone
debugging with curl, always gets a response it can read.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from webhook import admission, metrics
from webhook.config import WebhookConfig
from webhook.review import Action, review
from webhook.view import ClusterView, InformerView, MemoryView

log = logging.getLogger(__name__)

MAX_BODY = 8 << 20  # an object and its old version, each up to etcd's 1.5 MiB, with room to spare


def _json(body: Mapping[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")


def answer(body: bytes, view: ClusterView, config: WebhookConfig, action: Action) -> dict[str, Any]:
    """The AdmissionReview answering `body` (decode -> review -> envelope)."""
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        decoded = None
    if not isinstance(decoded, dict) or not isinstance(decoded.get("request"), dict):
        outcome_response = admission.error("", 400, "malformed AdmissionReview: expected a JSON object with a `request` object")
        metrics.observe(action, "", "bad-request", "bad-request")
        return admission.review_envelope(outcome_response)
    outcome = review(decoded["request"], view, config, action)
    metrics.observe(action, outcome.kind, outcome.result, outcome.reason)
    if outcome.result == "denied":
        log.info("admission denied", extra={"action": action, "kind": outcome.kind, "reason": outcome.reason,
                                            "uid": outcome.response["uid"]})
    return admission.review_envelope(outcome.response)


def create_app(view: ClusterView, config: WebhookConfig, ready: Callable[[], bool] = lambda: True) -> Flask:
    app = Flask("egress-webhook")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    def handle(action: Action) -> Response:
        with metrics.timed(action):
            return _json(answer(request.get_data(cache=False), view, config, action))

    app.add_url_rule("/mutate", "mutate", lambda: handle("mutate"), methods=["POST"])
    app.add_url_rule("/validate", "validate", lambda: handle("validate"), methods=["POST"])

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @app.get("/readyz")
    def readyz() -> Response:
        if ready():
            return Response("ok\n", mimetype="text/plain")
        return Response("cluster state cache not synced yet\n", status=503, mimetype="text/plain")

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        data, content_type = metrics.exposition()
        return Response(data, content_type=content_type)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # e.g. 413 for an oversized body: still an AdmissionReview, with the HTTP status kept
        code = exc.code or 400
        return _json(admission.review_envelope(admission.error("", code, f"{exc.name}: {exc.description}")), code)

    return app


# --- the gunicorn app factory -------------------------------------------------------------------


def load_state(path: Path) -> list[dict[str, Any]]:
    """Objects from a YAML/JSON file (documents, or `kind: List`), for offline runs and benchmarks."""
    objects: list[dict[str, Any]] = []
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it: 5,000 objects in 1 s, not 5
    for doc in yaml.load_all(path.read_text(), Loader=loader):
        if isinstance(doc, dict) and isinstance(doc.get("items"), list):
            objects.extend(d for d in doc["items"] if isinstance(d, dict))
        elif isinstance(doc, dict):
            objects.append(doc)
    return objects


def informer_view(kubeconfig: str | None) -> InformerView:
    from egress_cni import k8s

    client = k8s.Client.from_kubeconfig(kubeconfig, component="egress-webhook")
    view = InformerView(fallback_get=lambda name: client.get(k8s.EGRESS_GATEWAYS, name))
    for rt in (k8s.NAMESPACES, k8s.EGRESS_GATEWAYS, k8s.EGRESS_POLICIES, k8s.EGRESS_CLUSTER_POLICIES, k8s.EGRESS_CLUSTER_INFOS):
        view.add_informer(k8s.Informer(client, rt, on_change=view.on_change(rt.kind)))
    return view


def create_app_from_env() -> Flask:
    """Called once in each gunicorn worker (after the fork, so informer threads live in the worker).

    EGRESS_WEBHOOK_CLUSTER_STATE=<file>: review against a fixed set of objects (no API server).
    Otherwise informers over $EGRESS_WEBHOOK_KUBECONFIG, $KUBECONFIG or the in-cluster account.
    """
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = WebhookConfig.from_env()
    state = os.environ.get("EGRESS_WEBHOOK_CLUSTER_STATE")
    if state:
        return create_app(MemoryView.of(load_state(Path(state))), config)
    view = informer_view(os.environ.get("EGRESS_WEBHOOK_KUBECONFIG") or None)
    view.start()
    # Serve only with a warm cache when the API answers quickly; never long enough for gunicorn's
    # worker timeout (30 s) to kill the boot. /readyz keeps saying 503 until the cache is synced.
    wait = float(os.environ.get("EGRESS_WEBHOOK_SYNC_WAIT", "20"))
    if not view.wait_synced(wait):
        log.warning("serving before the cluster state cache synced", extra={"waited_seconds": wait})
    return create_app(view, config, ready=lambda: view.healthy)
