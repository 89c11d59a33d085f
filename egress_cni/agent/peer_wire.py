"""The gateway peers' datagrams: heartbeats and takeover notices, optionally HMAC-SHA256 signed.

`decode` is the edge: a datagram becomes a validated `Message` or a `MessageError`, never anything in
between (agent/peers.py decides on what it returns).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

_PLAIN, _SIGNED = b"EGP1", b"EGS1"
_MAC_LEN = hashlib.sha256().digest_size


class MessageError(ValueError):
    """A datagram we drop: malformed, unauthenticated while a key is configured, or a bad MAC."""


@dataclass(frozen=True)
class Takeover:
    """EIP entry `entry` is served by `node`, which took it from `replaced`; the chain of takeovers
    began while the API placed the entry on `origin` (it holds while the API still says so)."""

    entry: str
    node: str
    replaced: str
    origin: str
    policies: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"e": self.entry, "n": self.node, "r": self.replaced, "o": self.origin, "p": list(self.policies)}

    @classmethod
    def parse(cls, raw: Any) -> Takeover:
        if not isinstance(raw, dict):
            raise MessageError("takeover: not an object")
        text = [raw.get(k) for k in ("e", "n", "r", "o")]
        policies = raw.get("p", [])
        if not all(isinstance(t, str) and t for t in text) or not isinstance(policies, list) \
                or not all(isinstance(p, str) for p in policies):
            raise MessageError("takeover: bad fields")
        return cls(text[0], text[1], text[2], text[3], tuple(policies))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Message:
    node: str
    incarnation: float
    seq: int
    eips: tuple[str, ...] = ()
    takeovers: tuple[Takeover, ...] = ()
    grace: float = 0.0  # > 0: "I am restarting; count me alive this much longer"


def encode(msg: Message, key: bytes | None = None) -> bytes:
    fields: dict[str, Any] = {"n": msg.node, "i": msg.incarnation, "s": msg.seq, "e": list(msg.eips),
                              "t": [t.to_dict() for t in msg.takeovers]}
    if msg.grace:
        fields["g"] = msg.grace
    body = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    if key is None:
        return _PLAIN + body
    return _SIGNED + hmac.new(key, _SIGNED + body, hashlib.sha256).digest() + body


def decode(data: bytes, key: bytes | None = None) -> Message:
    """The message in `data`; MessageError when it is malformed, or when `key` is set and the datagram
    is unsigned or its MAC is wrong. Without a key, signed datagrams are accepted unverified."""
    magic = data[:4]
    if magic == _SIGNED:
        mac, body = data[4:4 + _MAC_LEN], data[4 + _MAC_LEN:]
        if key is not None and not hmac.compare_digest(mac, hmac.new(key, _SIGNED + body, hashlib.sha256).digest()):
            raise MessageError("bad MAC")
    elif magic == _PLAIN:
        if key is not None:
            raise MessageError("unauthenticated while a key is configured")
        body = data[4:]
    else:
        raise MessageError("not a peer message")
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise MessageError("not an object")
    node, inc, seq, eips, takeovers = (raw.get(k) for k in ("n", "i", "s", "e", "t"))
    if not isinstance(node, str) or not node or not isinstance(inc, (int, float)) or isinstance(inc, bool) \
            or not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(eips, list) \
            or not all(isinstance(e, str) for e in eips) or not isinstance(takeovers, list):
        raise MessageError("bad fields")
    grace = raw.get("g", 0.0)
    if not isinstance(grace, (int, float)) or isinstance(grace, bool) or not 0 <= grace <= 60:
        raise MessageError("bad grace")
    return Message(node, float(inc), seq, tuple(eips), tuple(Takeover.parse(t) for t in takeovers), float(grace))


def read_key(path: str) -> bytes | None:
    """The HMAC key in the file at `path` (surrounding whitespace stripped); None for no path."""
    if not path:
        return None
    with open(path, "rb") as f:
        key = f.read().strip()
    if not key:
        raise ValueError(f"{path}: the peer key file is empty")
    return key
