"""Per-attachment state files (what ADD made, so DEL/CHECK/GC never depend on the pod netns) and the host lock."""

from __future__ import annotations

import os
import time

from egress_cni.cni import errors
from egress_cni.lowlevel import jsonlite

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

LOCK_NAME = "host.lock"


def path(state_dir: str, container_id: str, ifname: str) -> str:
    return os.path.join(state_dir, f"{container_id}_{ifname}.json")


def save(state_dir: str, container_id: str, ifname: str, data: dict[str, Any]) -> None:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    target = path(state_dir, container_id, ifname)
    tmp = f"{target}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(jsonlite.dumps(data))
    os.replace(tmp, target)


def load(state_dir: str, container_id: str, ifname: str) -> dict[str, Any] | None:
    return _read(path(state_dir, container_id, ifname))


def remove(state_dir: str, container_id: str, ifname: str) -> bool:
    try:
        os.unlink(path(state_dir, container_id, ifname))
    except FileNotFoundError:
        return False
    return True


def list_all(state_dir: str) -> list[dict[str, Any]]:
    try:
        names = sorted(os.listdir(state_dir))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if name.endswith(".json"):
            data = _read(os.path.join(state_dir, name))
            if data is not None:
                out.append(data)
    return out


def _read(file: str) -> dict[str, Any] | None:
    try:
        with open(file, encoding="utf-8") as f:
            data = jsonlite.loads(f.read())
    except (FileNotFoundError, jsonlite.DecodeError):
        return None
    return data if isinstance(data, dict) else None


class HostLock:
    """flock on <stateDir>/host.lock around host-netns mutations and GC; released by the kernel if we die."""

    def __init__(self, state_dir: str, timeout: float = 30.0) -> None:
        self.file = os.path.join(state_dir, LOCK_NAME)
        self.timeout = timeout
        self.fd = -1

    def __enter__(self) -> HostLock:
        import fcntl  # a C extension: loaded only by the modes that lock

        os.makedirs(os.path.dirname(self.file), mode=0o700, exist_ok=True)
        self.fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise errors.CNIError(errors.TRY_AGAIN_LATER, f"host lock {self.file} busy for {self.timeout:g}s") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.02)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing releases the flock
