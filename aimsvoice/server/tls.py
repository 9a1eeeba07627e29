"""TLS for `serve --ssl`: a folder with cert.pem and key.pem, or a self-signed certificate made once.

`--ssl self-signed` makes an ECDSA P-256 key and a certificate for localhost, 127.0.0.1, ::1 and
the machine's names, valid for a year, stored in `$XDG_CONFIG_HOME/aimsvoice/tls/` (key readable
by the owner only) and reused until it nears expiry. Browsers will warn about it: compare the
SHA-256 fingerprint `serve` prints with the one the browser shows, then accept it once.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from .. import xdg
from ..errors import ServerError

SELF_SIGNED = "self-signed"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
VALID_DAYS = 365
RENEW_BEFORE_DAYS = 14


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    fingerprint: str  # SHA-256 of the certificate, as colon-separated hex
    created: bool = False  # made just now


def resolve_tls(ssl: str | None) -> TlsFiles | None:
    """--ssl's value -> the files uvicorn needs (None: plain HTTP)."""
    if ssl is None:
        return None
    if ssl == SELF_SIGNED:
        return self_signed(xdg.config_dir() / "tls")
    folder = Path(ssl).expanduser()
    cert, key = folder / CERT_FILE, folder / KEY_FILE
    missing = [p.name for p in (cert, key) if not p.is_file()]
    if missing:
        raise ServerError(
            f"--ssl {folder}: no {' and no '.join(missing)} there; put cert.pem and key.pem (PEM) in it, "
            "or use --ssl self-signed"
        )
    return TlsFiles(cert, key, fingerprint(_read_cert(cert)))


def self_signed(folder: Path) -> TlsFiles:
    """The self-signed certificate in `folder`, made (or renewed) when missing or near expiry."""
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    if cert_path.is_file() and key_path.is_file():
        cert = _read_cert(cert_path)
        expires = cert.not_valid_after_utc
        if expires - dt.datetime.now(dt.timezone.utc) > dt.timedelta(days=RENEW_BEFORE_DAYS):
            return TlsFiles(cert_path, key_path, fingerprint(cert))
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for name in sorted({socket.gethostname(), socket.getfqdn()} - {"", "localhost"}):
        names.append(x509.DNSName(name))
    names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aimsvoice serve (self-signed)")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_bytes)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    except OSError as e:
        raise ServerError(f"cannot write the self-signed certificate in {folder} ({e.strerror}); check its permissions") from e
    return TlsFiles(cert_path, key_path, fingerprint(cert), created=True)


def fingerprint(cert) -> str:  # cert: cryptography.x509.Certificate
    from cryptography.hazmat.primitives import hashes

    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def _read_cert(path: Path):
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ServerError(f"{path}: not a PEM certificate ({e}); give cert.pem in PEM format, or use --ssl self-signed") from e
