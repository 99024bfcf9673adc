"""
TLS: the server certificate, generated on first start if none is configured,
and the context every encrypted stream uses (TLS 1.2 or newer).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.logger import Logger

log = Logger()


def generateSelfSigned(certPath: Path, keyPath: Path, hosts: list[str]) -> None:
    """
    Write a self-signed ECDSA P-256 certificate for C{hosts}, valid ten years.
    Names go in as certificates carry them: internationalised ones as A-labels.
    """
    hosts = [host.encode("idna").decode("ascii") for host in hosts]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certPath.parent.mkdir(parents=True, exist_ok=True)
    keyPath.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(keyPath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    certPath.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


class ServerContextFactory(ssl.CertificateOptions):
    """
    Certificate options that also release idle connections' TLS buffers:
    an idle client then costs a few kilobytes instead of ~34 KB.
    """

    def _makeContext(self):
        context = ssl.CertificateOptions._makeContext(self)
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        context.set_alpn_select_callback(_selectALPN)
        return context


def _selectALPN(connection, protocols):
    # XEP-0368 direct TLS clients announce "xmpp-client"; accept whatever they offer.
    return b"xmpp-client" if b"xmpp-client" in protocols else (protocols[0] if protocols else b"")


def loadContextFactory(certPath: Path, keyPath: Path, hosts: list[str], generate: bool):
    """
    Load the certificate and key; if C{generate} and they do not exist yet,
    create a self-signed pair first and say so in the log.
    """
    if generate and not (certPath.exists() and keyPath.exists()):
        generateSelfSigned(certPath, keyPath, hosts)
        log.warn("Generated a self-signed certificate for {hosts} in {path}; clients will warn "
                 "about it until you configure [tls] certificate and key",
                 hosts=", ".join(hosts), path=str(certPath))
    certificate = crypto.load_certificate(crypto.FILETYPE_PEM, certPath.read_bytes())
    key = crypto.load_privatekey(crypto.FILETYPE_PEM, keyPath.read_bytes())
    chain = []
    pem = certPath.read_bytes()
    marker = b"-----END CERTIFICATE-----"
    for block in pem.split(marker)[1:-1]:
        chain.append(crypto.load_certificate(crypto.FILETYPE_PEM, block + marker))
    return ServerContextFactory(
        privateKey=key,
        certificate=certificate,
        extraCertChain=chain or None,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
