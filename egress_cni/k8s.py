"""The one module that talks to the Kubernetes API.

Everything else works with plain JSON dicts and the typed model in `egress_cni.api`. Objects are
addressed by `ResourceType` (group/version/plural), so one small REST client covers built-in kinds
and our CRDs alike. The `kubernetes` package is used only for what it does well: loading a
kubeconfig or the in-cluster service account into a TLS-configured connection pool.

Errors: every non-2xx answer becomes an `APIError` subclass carrying the server's message, so
callers can write `except NotFound` / `except Conflict` and show users what the API server said.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from egress_cni.backoff import Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")

# --- errors -------------------------------------------------------------------------------------


class APIError(Exception):
    """A failed API call: `status` is the HTTP code (0 when the server was not reached)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason  # metav1.Status reason, e.g. "AlreadyExists", "Conflict"
        self.message = message
        super().__init__(f"{status} {reason}: {message}" if status else message)


class NotFound(APIError):
    pass


class Conflict(APIError):
    """409: stale resourceVersion on update, or the name already exists on create (reason AlreadyExists)."""


class Gone(APIError):
    """410: the resourceVersion is too old to watch from; relist."""


class Forbidden(APIError):
    pass


class Invalid(APIError):
    """422, or an admission webhook denied the request."""


def error_for(status: int, body: bytes | str) -> APIError:
    """Translate an HTTP error answer (a metav1.Status body, usually) into the matching APIError."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    reason, message = "", text.strip()
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            reason = str(parsed.get("reason") or "")
            message = str(parsed.get("message") or message)
            status = int(parsed.get("code") or status)
    except ValueError:
        pass
    if "admission webhook" in message and "denied the request" in message:
        return Invalid(status, reason or "Denied", message)
    cls = {404: NotFound, 409: Conflict, 410: Gone, 403: Forbidden, 422: Invalid}.get(status, APIError)
    return cls(status, reason, message)


def retry_on_conflict(fn: Callable[[], T], attempts: int = 8) -> T:
    """Run `fn` (which must read fresh state itself) again while the server answers 409 Conflict."""
    for attempt in range(attempts):
        try:
            return fn()
        except Conflict:
            if attempt == attempts - 1:
                raise
            time.sleep(min(0.01 * 2**attempt, 0.5))
    raise AssertionError("unreachable")


# --- resource types -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{urllib.parse.quote(namespace)}"
        base += f"/{self.plural}"
        if name:
            base += f"/{urllib.parse.quote(name)}"
        return base + (f"/{subresource}" if subresource else "")


_EGW = "egressgateway.spidernet.io"
NODES = ResourceType("", "v1", "nodes", "Node", False)
PODS = ResourceType("", "v1", "pods", "Pod", True)
NAMESPACES = ResourceType("", "v1", "namespaces", "Namespace", False)
SERVICES = ResourceType("", "v1", "services", "Service", True)
EVENTS = ResourceType("", "v1", "events", "Event", True)
SECRETS = ResourceType("", "v1", "secrets", "Secret", True)
SERVICE_ACCOUNTS = ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True)
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True)
SERVICE_CIDRS = ResourceType("networking.k8s.io", "v1", "servicecidrs", "ServiceCIDR", False)
MUTATING_WEBHOOKS = ResourceType("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
                                 "MutatingWebhookConfiguration", False)
VALIDATING_WEBHOOKS = ResourceType("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
                                   "ValidatingWebhookConfiguration", False)
CALICO_IPPOOLS = ResourceType("crd.projectcalico.org", "v1", "ippools", "IPPool", False)
EGRESS_GATEWAYS = ResourceType(_EGW, "v1beta1", "egressgateways", "EgressGateway", False)
EGRESS_POLICIES = ResourceType(_EGW, "v1beta1", "egresspolicies", "EgressPolicy", True)
EGRESS_CLUSTER_POLICIES = ResourceType(_EGW, "v1beta1", "egressclusterpolicies", "EgressClusterPolicy", False)
EGRESS_ENDPOINT_SLICES = ResourceType(_EGW, "v1beta1", "egressendpointslices", "EgressEndpointSlice", True)
EGRESS_CLUSTER_ENDPOINT_SLICES = ResourceType(_EGW, "v1beta1", "egressclusterendpointslices",
                                              "EgressClusterEndpointSlice", False)
EGRESS_TUNNELS = ResourceType(_EGW, "v1beta1", "egresstunnels", "EgressTunnel", False)
EGRESS_CLUSTER_INFOS = ResourceType(_EGW, "v1beta1", "egressclusterinfos", "EgressClusterInfo", False)

_PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}


def object_key(obj: dict[str, Any]) -> str:
    """`namespace/name`, or `name` for cluster-scoped objects (the Informer's key)."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace") or ""
    return f"{ns}/{meta.get('name', '')}" if ns else str(meta.get("name", ""))


def now_micro() -> str:
    """metav1.MicroTime of now."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> float | None:
    """Epoch seconds of a metav1.Time / MicroTime string, None if empty or malformed."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# --- client -------------------------------------------------------------------------------------


# A watch only reads: when its connection dies silently (the NAT or conntrack entry of a Service
# address gone, the API server's FIN lost during a link outage), nothing but the read timeout (the
# watch's own, minutes) would notice, and the cache goes stale meanwhile. TCP keepalive probes an
# idle connection after KEEPALIVE_IDLE seconds; a reset or KEEPALIVE_COUNT unanswered probes end it,
# and the watch starts again. client-go keeps API connections alive too (30 s); ours is quicker
# because the controller decides EIP placement from what its watches deliver.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3


def keepalive_socket_options() -> list[tuple[int, int, int]]:
    import urllib3

    options: list[tuple[int, int, int]] = list(urllib3.connection.HTTPConnection.default_socket_options)
    options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL), ("TCP_KEEPCNT", KEEPALIVE_COUNT)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


