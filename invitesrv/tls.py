"""
TLS: the server certificate, generated on first start if none is configured,
and the policy every encrypted connection uses (client STARTTLS and direct
TLS, server-to-server in both directions, HTTPS): TLS 1.2 or newer, and by
default Mozilla's "intermediate" configuration restricted to forward-secret
AEAD suites: ECDHE with AES-GCM or ChaCha20-Poly1305 for TLS 1.2 (no CBC, no
CCM) and the groups X25519, P-256 and P-384 (C{[tls] ciphers} and C{groups}).

Clients may resume their TLS session (C{[tls] resumption}): a phone back on
the network skips the certificate and its signature, the costliest part of
a handshake. OpenSSL's stateless tickets are used, encrypted with a random
key held in memory only, replaced with the context when the lifetime is
over and at each reload; in TLS 1.3 a resumption still makes a new ECDHE
key, so it stays forward secret. Server-to-server streams never resume:
their certificates are checked at every handshake.
"""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from invitesrv.config import TLS_CIPHERS, TLS_GROUPS
from invitesrv.logs import logger

log = logger()


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
    server-to-server) with the same certificates and policy.

    @ivar selectALPN: the ALPN selection callback (None: Twisted's, from
        C{acceptableProtocols}).
    @ivar byName: the options of each name that has a certificate of its own
        (a host, a subdomain, C{*.host}), chosen by the name a client asks
        for (SNI); these options are the default, for clients that ask for
        none or for another name.
    @ivar resumption: seconds a session ticket is good for; 0: no tickets.
    @ivar seconds: the clock the ticket key's lifetime is counted on.
    """

    seconds = staticmethod(time.monotonic)

    def __init__(self, privateKey, certificate, extraCertChain=None, ciphers: str = TLS_CIPHERS,
                 groups: str = TLS_GROUPS, selectALPN=_selectClientALPN,
                 byName: dict[str, ServerContextFactory] | None = None, resumption: float = 0,
                 **options):
        try:
            acceptable = ssl.AcceptableCiphers.fromOpenSSLCipherString(ciphers)
            ssl.CertificateOptions.__init__(
                self, privateKey=privateKey, certificate=certificate,
                extraCertChain=extraCertChain, raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
                acceptableCiphers=acceptable, enableSessionTickets=bool(resumption), **options)
        except ValueError as e:
            raise ValueError(f"tls.ciphers: {ciphers!r}: {e}") from None
        self.ciphers = ciphers
        self.groups = groups
        self.selectALPN = selectALPN
        self.byName = byName or {}
        self.resumption = resumption
        self._ticketKeyExpires = 0.0
        self._extra = options

    def getContext(self) -> SSL.Context:
        """
        The context, made once; with resumption, made again when its ticket
        key has lived C{resumption} seconds, so that no ticket outlives it.
        Connections already made keep the context they have.
        """
        if self.resumption and self._context is not None and self.seconds() >= self._ticketKeyExpires:
            self._context = None
        return ssl.CertificateOptions.getContext(self)

    def _makeContext(self):
        context = ssl.CertificateOptions._makeContext(self)
        if self.resumption:
            context.set_timeout(max(1, int(self.resumption)))
            self._ticketKeyExpires = self.seconds() + self.resumption
        context.set_tls13_ciphersuites(TLS13_CIPHERSUITES)
        setGroups(context, self.groups)
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        if self.selectALPN is not None:
            context.set_alpn_select_callback(self.selectALPN)
        if self.byName:
            context.set_tlsext_servername_callback(self._selectCertificate)
        return context

    def _selectCertificate(self, connection: SSL.Connection) -> None:
        """SNI: switch the handshake to the certificate of the name asked for, if there is one."""
        name = connection.get_servername()
        if name:
            options = self.forName(name.decode("ascii", "replace"))
            if options is not self:
                connection.set_context(options.getContext())

    def forName(self, name: str) -> ServerContextFactory:
        """The options whose certificate serves C{name}: its own, a wildcard's, or the default."""
        name = name.lower().rstrip(".")
        return (self.byName.get(name) or self.byName.get("*." + name.partition(".")[2])
                or self)

    def contexts(self) -> list[SSL.Context]:
        """The default context and each name's (for a use that must adjust them all)."""
        return [self.getContext()] + [options.getContext() for options in _unique(self.byName)]

    def derive(self, **changes) -> ServerContextFactory:
        """New options with these certificates and policy, and C{changes} to the arguments."""
        perName = {key: value for key, value in changes.items() if key != "byName"}
        derived = {id(options): options.derive(**perName) for options in _unique(self.byName)}
        arguments = dict(privateKey=self.privateKey, certificate=self.certificate,
                         extraCertChain=self.extraCertChain or None, ciphers=self.ciphers,
                         groups=self.groups, selectALPN=self.selectALPN, resumption=self.resumption,
                         byName={name: derived[id(options)] for name, options in self.byName.items()},
                         **self._extra)
        arguments.update(changes)
        return ServerContextFactory(**arguments)


def _unique(byName: dict[str, ServerContextFactory]) -> list[ServerContextFactory]:
    """Each options object once (a certificate serves several names)."""
    return list({id(options): options for options in byName.values()}.values())


@implementer(IOpenSSLServerConnectionCreator)
class CurrentOptions:
    """
    What one use (direct TLS, HTTPS, server-to-server) makes of the server's
    current TLS options, which a reload replaces: C{derive(server.tls)},
    made once per options object rather than per connection. As a connection
    creator (direct TLS, HTTPS), new handshakes use the new certificates
    while established connections keep theirs.
    """

    def __init__(self, server, derive=lambda options: options):
        self.server = server
        self.derive = derive
        self._source = None
        self._derived = None

    @property
    def current(self):
        if self.server.tls is not self._source:
            self._derived = self.derive(self.server.tls)
            self._source = self.server.tls
        return self._derived

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return SSL.Connection(self.current.getContext(), None)


