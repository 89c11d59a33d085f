"""The harness PKI and kubeconfigs, checked without any Kubernetes binary."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID

from devtools.devkube.certs import CertificateAuthority
from devtools.devkube.kubeconfig import write_kubeconfig

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority("test-ca")


def test_server_certificate_verifies_for_every_name_a_client_dials(ca: CertificateAuthority) -> None:
    pair = ca.issue_server("kube-apiserver", ["localhost"], ["127.0.0.1", "10.0.0.1"])
    leaf = x509.load_pem_x509_certificate(pair.cert_pem)
    store = verification.Store([x509.load_pem_x509_certificate(ca.cert_pem)])
    for subject in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("10.0.0.1"))):
        verification.PolicyBuilder().store(store).build_server_verifier(subject).verify(leaf, [])
    with pytest.raises(verification.VerificationError):
        other = x509.DNSName("example.com")
        verification.PolicyBuilder().store(store).build_server_verifier(other).verify(leaf, [])


def test_client_certificate_names_user_in_cn_and_groups_in_o(ca: CertificateAuthority) -> None:
    cert = x509.load_pem_x509_certificate(ca.issue_client("admin", ["system:masters", "team"]).cert_pem)
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["admin"]
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["system:masters", "team"]
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))  # Go needs no SAN on client certs


def test_kubeconfig_embeds_exactly_one_credential(tmp_path: Path, ca: CertificateAuthority) -> None:
    path = write_kubeconfig(tmp_path / "sa.kubeconfig", "https://127.0.0.1:6443", ca.cert_pem, "system:serviceaccount:a:b",
                            token="t0k3n")
    config = yaml.safe_load(path.read_text())
    assert config["users"][0]["user"] == {"token": "t0k3n"}
    assert base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]) == ca.cert_pem
    assert path.stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError, match="either a token or a client cert"):
        write_kubeconfig(tmp_path / "none.kubeconfig", "https://127.0.0.1:6443", ca.cert_pem, "nobody")
