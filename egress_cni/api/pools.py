"""IP pools as interval arithmetic.

A pool is a sorted tuple of disjoint, non-adjacent inclusive integer ranges of one address family.
Every operation costs O(number of ranges), never O(number of addresses): an IPv6 /64 (2^64
addresses) costs the same as an IPv4 /30.

Pool entries accept three forms (the reference's `ParseIPRanges` syntax):

- a single address: ``10.6.1.55`` or ``fd00::5``;
- an inclusive range: ``10.6.1.60-10.6.1.66`` (both ends of one family, first <= last);
- a CIDR: ``10.6.1.64/28``. Host bits are ignored, as the reference does (``10.6.1.70/28`` means
  ``10.6.1.64/28``).

Rule kept from the reference: an **IPv4 CIDR excludes its network and broadcast addresses**
(``10.6.1.64/30`` holds ``.65`` and ``.66``), because those cannot be used as a source address on an
ordinary subnet. /31 and /32 keep every address (RFC 3021 point-to-point links have no broadcast).
IPv6 CIDRs keep every address: IPv6 has no broadcast.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from egress_cni.api.errors import FieldError, join
from egress_cni.api.net import IP, AddressError, CidrMode, format_address, parse_cidr, parse_ip

IPAddress = IP  # an address of the pools' API: canonical text with .family and .value

_MAX = {4: (1 << 32) - 1, 6: (1 << 128) - 1}
_ACCEPTED = "an IP (10.6.1.55), a range (10.6.1.60-10.6.1.66) or a CIDR (10.6.1.64/28)"


@dataclass(frozen=True, order=True)
class IPRange:
    """An inclusive range of addresses of one family, as integers."""

    first: int
    last: int
    version: int

    def __post_init__(self) -> None:
        if self.version not in _MAX:
            raise ValueError(f"IP version must be 4 or 6, not {self.version}")
        if not 0 <= self.first <= self.last <= _MAX[self.version]:
            raise ValueError(f"invalid IPv{self.version} range {self.first}-{self.last}")

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        first, last = to_address(self.first, self.version), to_address(self.last, self.version)
        return str(first) if self.first == self.last else f"{first}-{last}"


def to_address(value: int, version: int) -> IPAddress:
    return parse_ip(format_address(value, version))


def parse_address(text: str) -> IPAddress:
    """Parse one address (surrounding spaces allowed); raises ValueError with the text in the message."""
    return parse_ip(text.strip())


def parse_range(text: str) -> IPRange:
    """Parse one pool entry (IP, a-b range or CIDR) into a range. Raises ValueError."""
    entry = text.strip()
    if not entry:
        raise ValueError("empty entry")
    try:
        return _parse_range(entry)
    except AddressError as exc:
        raise ValueError(str(exc)) from None


def _parse_range(entry: str) -> IPRange:
    if "/" in entry:
        net = parse_cidr(entry, CidrMode.HOST_BITS)
        first, last = net.first, net.last
        if net.family == 4 and net.prefixlen <= 30:
            first, last = first + 1, last - 1
        return IPRange(first, last, net.family)
    if "-" in entry:
        lo_text, _, hi_text = entry.partition("-")
        lo, hi = parse_address(lo_text), parse_address(hi_text)
        if lo.family != hi.family:
            raise ValueError(f"range ends {lo} and {hi} are of different IP families")
        if lo.value > hi.value:
            raise ValueError(f"range start {lo} is after its end {hi}")
        return IPRange(lo.value, hi.value, lo.family)
    ip = parse_address(entry)
    return IPRange(ip.value, ip.value, ip.family)


def _normalise(ranges: Iterable[IPRange]) -> tuple[IPRange, ...]:
    merged: list[IPRange] = []
    for r in sorted(ranges):
        if merged and r.first <= merged[-1].last + 1:
            last = merged[-1]
            if r.last > last.last:
                merged[-1] = IPRange(last.first, r.last, r.version)
        else:
            merged.append(r)
    return tuple(merged)


@dataclass(frozen=True)
class IPPool:
    """A set of addresses of one family, kept as merged inclusive ranges."""

    version: int
    ranges: tuple[IPRange, ...] = ()

    @classmethod
    def of(cls, version: int, ranges: Iterable[IPRange] = ()) -> IPPool:
        items = list(ranges)
        for r in items:
            if r.version != version:
                raise ValueError(f"IPv{r.version} range {r} in an IPv{version} pool")
        return cls(version, _normalise(items))

    @classmethod
    def parse(cls, entries: Sequence[str], version: int, path: str = "") -> IPPool:
        """Parse spec strings; a bad entry raises FieldError naming `path[i]`."""
        ranges = []
        for i, entry in enumerate(entries):
            where = join(path, i) if path else f"[{i}]"
            if not isinstance(entry, str):
                raise FieldError(where, entry, f"must be a string: {_ACCEPTED}")
            try:
                r = parse_range(entry)
            except ValueError as exc:
                raise FieldError(where, entry, f"not a valid IPv{version} pool entry ({exc}); expected {_ACCEPTED}") from None
            if r.version != version:
                raise FieldError(where, entry, f"is IPv{r.version}; this list takes IPv{version} entries only")
            ranges.append(r)
        return cls.of(version, ranges)

    # --- queries -------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return sum(r.size for r in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def _locate(self, value: int) -> int:
        """Index of the range that could hold `value` (the last range starting at or before it)."""
        return bisect.bisect_right([r.first for r in self.ranges], value) - 1

    def contains(self, ip: str) -> bool:
        address = ip if isinstance(ip, IP) else parse_address(ip)
        if address.family != self.version:
            return False
        i = self._locate(address.value)
        return i >= 0 and self.ranges[i].last >= address.value

    def covers(self, other: IPPool) -> bool:
        return not other.difference(self)

    def overlaps(self, other: IPPool) -> bool:
        return bool(self.intersection(other))

    def nth(self, index: int) -> IPAddress:
        """The index-th address in ascending order (0-based), without enumerating."""
        if index < 0:
            index += self.count
        for r in self.ranges:
            if index < r.size:
                return to_address(r.first + index, self.version)
            index -= r.size
        raise IndexError("pool index out of range")

    def index_of(self, ip: str) -> int:
        address = ip if isinstance(ip, IP) else parse_address(ip)
        offset = 0
        for r in self.ranges:
            if address.family == self.version and r.first <= address.value <= r.last:
                return offset + address.value - r.first
            offset += r.size
        raise ValueError(f"{address} is not in the pool")

    def first_free(self, used: IPPool) -> IPAddress | None:
        free = self.difference(used)
        return free.nth(0) if free else None

    def next_free_after(self, used: IPPool, after: str | None) -> IPAddress | None:
        """Round robin: the first free address strictly after `after`, wrapping around.

        Allocating with the previous allocation as `after` walks the whole pool before an address
        released earlier is handed out again.
        """
        free = self.difference(used)
        if not free:
            return None
        if after is None:
            return free.nth(0)
        value = (after if isinstance(after, IP) else parse_address(after)).value
        later = free.difference(IPPool.of(self.version, [IPRange(0, min(value, _MAX[self.version]), self.version)]))
        return later.nth(0) if later else free.nth(0)

    def addresses(self, limit: int) -> Iterator[IPAddress]:
        """Up to `limit` addresses in order; for display and small pools only."""
        for r in self.ranges:
            for value in range(r.first, min(r.last, r.first + limit - 1) + 1):
                yield to_address(value, self.version)
                limit -= 1
            if limit <= 0:
                return

    # --- set algebra ---------------------------------------------------------------------------

    def union(self, other: IPPool) -> IPPool:
        self._same_family(other)
        return IPPool.of(self.version, self.ranges + other.ranges)

    def intersection(self, other: IPPool) -> IPPool:
        self._same_family(other)
        out: list[IPRange] = []
        i = j = 0
        a, b = self.ranges, other.ranges
        while i < len(a) and j < len(b):
            lo, hi = max(a[i].first, b[j].first), min(a[i].last, b[j].last)
            if lo <= hi:
                out.append(IPRange(lo, hi, self.version))
            if a[i].last < b[j].last:
                i += 1
            else:
                j += 1
        return IPPool(self.version, tuple(out))

    def difference(self, other: IPPool) -> IPPool:
        self._same_family(other)
        out: list[IPRange] = []
        cut = other.ranges
        j = 0
        for r in self.ranges:
            start = r.first
            while j < len(cut) and cut[j].last < start:
                j += 1
            k = j
            while k < len(cut) and cut[k].first <= r.last:
                if cut[k].first > start:
                    out.append(IPRange(start, cut[k].first - 1, self.version))
                start = max(start, cut[k].last + 1)
                k += 1
            if start <= r.last:
                out.append(IPRange(start, r.last, self.version))
        return IPPool(self.version, tuple(out))

    def _same_family(self, other: IPPool) -> None:
        if other.version != self.version:
            raise ValueError(f"cannot combine an IPv{self.version} pool with an IPv{other.version} pool")

    def to_strings(self) -> list[str]:
        """Canonical entries: single IPs and a-b ranges."""
        return [str(r) for r in self.ranges]

    def __str__(self) -> str:
        return ",".join(self.to_strings()) or "<empty>"


@functools.lru_cache(maxsize=4096)
def parsed_pool(entries: tuple[str, ...], version: int, path: str) -> IPPool:
    """A gateway's pool parsed once per distinct spec (FieldError names `path[i]`)."""
    return IPPool.parse(entries, version, path)


def pool_of(addresses: Iterable[str], version: int) -> IPPool:
    """A pool holding exactly the given addresses of `version` (others are ignored)."""
    ranges = []
    for a in addresses:
        ip = a if isinstance(a, IP) else parse_address(a)
        if ip.family == version:
            ranges.append(IPRange(ip.value, ip.value, version))
    return IPPool.of(version, ranges)
