"""Serving certificates: mounted (cert-manager or provided) or self-managed in a Secret.

Self-managed: a CA (10 years) signs a serving certificate (1 year) for the Service's DNS names;
both live in one Secret so every replica serves the same certificate, and the CA goes into the
`caBundle` of both webhook configurations. The serving certificate is reissued 30 days before it
expires (the CA stays, so the bundle does not change); a CA within a year of expiry is replaced
and the bundle then carries old and new CA together until the old one is gone.

gunicorn reads the files through `context_for` (see gunicorn.conf.py), which reloads them when
their modification time changes: writing new files is the whole rotation, no restart needed.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from egress_cni.api.net import parse_ip

log = logging.getLogger(__name__)

CA_DAYS = 3650
SERVING_DAYS = 365
RENEW_SERVING_BEFORE = dt.timedelta(days=30)
RENEW_CA_BEFORE = dt.timedelta(days=365)


@dataclass(frozen=True)
class CertBundle:
    ca_pem: bytes           # the CA(s) clients trust: the caBundle
    cert_pem: bytes         # serving certificate
    key_pem: bytes          # serving key
    ca_key_pem: bytes = b""  # only when self-managed (lets a replica reissue the serving cert)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def generate_ca(common_name: str = "egress-webhook-ca", now: dt.datetime | None = None, days: int = CA_DAYS) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a new self-signed CA."""
    now = now or _now()
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def issue_serving_cert(ca_pem: bytes, ca_key_pem: bytes, hosts: Sequence[str], now: dt.datetime | None = None,
                       days: int = SERVING_DAYS) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for `hosts` (DNS names and IPs all go into the SAN: Go ignores the CN)."""
    if not hosts:
        raise ValueError("a serving certificate needs at least one host name or IP")
    now = now or _now()
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an EC key")
    key = _key()
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(parse_ip(host).packed)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(min(now + dt.timedelta(days=days), ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def new_bundle(hosts: Sequence[str], now: dt.datetime | None = None) -> CertBundle:
    ca_pem, ca_key = generate_ca(now=now)
    cert, key = issue_serving_cert(ca_pem, ca_key, hosts, now)
    return CertBundle(ca_pem, cert, key, ca_key)


def _first_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def cert_hosts(cert_pem: bytes) -> set[str]:
    try:
        san = _first_cert(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n) for n in san.get_values_for_type(x509.DNSName)} | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def renewed(bundle: CertBundle | None, hosts: Sequence[str], now: dt.datetime | None = None) -> CertBundle | None:
    """The bundle to use instead of `bundle`, or None when `bundle` is still good for `hosts`."""
    now = now or _now()
    if bundle is None or not bundle.ca_key_pem:
        return new_bundle(hosts, now)
    ca_pems = _split_pems(bundle.ca_pem)
    newest_ca = ca_pems[-1]
    ca_pem, ca_key = newest_ca, bundle.ca_key_pem
    ca_bundle = bundle.ca_pem
    if _first_cert(newest_ca).not_valid_after_utc - now < RENEW_CA_BEFORE:
        ca_pem, ca_key = generate_ca(now=now)
        still_valid = [p for p in ca_pems if _first_cert(p).not_valid_after_utc > now]
        ca_bundle = b"".join([*still_valid, ca_pem])
    elif _first_cert(bundle.cert_pem).not_valid_after_utc - now >= RENEW_SERVING_BEFORE and cert_hosts(bundle.cert_pem) >= set(hosts):
        return None
    cert, key = issue_serving_cert(ca_pem, ca_key, hosts, now)
    return CertBundle(ca_bundle, cert, key, ca_key)


def _split_pems(pem: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [part.strip() + b"\n" + marker + b"\n" for part in pem.split(marker) if part.strip()]


# --- files --------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_cert_dir(bundle: CertBundle, directory: Path) -> None:
    """tls.key first, tls.crt last: a reader keyed on tls.crt's mtime sees a matching pair."""
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / "ca.crt", bundle.ca_pem, 0o644)
    _write_atomic(directory / "tls.key", bundle.key_pem, 0o600)
    _write_atomic(directory / "tls.crt", bundle.cert_pem, 0o644)


def mounted(directory: Path) -> bool:
    return (directory / "tls.crt").is_file() and (directory / "tls.key").is_file()


# --- the Secret and the webhook configurations --------------------------------------------------


