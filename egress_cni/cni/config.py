"""Parse the invocation (environment) and the network config (stdin) into immutable values.

Pure: no I/O besides what the caller hands in. Every error names the variable or key, the value and
what would be accepted, with the CNI code the spec assigns (4 env, 6 undecodable, 7 invalid, 1 version).
"""

from __future__ import annotations

from egress_cni.cni import errors
from egress_cni.lowlevel import jsonlite
from egress_cni.lowlevel.record import Record
from egress_cni.registry import DEFAULT_ALIVE_SECONDS, DEFAULT_DIR, HOST_VETH_PREFIX

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
MODES = ("auto", "overlay", "underlay")
FAIL_POLICIES = ("open", "closed")
DEFAULT_STATE_DIR = "/var/lib/egressgateway/cni"
MAIN_TABLE = 254  # hostRuleTable's default (lowlevel.netlink's RT_TABLE_MAIN; not imported: overlay ADD never loads it)
AF_INET, AF_INET6 = 2, 10  # linux values; `_socket` is loaded (0.4 ms) only when an address is parsed
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class Cidr(Record):
    """A network prefix; `packed` is the network address in bytes (host bits zero)."""

    __slots__ = ("family", "packed", "prefixlen")
    family: int
    packed: bytes
    prefixlen: int

    def __init__(self, family: int, packed: bytes, prefixlen: int) -> None:
        self._init(family=family, packed=packed, prefixlen=prefixlen)

    @property
    def address(self) -> str:
        import _socket

        return _socket.inet_ntop(self.family, self.packed)

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen}"


def parse_ip(text: str) -> tuple[int, bytes]:
    """(family, packed) of an IPv4/IPv6 address; ValueError names the value."""
    import _socket

    family = AF_INET6 if ":" in text else AF_INET
    try:
        return family, _socket.inet_pton(family, text)
    except (OSError, ValueError, TypeError):
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None


