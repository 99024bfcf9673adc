"""
TLS: the server certificate, generated on first start if none is configured,
and the policy every encrypted connection uses (client STARTTLS and direct
TLS, server-to-server in both directions, HTTPS): TLS 1.2 or newer, and by
default Mozilla's "intermediate" configuration restricted to forward-secret
AEAD suites: ECDHE with AES-GCM or ChaCha20-Poly1305 for TLS 1.2 (no CBC, no
CCM) and the groups X25519, P-256 and P-384 (C{[tls] ciphers} and C{groups}).
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

from invitesrv.config import TLS_CIPHERS, TLS_GROUPS

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


# TLS 1.3 suites (not set by [tls] ciphers): all three are AEAD; CCM stays out.
TLS13_CIPHERSUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def setGroups(context: SSL.Context, groups: str) -> None:
    """
    Restrict the key-exchange groups of C{context} to C{groups} (OpenSSL
    names separated by colons); an empty string keeps OpenSSL's defaults.
    pyOpenSSL has no public call for this, so its binding of
    C{SSL_CTX_set1_groups_list} (spelt C{curves}) is used.
    """
    if not groups:
        return
    from OpenSSL._util import lib
    setList = getattr(lib, "SSL_CTX_set1_curves_list", None)
    if setList is None:
        raise ValueError("tls.groups: this pyOpenSSL cannot restrict key-exchange groups;"
                         ' set tls.groups = "" to use OpenSSL\'s defaults')
    if setList(context._context, groups.encode("ascii")) != 1:
        raise ValueError(f"tls.groups: {groups!r} names a group OpenSSL does not know")


def _selectClientALPN(connection, protocols):
    # XEP-0368 direct TLS clients announce "xmpp-client"; accept whatever they offer.
    return b"xmpp-client" if b"xmpp-client" in protocols else (protocols[0] if protocols else b"")


class ServerContextFactory(ssl.CertificateOptions):
    """
    The server's certificate with its TLS policy (TLS 1.2 or newer, the
    configured suites and groups). Its contexts also release idle
    connections' TLS buffers: an idle client then costs a few kilobytes
    instead of ~34 KB. L{derive} makes options for another use (HTTPS,
    server-to-server) with the same certificate and policy.

    @ivar selectALPN: the ALPN selection callback (None: Twisted's, from
        C{acceptableProtocols}).
    """

    def __init__(self, privateKey, certificate, extraCertChain=None, ciphers: str = TLS_CIPHERS,
                 groups: str = TLS_GROUPS, selectALPN=_selectClientALPN, **options):
        try:
            acceptable = ssl.AcceptableCiphers.fromOpenSSLCipherString(ciphers)
            ssl.CertificateOptions.__init__(
                self, privateKey=privateKey, certificate=certificate,
                extraCertChain=extraCertChain, raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
                acceptableCiphers=acceptable, **options)
        except ValueError as e:
            raise ValueError(f"tls.ciphers: {ciphers!r}: {e}") from None
        self.ciphers = ciphers
        self.groups = groups
        self.selectALPN = selectALPN
        self._extra = options

    def _makeContext(self):
        context = ssl.CertificateOptions._makeContext(self)
        context.set_tls13_ciphersuites(TLS13_CIPHERSUITES)
        setGroups(context, self.groups)
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        if self.selectALPN is not None:
            context.set_alpn_select_callback(self.selectALPN)
        return context

    def derive(self, **changes) -> ServerContextFactory:
        """New options with this certificate and policy, and C{changes} to the arguments."""
        arguments = dict(privateKey=self.privateKey, certificate=self.certificate,
                         extraCertChain=self.extraCertChain or None, ciphers=self.ciphers,
                         groups=self.groups, selectALPN=self.selectALPN, **self._extra)
        arguments.update(changes)
        return ServerContextFactory(**arguments)


def loadContextFactory(certPath: Path, keyPath: Path, hosts: list[str], generate: bool,
                       ciphers: str = TLS_CIPHERS, groups: str = TLS_GROUPS):
    """
    Load the certificate and key; if C{generate} and they do not exist yet,
    create a self-signed pair first and say so in the log. A C{ciphers} or
    C{groups} setting OpenSSL cannot use raises L{ValueError} naming it, now
    rather than at the first connection.
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
    options = ServerContextFactory(privateKey=key, certificate=certificate,
                                   extraCertChain=chain or None, ciphers=ciphers, groups=groups)
    options.getContext()
    return options
