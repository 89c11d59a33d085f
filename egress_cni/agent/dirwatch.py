"""Wait for changes in one directory: inotify through ctypes (no dependency), polling as a fallback.

The CNI plugin publishes an endpoint by renaming a temp file into place, so IN_MOVED_TO (plus
deletes) is what matters; names starting with "." are temp files and are ignored.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
from collections.abc import Callable

IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x8, 0x40, 0x80, 0x100, 0x200
_EVENT = struct.Struct("iIII")


def _inotify(folder: str) -> int | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = int(libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK))
        if fd < 0:
            return None
        mask = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        if libc.inotify_add_watch(fd, folder.encode(), mask) < 0:
            os.close(fd)
            return None
        return fd
    except (OSError, AttributeError):
        return None


def _names(buf: bytes) -> list[str]:
    out, pos = [], 0
    while pos + _EVENT.size <= len(buf):
        _, _, _, length = _EVENT.unpack_from(buf, pos)
        name = buf[pos + _EVENT.size: pos + _EVENT.size + length].rstrip(b"\0").decode(errors="replace")
        out.append(name)
        pos += _EVENT.size + length
    return out


def watch(folder: str, on_change: Callable[[], None], stopped: Callable[[], bool], poll_seconds: float = 0.02,
          only: Callable[[str], bool] | None = None) -> None:
    """Call on_change once at start and after every change to a non-hidden entry (one `only` accepts), until stopped()."""
    os.makedirs(folder, exist_ok=True)
    fd = _inotify(folder)
    on_change()
    wanted = only or (lambda _name: True)
    if fd is None:
        _poll(folder, on_change, stopped, poll_seconds, wanted)
        return
    try:
        while not stopped():
            ready, _, _ = select.select([fd], [], [], 0.25)
            if not ready:
                continue
            try:
                names = _names(os.read(fd, 65536))
            except BlockingIOError:
                continue
            if any(n and not n.startswith(".") and wanted(n) for n in names):
                on_change()
    finally:
        os.close(fd)


def _poll(folder: str, on_change: Callable[[], None], stopped: Callable[[], bool], poll_seconds: float,
          wanted: Callable[[str], bool]) -> None:
    seen: frozenset[tuple[str, int]] | None = None
    while not stopped():
        try:
            with os.scandir(folder) as it:
                now = frozenset((e.name, e.inode()) for e in it if not e.name.startswith(".") and wanted(e.name))
        except FileNotFoundError:
            now = frozenset()
        if now != seen:
            if seen is not None:
                on_change()
            seen = now
        select.select([], [], [], poll_seconds)
