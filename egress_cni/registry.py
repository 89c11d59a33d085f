"""Node-local registry between the CNI plugin and the agent (stdlib only, import-light).

Layout under the registry dir (default /run/egressgateway, a tmpfs):
  endpoints/<containerID>_<ifname>.json  written by CNI ADD, removed by CNI DEL
  acks/<containerID>_<ifname>.json       written by the agent once the endpoint's IPs are programmed
                                         (or nothing is needed); removed when the endpoint disappears
  agent.json                             agent heartbeat, rewritten at least every 500 ms
  hijack.json                            policy destinations the underlay pods must route via the host

Every write is atomic (temp file in the same dir + rename), so readers never see half a file and the
agent can poll or inotify-watch the directories. Readers skip names starting with "." (temp files)
and files that do not parse, so a torn or foreign file never breaks the other side.

The records are slotted classes rather than dataclasses: the plugin imports this module on every pod
start and `dataclasses` alone costs ~8 ms there (see egress_cni.lowlevel.record).
"""

from __future__ import annotations

import os
import time
from _socket import AF_INET  # not `socket`: it costs the plugin ~4 ms

from egress_cni.lowlevel import jsonlite
from egress_cni.lowlevel.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any

DEFAULT_DIR = "/run/egressgateway"
ENDPOINTS = "endpoints"
ACKS = "acks"
AGENT_FILE = "agent.json"
HIJACK_FILE = "hijack.json"
DEFAULT_ALIVE_SECONDS = 3.0
MODES = ("overlay", "underlay")
HOST_VETH_PREFIX = "egw"  # the plugin's default hostVethPrefix: the agent masquerades what enters by `egw+`


def endpoint_key(container_id: str, ifname: str) -> str:
    """The file stem shared by an endpoint and its ack."""
    return f"{container_id}_{ifname}"


def rfc3339(epoch: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if epoch is None else epoch))


class RegistryError(ValueError):
    """A registry file exists but does not follow the protocol (names the file and the field)."""


class Endpoint(Record):
    """One pod attachment as seen by CNI ADD.

    Underlay pods also carry what the agent needs to keep their hijack routes in step with hijack.json:
    the pod's netns path (CNI_NETNS) and its inode (the agent enters only that netns), the pod veth, the
    node IPs the routes go via, and the conflist's static hijackCIDR (routes the agent never touches).
    All optional: records of older plugins lack them, and the agent then leaves the pod alone.
    """

    __slots__ = ("container_id", "created_at", "ifname", "ipv4", "ipv6", "mode", "namespace", "netns", "netns_inode", "node",
                 "node_ips", "pod", "pod_veth", "static_hijack", "uid")
    container_id: str
    ifname: str
    namespace: str
    pod: str
    uid: str
    node: str
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    mode: str
    created_at: str
    netns: str  # underlay: CNI_NETNS as ADD saw it ("" = not recorded)
    netns_inode: int  # underlay: that netns' inode (0 = not recorded)
    pod_veth: str  # underlay: the pod end of the veth
    node_ips: tuple[str, ...]  # underlay: the node IPs (one per family) the hijack routes go via
    static_hijack: tuple[str, ...]  # underlay: the conflist's hijackCIDR, routed for the pod's whole life

    def __init__(
        self,
        container_id: str,
        ifname: str,
        namespace: str = "",
        pod: str = "",
        uid: str = "",
        node: str = "",
        ipv4: Iterable[str] = (),
        ipv6: Iterable[str] = (),
        mode: str = "overlay",
        created_at: str = "",
        netns: str = "",
        netns_inode: int = 0,
        pod_veth: str = "",
        node_ips: Iterable[str] = (),
        static_hijack: Iterable[str] = (),
    ) -> None:
        if mode not in MODES:
            raise RegistryError(f"endpoint mode {mode!r} is not one of {', '.join(MODES)}")
        self._init(
            container_id=container_id, ifname=ifname, namespace=namespace, pod=pod, uid=uid, node=node,
            ipv4=tuple(ipv4), ipv6=tuple(ipv6), mode=mode, created_at=created_at or rfc3339(), netns=netns,
            netns_inode=netns_inode, pod_veth=pod_veth, node_ips=tuple(node_ips), static_hijack=tuple(static_hijack),
        )  # fmt: skip

    @property
    def routable(self) -> bool:
        """An underlay record with what the agent needs to keep the pod's hijack routes (newer plugins)."""
        return self.mode == "underlay" and bool(self.netns and self.netns_inode and self.pod_veth and self.node_ips)

    @property
    def key(self) -> str:
        return endpoint_key(self.container_id, self.ifname)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "containerID": self.container_id, "ifname": self.ifname, "namespace": self.namespace, "pod": self.pod,
            "uid": self.uid, "node": self.node, "ipv4": list(self.ipv4), "ipv6": list(self.ipv6), "mode": self.mode,
            "createdAt": self.created_at,
        }  # fmt: skip
        if self.netns:
            d.update({"netns": self.netns, "netnsInode": self.netns_inode, "podVeth": self.pod_veth,
                      "nodeIPs": list(self.node_ips), "staticHijack": list(self.static_hijack)})
        return d

    @classmethod
    def from_dict(cls, raw: Any, where: str = "endpoint") -> Endpoint:
        d = _mapping(raw, where)
        return cls(
            container_id=_text(d, "containerID", where, required=True), ifname=_text(d, "ifname", where, required=True),
            namespace=_text(d, "namespace", where), pod=_text(d, "pod", where), uid=_text(d, "uid", where),
            node=_text(d, "node", where), ipv4=_texts(d, "ipv4", where), ipv6=_texts(d, "ipv6", where),
            mode=_text(d, "mode", where) or "overlay", created_at=_text(d, "createdAt", where),
            netns=_text(d, "netns", where), netns_inode=_count(d, "netnsInode", where), pod_veth=_text(d, "podVeth", where),
            node_ips=_texts(d, "nodeIPs", where), static_hijack=_texts(d, "staticHijack", where),
        )  # fmt: skip


