"""Enter a network namespace by path for the current (single) thread, without ever creating one.

pyroute2's NetNS/IPRoute(netns=...) default to O_CREAT and bind-mount a new empty netns at a
missing path; here a missing path is FileNotFoundError, and a path that is not a netns (a stale
file after unmount) is NotANetns. The plugin process is single-threaded, so setns() on the
calling thread is the whole process.
"""

from __future__ import annotations

import os

CLONE_NEWNET = 0x40000000
SELF = "/proc/thread-self/ns/net"


class NotANetns(OSError):
    """The path exists but is not a network namespace."""


def _setns(fd: int) -> None:
    import ctypes  # only underlay/auto paths pay for ctypes (~2 ms)

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == 22:  # EINVAL: not a netns fd
            raise NotANetns(err, "not a network namespace")
        raise OSError(err, os.strerror(err))


def same_as_current(path: str) -> bool:
    """True when `path` is the netns this process is in (the runtime passed the host netns by mistake)."""
    a, b = os.stat(path), os.stat(SELF)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class Switch:
    """Hold fds of the current and a target netns; `inside()` runs a block in the target."""

    def __init__(self, path: str) -> None:
        self.target_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # FileNotFoundError for a missing path
        self.home_fd = os.open(SELF, os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.target_fd)
        os.close(self.home_fd)

    def __enter__(self) -> Switch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enter(self) -> None:
        _setns(self.target_fd)

    def leave(self) -> None:
        _setns(self.home_fd)

