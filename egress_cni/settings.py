"""The installation's settings: one file (the ConfigMap `egressgateway-config`), read by every daemon.

`load(path)` reads the file into one frozen `Settings` tree; the controller, the agent and the
webhook each take the part they need (docs/settings.md lists every key). The file may use our key
names or upstream's (spidernet-io/egressgateway: `tunnelIpv4Subnet`, `vxlan.id`,
`maxNumberEndpointPerSlice`, `iptables.backendMode`, `gatewayFailover.*`, ...), at the top level as
in upstream's ConfigMap or under `feature:` as in its chart values. Two keys of one setting that
disagree are an error.

Nothing is ignored silently:
- an unknown key is an error naming it and the known keys closest to it;
- a value of the wrong type or out of range is an error naming its key;
- a key we know but do not act on (upstream knobs we have no use for, or a value we cannot honour)
  becomes a line in `Settings.notes`, which each daemon logs as a warning at start.

Precedence, applied by each daemon with `layered`: command-line flag > environment variable >
this file > the default here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

CONFIG_ENV = "EGRESS_CONFIG"  # the file's path when a daemon gets no --config
IPTABLES_BACKENDS = ("auto", "nftables", "nft", "legacy")
VXLAN_MODES = ("Always", "CrossSubnet", "Never")  # dataplane/inputs.py's, Calico's names
MARK_BASE = 0x26000000  # dataplane.inputs.DataplaneConfig.mark_base; upstream's `mark` must match it


class SettingsError(ValueError):
    """A settings file (or a variable) we refuse: the message names the key."""


@dataclass(frozen=True)
class Families:
    """Which IP families the installation serves. None: the file does not say, and each daemon keeps
    its own default (controller and webhook: both; agent: IPv4 only unless --ipv6)."""

    ipv4: bool | None = None
    ipv6: bool | None = None


@dataclass(frozen=True)
class Tunnel:
    ipv4_subnet: str = "172.31.0.0/16"  # "" allocates no IPv4 tunnel addresses
    ipv6_subnet: str = "fd11::/112"
    parent: str = ""  # the underlay link of the VXLAN; "": the link of the default route


@dataclass(frozen=True)
class Vxlan:
    name: str = "egress.vxlan"
    vni: int = 100
    port: int = 7789
    mtu: int = 0  # 0: the parent's MTU minus the VXLAN overhead
    mode: str = "Always"  # CrossSubnet: no tunnel to on-link gateways; Never: no tunnel at all


@dataclass(frozen=True)
class Agent:
    # Only gateway-eligible agents hold a Lease (the controller's fallback liveness and their reports
    # of EIPs held and peers seen; docs/ha.md); the fast failover is the peers' heartbeats.
    lease_seconds: int = 20
    lease_renew_seconds: float = 2.0
    iptables_backend: str = "auto"
    failover_enabled: bool = True  # upstream's gatewayFailover.enable: false = no peer takeover


@dataclass(frozen=True)
class Peers:
    port: int = 7790  # UDP heartbeats and takeover notices between agents (agent/peers.py)
    key_file: str = ""  # HMAC-SHA256 key; "": messages are sent and accepted unauthenticated


@dataclass(frozen=True)
class Controller:
    max_endpoints_per_slice: int = 100


@dataclass(frozen=True)
class Settings:
    families: Families = field(default_factory=Families)
    tunnel: Tunnel = field(default_factory=Tunnel)
    vxlan: Vxlan = field(default_factory=Vxlan)
    agent: Agent = field(default_factory=Agent)
    peers: Peers = field(default_factory=Peers)
    controller: Controller = field(default_factory=Controller)
    source: str = ""  # the file these came from; "" when only defaults apply
    notes: tuple[str, ...] = ()  # known keys that change nothing here (each daemon logs them)

    @property
    def failover_enabled(self) -> bool:
        """`gatewayFailover.enable`: whether gateway peers take EIPs over without the API."""
        return self.agent.failover_enabled


# --- the keys -------------------------------------------------------------------------------------

Check = Callable[[Any], str | None]  # an error text, or None when the value is fine


@dataclass(frozen=True)
class _Key:
    """One setting (`path` in the Settings tree) and every key name that sets it."""

    path: str  # "section.field"
    kind: type
    ours: str
    upstream: tuple[str, ...] = ()  # dotted, without upstream's `feature.` prefix
    check: Check | None = None
    convert: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)  # per key name, after checks


@dataclass(frozen=True)
class _Inert:
    """A key we accept and do not act on: a note, unless its value is what we do anyway."""

    key: str
    kind: type
    why: str
    harmless: tuple[Any, ...] = ()  # values that match our behaviour (no note)


def _range(low: float, high: float | None = None) -> Check:
    def check(value: Any) -> str | None:
        if value < low or (high is not None and value > high):
            return f"must be {f'between {low} and {high}' if high is not None else f'at least {low}'}, got {value}"
        return None
    return check


def _positive(value: Any) -> str | None:
    return None if value > 0 else f"must be more than 0, got {value}"


def _ifname(value: Any) -> str | None:
    if not value or len(value) > 15 or "/" in value or any(c.isspace() for c in value):
        return f"must be a link name of 1 to 15 characters without '/' or spaces, got {value!r}"
    return None


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}, got {value!r}"
    return check


def _detect_method(value: Any) -> str | None:
    if value == "defaultRouteInterface":
        return None
    if value.startswith("interface=") and not _ifname(value[len("interface="):]):
        return None
    return f"must be defaultRouteInterface or interface=<link name>, got {value!r}"


def _parent_from_detect_method(value: str) -> str:
    return "" if value == "defaultRouteInterface" else value[len("interface="):]


KEYS: tuple[_Key, ...] = (
    _Key("families.ipv4", bool, "enableIPv4"),
    _Key("families.ipv6", bool, "enableIPv6"),
    _Key("tunnel.ipv4_subnet", str, "tunnelIPv4Subnet", ("tunnelIpv4Subnet",)),
    _Key("tunnel.ipv6_subnet", str, "tunnelIPv6Subnet", ("tunnelIpv6Subnet",)),
    _Key("tunnel.parent", str, "tunnelParent", ("tunnelDetectMethod",),
         convert={"tunnelDetectMethod": _parent_from_detect_method}),
    _Key("vxlan.name", str, "vxlan.name", check=_ifname),
    _Key("vxlan.vni", int, "vxlan.vni", ("vxlan.id",), _range(0, 2**24 - 1)),
    _Key("vxlan.port", int, "vxlan.port", check=_range(1, 65535)),
    _Key("vxlan.mtu", int, "vxlan.mtu", check=_range(0, 65535)),
    _Key("vxlan.mode", str, "vxlan.mode", check=_one_of(*VXLAN_MODES)),
    # upstream's failover timings mean ours only while its failover is on (see _failover_off)
    _Key("agent.lease_seconds", int, "agentLeaseSeconds", ("gatewayFailover.eipEvictionTimeout",), _range(1)),
    _Key("agent.lease_renew_seconds", float, "agentLeaseRenewSeconds", ("gatewayFailover.tunnelUpdatePeriod",), _positive),
    _Key("agent.failover_enabled", bool, "gatewayFailover.enable"),
    _Key("agent.iptables_backend", str, "iptablesBackend", ("iptables.backendMode",), _one_of(*IPTABLES_BACKENDS)),
    _Key("peers.port", int, "peers.port", check=_range(1, 65535)),
    _Key("peers.key_file", str, "peers.keyFile"),
    _Key("controller.max_endpoints_per_slice", int, "maxEndpointsPerSlice", ("maxNumberEndpointPerSlice",), _range(1)),
)
_CUSTOM_CHECKS: Mapping[str, Check] = {"tunnelDetectMethod": _detect_method}

_CLUSTER_INFO = "set it in the spec of EgressClusterInfo `default` (manifests/egressclusterinfo.yaml), which the controller reads"
_UPSTREAM_ONLY = "an upstream implementation knob with no counterpart here"
INERT: tuple[_Inert, ...] = (
    _Inert("datapathMode", str, "only the iptables datapath exists", ("iptables",)),
    _Inert("tunnelDetectCustomInterface", list, "per-node parent links are not supported: set tunnelParent, or --parent per node", ([],)),
    _Inert("enableGatewayReplyRoute", bool, "replies always return through the tunnel", (False,)),
    _Inert("gatewayReplyRouteTable", int, _UPSTREAM_ONLY),
    _Inert("gatewayReplyRouteMark", int, _UPSTREAM_ONLY),
    _Inert("vxlan.disableChecksumOffload", bool, "checksum offload stays as the kernel sets it", (False,)),
    _Inert("clusterCIDR.autoDetect.podCidrMode", str, _CLUSTER_INFO),
    _Inert("clusterCIDR.autoDetect.clusterIP", bool, _CLUSTER_INFO),
    _Inert("clusterCIDR.autoDetect.nodeIP", bool, _CLUSTER_INFO),
    _Inert("clusterCIDR.extraCidr", list, _CLUSTER_INFO, ([],)),
    _Inert("announcedInterfacesToExclude", list, "EIPs are announced on the tunnel parent only"),
    _Inert("mark", str, f"the mark base is fixed at {MARK_BASE:#x}", (f"{MARK_BASE:#x}", f"{MARK_BASE:#X}")),
    _Inert("gatewayFailover.tunnelMonitorPeriod", int, "the controller watches the agents' Leases instead of polling"),
    _Inert("iptables.refreshIntervalSecond", int, _UPSTREAM_ONLY),
    _Inert("iptables.postWriteIntervalSecond", int, _UPSTREAM_ONLY),
    _Inert("iptables.lockTimeoutSecond", int, _UPSTREAM_ONLY),
    _Inert("iptables.lockProbeIntervalMillis", int, _UPSTREAM_ONLY),
    _Inert("iptables.lockFilePath", str, _UPSTREAM_ONLY),
    _Inert("cacheSyncSyncPeriodSecond", int, _UPSTREAM_ONLY),
)
_FAILOVER_TIMINGS = ("gatewayFailover.eipEvictionTimeout", "gatewayFailover.tunnelUpdatePeriod")

_BY_NAME: dict[str, _Key] = {name: k for k in KEYS for name in (k.ours, *k.upstream)}
_INERT_BY_NAME: dict[str, _Inert] = {i.key: i for i in INERT}
KNOWN: tuple[str, ...] = tuple(sorted({*_BY_NAME, *_INERT_BY_NAME}))
_SECTIONS = frozenset(".".join(name.split(".")[:depth]) for name in KNOWN for depth in range(1, name.count(".") + 1))


# --- reading ---------------------------------------------------------------------------------------

def load(path: str | None) -> Settings:
    """The settings in the YAML file at `path`; the defaults when `path` is None or empty."""
    if not path:
        return Settings()
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not YAML: {exc}") from None
    return parse({} if raw is None else raw, path)


def parse(raw: Any, source: str = "settings") -> Settings:
    """The settings in an already loaded document (a mapping); raises SettingsError listing every
    problem at once, each with its key."""
    if not isinstance(raw, Mapping):
        raise SettingsError(f"{source}: expected a mapping of settings, got {_kind(raw)}")
    errors: list[str] = []
    flat = _flatten(raw, errors)
    values: dict[str, tuple[str, Any]] = {}  # settings path -> (key name, value)
    notes: list[str] = []
    failover_off = flat.get("gatewayFailover.enable") is False
    for name, value in flat.items():
        if name in _INERT_BY_NAME:
            inert = _INERT_BY_NAME[name]
            problem = _type_error(value, inert.kind)
            if problem:
                errors.append(f"{name}: {problem}")
            elif value not in inert.harmless:
                notes.append(f"{name}: {_show(value)} has no effect here: {inert.why}")
            continue
        key = _BY_NAME.get(name)
        if key is None:
            errors.append(_unknown(name))
            continue
        problem = _type_error(value, key.kind) or (_CUSTOM_CHECKS.get(name) or key.check or _fine)(_typed(value, key.kind))
        if problem:
            errors.append(f"{name}: {problem}")
            continue
        if failover_off and name in _FAILOVER_TIMINGS:
            notes.append(f"{name}: {_show(value)} has no effect here: gatewayFailover.enable is false")
            continue
        converted = key.convert.get(name, lambda v: v)(_typed(value, key.kind))
        earlier = values.get(key.path)
        if earlier is not None and earlier[1] != converted:
            errors.append(f"{earlier[0]} ({_show(earlier[1])}) and {name} ({_show(converted)}) set the same setting differently")
            continue
        values.setdefault(key.path, (name, converted))
    settings = _build(values)
    if settings.agent.lease_renew_seconds >= settings.agent.lease_seconds:
        errors.append(f"{_name_of(values, 'agent.lease_renew_seconds', 'agentLeaseRenewSeconds')} "
                      f"({settings.agent.lease_renew_seconds}) must be shorter than "
                      f"{_name_of(values, 'agent.lease_seconds', 'agentLeaseSeconds')} ({settings.agent.lease_seconds})")
    if settings.families.ipv4 is False and settings.families.ipv6 is False:
        errors.append("enableIPv4 and enableIPv6 are both false: at least one family must be enabled")
    if errors:
        raise SettingsError(f"{source}: " + ("\n  ".join(["invalid settings:", *errors]) if len(errors) > 1 else errors[0]))
    return replace(settings, source=source if source != "settings" else "", notes=tuple(notes))


def _flatten(raw: Mapping[Any, Any], errors: list[str]) -> dict[str, Any]:
    """Dotted key -> value; upstream's `feature:` wrapper is taken off; None values are unset."""
    out: dict[str, Any] = {}

    def walk(mapping: Mapping[Any, Any], prefix: str) -> None:
        for key, value in mapping.items():
            if not isinstance(key, str):
                errors.append(f"{prefix}{key!r}: keys must be strings")
                continue
            name = f"{prefix}{key}"
            if value is None:
                continue
            if isinstance(value, Mapping):
                if name in KNOWN:
                    errors.append(f"{name}: expected {_kind_name(_kind_of(name))}, got a mapping")
                else:
                    walk(value, name + ".")
                continue
            if name in _SECTIONS:
                errors.append(f"{name}: expected a mapping of {', '.join(k for k in KNOWN if k.startswith(name + '.'))}, got {_kind(value)}")
                continue
            if name in out and out[name] != value:
                errors.append(f"{name} and feature.{name} set the same setting differently ({_show(out[name])} and {_show(value)})")
                continue
            out[name] = value

    feature = raw.get("feature")
    rest = {k: v for k, v in raw.items() if k != "feature"}
    walk(rest, "")
    if isinstance(feature, Mapping):
        walk(feature, "")
    elif feature is not None:
        errors.append(f"feature: expected a mapping (upstream's chart values), got {_kind(feature)}")
    return out