def hostCertificatePaths(directory: Path, name: str) -> tuple[Path, Path] | None:
    """
    The certificate and key of C{name} in C{directory}: certbot's
    C{<name>/fullchain.pem} and C{privkey.pem}, or Prosody's C{<name>.crt}
    and C{<name>.key}; None if neither pair is there.
    """
    for certPath, keyPath in ((directory / name / "fullchain.pem", directory / name / "privkey.pem"),
                              (directory / f"{name}.crt", directory / f"{name}.key")):
        if certPath.is_file() and keyPath.is_file():
            return certPath, keyPath
    return None


def certificateNames(certificate: x509.Certificate) -> list[str]:
    """The DNS names of C{certificate} (its subject alternative names), lower case."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in names.value.get_values_for_type(x509.DNSName)]


def hostCertificates(directory: Path, hosts: list[str]) -> dict[str, tuple[Path, Path]]:
    """
    The certificates in C{directory} for the served C{hosts} and their
    subdomains (C{groups.HOST}), by name: the hosts first, in order.
    """
    found = {}
    for host in hosts:
        paths = hostCertificatePaths(directory, host)
        if paths is not None:
            found[host] = paths
    try:
        entries = sorted(entry.name for entry in directory.iterdir())
    except OSError:
        return found
    for entry in entries:
        name = entry.removesuffix(".crt")
        if name not in found and any(name.endswith("." + host) for host in hosts):
            paths = hostCertificatePaths(directory, name)
            if paths is not None:
                found[name] = paths
    return found


def _loadPEM(certPath: Path, keyPath: Path) -> tuple[crypto.X509, crypto.PKey, list[crypto.X509]]:
    """The certificate, key and chain in these PEM files; L{ValueError} names what is wrong."""
    try:
        pem = certPath.read_bytes()
        certificate = crypto.load_certificate(crypto.FILETYPE_PEM, pem)
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, keyPath.read_bytes())
        marker = b"-----END CERTIFICATE-----"
        chain = [crypto.load_certificate(crypto.FILETYPE_PEM, block + marker)
                 for block in pem.split(marker)[1:-1]]
    except OSError as e:
        raise ValueError(f"cannot read {e.filename}: {e.strerror}") from None
    except crypto.Error as e:
        raise ValueError(f"{certPath} or {keyPath} is not a PEM certificate and key: {e}") from None
    return certificate, key, chain


def loadContextFactory(certPath: Path, keyPath: Path, hosts: list[str], generate: bool,
                       ciphers: str = TLS_CIPHERS, groups: str = TLS_GROUPS,
                       resumption: float = 0):
    """
    Load the certificate and key; if C{generate} and they do not exist yet,
    create a self-signed pair first and say so in the log. A C{ciphers} or
    C{groups} setting OpenSSL cannot use, a file that cannot be read or a
    key of another certificate raises L{ValueError} naming it, now rather
    than at the first connection.
    """
    if generate and not (certPath.exists() and keyPath.exists()):
        generateSelfSigned(certPath, keyPath, hosts)
        log.warn("Generated a self-signed certificate for {hosts} in {path}; clients will warn "
                 "about it until you configure [tls] certificate and key",
                 hosts=", ".join(hosts), path=str(certPath))
    certificate, key, chain = _loadPEM(certPath, keyPath)
    options = ServerContextFactory(privateKey=key, certificate=certificate,
                                   extraCertChain=chain or None, ciphers=ciphers, groups=groups,
                                   resumption=resumption)
    try:
        options.getContext()
    except SSL.Error as e:
        raise ValueError(f"{keyPath} is not the key of {certPath}: {e}") from None
    return options


def loadServerTLS(config, hosts: list[str], previous: ServerContextFactory | None = None,
                  problems: list[str] | None = None) -> ServerContextFactory:
    """
    The server's TLS options: a certificate per name from
    C{[tls] certificates} (each host's, which also serves the subdomains it
    names, and subdomains' own), chosen by SNI; the default is
    C{[tls] certificate} when set, else the first host's, else a generated
    self-signed one.

    On a reload, C{previous} are the options in use: a name whose new files
    do not load (a renewal written halfway, a key of another certificate)
    keeps its certificate from there, and what went wrong is added to
    C{problems}, so one host's mistake does not hold back the others'
    renewals. Without C{previous}, or for the default certificate, it raises.
    """
    byName: dict[str, ServerContextFactory] = {}
    first = None
    for name, (certPath, keyPath) in hostCertificates(config.certificatesDir, hosts).items():
        try:
            options = loadContextFactory(certPath, keyPath, hosts, False, config.tls_ciphers,
                                         config.tls_groups, config.tls_resumption)
        except ValueError as e:
            kept = previous.byName.get(name) if previous is not None else None
            if kept is None or problems is None:
                raise
            options = kept.derive(ciphers=config.tls_ciphers, groups=config.tls_groups,
                                  resumption=config.tls_resumption)
            problems.append(f"tls: certificate of {name} does not load, keeping the one in use: {e}")
        first = first or options
        byName[name] = options
        for covered in certificateNames(options.certificate.to_cryptography()):
            if covered.endswith("." + name) or covered.removeprefix("*.") == name:
                byName.setdefault(covered, options)
    if config.tls_certificate is not None or first is None:
        default = loadContextFactory(config.certificatePath, config.keyPath, hosts,
                                     config.tls_certificate is None, config.tls_ciphers,
                                     config.tls_groups, config.tls_resumption)
    else:
        default = first
    return default.derive(byName=byName) if byName else default
