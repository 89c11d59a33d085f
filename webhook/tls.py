"""The TLS context gunicorn serves with: TLS 1.2+, reloaded when the certificate files change.

gunicorn's gthread worker asks for a context on every new connection; building one means reading
and parsing the key pair, so it is cached per (tls.crt, tls.key) modification time. A rotation
(new files written by the self-managed renewer, or a Secret volume update by the kubelet) is
picked up by the next connection; a half-written pair keeps the previous context.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_cached: dict[str, Any] = {"key": None, "context": None}


def _stamp(conf: Any) -> tuple[float, float]:
    return os.stat(conf.certfile).st_mtime, os.stat(conf.keyfile).st_mtime


def context_for(conf: Any, default_ssl_context_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """gunicorn `ssl_context` hook."""
    with _lock:
        try:
            stamp = _stamp(conf)
        except OSError:
            stamp = None
        if stamp is not None and stamp == _cached["key"] and _cached["context"] is not None:
            return _cached["context"]  # type: ignore[no-any-return]
        try:
            context = default_ssl_context_factory()
        except (OSError, ssl.SSLError) as exc:
            if _cached["context"] is None:
                raise
            log.warning("certificate files unreadable; serving the previous certificate", extra={"error": str(exc)})
            return _cached["context"]  # type: ignore[no-any-return]
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _cached.update(key=stamp, context=context)
        return context
