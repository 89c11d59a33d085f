"""Daemons the sandbox starts (containerd, kubelet, echo server, ...): launch in a netns, stop by PID.

A record keeps the PID with the process' start time (field 22 of /proc/<pid>/stat), so a later
`--down` from another process stops exactly what was started and never a recycled PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from devtools.sandbox.netns import in_netns_argv


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_ticks: int
    log_path: str
    argv: tuple[str, ...] = ()  # as given to launch (without the netns prefix): enough to restart it
    netns: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "argv": list(self.argv)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ProcessRecord:
        return cls(str(raw["name"]), int(raw["pid"]), int(raw["start_ticks"]), str(raw["log_path"]),
                   tuple(str(a) for a in raw.get("argv", ())), str(raw.get("netns", "")))


def start_ticks(pid: int) -> int | None:
    """The process' start time in clock ticks since boot, None when it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def this_process() -> ProcessRecord:
    """The calling process, as a record (`alive` tells whether it still runs)."""
    return ProcessRecord("owner", os.getpid(), start_ticks(os.getpid()) or 0, "")


def alive(record: ProcessRecord) -> bool:
    return start_ticks(record.pid) == record.start_ticks


def launch(name: str, argv: Sequence[str], log_dir: Path, *, netns: str | None = None,
           env: Mapping[str, str] | None = None) -> ProcessRecord:
    """Start `argv` (inside `netns` when given) in its own session, output to <log_dir>/<name>.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    full = in_netns_argv(netns, argv) if netns else list(argv)
    with log_path.open("ab") as log:
        log.write(f"+ {' '.join(full)}\n".encode())
        log.flush()
        popen = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 env=dict(env) if env is not None else None, start_new_session=True)
    ticks = start_ticks(popen.pid)
    if ticks is None:
        popen.wait()
        raise RuntimeError(f"{name} exited at once (code {popen.returncode}); see {log_path}")
    return ProcessRecord(name, popen.pid, ticks, str(log_path), tuple(argv), netns or "")


def stop(record: ProcessRecord, timeout: float = 20.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; returns False when the process was already gone."""
    if not alive(record):
        return False
    _signal(record, signal.SIGTERM)
    _signal(record, signal.SIGCONT)  # a process a test froze (SIGSTOP) acts on the SIGTERM only once it runs
    if not _wait_gone(record, timeout):
        _signal(record, signal.SIGKILL)
        _wait_gone(record, timeout)
    return True


def _signal(record: ProcessRecord, signum: int) -> None:
    try:
        os.kill(record.pid, signum)
    except ProcessLookupError:
        pass


def _wait_gone(record: ProcessRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(record):
        _reap(record.pid)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    _reap(record.pid)
    return True


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def tail(record: ProcessRecord, lines: int = 30) -> str:
    try:
        text = Path(record.log_path).read_bytes()[-32768:].decode(errors="replace")
    except OSError as error:
        return f"(no log: {error})"
    return "\n".join(text.splitlines()[-lines:])
