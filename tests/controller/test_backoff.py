"""Retries back off exponentially with jitter, capped, and start again after a success: the
helper itself, the informer's list/watch loop and the reconciler's retry after a failed write."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from egress_cni import k8s
from egress_cni.backoff import Backoff

pytestmark = pytest.mark.unit


def test_delays_double_up_to_the_cap_and_reset_starts_over() -> None:
    b = Backoff(base=0.25, cap=10.0, jitter=0.5, rand=lambda: 0.0)  # no jitter drawn: the ceiling itself
    assert [b.next() for _ in range(8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.failures == 8
    b.reset()
    assert b.failures == 0 and b.next() == 0.25


def test_jitter_stays_within_its_band_and_spreads() -> None:
    b = Backoff(base=1.0, cap=10.0, jitter=0.5)
    delays = []
    for _ in range(200):
        b.reset()
        for _ in range(4):
            d = b.next()
        delays.append(d)
    assert all(4.0 <= d <= 8.0 for d in delays)  # 4th failure: ceiling 8 s, jitter takes off up to half
    assert len({round(d, 3) for d in delays}) > 50  # clients that failed together do not retry together
    top = Backoff(base=1.0, cap=10.0, jitter=0.5, rand=lambda: 0.999999)
    assert all(top.next() > 0 for _ in range(100))  # never 0: no hot loop, even at the low end


def test_huge_failure_counts_stay_at_the_cap() -> None:
    b = Backoff(base=0.1, cap=10.0, rand=lambda: 0.0)
    b.failures = 10_000
    assert b.next() == 10.0


@pytest.mark.parametrize(("base", "cap", "factor", "jitter"), [(0.0, 1.0, 2.0, 0.5), (2.0, 1.0, 2.0, 0.5),
                                                            (0.1, 1.0, 0.5, 0.5), (0.1, 1.0, 2.0, 1.5)])
def test_nonsense_settings_are_refused(base: float, cap: float, factor: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base, cap, factor, jitter)


class FailingClient:
    """list() fails `failures` times (recording when), then works; watch() blocks until released."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[float, str]] = []  # (monotonic time, resourceVersion asked for)
        self.release = threading.Event()

    def list(self, rt: Any, *args: Any) -> tuple[list[dict[str, Any]], str]:
        self.calls.append((time.monotonic(), str(args[3]) if len(args) > 3 else ""))
        if len(self.calls) <= self.failures:
            raise k8s.APIError(0, "Unreachable", "connection refused")
        return [{"metadata": {"name": "a", "resourceVersion": "7"}}], "7"

    def watch(self, rt: Any, *args: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        self.release.wait(5)
        return iter(())


def test_informer_list_retries_back_off_and_success_resets() -> None:
    client = FailingClient(failures=4)
    inf = k8s.Informer(client, k8s.NODES, resync_seconds=3600)  # type: ignore[arg-type]
    inf.backoff = Backoff(base=0.05, cap=0.3, jitter=0.0)
    inf.start()
    try:
        assert inf.wait_synced(10)
        gaps = [b[0] - a[0] for a, b in zip(client.calls, client.calls[1:], strict=False)]
        assert len(gaps) == 4
        assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2 and gaps[3] >= 0.3, gaps  # 0.05, 0.1, 0.2, cap 0.3
        assert gaps[1] > gaps[0] * 1.5 and gaps[2] > gaps[1] * 1.5, gaps
        assert inf.backoff.failures == 0  # the list that worked reset it
        assert {rv for _, rv in client.calls} == {"0"}  # the first list is served from the watch cache
    finally:
        client.release.set()
        inf.stop()


class GoneClient:
    """The first watch answers 410 Gone; the list after it must be a consistent read."""

    def __init__(self) -> None:
        self.versions: list[str] = []
        self.watches = 0
        self.release = threading.Event()

    def list(self, rt: Any, *args: Any) -> tuple[list[dict[str, Any]], str]:
        self.versions.append(str(args[3]))
        return [], str(len(self.versions))

    def watch(self, rt: Any, *args: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        self.watches += 1
        if self.watches == 1:
            raise k8s.Gone(410, "Expired", "too old")
        self.release.wait(5)
        return iter(())


def test_informer_relists_consistently_after_gone() -> None:
    client = GoneClient()
    inf = k8s.Informer(client, k8s.NODES, resync_seconds=3600)  # type: ignore[arg-type]
    inf.start()
    try:
        deadline = time.monotonic() + 5
        while len(client.versions) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.versions[:2] == ["0", ""]
    finally:
        client.release.set()
        inf.stop()


class BrokenWatchClient(FailingClient):
    """Lists work; the watch fails until `release` is set (the API server went away after the sync)."""

    def watch(self, rt: Any, *args: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        if not self.release.is_set():
            raise k8s.APIError(0, "Unreachable", "connection refused")
        return super().watch(rt, *args)


def test_informer_is_unhealthy_while_its_watch_fails() -> None:
    client = BrokenWatchClient(failures=0)
    inf = k8s.Informer(client, k8s.NODES, resync_seconds=3600)  # type: ignore[arg-type]
    inf.backoff = Backoff(base=0.05, cap=0.1, jitter=0.0)
    inf.start()
    try:
        assert inf.wait_synced(10)
        deadline = time.monotonic() + 5
        while inf.healthy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert inf.synced and not inf.healthy  # the cache stays, readiness may not
        client.release.set()
        deadline = time.monotonic() + 5
        while not inf.healthy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert inf.healthy
    finally:
        client.release.set()
        inf.stop()