class Ack(Record):
    """The agent's answer for one endpoint: these IPs are programmed (selected or not)."""

    __slots__ = ("ipv4", "ipv6", "key", "policies", "programmed_at", "selected")
    key: str
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    selected: bool
    policies: tuple[str, ...]
    programmed_at: str

    def __init__(
        self,
        key: str,
        ipv4: Iterable[str] = (),
        ipv6: Iterable[str] = (),
        selected: bool = False,
        policies: Iterable[str] = (),
        programmed_at: str = "",
    ) -> None:
        self._init(
            key=key, ipv4=tuple(ipv4), ipv6=tuple(ipv6), selected=bool(selected), policies=tuple(policies),
            programmed_at=programmed_at or rfc3339(),
        )  # fmt: skip

    def matches(self, endpoint: Endpoint) -> bool:
        """True when this ack is for exactly the endpoint's IPs (a stale ack for reused IDs does not count)."""
        return (
            self.key == endpoint.key
            and sorted(self.ipv4) == sorted(endpoint.ipv4)
            and sorted(self.ipv6) == sorted(endpoint.ipv6)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "ipv4": list(self.ipv4), "ipv6": list(self.ipv6), "selected": self.selected,
            "policies": list(self.policies), "programmedAt": self.programmed_at,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, raw: Any, where: str = "ack") -> Ack:
        d = _mapping(raw, where)
        selected = d.get("selected", False)
        if not isinstance(selected, bool):
            raise RegistryError(f"{where}.selected: {selected!r} is not a boolean")
        return cls(
            key=_text(d, "key", where, required=True), ipv4=_texts(d, "ipv4", where), ipv6=_texts(d, "ipv6", where),
            selected=selected, policies=_texts(d, "policies", where), programmed_at=_text(d, "programmedAt", where),
        )  # fmt: skip


class AgentInfo(Record):
    __slots__ = ("heartbeat", "node", "pid")
    pid: int
    node: str
    heartbeat: float

    def __init__(self, pid: int, node: str, heartbeat: float) -> None:
        self._init(pid=pid, node=node, heartbeat=heartbeat)

    def alive(self, max_age: float = DEFAULT_ALIVE_SECONDS, now: float | None = None) -> bool:
        age = (time.time() if now is None else now) - self.heartbeat
        return -max_age < age < max_age  # a clock step backwards must not mark a live agent alive forever

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "node": self.node, "heartbeat": self.heartbeat}


class Hijack(Record):
    """Destination CIDRs per family that underlay pods route through the host."""

    __slots__ = ("ipv4", "ipv6")
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]

    def __init__(self, ipv4: Iterable[str] = (), ipv6: Iterable[str] = ()) -> None:
        self._init(ipv4=tuple(sorted(set(ipv4))), ipv6=tuple(sorted(set(ipv6))))

    def to_dict(self) -> dict[str, Any]:
        return {"ipv4": list(self.ipv4), "ipv6": list(self.ipv6)}

    @classmethod
    def from_dict(cls, raw: Any, where: str = "hijack") -> Hijack:
        d = _mapping(raw, where)
        return cls(ipv4=_texts(d, "ipv4", where), ipv6=_texts(d, "ipv6", where))


def hijack_destinations(family: int, network: str, prefixlen: int) -> tuple[tuple[str, int], ...]:
    """The route destinations for one hijack.json CIDR in an underlay pod (plugin and agent alike): the
    CIDR itself, but a default (`0.0.0.0/0`, a policy without destSubnet) as its two halves, so the pod's
    own default route is never displaced and serves again once the CIDR leaves hijack.json."""
    if prefixlen:
        return ((network, prefixlen),)
    return (("0.0.0.0", 1), ("128.0.0.0", 1)) if family == AF_INET else (("::", 1), ("8000::", 1))


# --- endpoints ---------------------------------------------------------------------------------


