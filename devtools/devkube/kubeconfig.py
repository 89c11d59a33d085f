"""Kubeconfig files for the test control plane: one per identity (client certificate or bearer token)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(
    path: Path, server: str, ca_pem: bytes, user: str, *,
    cert_pem: bytes | None = None, key_pem: bytes | None = None, token: str | None = None,
) -> Path:
    """Write a single-context kubeconfig (mode 0600) for `user`; exactly one credential kind is given."""
    if (token is None) == (cert_pem is None or key_pem is None):
        raise ValueError(f"kubeconfig for {user!r}: give either a token or a client cert+key, not both or neither")
    credentials: dict[str, Any] = {"token": token} if token is not None else {
        "client-certificate-data": _b64(cert_pem or b""), "client-key-data": _b64(key_pem or b""),
    }
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "egw-test", "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": {"cluster": "egw-test", "user": user}}],
        "current-context": user,
    }
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