class Client:
    """JSON-in, JSON-out access to any resource type over one thread-safe connection pool."""

    def __init__(self, configuration: Any, component: str = "egressgateway") -> None:
        from kubernetes.client import rest

        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, 32)
        configuration.socket_options = keepalive_socket_options()
        self._config = configuration
        self._rest = rest.RESTClientObject(configuration)
        self.host = str(configuration.host).rstrip("/")
        self.component = component

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, component: str = "egressgateway") -> Client:
        """Load `path`; None means $KUBECONFIG, else the in-cluster service account, else ~/.kube/config."""
        from kubernetes import config as kube_config
        from kubernetes.client import Configuration

        configuration = Configuration()
        path = path or os.environ.get("KUBECONFIG") or None
        if path is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            kube_config.load_kube_config(config_file=path, client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(configuration, component)

    # --- transport -----------------------------------------------------------------------------

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": f"{self.component}/python"}
        if content_type:
            headers["Content-Type"] = content_type
        for setting in self._config.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        return headers

    def _send(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
              content_type: str | None = None, timeout: Any = 30.0) -> Any:
        """Issue one request; returns the raw RESTResponse (caller reads or streams it)."""
        from kubernetes.client.exceptions import ApiException

        url = self.host + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v not in (None, "")})
        if body is not None and content_type is None:
            content_type = "application/json"
        try:
            return self._rest.request(method, url, headers=self._headers(content_type), body=body,  # type: ignore[no-untyped-call]
                                      _request_timeout=timeout)
        except ApiException as exc:  # raised by the REST layer for TLS failures
            raise APIError(0, "Unreachable", f"{method} {url}: {exc.reason}") from None
        except Exception as exc:  # urllib3 connection errors: the server is not reachable
            if isinstance(exc, APIError):
                raise
            raise APIError(0, "Unreachable", f"{method} {url}: {exc}") from None

    def _call(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
              content_type: str | None = None) -> Any:
        resp = self._send(method, path, query, body, content_type)
        data = resp.read()
        if not 200 <= resp.status <= 299:
            raise error_for(resp.status, data or b"")
        return json.loads(data) if data else None

    # --- verbs ---------------------------------------------------------------------------------

    def get(self, rt: ResourceType, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self._call("GET", rt.path(namespace, name))  # type: ignore[no-any-return]

    def list(self, rt: ResourceType, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None, resource_version: str = "") -> tuple[list[dict[str, Any]], str]:
        """All items (paged 500 at a time) and the list's resourceVersion to watch from.

        `resource_version` "" reads consistently (as of now); "0" accepts the API server's watch
        cache as it is, which spares etcd but may lag it slightly (see Informer._relist)."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            page = self._call("GET", rt.path(namespace), {
                "labelSelector": label_selector, "fieldSelector": field_selector, "limit": 500, "continue": token,
                "resourceVersion": "" if token else resource_version,  # a continue token carries its own
            })
            for item in page.get("items") or []:
                item.setdefault("apiVersion", rt.api_version)
                item.setdefault("kind", rt.kind)
                items.append(item)
            meta = page.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    def create(self, rt: ResourceType, body: dict[str, Any], namespace: str | None = None,
               dry_run: bool = False) -> dict[str, Any]:
        ns = namespace or (body.get("metadata") or {}).get("namespace")
        return self._call("POST", rt.path(ns), {"dryRun": "All" if dry_run else None}, body)  # type: ignore[no-any-return]

    def replace(self, rt: ResourceType, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.get("metadata") or {}
        return self._call("PUT", rt.path(meta.get("namespace"), meta["name"]), body=body)  # type: ignore[no-any-return]

    def patch(self, rt: ResourceType, name: str, patch: Any, namespace: str | None = None,
              patch_type: str = "merge") -> dict[str, Any]:
        return self._call("PATCH", rt.path(namespace, name), body=patch, content_type=_PATCH_TYPES[patch_type])  # type: ignore[no-any-return]

    def replace_status(self, rt: ResourceType, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.get("metadata") or {}
        return self._call("PUT", rt.path(meta.get("namespace"), meta["name"], "status"), body=body)  # type: ignore[no-any-return]

    def patch_status(self, rt: ResourceType, name: str, patch: Any, namespace: str | None = None) -> dict[str, Any]:
        return self._call("PATCH", rt.path(namespace, name, "status"), body=patch,  # type: ignore[no-any-return]
                          content_type=_PATCH_TYPES["merge"])

    def delete(self, rt: ResourceType, name: str, namespace: str | None = None) -> None:
        self._call("DELETE", rt.path(namespace, name))

    def watch(self, rt: ResourceType, namespace: str | None = None, resource_version: str = "",
              timeout_seconds: int = 300, label_selector: str | None = None,
              field_selector: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Stream (type, object) events; raises Gone when `resource_version` is too old."""
        resp = self._send("GET", rt.path(namespace), {
            "watch": "true", "allowWatchBookmarks": "true", "resourceVersion": resource_version,
            "timeoutSeconds": timeout_seconds, "labelSelector": label_selector, "fieldSelector": field_selector,
        }, timeout=(10.0, timeout_seconds + 30.0))
        if not 200 <= resp.status <= 299:
            raise error_for(resp.status, resp.read() or b"")
        raw = resp.response
        buffer = b""
        try:
            for chunk in self._chunks(raw):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield self._watch_event(rt, line)
        finally:
            raw.release_conn()

    @staticmethod
    def _chunks(raw: Any) -> Iterator[bytes]:
        """The body as it arrives; a connection cut mid-stream becomes an APIError."""
        try:
            yield from raw.stream(amt=None, decode_content=False)
        except Exception as exc:
            raise APIError(0, "StreamError", f"watch stream ended: {exc}") from None

    @staticmethod
    def _watch_event(rt: ResourceType, line: bytes) -> tuple[str, dict[str, Any]]:
        event = json.loads(line)
        kind, obj = event.get("type", ""), event.get("object") or {}
        if kind == "ERROR":
            raise error_for(int(obj.get("code") or 500), json.dumps(obj))
        obj.setdefault("apiVersion", rt.api_version)
        obj.setdefault("kind", rt.kind)
        return kind, obj

    def emit_event(self, involved: dict[str, Any], reason: str, message: str, type: str = "Normal") -> None:  # noqa: A002
        """Record a core/v1 Event about `involved` (best effort: failures are logged, not raised)."""
        meta = involved.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        stamp = now_rfc3339()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", ""), "kind": involved.get("kind", ""),
                "name": meta.get("name", ""), "namespace": meta.get("namespace", ""), "uid": meta.get("uid", ""),
            },
            "reason": reason, "message": message, "type": type, "count": 1,
            "firstTimestamp": stamp, "lastTimestamp": stamp,
            "source": {"component": self.component}, "reportingComponent": self.component,
        }
        try:
            self.create(EVENTS, event, namespace=namespace)
        except APIError as exc:
            log.warning("event not recorded", extra={"reason": reason, "error": str(exc)})


