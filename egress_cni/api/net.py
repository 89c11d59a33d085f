"""Addresses, CIDRs and MACs: the one place in the product that parses them.

Each value is its canonical text (a `str` subclass, so it serialises, formats and compares as the
API writes it) and carries what it means: the family and the integer interval. Constructing one
parses and validates it, so a value of these types is valid wherever it travels; `IP("10.0.0.01")`
raises `AddressError` (a ValueError) naming the text. Parsing uses the C library's `inet_pton` (strict: no leading
zeros, no zone ids, no surrounding spaces) and is cached, so the pod IPs that come back on every
reconcile cost a dictionary lookup.

CIDR lists have three explicit modes (`CidrMode`):
- `STRICT`: `10.6.0.0/16`; host bits set is an error whose message carries the corrected CIDR;
- `BARE_IP`: a bare address is a host prefix (`10.6.1.7` -> `10.6.1.7/32`);
- `HOST_BITS`: host bits are dropped (`10.6.1.7/24` -> `10.6.1.0/24`); the value remembers that
  it was normalised (`Cidr.normalised`), so the webhook can deny or warn with the original text.
"""

from __future__ import annotations

import enum
import functools
import re
from _socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Any

_AF = {4: AF_INET, 6: AF_INET6}
BITS = {4: 32, 6: 128}
_NOT_A_CIDR = "is not a CIDR; expected e.g. 10.6.0.0/16 or fd00::/64"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class AddressError(ValueError):
    """`text` is not what was asked for; `reason` says why, phrased to follow a field path."""

    def __init__(self, text: object, reason: str) -> None:
        self.text, self.reason = text, reason
        super().__init__(f"{text!r} {reason}")


class CidrMode(enum.Flag):
    STRICT = 0
    BARE_IP = enum.auto()
    HOST_BITS = enum.auto()


def _family_of(text: str) -> int:
    return 6 if ":" in text else 4


def _packed(text: str) -> tuple[int, bytes]:
    family = _family_of(text)
    try:
        return family, inet_pton(_AF[family], text)
    except (OSError, ValueError, TypeError):
        raise AddressError(text, "is not an IPv4 or IPv6 address") from None


