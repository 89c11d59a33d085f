"""Enter a network namespace by path for the current (single) thread, without ever creating one.

pyroute2's NetNS/IPRoute(netns=...) default to O_CREAT and bind-mount a new empty netns at a
missing path; here a missing path is FileNotFoundError, and a path that is not a netns (a stale
file after unmount) is NotANetns. setns() moves the calling thread only: the plugin process is
single-threaded, so that is the whole process; the agent calls it only from a short-lived thread of
its own (agent/hijack_sync.py).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CLONE_NEWNET = 0x40000000
SELF = "/proc/thread-self/ns/net"


class NotANetns(OSError):
    """The path exists but is not a network namespace."""


_setns_fn: list[Any] = []


def _load_setns() -> Any:
    """libc setns() through `_ctypes` directly: the `ctypes` package costs ~2 ms more to import
    (and Python 3.11 has no os.setns)."""
    import _ctypes

    ct: Any = _ctypes  # the private module's stubs do not describe this use

    class CInt(ct._SimpleCData):  # type: ignore[misc]
        _type_ = "i"

    class Fn(ct.CFuncPtr):  # type: ignore[misc]
        _flags_ = ct.FUNCFLAG_CDECL | ct.FUNCFLAG_USE_ERRNO
        _restype_ = CInt

    class Libc:
        _handle = ct.dlopen(None, 2)  # RTLD_NOW; None = the process itself (libc is loaded)

    fn = Fn(("setns", Libc()))
    fn.argtypes = (CInt, CInt)
    return fn


def _setns(fd: int) -> None:
    import _ctypes

    if not _setns_fn:
        _setns_fn.append(_load_setns())
    _ctypes.set_errno(0)
    if _setns_fn[0](fd, CLONE_NEWNET) != 0:
        err = _ctypes.get_errno()
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

    def inside(self) -> _Inside:
        """`with switch.inside(), Netlink() as nl:` - the socket opened in the target, closed before leaving."""
        return _Inside(self)


class _Inside:
    __slots__ = ("switch",)

    def __init__(self, switch: Switch) -> None:
        self.switch = switch

    def __enter__(self) -> None:
        self.switch.enter()

    def __exit__(self, *exc: object) -> None:
        self.switch.leave()

