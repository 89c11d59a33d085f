"""Exponential backoff with jitter for retries (standard library only).

The n-th consecutive failure waits `min(cap, base * factor**n)` scaled by a random factor in
[1 - jitter, 1]: growing so a broken API server is not hammered, capped so recovery is noticed
within `cap` seconds, jittered so many clients that failed together do not retry together.
`reset()` after a success starts again from `base`.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable


class Backoff:
    def __init__(self, base: float = 0.2, cap: float = 10.0, factor: float = 2.0, jitter: float = 0.5,
                 rand: Callable[[], float] = random.random) -> None:
        if not 0 < base <= cap or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("backoff needs 0 < base <= cap, factor >= 1 and 0 <= jitter <= 1")
        self.base, self.cap, self.factor, self.jitter = base, cap, factor, jitter
        self._rand = rand
        self._lock = threading.Lock()
        self.failures = 0

    def ceiling(self, failures: int) -> float:
        """The delay before jitter after `failures` consecutive failures (the first is `base`)."""
        exponent = min(max(failures - 1, 0), 64)  # far past the cap already; keeps the float finite
        return min(self.cap, self.base * self.factor ** exponent)

    def next(self) -> float:
        """Count one more failure and return how long to wait before the next attempt."""
        with self._lock:
            self.failures += 1
            ceiling = self.ceiling(self.failures)
        return ceiling * (1.0 - self.jitter * self._rand())

    def reset(self) -> None:
        with self._lock:
            self.failures = 0