def write_endpoint(root: str, endpoint: Endpoint) -> str:
    return _write(os.path.join(root, ENDPOINTS), endpoint.key + ".json", endpoint.to_dict())


def read_endpoint(root: str, key: str) -> Endpoint | None:
    raw = _read(os.path.join(root, ENDPOINTS, key + ".json"))
    return None if raw is None else Endpoint.from_dict(raw, f"endpoints/{key}.json")


def remove_endpoint(root: str, key: str) -> bool:
    return _remove(os.path.join(root, ENDPOINTS, key + ".json"))


def list_endpoints(root: str) -> list[Endpoint]:
    """Every well-formed endpoint; malformed files are skipped (see iter_files for the errors)."""
    return [e for e in _parse_all(root, ENDPOINTS, Endpoint.from_dict)]


# --- acks --------------------------------------------------------------------------------------


def write_ack(root: str, ack: Ack) -> str:
    return _write(os.path.join(root, ACKS), ack.key + ".json", ack.to_dict())


def read_ack(root: str, key: str) -> Ack | None:
    try:
        raw = _read(os.path.join(root, ACKS, key + ".json"))
    except RegistryError:
        return None  # a foreign/half-written ack is the same as no ack yet
    return None if raw is None else Ack.from_dict(raw, f"acks/{key}.json")


def remove_ack(root: str, key: str) -> bool:
    return _remove(os.path.join(root, ACKS, key + ".json"))


def list_acks(root: str) -> list[Ack]:
    return [a for a in _parse_all(root, ACKS, Ack.from_dict)]


# --- agent heartbeat and hijack set ------------------------------------------------------------


def write_heartbeat(root: str, node: str, pid: int | None = None, now: float | None = None) -> str:
    info = AgentInfo(os.getpid() if pid is None else pid, node, time.time() if now is None else now)
    return _write(root, AGENT_FILE, info.to_dict())


def read_agent(root: str) -> AgentInfo | None:
    try:
        raw = _read(os.path.join(root, AGENT_FILE))
    except RegistryError:
        return None
    if not isinstance(raw, dict):
        return None
    pid, node, beat = raw.get("pid"), raw.get("node"), raw.get("heartbeat")
    if not isinstance(pid, int) or not isinstance(node, str) or not isinstance(beat, (int, float)):
        return None
    return AgentInfo(pid, node, float(beat))


def agent_alive(root: str, max_age: float = DEFAULT_ALIVE_SECONDS, now: float | None = None) -> bool:
    info = read_agent(root)
    return info is not None and info.alive(max_age, now)


def read_hijack(root: str) -> Hijack:
    """The agent-maintained hijack set; empty when the agent has not written one (or it is unreadable)."""
    return load_hijack(root) or Hijack()


def load_hijack(root: str) -> Hijack | None:
    """The hijack set, empty when there is no file yet; None when the file is unreadable (nothing to
    prune by: the agent's route sync then leaves every pod as it is)."""
    try:
        raw = _read(os.path.join(root, HIJACK_FILE))
        return Hijack() if raw is None else Hijack.from_dict(raw, HIJACK_FILE)
    except RegistryError:
        return None


def write_hijack(root: str, hijack: Hijack) -> str:
    return _write(root, HIJACK_FILE, hijack.to_dict())


# --- files -------------------------------------------------------------------------------------


def iter_files(root: str, sub: str) -> Iterator[tuple[str, Any]]:
    """(path, parsed JSON or RegistryError) for each registry file in endpoints/ or acks/."""
    folder = os.path.join(root, sub)
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(".") or not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        try:
            raw = _read(path)
        except RegistryError as exc:
            yield path, exc
            continue
        if raw is not None:
            yield path, raw


def _parse_all(root: str, sub: str, parse: Any) -> Iterator[Any]:
    for path, raw in iter_files(root, sub):
        if isinstance(raw, RegistryError):
            continue
        try:
            yield parse(raw, f"{sub}/{os.path.basename(path)}")
        except RegistryError:
            continue


def _write(folder: str, name: str, value: Any) -> str:
    os.makedirs(folder, mode=0o755, exist_ok=True)
    path = os.path.join(folder, name)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(jsonlite.dumps(value))
    os.replace(tmp, path)
    return path


def _read(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        return jsonlite.loads(text)
    except jsonlite.DecodeError as exc:
        raise RegistryError(f"{path}: not JSON ({exc})") from None


def _remove(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RegistryError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    return raw


def _text(d: dict[str, Any], key: str, where: str, required: bool = False) -> str:
    value = d.get(key, "")
    if not isinstance(value, str) or (required and not value):
        raise RegistryError(f"{where}.{key}: {value!r} is not a {'non-empty ' if required else ''}string")
    return value


def _count(d: dict[str, Any], key: str, where: str) -> int:
    value = d.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RegistryError(f"{where}.{key}: {value!r} is not a non-negative integer")
    return value


def _texts(d: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = d.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegistryError(f"{where}.{key}: {value!r} is not a list of strings")
    return tuple(value)
