"""
A certificate authority for tests: it signs certificates for given names, so
a test can tell which certificate a server presents (by serial number or
subject) and lay them out as certbot or Prosody would.
"""

from __future__ import annotations

import datetime
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def pemKey(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CertificateAuthority:
    """A CA key and certificate; L{issue} signs leaf certificates."""

    def __init__(self, name: str = "invitesrv test CA"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.validity = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
        self.certificate = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(self.validity[0]).not_valid_after(self.validity[1])
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256()))

    def issue(self, names: list[str], key=None) -> tuple[x509.Certificate, object]:
        """A certificate for C{names} (the first is the subject's CN) and its key."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.validity[0]).not_valid_after(self.validity[1])
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256()))
        return certificate, key

    def chain(self, certificate: x509.Certificate) -> bytes:
        """The certificate followed by the CA's, as certbot's fullchain.pem."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM)
                        for c in (certificate, self.certificate))

    def write(self, certPath: Path, keyPath: Path, names: list[str], key=None) -> x509.Certificate:
        """Issue a certificate for C{names} and write it (with the chain) and its key."""
        certificate, key = self.issue(names, key)
        certPath.parent.mkdir(parents=True, exist_ok=True)
        keyPath.parent.mkdir(parents=True, exist_ok=True)
        certPath.write_bytes(self.chain(certificate))
        keyPath.write_bytes(pemKey(key))
        return certificate

    def writeCertbot(self, live: Path, host: str, names: list[str] | None = None) -> x509.Certificate:
        """C{live/host/fullchain.pem} and C{privkey.pem}, as certbot lays them out."""
        return self.write(live / host / "fullchain.pem", live / host / "privkey.pem",
                          names or [host])


def servedCertificate(port: int, serverName: str | None) -> x509.Certificate:
    """The certificate a direct-TLS (or HTTPS) listener presents for C{serverName} (None: no SNI)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=serverName) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
