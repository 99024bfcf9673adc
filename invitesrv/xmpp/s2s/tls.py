"""
TLS for server-to-server streams, both directions: the contexts with this
server's certificate, and per stream what was wrong with the peer's.
"""

from __future__ import annotations

from cryptography import x509
from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import DNS_ID, SRV_ID, verify_service_identity
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from zope.interface import implementer

from invitesrv.xmpp.s2s.stream import domainOf


class PeerTLS:
    """
    TLS for server-to-server streams, both directions, with this server's
    certificate. The handshake accepts any peer certificate (and asks
    incoming peers for theirs); whether it is valid is decided afterwards
    (L{PeerCertificate.validFor}), so an invalid one means dialback rather
    than a failed connection. Twisted's C{optionsForClientTLS} would instead
    abort the handshake, and a second connection would be needed.
    """

    def __init__(self, options, trust: str = ""):
        self.clientOptions = self._options(options, trust)
        self.serverOptions = self._options(options, trust)

    @staticmethod
    def _options(options, trust: str):
        # Peers (Prosody) offer ALPN "xmpp-server"; the default selection,
        # made for HTTP, would end the handshake with an internal error.
        options = options.derive(selectALPN=_selectALPN, resumption=0)
        for context in options.contexts():  # each host's too: SNI switches to them
            if trust:
                context.load_verify_locations(trust)
            else:
                context.set_default_verify_paths()
            # Asking for the peer's certificate makes OpenSSL insist on a
            # session id context, even with session caching off.
            context.set_session_id(b"invitesrv-s2s")
        return options

    def client(self, serverName: str, local: str, directTLS: bool = False) -> PeerCertificate:
        """
        The TLS layer of an outgoing stream from C{local} to C{serverName}
        (sent as SNI), with C{local}'s certificate; with C{directTLS}
        (XEP-0368) it offers ALPN C{xmpp-server} too.
        """
        return PeerCertificate(self.clientOptions.forName(local).getContext(), serverName,
                               [b"xmpp-server"] if directTLS else [])

    def server(self) -> PeerCertificate:
        """The TLS layer of an incoming stream (the certificate follows SNI)."""
        return PeerCertificate(self.serverOptions.getContext(), None)


def _selectALPN(connection, offered: list[bytes]):
    return b"xmpp-server" if b"xmpp-server" in offered else SSL.NO_OVERLAPPING_PROTOCOLS


@implementer(IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator)
class PeerCertificate:
    """One stream's TLS layer: it remembers what was wrong with the peer's certificate."""

    def __init__(self, context: SSL.Context, serverName: str | None, alpn: list[bytes] = ()):
        self.context = context
        self.serverName = serverName
        self.alpn = list(alpn)
        self.connection: SSL.Connection | None = None
        self.problems: list[int] = []

    def _check(self, connection, certificate, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            self.problems.append(errno)
        return True

    def _connection(self) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_verify(SSL.VERIFY_PEER, self._check)
        self.connection = connection
        return connection

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        connection = self._connection()
        try:
            connection.set_tlsext_host_name(self.serverName.encode("idna"))
        except UnicodeError:
            pass
        if self.alpn:
            connection.set_alpn_protos(self.alpn)
        return connection

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return self._connection()

    def validFor(self, domain: str) -> bool:
        """Did the peer show a certificate that chains to a trusted root and names C{domain}?"""
        connection = self.connection
        if connection is None or self.problems or connection.get_peer_certificate() is None:
            return False
        return certificateNames(connection.get_peer_certificate().to_cryptography(), domain)


ID_ON_XMPPADDR = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.5")


def certificateNames(certificate: x509.Certificate, domain: str) -> bool:
    """
    Does C{certificate} name the XMPP server of C{domain} (RFC 6120 section
    13.7.1.2, RFC 6125)? A DNS-ID or an SRV-ID (C{_xmpp-server.<domain>},
    or C{_xmpps-server} for direct TLS), matched by service-identity, or an
    XmppAddr (id-on-xmppAddr), which service-identity does not read: its
    UTF8String is decoded here and must be the domain itself. C{domain} is
    the stream's, never an SRV target.
    """
    try:
        ascii = domain.encode("idna").decode("ascii")
        patterns = extract_patterns(certificate)
    except (UnicodeError, CertificateError):
        pass
    else:
        for reference in (DNS_ID(ascii), SRV_ID(f"_xmpp-server.{ascii}"), SRV_ID(f"_xmpps-server.{ascii}")):
            try:
                verify_service_identity(patterns, [reference], [])
            except (CertificateError, VerificationError):
                continue
            return True
    return domain in {domainOf(address) for address in xmppAddrs(certificate)}


def xmppAddrs(certificate: x509.Certificate) -> list[str]:
    """The XmppAddr names (otherName id-on-xmppAddr, a DER UTF8String each) of C{certificate}."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    found = []
    for other in names.get_values_for_type(x509.OtherName):
        der = other.value
        if other.type_id != ID_ON_XMPPADDR or len(der) < 2 or der[0] != 0x0C:  # UTF8String
            continue
        length, start = der[1], 2
        if length & 0x80:  # long form: the next (length & 0x7f) bytes are the length
            start = 2 + (length & 0x7F)
            length = int.from_bytes(der[2:start], "big")
        if start + length == len(der):
            try:
                found.append(der[start:].decode("utf-8"))
            except UnicodeDecodeError:
                pass
    return found
