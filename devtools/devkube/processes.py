"""Child processes of the test control plane: start with a log file, poll readiness, stop by PID.

Nothing here sleeps a fixed time waiting for readiness; `wait_until` polls a probe with a short
backoff and fails fast (with the log tail) when the process has already exited.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# Ports handed out by this process: the OS may offer the same free port twice before anyone binds it.
_HANDED_OUT: set[int] = set()
_PR_SET_PDEATHSIG = 1


class StartupError(RuntimeError):
    """A component did not become ready; the message carries its log tail."""


def free_port() -> int:
    """A loopback TCP port nobody listens on now and that we have not handed out before."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the parent dies (no orphaned apiserver after a crash).

    The kernel ties this to the forking *thread*, so it is only used from the main thread: a plane
    started from a worker thread (the sandbox's netns worker) must outlive that thread.
    """
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def clean_environment() -> dict[str, str]:
    """os.environ without proxy variables: apiserver -> etcd/webhook calls would honour them."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError as error:
        return f"(no log: {error})"
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """One long-running binary whose stdout+stderr go to <log_dir>/<name>.log."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self, env: Mapping[str, str] | None = None) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"+ {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else clean_environment(), start_new_session=True,
                preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
            )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; only ever our own child's PID."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout)

    def tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def rss_bytes(self) -> int:
        """Resident set size now (VmRSS), 0 when not running."""
        if self.pid is None or not self.running:
            return 0
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def exit_report(self) -> str:
        code = self._popen.poll() if self._popen else None
        return f"{self.name} (pid {self.pid}) exited with code {code}" if code is not None else f"{self.name} still running"


def wait_until(probe: Callable[[], bool], what: str, process: ManagedProcess, timeout: float) -> float:
    """Poll `probe` until it is true; return the seconds waited. Fails early if `process` died."""
    started = time.monotonic()
    delay = 0.05
    while True:
        if probe():
            return time.monotonic() - started
        if not process.running:
            raise StartupError(f"{what}: {process.exit_report()}; log tail of {process.log_path}:\n{process.tail()}")
        if time.monotonic() - started > timeout:
            raise StartupError(f"{what}: not ready after {timeout:.0f}s; log tail of {process.log_path}:\n{process.tail()}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def http_ok(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bool:
    """True when GET url answers 200 (connection errors and other statuses are 'not yet')."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def insecure_context() -> ssl.SSLContext:
    """For components that serve a self-signed certificate they generated (kcm, scheduler healthz)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