def parse_cidr(text: str, strict: bool = True) -> Cidr:
    """'10.0.0.0/8' -> Cidr; a bare address is a host prefix. strict: host bits must be zero."""
    import _socket

    addr, _, plen = text.partition("/")
    family, packed = parse_ip(addr)
    bits = 32 if family == AF_INET else 128
    if plen and not (plen.isdigit() and int(plen) <= bits):
        raise ValueError(f"{text!r}: prefix length {plen!r} is not 0..{bits}")
    prefixlen = int(plen) if plen else bits
    as_int = int.from_bytes(packed, "big")
    mask = ((1 << bits) - 1) ^ ((1 << (bits - prefixlen)) - 1)
    if as_int & ~mask and strict:
        raise ValueError(f"{text!r} has host bits set (did you mean {_socket.inet_ntop(family, (as_int & mask).to_bytes(bits // 8, 'big'))}/{prefixlen}?)")
    return Cidr(family, (as_int & mask).to_bytes(bits // 8, "big"), prefixlen)


class Invocation(Record):
    """The CNI_* environment of one call."""

    __slots__ = ("args", "command", "container_id", "ifname", "netns")
    command: str
    container_id: str
    netns: str
    ifname: str
    args: dict[str, str]

    def __init__(self, command: str, container_id: str = "", netns: str = "", ifname: str = "", args: dict[str, str] | None = None) -> None:
        self._init(command=command, container_id=container_id, netns=netns, ifname=ifname, args=dict(args or {}))


def parse_cni_args(text: str) -> dict[str, str]:
    """'K1=V1;K2=V2' (any order, split on the first '='; pairs without '=' ignored)."""
    out: dict[str, str] = {}
    for pair in text.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def parse_invocation(env: Mapping[str, str]) -> Invocation:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise errors.CNIError(errors.INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    inv = Invocation(command, env.get("CNI_CONTAINERID", ""), env.get("CNI_NETNS", ""), env.get("CNI_IFNAME", ""),
                     parse_cni_args(env.get("CNI_ARGS", "")))
    if command not in ("ADD", "DEL", "CHECK"):
        return inv
    required = ["CNI_CONTAINERID", "CNI_IFNAME"] + ([] if command == "DEL" else ["CNI_NETNS"])
    missing = [k for k in required if not env.get(k)]
    if missing:
        raise errors.CNIError(errors.INVALID_ENV, f"required env variables [{' '.join(missing)}] missing")
    cid = inv.container_id
    if not (cid[0].isalnum() and cid[0].isascii() and set(cid) <= _ID_CHARS):
        raise errors.CNIError(errors.INVALID_ENV, f"CNI_CONTAINERID {cid!r} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    name = inv.ifname
    if len(name) > 15 or name in (".", "..") or any(c in name for c in "/: \t\n\r"):
        raise errors.CNIError(errors.INVALID_ENV, f"CNI_IFNAME {name!r} must be 1..15 chars without '/', ':' or whitespace and not '.'/'..'")
    return inv


class NetConf(Record):
    """Our plugin's entry of the conflist plus what the runtime injected."""

    __slots__ = (
        "ack_timeout", "agent_alive_seconds", "cni_version", "fail_policy", "hijack", "host_rule_priority",
        "host_rule_table", "host_veth_prefix", "log_file", "mode", "name", "node_name", "pod_veth_name",
        "prev_result", "registry_dir", "reply_via_veth", "state_dir", "valid_attachments", "veth_mtu",
    )  # fmt: skip
    cni_version: str
    name: str
    mode: str
    hijack: tuple[Cidr, ...]
    host_rule_table: int
    host_rule_priority: int
    pod_veth_name: str
    host_veth_prefix: str
    veth_mtu: int
    reply_via_veth: bool
    registry_dir: str
    state_dir: str
    ack_timeout: float
    fail_policy: str
    agent_alive_seconds: float
    node_name: str
    log_file: str
    prev_result: dict[str, Any] | None
    valid_attachments: tuple[tuple[str, str], ...] | None

    def __init__(self, **values: Any) -> None:
        self._init(**values)


def _bad(key: str, value: object, accepted: str) -> errors.CNIError:
    return errors.CNIError(errors.INVALID_CONFIG, f"config key {key!r}: {value!r} is invalid; expected {accepted}")


def _get(raw: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any, accepted: str) -> Any:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _bad(key, value, accepted)
    return value


def parse_version_only(stdin: bytes) -> str:
    """The request's cniVersion for VERSION (stdin may be empty or junk: never fail)."""
    try:
        raw = jsonlite.loads(stdin) if stdin.strip() else {}
    except jsonlite.DecodeError:
        return "1.0.0"
    version = raw.get("cniVersion") if isinstance(raw, dict) else None
    return version if isinstance(version, str) and version else "1.0.0"


def parse_netconf(stdin: bytes, command: str) -> NetConf:
    try:
        raw = jsonlite.loads(stdin)
    except (jsonlite.DecodeError, UnicodeDecodeError) as exc:
        raise errors.CNIError(errors.DECODE_FAILURE, f"stdin is not JSON network config: {exc}") from None
    if not isinstance(raw, dict):
        raise errors.CNIError(errors.DECODE_FAILURE, f"stdin network config must be a JSON object, got {type(raw).__name__}")
    version = raw.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise errors.CNIError(errors.INCOMPATIBLE_VERSION, "incompatible CNI versions",
                              f"config is {version!r}, plugin supports {list(SUPPORTED_VERSIONS)}")
    if command == "CHECK" and version in ("0.3.0", "0.3.1"):
        raise errors.CNIError(errors.INCOMPATIBLE_VERSION, f"config version {version} does not allow CHECK (needs >= 0.4.0)")
    if command in ("GC", "STATUS") and version != "1.1.0":
        raise errors.CNIError(errors.INCOMPATIBLE_VERSION, f"config version {version} does not allow {command} (needs 1.1.0)")
    name = raw.get("name")
    if not isinstance(name, str) or not name or not (name[0].isalnum() and set(name) <= _ID_CHARS):
        raise _bad("name", name, "a network name matching ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    mode = _get(raw, "mode", str, "auto", " or ".join(MODES))
    if mode not in MODES:
        raise _bad("mode", mode, " or ".join(MODES))
    hijack = []
    for i, text in enumerate(_get(raw, "hijackCIDR", list, [], "a list of CIDR strings")):
        try:
            hijack.append(parse_cidr(text if isinstance(text, str) else repr(text)))
        except ValueError as exc:
            raise errors.CNIError(errors.INVALID_CONFIG, f"config key 'hijackCIDR[{i}]': {exc}") from None
    fail_policy = _get(raw, "failPolicy", str, "open", "'open' or 'closed'")
    if fail_policy not in FAIL_POLICIES:
        raise _bad("failPolicy", fail_policy, "'open' or 'closed'")
    table = _get(raw, "hostRuleTable", int, MAIN_TABLE, "a routing table id 1..4294967295 other than 253 and 255")
    if not (0 < table < 2**32) or table in (253, 255):
        raise _bad("hostRuleTable", table, "a routing table id 1..4294967295 other than 253 and 255 (default/local; "
                                           "254, the default, is main: no rule)")
    priority = _get(raw, "hostRulePriority", int, 1000, "a rule priority 1..32765")
    if not (0 < priority < 32766):
        raise _bad("hostRulePriority", priority, "a rule priority 1..32765 (before the main table)")
    prefix = _get(raw, "hostVethPrefix", str, HOST_VETH_PREFIX, "1..3 letters")
    if not (0 < len(prefix) <= 3 and prefix.isalnum()):
        raise _bad("hostVethPrefix", prefix, "1..3 alphanumeric characters (the rest of the 15-char name is a hash)")
    pod_veth = _get(raw, "podVethName", str, "veth0", "an interface name of 1..15 chars")
    if not (0 < len(pod_veth) <= 15) or any(c in pod_veth for c in "/: \t\n"):
        raise _bad("podVethName", pod_veth, "an interface name of 1..15 chars")
    mtu = _get(raw, "vethMTU", int, 1500, "an MTU 576..65535")
    if not 576 <= mtu <= 65535:
        raise _bad("vethMTU", mtu, "an MTU 576..65535")
    timeout = float(_get(raw, "ackTimeoutSeconds", (int, float), 5, "seconds >= 0"))
    alive = float(_get(raw, "agentAliveSeconds", (int, float), DEFAULT_ALIVE_SECONDS, "seconds > 0"))
    if timeout < 0 or alive <= 0:
        raise _bad("ackTimeoutSeconds/agentAliveSeconds", (timeout, alive), "ackTimeoutSeconds >= 0 and agentAliveSeconds > 0")
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise _bad("prevResult", prev, "a CNI result object")
    return NetConf(
        cni_version=version, name=name, mode=mode, hijack=tuple(hijack), host_rule_table=table,
        host_rule_priority=priority, pod_veth_name=pod_veth, host_veth_prefix=prefix, veth_mtu=mtu,
        reply_via_veth=bool(_get(raw, "replyViaVeth", bool, False, "true or false")),
        registry_dir=_get(raw, "registryDir", str, DEFAULT_DIR, "a directory path") or DEFAULT_DIR,
        state_dir=_get(raw, "stateDir", str, DEFAULT_STATE_DIR, "a directory path") or DEFAULT_STATE_DIR,
        ack_timeout=timeout, fail_policy=fail_policy, agent_alive_seconds=alive,
        node_name=_get(raw, "nodeName", str, "", "a node name"), log_file=_get(raw, "logFile", str, "", "a file path"),
        prev_result=prev, valid_attachments=_valid_attachments(raw) if command == "GC" else None,
    )  # fmt: skip


def _valid_attachments(raw: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    # libcni sends both the 1.1.0 key and the renamed one (containernetworking/cni#1101).
    items = raw.get("cni.dev/valid-attachments")
    if items is None:
        items = raw.get("cni.dev/attachments", [])
    if not isinstance(items, list):
        raise _bad("cni.dev/valid-attachments", items, "a list of {containerID, ifname}")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) or not isinstance(item.get("ifname"), str):
            raise _bad("cni.dev/valid-attachments", item, "objects with string containerID and ifname")
        out.append((item["containerID"], item["ifname"]))
    return tuple(out)


def pod_ips(prev_result: dict[str, Any] | None, ifname: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(IPv4s, IPv6s) of the pod's `ifname` from prevResult (an `ips` entry without `interface` counts)."""
    if not prev_result:
        return (), ()
    interfaces = prev_result.get("interfaces") or []
    v4: list[str] = []
    v6: list[str] = []
    for ip in prev_result.get("ips") or []:
        if not isinstance(ip, dict) or not isinstance(ip.get("address"), str):
            continue
        index = ip.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces):
            iface = interfaces[index]
            if isinstance(iface, dict) and (iface.get("name") != ifname or not iface.get("sandbox")):
                continue
        addr = ip["address"].partition("/")[0]
        (v6 if ":" in addr else v4).append(addr)
    return tuple(v4), tuple(v6)