# --- informer -----------------------------------------------------------------------------------

OnChange = Callable[[str, dict[str, Any] | None, dict[str, Any] | None], None]


class Informer:
    """A local cache of one resource type kept current by list + watch in a daemon thread.

    `on_change(key, old, new)` is called for every add (old None), update and delete (new None),
    and for every object again each `resync_seconds` (old is new), so level-triggered consumers
    repair anything they missed. A 410 Gone from the watch triggers a fresh list whose differences
    to the cache are reported like ordinary events. Failed lists and watches are retried with
    exponential backoff and jitter (`backoff`, up to 10 s), reset by the next success.

    The first list is served from the API server's watch cache (resourceVersion "0"): it spares
    etcd, and `synced` still means what it says, the cache holds a complete list (the watch cache
    trails etcd by the time an event takes to arrive, and the watch that follows from the list's
    resourceVersion delivers the rest). The list after a 410 Gone reads consistently from etcd,
    as the watch cache is what lost our version.
    """

    def __init__(self, client: Client, rt: ResourceType, *, namespace: str | None = None,
                 label_selector: str | None = None, field_selector: str | None = None,
                 resync_seconds: float = 300.0, on_change: OnChange | None = None) -> None:
        self._client, self._rt = client, rt
        self._namespace, self._labels, self._fields = namespace, label_selector, field_selector
        self._resync = resync_seconds
        self._on_change = on_change
        self._store: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._threads: list[threading.Thread] = []
        self.watch_timeout = 300
        self.backoff = Backoff(base=0.2, cap=10.0)
        self._failing = False  # the last list or watch failed, and none has succeeded since

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    @property
    def healthy(self) -> bool:
        """Synced, and the list/watch is not failing right now (a cache that may be going stale)."""
        return self._synced.is_set() and not self._failing

    def start(self) -> None:
        for target, name in ((self._run, "watch"), (self._resync_loop, "resync")):
            thread = threading.Thread(target=target, name=f"informer-{self._rt.plural}-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._store.values())

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._store.get(key)

    def _notify(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(key, old, new)
        except Exception:
            log.exception("informer handler failed", extra={"resource": self._rt.plural, "key": key})

    def _relist(self, resource_version: str = "0") -> str:
        items, version = self._client.list(self._rt, self._namespace, self._labels, self._fields, resource_version)
        fresh = {object_key(o): o for o in items}
        with self._lock:
            old_store, self._store = self._store, fresh
        for key, gone in old_store.items():
            if key not in fresh:
                self._notify(key, gone, None)
        for key, new in fresh.items():
            old = old_store.get(key)
            if old is None or (old.get("metadata") or {}).get("resourceVersion") != (new.get("metadata") or {}).get("resourceVersion"):
                self._notify(key, old, new)
        self._synced.set()
        return version

    def _apply(self, kind: str, obj: dict[str, Any]) -> str:
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if kind == "BOOKMARK":
            return version
        key = object_key(obj)
        with self._lock:
            old = self._store.get(key)
            if kind == "DELETED":
                self._store.pop(key, None)
            else:
                self._store[key] = obj
        self._notify(key, old, None if kind == "DELETED" else obj)
        return version

    def _run(self) -> None:
        version = ""
        consistent = False  # the next list must be as of now, not what the watch cache holds
        while not self._stop.is_set():
            progressed = False
            try:
                if not version:
                    version = self._relist("" if consistent else "0")
                    consistent, progressed = False, True
                    self._failing = False
                    self.backoff.reset()
                for kind, obj in self._client.watch(self._rt, self._namespace, version, self.watch_timeout,
                                                    self._labels, self._fields):
                    version = self._apply(kind, obj) or version
                    if not progressed:
                        progressed, self._failing = True, False
                        self.backoff.reset()
                    if self._stop.is_set():
                        return
                self._failing = False  # the watch ran to its timeout: the API server answers
            except Gone:
                version, consistent = "", True  # too old: list again
                if not progressed:  # Gone at once, again: do not spin on list + watch
                    self._stop.wait(self.backoff.next())
            except Exception as exc:
                self._failing = True
                delay = self.backoff.next()
                log.warning("watch failed; retrying", extra={"resource": self._rt.plural, "error": str(exc),
                                                             "retry_seconds": round(delay, 2)})
                if isinstance(exc, APIError) and exc.status == 404:
                    version = ""  # the resource type may appear later (a CRD installed after start)
                self._stop.wait(delay)

    def _resync_loop(self) -> None:
        while not self._stop.wait(self._resync):
            for obj in self.list():
                self._notify(object_key(obj), obj, obj)


# --- leases -------------------------------------------------------------------------------------


class LeaseKeeper:
    """Hold one coordination.k8s.io/v1 Lease as `holder`.

    Updates use the Lease's resourceVersion (optimistic concurrency): of two contenders only one
    write succeeds, the other gets 409 and reports that it does not hold the Lease. A Lease held by
    someone else is judged on *our* clock, as client-go's leader election does: it is taken over only
    once `leaseDurationSeconds` have passed on our monotonic clock since we saw its holder or
    renewTime change. The other side's renewTime is never compared with our wall clock, so a
    contender whose clock runs ahead does not take over early (nor one whose clock lags, late).

    `renewed_at` is our monotonic time just before the last successful acquire or renewal: the
    holder counts itself the holder only while that is within its renew deadline (controller/main.py).
    `annotations`, when given, is called before each write and its result merged into the Lease's
    annotations (agents report what they hold and whom they see there); a None value removes that key.
    """

    def __init__(self, client: Client, name: str, namespace: str, holder: str, duration_seconds: int,
                 annotations: Callable[[], Mapping[str, str | None]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client, self.name, self.namespace = client, name, namespace
        self.holder, self.duration = holder, duration_seconds
        self._annotations, self._clock = annotations, clock
        self._observed: tuple[str, str] | None = None  # (holderIdentity, renewTime) as last seen
        self._observed_at = 0.0  # our monotonic time when it was first seen
        self.renewed_at: float | None = None

    def _spec(self, transitions: int, acquired: str) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder, "leaseDurationSeconds": self.duration,
            "acquireTime": acquired, "renewTime": now_micro(), "leaseTransitions": transitions,
        }

    def _meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        if self._annotations is None:
            return meta
        merged = {**(meta.get("annotations") or {}), **self._annotations()}
        return {**meta, "annotations": {k: v for k, v in merged.items() if v is not None}}

    def observed_expiry(self, lease: dict[str, Any], now: float) -> float:
        """Our monotonic time at which the Lease, as last seen, runs out (records what changed)."""
        spec = lease.get("spec") or {}
        seen = (str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""))
        if seen != self._observed:
            self._observed, self._observed_at = seen, now
        return self._observed_at + float(spec.get("leaseDurationSeconds") or 0)

    def try_acquire_or_renew(self) -> bool:
        started = self._clock()
        try:
            lease = self._client.get(LEASES, self.name, self.namespace)
        except NotFound:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": self._meta({"name": self.name, "namespace": self.namespace}), "spec": self._spec(0, now_micro())}
            try:
                self._client.create(LEASES, body, namespace=self.namespace)
            except Conflict:
                return False
            self.renewed_at = started
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        transitions = int(spec.get("leaseTransitions") or 0)
        expiry = self.observed_expiry(lease, self._clock())
        if holder == self.holder:
            lease["spec"] = self._spec(transitions, spec.get("acquireTime") or now_micro())
        elif holder and self._clock() < expiry:
            self.renewed_at = None  # someone else holds it
            return False
        else:
            lease["spec"] = self._spec(transitions + 1, now_micro())
        lease["metadata"] = self._meta(lease.get("metadata") or {})
        try:
            self._client.replace(LEASES, lease)
        except Conflict:
            return False
        self.renewed_at = started
        return True

    def release(self) -> None:
        """Give the Lease up at once so a successor need not wait for it to expire."""
        self.renewed_at = None
        try:
            lease = self._client.get(LEASES, self.name, self.namespace)
            if (lease.get("spec") or {}).get("holderIdentity") != self.holder:
                return
            lease["spec"]["holderIdentity"] = None
            lease["spec"]["leaseDurationSeconds"] = 1
            self._client.replace(LEASES, lease)
        except APIError as exc:
            log.warning("lease release failed", extra={"lease": self.name, "error": str(exc)})


def lease_fresh(lease: dict[str, Any], now: float, grace: float = 0.0) -> bool:
    """Whether a Lease is held: a holder, and renewTime + leaseDurationSeconds (+ grace) is still ahead."""
    spec = lease.get("spec") or {}
    renewed = parse_time(str(spec.get("renewTime") or ""))
    if not spec.get("holderIdentity") or renewed is None:
        return False
    return renewed + float(spec.get("leaseDurationSeconds") or 0) + grace > now
