"""Consortium credentials: a CA, the SuperLink's TLS certificate, and one key pair per site.

* ``ca.crt`` / ``ca.key``: the consortium CA (kept by the operator; ``ca.crt`` goes to every site);
* ``server.pem`` / ``server.key``: the SuperLink's certificate, signed by the CA, with subject
  alternative names for every address sites use (IP:127.0.0.1 and DNS:localhost by default);
* ``sites/<name>`` / ``sites/<name>.pub``: a site's OpenSSH NIST P-384 key pair for SuperNode
  authentication; the operator registers the ``.pub`` (``fedmol consortium admit``), the private
  key never leaves the site.

The consortium *data* key (folds and feature permutation, `fedmol keygen`) is separate: it is
made once, given to the sites, and never to the server.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedmol.errors import InputError

VALID_DAYS = 825


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmol consortium"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(folder: Path, *, name: str = "fedmol consortium CA") -> tuple[Path, Path]:
    """Create ``ca.key`` and ``ca.crt`` in ``folder``; refuses to overwrite an existing CA."""
    key_path, crt_path = folder / "ca.key", folder / "ca.crt"
    if key_path.exists():
        raise InputError(f"{key_path} exists: a consortium has one CA; remove it to start over")
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA384())
    )
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt_path, key_path


def make_server_cert(folder: Path, hosts: list[str] | None = None) -> tuple[Path, Path]:
    """``server.pem``/``server.key`` signed by the CA in ``folder``, valid for ``hosts`` (IPs or names)
    and always for loopback (``127.0.0.1``, ``localhost``): the operator's `flwr` reaches the Control
    API there, and the Fleet proxy checks the SuperLink's certificate as ``localhost``."""
    hosts = list(dict.fromkeys([*(hosts or []), "127.0.0.1", "localhost"]))
    try:
        ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    except FileNotFoundError as exc:
        raise InputError(f"no CA in {folder}: run `fedmol consortium init {folder}` first") from exc
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())  # type: ignore[arg-type]
    )
    _write_private(folder / "server.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return folder / "server.pem", folder / "server.key"


def make_site_key(folder: Path, site: str) -> tuple[Path, Path]:
    """An OpenSSH ECDSA P-384 key pair ``sites/<site>`` (private, 0600) and ``sites/<site>.pub``."""
    if not site.replace("-", "").replace("_", "").isalnum():
        raise InputError(f"site name {site!r}: use letters, digits, '-' and '_'")
    private = folder / "sites" / site
    if private.exists():
        raise InputError(f"{private} exists: a site keeps its key; remove it to make a new one")
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    public = private.with_suffix(".pub")
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + f" {site}\n".encode())
    return private, public