def format_address(value: int, family: int) -> str:
    """Canonical text of the address `value` of `family` (RFC 5952 for IPv6)."""
    return inet_ntop(_AF[family], value.to_bytes(BITS[family] // 8, "big"))


class _Value(str):
    """Immutable once built: attributes are set only by the constructors below."""

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _init(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


class IP(_Value):
    """One address. `IP(text)` parses; `family` is 4 or 6, `value` the integer address."""

    family: int
    value: int

    def __new__(cls, text: str) -> IP:
        return parse_ip(text)

    @property
    def packed(self) -> bytes:
        return self.value.to_bytes(BITS[self.family] // 8, "big")

    @property
    def host_cidr(self) -> Cidr:
        return Cidr(f"{self}/{BITS[self.family]}")


@functools.lru_cache(maxsize=1 << 18)
def parse_ip(text: str, family: int | None = None) -> IP:
    """The address `text`; `family` restricts it to 4 or 6. Raises ValueError naming the text."""
    fam = 6 if isinstance(text, str) and ":" in text else 4
    try:
        packed = inet_pton(AF_INET6 if fam == 6 else AF_INET, text)
    except (OSError, ValueError, TypeError):
        raise AddressError(text, f"is not an IPv{family} address" if family else "is not an IPv4 or IPv6 address") from None
    if family is not None and fam != family:
        raise AddressError(text, f"is not an IPv{family} address")
    # inet_pton accepts IPv4 only in its canonical dotted-quad form, so its text is already canonical
    ip = str.__new__(IP, text if fam == 4 else inet_ntop(AF_INET6, packed))
    attrs = ip.__dict__
    attrs["family"], attrs["value"] = fam, int.from_bytes(packed, "big")
    return ip


class Cidr(_Value):
    """A network. `first`/`last` bound it as integers; `member` is its ipset text (host prefixes
    as bare addresses, as `ipset list` shows them); `given` is the text it was parsed from."""

    family: int
    prefixlen: int
    first: int
    last: int
    given: str
    normalised: bool  # host bits were dropped (CidrMode.HOST_BITS)
    bare: bool        # written as a bare address (CidrMode.BARE_IP)

    def __new__(cls, text: str, mode: CidrMode = CidrMode.STRICT) -> Cidr:
        return parse_cidr(text, mode)

    @property
    def network(self) -> IP:
        return parse_ip(format_address(self.first, self.family))

    @property
    def member(self) -> str:
        return str(self.network) if self.prefixlen == BITS[self.family] else str(self)

    @property
    def is_default(self) -> bool:
        return self.prefixlen == 0

    def contains(self, ip: IP) -> bool:
        return ip.family == self.family and self.first <= ip.value <= self.last

    def overlaps(self, other: Cidr) -> bool:
        return self.family == other.family and self.first <= other.last and other.first <= self.last


@functools.lru_cache(maxsize=1 << 16)
def parse_cidr(text: str, mode: CidrMode = CidrMode.STRICT) -> Cidr:
    """The network `text` in `mode`. Raises ValueError whose message says what to write instead."""
    if not isinstance(text, str):
        raise AddressError(text, _NOT_A_CIDR)
    addr, slash, plen = text.partition("/")
    try:
        family, packed = _packed(addr)
    except ValueError:
        raise AddressError(text, _NOT_A_CIDR) from None
    bits = BITS[family]
    if not slash:
        if CidrMode.BARE_IP not in mode:
            raise AddressError(text, f"is an address, not a CIDR; write {inet_ntop(_AF[family], packed)}/{bits} for a single host")
        plen = str(bits)
    if not (plen.isdigit() and int(plen) <= bits and plen == str(int(plen))):
        raise AddressError(text, f"is not a CIDR: the prefix length must be 0..{bits}")
    prefixlen = int(plen)
    value = int.from_bytes(packed, "big")
    host = (1 << (bits - prefixlen)) - 1
    first = value & ~host
    canonical = f"{format_address(first, family)}/{prefixlen}"
    if value != first and CidrMode.HOST_BITS not in mode:
        raise AddressError(text, f"has host bits set; did you mean {canonical}?")
    cidr = str.__new__(Cidr, canonical)
    cidr._init(family=family, prefixlen=prefixlen, first=first, last=first | host, given=text,
               normalised=value != first, bare=not slash)
    return cidr


class Mac(_Value):
    """An Ethernet address, lower case with colons."""

    def __new__(cls, text: str) -> Mac:
        return parse_mac(text)


def parse_mac(text: str) -> Mac:
    lowered = text.lower() if isinstance(text, str) else ""
    if not _MAC.match(lowered):
        raise AddressError(text, "is not a MAC address; expected six hex octets like 66:bb:0a:01:02:03")
    return str.__new__(Mac, lowered)


def family_of_entry(text: str) -> int:
    """4 or 6 for an address, CIDR or range text, by its syntax alone (for messages and routing of
    entries to a family's list; validity is checked by the parsers)."""
    return _family_of(text)


# --- coercion for values built in code (tests, controllers): "" and None mean absent -----------


def as_ip(value: str | None, family: int | None = None) -> IP | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, IP) and (family is None or value.family == family) else parse_ip(value, family)


def as_ips(values: tuple[str, ...], family: int | None = None) -> tuple[IP, ...]:
    if all(isinstance(v, IP) for v in values):
        return values  # type: ignore[return-value]
    return tuple(parse_ip(v, family) for v in values)


def as_cidrs(values: tuple[str, ...], mode: CidrMode) -> tuple[Cidr, ...]:
    if all(isinstance(v, Cidr) for v in values):
        return values  # type: ignore[return-value]
    return tuple(v if isinstance(v, Cidr) else parse_cidr(v.strip(), mode) for v in values)


def as_mac(value: str | None) -> Mac | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, Mac) else parse_mac(value)
