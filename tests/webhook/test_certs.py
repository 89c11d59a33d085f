"""Certificates: generation, renewal decisions, the shared Secret under races, caBundle patching."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from egress_cni import k8s
from webhook import certs

pytestmark = pytest.mark.unit

HOSTS = ["egress-webhook.egressgateway-system.svc", "127.0.0.1"]
NOW = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)


def test_serving_cert_is_signed_by_the_ca_with_sans_and_server_auth() -> None:
    bundle = certs.new_bundle(HOSTS, NOW)
    ca, leaf = x509.load_pem_x509_certificate(bundle.ca_pem), x509.load_pem_x509_certificate(bundle.cert_pem)
    leaf.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert certs.cert_hosts(bundle.cert_pem) == set(HOSTS)
    assert ExtendedKeyUsageOID.SERVER_AUTH in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value


def test_renewal_decisions() -> None:
    bundle = certs.new_bundle(HOSTS, NOW)
    assert certs.renewed(bundle, HOSTS, NOW + dt.timedelta(days=300)) is None
    later = certs.renewed(bundle, HOSTS, NOW + dt.timedelta(days=340))  # within 30 days of the 1-year expiry
    assert later is not None and later.ca_pem == bundle.ca_pem and later.cert_pem != bundle.cert_pem
    more_hosts = certs.renewed(bundle, [*HOSTS, "extra.example"], NOW)
    assert more_hosts is not None and "extra.example" in certs.cert_hosts(more_hosts.cert_pem)


def test_ca_rotation_keeps_the_old_ca_in_the_bundle() -> None:
    bundle = certs.new_bundle(HOSTS, NOW)
    rotated = certs.renewed(bundle, HOSTS, NOW + dt.timedelta(days=3650 - 200))
    assert rotated is not None
    assert rotated.ca_pem.count(b"BEGIN CERTIFICATE") == 2 and rotated.ca_pem.startswith(bundle.ca_pem.strip())
    x509.load_pem_x509_certificate(rotated.cert_pem).verify_directly_issued_by(
        x509.load_pem_x509_certificates(rotated.ca_pem)[-1])


def test_bundle_without_ca_key_is_replaced() -> None:
    bundle = certs.new_bundle(HOSTS, NOW)
    assert certs.renewed(certs.CertBundle(bundle.ca_pem, bundle.cert_pem, bundle.key_pem), HOSTS, NOW) is not None


class FakeAPI:
    """Secrets and webhook configurations with resourceVersion conflicts, as the API server has them."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0
        self.before_create: Any = None

    def _key(self, rt: k8s.ResourceType, name: str) -> tuple[str, str]:
        return rt.plural, name

    def get(self, rt: k8s.ResourceType, name: str, namespace: str | None = None) -> dict[str, Any]:
        try:
            return _copy(self.objects[self._key(rt, name)])
        except KeyError:
            raise k8s.NotFound(404, "NotFound", f"{rt.plural} {name} not found") from None

    def create(self, rt: k8s.ResourceType, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        if self.before_create:
            hook, self.before_create = self.before_create, None
            hook()
        key = self._key(rt, body["metadata"]["name"])
        if key in self.objects:
            raise k8s.Conflict(409, "AlreadyExists", "exists")
        return self._store(key, body)

    def replace(self, rt: k8s.ResourceType, body: dict[str, Any]) -> dict[str, Any]:
        key = self._key(rt, body["metadata"]["name"])
        if self.objects[key]["metadata"]["resourceVersion"] != body["metadata"].get("resourceVersion"):
            raise k8s.Conflict(409, "Conflict", "stale")
        return self._store(key, body)

    def _store(self, key: tuple[str, str], body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = _copy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.objects[key] = stored
        return _copy(stored)


def _copy(obj: dict[str, Any]) -> dict[str, Any]:
    import copy
    return copy.deepcopy(obj)


def test_secret_is_created_once_and_then_reused() -> None:
    api = FakeAPI()
    first = certs.ensure_secret(api, "ns", "tls", HOSTS)
    assert api.version == 1
    assert certs.ensure_secret(api, "ns", "tls", HOSTS) == first and api.version == 1


def test_losing_the_create_race_adopts_the_winner() -> None:
    api = FakeAPI()
    winner = certs.new_bundle(HOSTS)
    api.before_create = lambda: api._store(("secrets", "tls"), certs.secret_body("tls", "ns", winner))
    assert certs.ensure_secret(api, "ns", "tls", HOSTS) == winner


def test_renewal_replaces_the_secret() -> None:
    api = FakeAPI()
    old = certs.new_bundle(HOSTS, NOW - dt.timedelta(days=350))
    api._store(("secrets", "tls"), certs.secret_body("tls", "ns", old))
    fresh = certs.ensure_secret(api, "ns", "tls", HOSTS, NOW)
    assert fresh.cert_pem != old.cert_pem and fresh.ca_pem == old.ca_pem
    assert certs.bundle_from_secret(api.get(k8s.SECRETS, "tls", "ns")) == fresh


def test_ca_bundle_is_patched_into_every_webhook(tmp_path: Path) -> None:
    api = FakeAPI()
    for rt, name in ((k8s.MUTATING_WEBHOOKS, "m"), (k8s.VALIDATING_WEBHOOKS, "v")):
        api._store(api._key(rt, name), {"metadata": {"name": name}, "webhooks": [{"name": "a", "clientConfig": {}},
                                                                                  {"name": "b", "clientConfig": {}}]})
    settings = certs.SelfManaged("ns", "tls", tuple(HOSTS), ((k8s.MUTATING_WEBHOOKS, "m"), (k8s.VALIDATING_WEBHOOKS, "v")))
    bundle = certs.sync_self_managed(api, settings, tmp_path)
    for rt, name in settings.configurations:
        hooks = api.get(rt, name)["webhooks"]
        assert {base64.b64decode(h["clientConfig"]["caBundle"]) for h in hooks} == {bundle.ca_pem}
    assert (tmp_path / "tls.crt").read_bytes() == bundle.cert_pem and (tmp_path / "tls.key").stat().st_mode & 0o077 == 0
    version = api.version
    certs.sync_self_managed(api, settings, tmp_path)
    assert api.version == version  # nothing to change: no writes


def test_rotation_keeps_running_through_failures() -> None:
    import threading

    calls: list[int] = []
    done = threading.Event()

    def step() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("API unreachable")
        done.set()

    stop = certs.start_rotation(step, every_seconds=0.01)
    try:
        assert done.wait(10)
    finally:
        stop.set()
    assert len(calls) >= 2


def test_mounted_certificates_are_used_as_they_are(tmp_path: Path) -> None:
    from webhook.main import parse_args, service_hosts, settle_certificates

    certs.write_cert_dir(certs.new_bundle(["127.0.0.1"]), tmp_path)
    assert settle_certificates(parse_args(["--cert-dir", str(tmp_path)])) == tmp_path
    assert service_hosts("egress-webhook", "egw")[0] == "egress-webhook.egw.svc"
    with pytest.raises(SystemExit, match=r"no tls\.crt/tls\.key"):
        settle_certificates(parse_args(["--cert-dir", str(tmp_path / "none"), "--cluster-state", "x.yaml"]))
