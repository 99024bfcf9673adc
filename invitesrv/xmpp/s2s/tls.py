"""
TLS for server-to-server streams, both directions: the contexts with this
server's certificate, and per stream what was wrong with the peer's.
"""

from __future__ import annotations

from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.pyopenssl import verify_hostname
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from zope.interface import implementer


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
        options = options.derive(selectALPN=_selectALPN)
        for context in options.contexts():  # each host's too: SNI switches to them
            if trust:
                context.load_verify_locations(trust)
            else:
                context.set_default_verify_paths()
            # Asking for the peer's certificate makes OpenSSL insist on a
            # session id context, even with session caching off.
            context.set_session_id(b"invitesrv-s2s")
        return options

    def client(self, serverName: str, local: str) -> PeerCertificate:
        """
        The TLS layer of an outgoing stream from C{local} to C{serverName}
        (sent as SNI), with C{local}'s certificate.
        """
        return PeerCertificate(self.clientOptions.forName(local).getContext(), serverName)

    def server(self) -> PeerCertificate:
        """The TLS layer of an incoming stream (the certificate follows SNI)."""
        return PeerCertificate(self.serverOptions.getContext(), None)


def _selectALPN(connection, offered: list[bytes]):
    return b"xmpp-server" if b"xmpp-server" in offered else SSL.NO_OVERLAPPING_PROTOCOLS


@implementer(IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator)
class PeerCertificate:
    """One stream's TLS layer: it remembers what was wrong with the peer's certificate."""

    def __init__(self, context: SSL.Context, serverName: str | None):
        self.context = context
        self.serverName = serverName
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
        return connection

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return self._connection()

    def validFor(self, domain: str) -> bool:
        """Did the peer show a certificate that chains to a trusted root and names C{domain}?"""
        connection = self.connection
        if connection is None or self.problems or connection.get_peer_certificate() is None:
            return False
        try:
            verify_hostname(connection, domain.encode("idna").decode("ascii"))
        except (CertificateError, VerificationError, UnicodeError, ValueError):
            return False
        return True
