"""Kubernetes Events, sent from a background thread so a burst (a failover moving many EIPs)
never delays the status writes behind it."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from egress_cni import k8s

log = logging.getLogger(__name__)


class EventSink:
    def __init__(self, client: k8s.Client, capacity: int = 10000) -> None:
        self._client = client
        self._queue: queue.Queue[tuple[dict[str, Any], str, str, str]] = queue.Queue(capacity)
        threading.Thread(target=self._run, name="events", daemon=True).start()

    def emit(self, involved: dict[str, Any], reason: str, message: str, type_: str = "Normal") -> None:
        log.info("event", extra={"reason": reason, "object": k8s.object_key(involved), "text": message})
        try:
            self._queue.put_nowait((involved, reason, message, type_))
        except queue.Full:
            log.warning("event dropped: queue full", extra={"reason": reason})

    def _run(self) -> None:
        while True:
            involved, reason, message, type_ = self._queue.get()
            try:  # emit_event logs API failures itself; nothing else may end this thread
                self._client.emit_event(involved, reason, message, type_)
            except Exception:
                log.exception("event not recorded", extra={"reason": reason})

