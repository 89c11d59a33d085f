"""gunicorn settings for the webhook, sized for small nodes (2 cores).

Two gthread workers with 4 threads each: reviews are CPU-bound and take well under a millisecond,
so two processes use both cores, and threads keep slow TLS handshakes from blocking reviews.
Every setting can be overridden with the EGRESS_WEBHOOK_* variables below (or gunicorn's own
GUNICORN_CMD_ARGS).
"""

import os
import shutil
import tempfile

# Metrics from all workers are aggregated through mmap'd files in one directory (see webhook/metrics.py);
# the variable must be set before prometheus_client is first imported. The files belong on tmpfs:
# on a disk, writeback of their dirty pages stalls the request that touches them.
_shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
_own_metrics_dir = ""
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="egress-webhook-metrics-", dir=_shm)
else:  # a given directory (the chart's emptyDir) may not exist yet, and outlives a container restart
    _given = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(_given, exist_ok=True)
    for _stale in os.listdir(_given):  # files of the previous run's workers would count twice
        if _stale.endswith(".db"):
            os.unlink(os.path.join(_given, _stale))

from gunicorn.glogging import Logger  # noqa: E402

from egress_cni import logs  # noqa: E402
from webhook import metrics, tls  # noqa: E402 (after PROMETHEUS_MULTIPROC_DIR is set)

# One log format for the master, the workers and gunicorn's own lines (egress-webhook exports the
# resolved LOG_LEVEL/LOG_FORMAT; run directly, gunicorn reads them from the environment too).
_log_level, _log_format = logs.resolve(None, None)
logs.setup(_log_level, _log_format)


class _Logger(Logger):  # type: ignore[misc]
    """gunicorn's error and access lines in the daemons' format (gunicorn installs its own handlers)."""

    def setup(self, cfg):  # type: ignore[no-untyped-def]
        super().setup(cfg)
        logs.adopt(self.error_log, _log_format)
        logs.adopt(self.access_log, _log_format)


_cert_dir = os.environ.get("EGRESS_WEBHOOK_CERT_DIR", "/etc/tls")

wsgi_app = "webhook.app:create_app_from_env()"
bind = [f"{os.environ.get('EGRESS_WEBHOOK_BIND', '0.0.0.0')}:{os.environ.get('EGRESS_WEBHOOK_LISTEN_PORT', '9443')}"]
workers = int(os.environ.get("EGRESS_WEBHOOK_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("EGRESS_WEBHOOK_THREADS", "4"))
worker_connections = 200
keepalive = 75          # the API server keeps connections to webhooks open (Go's idle timeout is 90 s)
timeout = 30            # a worker silent this long is restarted
graceful_timeout = 10   # finish in-flight reviews on SIGTERM (the API server timeout is 10 s)
backlog = 256
limit_request_line = 8190
certfile = os.path.join(_cert_dir, "tls.crt")
keyfile = os.path.join(_cert_dir, "tls.key")
ssl_context = tls.context_for
accesslog = os.environ.get("EGRESS_WEBHOOK_ACCESS_LOG") or None
errorlog = "-"
loglevel = _log_level.lower()
logger_class = _Logger
proc_name = "egress-webhook"
control_socket_disable = True
# The worker heartbeat touches a file from the thread that also accepts connections; on a busy disk
# that metadata write can block for a second, so it lives on tmpfs (gunicorn's own advice).
worker_tmp_dir = _shm  # no runtime control socket: one fewer thing shared between instances


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    metrics.worker_exited(worker.pid)


def on_exit(server):  # type: ignore[no-untyped-def]
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    # The app, its caches and the cluster view are loaded: keep them out of every future garbage
    # collection, so a full collection never walks them in the middle of a review.
    import gc
    import sys

    gc.collect()
    gc.freeze()
    # Hand the GIL over every 1 ms instead of 5: the thread that accepts and reads a connection
    # must not wait behind a thread that is reviewing.
    sys.setswitchinterval(0.001)