def _build(values: Mapping[str, tuple[str, Any]]) -> Settings:
    sections: dict[str, dict[str, Any]] = {}
    for path, (_, value) in values.items():
        section, name = path.split(".")
        sections.setdefault(section, {})[name] = value
    defaults = Settings()
    return Settings(**{f.name: replace(getattr(defaults, f.name), **sections.get(f.name, {}))
                       for f in fields(Settings) if f.name not in ("source", "notes")})


def _unknown(name: str) -> str:
    section, _, leaf = name.rpartition(".")
    siblings = [k for k in KNOWN if k.rpartition(".")[0] == section]
    if not siblings:
        return f"{name}: unknown key (no section {section!r}; known sections: {', '.join(sorted(_SECTIONS))})"
    near = [k for k in siblings if k.rpartition(".")[2].lower() == leaf.lower()]  # a case slip
    if not near:
        leaves = {k.rpartition(".")[2].lower(): k for k in siblings}
        near = [leaves[m] for m in difflib.get_close_matches(leaf.lower(), list(leaves), n=3, cutoff=0.7)]
    if near:
        return f"{name}: unknown key (did you mean {' or '.join(near)}?)"
    return f"{name}: unknown key (known{f' in {section}' if section else ''}: {', '.join(siblings)})"


def _name_of(values: Mapping[str, tuple[str, Any]], path: str, ours: str) -> str:
    return values[path][0] if path in values else ours