def bundle_from_secret(secret: dict[str, Any]) -> CertBundle | None:
    data = secret.get("data") or {}
    try:
        parts = {k: base64.b64decode(data.get(k) or "") for k in ("ca.crt", "tls.crt", "tls.key", "ca.key")}
        bundle = CertBundle(parts["ca.crt"], parts["tls.crt"], parts["tls.key"], parts["ca.key"])
        _first_cert(bundle.cert_pem)
        _first_cert(bundle.ca_pem)
    except ValueError:
        return None
    return bundle


def secret_body(name: str, namespace: str, bundle: CertBundle, resource_version: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": "egress-webhook"}}
    if resource_version:
        meta["resourceVersion"] = resource_version
    data = {"ca.crt": bundle.ca_pem, "tls.crt": bundle.cert_pem, "tls.key": bundle.key_pem, "ca.key": bundle.ca_key_pem}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "kubernetes.io/tls",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def ensure_secret(client: Any, namespace: str, name: str, hosts: Sequence[str], now: dt.datetime | None = None) -> CertBundle:
    """Get the shared bundle, creating or renewing it. Replicas race safely: a create that finds
    the Secret already there, or a replace that loses on resourceVersion, adopts the winner's."""
    from egress_cni import k8s

    for _ in range(5):
        try:
            secret = client.get(k8s.SECRETS, name, namespace)
        except k8s.NotFound:
            bundle = new_bundle(hosts, now)
            try:
                client.create(k8s.SECRETS, secret_body(name, namespace, bundle), namespace)
                log.info("created webhook certificate secret", extra={"secret": f"{namespace}/{name}"})
                return bundle
            except k8s.Conflict:
                continue  # another replica created it first: use theirs
        current = bundle_from_secret(secret)
        fresh = renewed(current, hosts, now)
        if fresh is None and current is not None:
            return current
        assert fresh is not None
        version = str((secret.get("metadata") or {}).get("resourceVersion") or "")
        try:
            client.replace(k8s.SECRETS, secret_body(name, namespace, fresh, version))
            log.info("renewed webhook certificate", extra={"secret": f"{namespace}/{name}"})
            return fresh
        except k8s.Conflict:
            continue
    raise RuntimeError(f"could not settle the certificate Secret {namespace}/{name} after 5 attempts")


def patch_ca_bundle(client: Any, names: Sequence[tuple[Any, str]], ca_pem: bytes) -> None:
    """Set clientConfig.caBundle on every webhook of each (resource type, configuration name)."""
    from egress_cni import k8s

    encoded = base64.b64encode(ca_pem).decode()
    for rt, name in names:
        def update(rt: Any = rt, name: str = name) -> None:
            config = client.get(rt, name)
            hooks = config.get("webhooks") or []
            if all((h.get("clientConfig") or {}).get("caBundle") == encoded for h in hooks):
                return
            for hook in hooks:
                hook.setdefault("clientConfig", {})["caBundle"] = encoded
            client.replace(rt, config)
            log.info("patched caBundle", extra={"configuration": name})
        try:
            k8s.retry_on_conflict(update)
        except k8s.NotFound:
            log.warning("webhook configuration not found; caBundle not set", extra={"configuration": name})


# --- rotation -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelfManaged:
    """Where the shared certificate lives and who needs its CA."""

    namespace: str
    secret: str
    hosts: tuple[str, ...]
    configurations: tuple[tuple[Any, str], ...]  # (MUTATING_WEBHOOKS | VALIDATING_WEBHOOKS, name)

    def with_hosts(self, hosts: Sequence[str]) -> SelfManaged:
        return replace(self, hosts=tuple(hosts))


def sync_self_managed(client: Any, settings: SelfManaged, directory: Path) -> CertBundle:
    bundle = ensure_secret(client, settings.namespace, settings.secret, settings.hosts)
    current = (directory / "tls.crt").read_bytes() if (directory / "tls.crt").exists() else b""
    if current != bundle.cert_pem:
        write_cert_dir(bundle, directory)
    patch_ca_bundle(client, settings.configurations, bundle.ca_pem)
    return bundle


def start_rotation(step: Callable[[], object], every_seconds: float = 60.0) -> threading.Event:
    """Run `step` every `every_seconds` in a daemon thread; set the returned event to stop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_seconds):
            try:
                step()
            except Exception as exc:  # the API may be briefly unreachable; the current cert stays valid for weeks
                log.warning("certificate rotation failed; will retry", extra={"error": str(exc)})

    threading.Thread(target=loop, name="cert-rotation", daemon=True).start()
    return stop
