"""Pool operations on an IPv6 /64 beside the same operations on an IPv4 /30.

Interval arithmetic makes both cost the same. As the peer, the reference's approach (enumerate every
address into a list, as its MergeIPRanges does) is timed on pools it can still hold: an IPv4 /30 and
an IPv4 /16; a /64 would need 2^64 entries, so that cell is printed as impossible.

Run: .venv/bin/python bench/pools.py
"""

from __future__ import annotations

import ipaddress
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from egress_cni.api.pools import IPPool, pool_of


def median_us(fn: Callable[[], object], rounds: int = 7, inner: int = 200) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner * 1e6)
    return statistics.median(samples)


def operations(entries: list[str], version: int, used_text: list[str]) -> dict[str, Callable[[], object]]:
    pool = IPPool.parse(entries, version)
    used = pool_of(used_text, version)
    other = IPPool.parse(entries, version)
    probe = pool.nth(pool.count // 2)  # an address object: time the pool, not string parsing
    return {
        "parse": lambda: IPPool.parse(entries, version),
        "count": lambda: pool.count,
        "contains": lambda: pool.contains(probe),
        "overlaps": lambda: pool.overlaps(other),
        "merge": lambda: pool.union(used),
        "pick-free": lambda: pool.first_free(used),
        "round-robin": lambda: pool.next_free_after(used, used_text[-1]),
        "usage (free count)": lambda: pool.difference(used).count,
    }


def enumerate_peer(cidr: str) -> dict[str, Callable[[], object]]:
    """The reference's way: every pool becomes a list of addresses."""
    def expand() -> list[str]:
        return [str(ip) for ip in ipaddress.ip_network(cidr).hosts()]

    ips = expand()
    used = set(ips[:1])
    return {
        "parse": expand,
        "count": lambda: len(ips),
        "contains": lambda: ips[len(ips) // 2] in ips,
        "pick-free": lambda: next(ip for ip in ips if ip not in used),
        "usage (free count)": lambda: len([ip for ip in ips if ip not in used]),
    }


def main() -> int:
    v6 = operations(["fd00:1::/64"], 6, ["fd00:1::", "fd00:1::1"])
    v4 = operations(["10.6.1.0/30"], 4, ["10.6.1.1"])
    peer30 = enumerate_peer("10.6.1.0/30")
    peer16 = enumerate_peer("10.6.0.0/16")
    print(f"{'operation':<20}{'v6 /64 (us)':>13}{'v4 /30 (us)':>13}{'/64 : /30':>11}"
          f"{'enum /30 (us)':>15}{'enum /16 (us)':>15}{'enum /64':>10}")
    worst = 0.0
    for name in v6:
        a, b = median_us(v6[name]), median_us(v4[name])
        worst = max(worst, a / b)
        p30 = f"{median_us(peer30[name]):.2f}" if name in peer30 else "-"
        p16 = f"{median_us(peer16[name], rounds=3, inner=3):.0f}" if name in peer16 else "-"
        print(f"{name:<20}{a:>13.2f}{b:>13.2f}{a / b:>10.2f}x{p30:>15}{p16:>15}{'2^64 IPs':>10}")
    print(f"\nIPv6 /64 pool: {IPPool.parse(['fd00:1::/64'], 6).count} addresses in 1 interval; "
          f"worst /64 : /30 ratio {worst:.2f}x (medians of 7 rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