def _fine(value: Any) -> str | None:
    return None


def _type_error(value: Any, kind: type) -> str | None:
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    return None if ok else f"expected {_kind_name(kind)}, got {_show(value)} ({_kind(value)})"


def _typed(value: Any, kind: type) -> Any:
    return float(value) if kind is float else value


def _kind_of(name: str) -> type:
    key = _BY_NAME.get(name)
    return key.kind if key else _INERT_BY_NAME[name].kind


def _kind_name(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}.get(kind, kind.__name__)


def _kind(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


# --- precedence -----------------------------------------------------------------------------------

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def layered(flag: T | None, env: Mapping[str, str], variable: str | None, parse_text: Callable[[str], T], configured: T) -> T:
    """flag > environment variable > the settings file (which already sits over the default).

    A flag counts when given (not None); a variable when set, even to "" (an empty subnet variable
    turns that family's tunnel addresses off, as it always did). A variable that does not parse is
    a SettingsError naming it."""
    if flag is not None:
        return flag
    if variable is not None and variable in env:
        try:
            return parse_text(env[variable])
        except ValueError as exc:
            raise SettingsError(f"{variable}={env[variable]!r}: {exc}") from None
    return configured


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None


def describe(keys: Iterable[_Key] = KEYS) -> list[tuple[str, str, str, Any]]:
    """(settings path, our key, upstream's keys, default) for every setting: what docs/settings.md lists."""
    defaults = Settings()
    rows = []
    for key in keys:
        section, name = key.path.split(".")
        rows.append((key.path, key.ours, ", ".join(key.upstream), getattr(getattr(defaults, section), name)))
    return rows
