"""The consortium's server certificate: the names it is valid for."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from fedmol.deploy.pki import make_ca, make_server_cert


def _sans(pem: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in names]


def test_the_server_certificate_always_covers_loopback_besides_the_given_names(tmp_path: Path) -> None:
    make_ca(tmp_path)
    pem, _ = make_server_cert(tmp_path, ["fedmol.example.org"])
    # the sites dial the public name; the operator's flwr dials 127.0.0.1; nginx checks "localhost"
    assert _sans(pem) == ["fedmol.example.org", "127.0.0.1", "localhost"]
    subject = x509.load_pem_x509_certificate(pem.read_bytes()).subject.rfc4514_string()
    assert "fedmol.example.org" in subject


def test_loopback_names_are_not_repeated(tmp_path: Path) -> None:
    make_ca(tmp_path)
    pem, _ = make_server_cert(tmp_path, ["localhost", "10.0.0.5"])
    assert _sans(pem) == ["localhost", "10.0.0.5", "127.0.0.1"]
