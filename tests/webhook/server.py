"""Run the real webhook (egress-webhook under gunicorn, TLS) as a subprocess on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from webhook import certs

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Webhook:
    url: str            # https://127.0.0.1:<port>
    ca_file: Path
    ca_pem: bytes
    pid: int
    log: Path

    def session(self) -> requests.Session:
        s = requests.Session()
        s.verify = str(self.ca_file)
        s.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise override `verify`
        return s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_webhook(workdir: Path, *, state: Sequence[dict[str, Any]] | None = None, kubeconfig: str | None = None,
                    env: dict[str, str] | None = None, workers: int = 2, timeout: float = 60.0, port: int = 0,
                    self_managed: Sequence[str] = ()) -> Iterator[Webhook]:
    """Start `python -m webhook.main` on 127.0.0.1 and stop it by PID.

    Default: a generated CA + serving certificate mounted in its cert dir. With `self_managed`
    (extra main.py arguments: --secret, --*-configuration ...) the cert dir stays empty and the
    webhook makes its own certificate in a Secret and patches the caBundle itself.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cert_dir = workdir / "certs"
    port = port or free_port()
    args = [sys.executable, "-m", "webhook.main", "--bind", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    if self_managed:
        cert_dir.mkdir(parents=True, exist_ok=True)
        runtime = workdir / "runtime-certs"
        args += ["--cert-dir", str(cert_dir), "--runtime-cert-dir", str(runtime), "--host", "127.0.0.1", *self_managed]
        ca_file, ca_pem = runtime / "ca.crt", b""
    else:
        bundle = certs.new_bundle(["127.0.0.1", "localhost"])
        certs.write_cert_dir(bundle, cert_dir)
        args += ["--cert-dir", str(cert_dir)]
        ca_file, ca_pem = cert_dir / "ca.crt", bundle.ca_pem
    if state is not None:
        state_file = workdir / "state.yaml"
        state_file.write_text(yaml.safe_dump_all(list(state)))
        args += ["--cluster-state", str(state_file)]
    if kubeconfig:
        args += ["--kubeconfig", kubeconfig]
    child_env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    child_env.update({"PYTHONPATH": str(REPO), "PROMETHEUS_MULTIPROC_DIR": str(_fresh(workdir / "metrics"))}, **(env or {}))
    log = workdir / "webhook.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=child_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    hook = Webhook(f"https://127.0.0.1:{port}", ca_file, ca_pem, proc.pid, log)
    try:
        _wait_ready(hook, proc, timeout)
        yield hook
    finally:
        stop(proc)


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for f in path.iterdir():
        f.unlink()
    return path


def _wait_ready(hook: Webhook, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with hook.session() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"webhook exited with {proc.returncode}:\n{hook.log.read_text()[-3000:]}")
            try:
                if hook.ca_file.exists() and s.get(hook.url + "/readyz", timeout=2).status_code == 200:
                    return
            except (requests.RequestException, OSError):
                pass
            time.sleep(0.2)
    raise RuntimeError(f"webhook not ready after {timeout}s:\n{hook.log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the gunicorn master (it stops its workers), SIGKILL its process group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
