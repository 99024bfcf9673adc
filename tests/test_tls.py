"""
The TLS policy of every encrypted listener (client STARTTLS, direct TLS,
server-to-server STARTTLS, HTTPS), over real sockets with Python's C{ssl} as
the client: by default Mozilla "intermediate" with forward-secret AEAD suites
only. A client restricted to a CBC suite, a CCM suite, TLS 1.1, X448 or
secp521r1 is refused; an ordinary client gets an ECDHE AEAD suite. A server
configured with a wider C{[tls] ciphers} and C{groups = ""} lets the same
restricted clients in, which shows both that the option works and that each
client really offers what it is restricted to. Clients resume their TLS
sessions, servers never do, and no ticket outlives its key.
"""

from __future__ import annotations

import re
import socket
import ssl
import warnings

import pytest
from conftest import RunningServer
from cryptography import x509
from twisted.internet.task import Clock

from invitesrv.config import ConfigError, parseConfig
from invitesrv.tls import generateSelfSigned, loadContextFactory

C2S_HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
              "xmlns:stream='http://etherx.jabber.org/streams' to='a.test' version='1.0'>")
S2S_HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
              "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
              "from='peer.test' to='a.test' version='1.0'>")
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
AEAD = {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305", "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256"}


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def listeners(tmp_path_factory):
    """A server with every kind of TLS listener and the default policy: label -> (port, header)."""
    direct, https = freePort(), freePort()
    server = RunningServer(tmp_path_factory.mktemp("tls"),
                           f'c2s_direct_tls = ["tcp:{direct}:interface=127.0.0.1"]\n'
                           's2s = ["tcp:0:interface=127.0.0.1"]\n'
                           f'https = ["tcp:{https}:interface=127.0.0.1"]\n', ("--domain", "a.test"))
    server.start()
    yield {"c2s": (server.port, C2S_HEADER), "direct": (direct, None),
           "s2s": (server.ports["Servers"], S2S_HEADER), "https": (https, None), "server": server}
    server.stop()


@pytest.fixture(scope="module")
def permissive(tmp_path_factory):
    """
    A server whose [tls] options allow CBC and CCM suites and OpenSSL's
    default groups, and resume no session.
    """
    direct = freePort()
    server = RunningServer(tmp_path_factory.mktemp("tls-permissive"),
                           f'c2s_direct_tls = ["tcp:{direct}:interface=127.0.0.1"]\n'
                           '[tls]\nciphers = "ECDHE+AESGCM:ECDHE+AES:ECDHE+AESCCM"\ngroups = ""\n'
                           'resumption = 0\n', ("--domain", "a.test"))
    server.start()
    yield direct
    server.stop()


def clientContext(ciphers: str | None = None, maximum=None, curve: str | None = None) -> ssl.SSLContext:
    """A client context that checks nothing about the certificate (it is self-signed)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1, on purpose
        if maximum is not None:
            context.minimum_version = min(maximum, ssl.TLSVersion.TLSv1_2)
            context.maximum_version = maximum
    if ciphers:
        context.set_ciphers(ciphers)
    if curve:
        context.set_ecdh_curve(curve)
    return context


RESTRICTED = {
    "cbc": dict(ciphers="ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384",
                maximum=ssl.TLSVersion.TLSv1_2),
    "ccm": dict(ciphers="ECDHE-ECDSA-AES128-CCM:ECDHE-ECDSA-AES256-CCM", maximum=ssl.TLSVersion.TLSv1_2),
    "x448": dict(curve="X448"),
    "secp521r1": dict(curve="secp521r1"),
}


def handshake(port: int, header: str | None, context: ssl.SSLContext,
              session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
    """
    Connect, do STARTTLS first when C{header} is a stream header, and the
    TLS handshake, resuming C{session} if given.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        if header is not None:
            sock.sendall(header.encode())
            received = b""
            while b"</stream:features>" not in received:
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
            sock.sendall(STARTTLS)
            while b"<proceed" not in received:
                received += sock.recv(65536)
        return context.wrap_socket(sock, server_hostname="a.test", session=session)
    except BaseException:
        sock.close()
        raise


@pytest.mark.parametrize("restriction", sorted(RESTRICTED))
@pytest.mark.parametrize("listener", ["c2s", "direct", "s2s", "https"])
def test_weakClientsRefused(listeners, permissive, listener, restriction):
    """
    A client offering only a CBC suite, only CCM, or only X448 or secp521r1
    for the key exchange gets no connection on any listener; the permissive
    server accepts it, so the client did offer what it was restricted to.
    """
    port, header = listeners[listener]
    context = clientContext(**RESTRICTED[restriction])
    with pytest.raises(ssl.SSLError):
        handshake(port, header, context).close()
    with handshake(permissive, None, context) as accepted:
        assert accepted.version() is not None


@pytest.mark.parametrize("listener", ["c2s", "direct", "s2s", "https"])
def test_tls11Refused(listeners, listener):
    """A TLS 1.1 client is refused with a protocol-version alert from the server."""
    port, header = listeners[listener]
    context = clientContext(ciphers="ALL:@SECLEVEL=0", maximum=ssl.TLSVersion.TLSv1_1)
    with pytest.raises(ssl.SSLError) as refused:
        handshake(port, header, context).close()
    assert re.search(r"PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL", str(refused.value), re.I), refused.value


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("listener", ["c2s", "direct", "s2s", "https"])
def test_aeadClientsAccepted(listeners, listener, maximum):
    """An ordinary client gets a forward-secret AEAD suite over TLS 1.2 and 1.3 on every listener."""
    port, header = listeners[listener]
    with handshake(port, header, clientContext(maximum=maximum)) as accepted:
        assert accepted.cipher()[0] in AEAD, accepted.cipher()
        assert accepted.version() == ("TLSv1.3" if maximum == ssl.TLSVersion.TLSv1_3 else "TLSv1.2")


FIRST_WORDS = {"c2s": C2S_HEADER, "direct": C2S_HEADER, "s2s": S2S_HEADER,
               "https": "GET / HTTP/1.0\r\n\r\n"}


def sessionOf(listeners, listener: str, context: ssl.SSLContext) -> ssl.SSLSession:
    """
    A new TLS session with C{listener}, once the server has answered: a
    TLS 1.3 server sends its tickets after the handshake.
    """
    with handshake(*listeners[listener], context) as connection:
        connection.sendall(FIRST_WORDS[listener].encode())
        assert connection.recv(65536)
        return connection.session


def resumes(listeners, listener: str, maximum=ssl.TLSVersion.TLSv1_3,
            earlier: tuple[ssl.SSLContext, ssl.SSLSession] | None = None) -> bool:
    """
    Whether a second connection resumes the first's TLS session, or the
    C{earlier} session (with the client context it was made in).
    """
    context = earlier[0] if earlier else clientContext(maximum=maximum)
    session = earlier[1] if earlier else sessionOf(listeners, listener, context)
    with handshake(*listeners[listener], context, session) as again:
        return again.session_reused


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("listener", ["c2s", "direct", "https"])
def test_clientsResume(listeners, listener, maximum):
    """A client back on the network resumes its TLS session, over TLS 1.2 and 1.3."""
    assert resumes(listeners, listener, maximum)


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_serversNeverResume(listeners, maximum):
    """A server-to-server stream gets no ticket: its peer's certificate is checked every time."""
    assert not resumes(listeners, "s2s", maximum)


def test_resumptionOff(permissive):
    """C{[tls] resumption = 0}: no session is resumed."""
    assert not resumes({"direct": (permissive, None)}, "direct")


def test_reloadEndsTickets(listeners):
    """A reload makes a new ticket key: tickets issued before it no longer resume."""
    context = clientContext()
    before = (context, sessionOf(listeners, "c2s", context))
    assert resumes(listeners, "c2s", earlier=before)
    listeners["server"].ctl("reload")
    assert not resumes(listeners, "c2s", earlier=before)
    assert resumes(listeners, "c2s")


def test_ticketKeyLifetime(tmp_path):
    """
    The context, and with it the ticket key, is replaced once C{resumption}
    seconds have passed; tickets say they last that long.
    """
    options = loadContextFactory(tmp_path / "c.pem", tmp_path / "k.pem", ["a.test"], True)
    options = options.derive(resumption=3600)
    clock = Clock()
    options.seconds = clock.seconds
    first = options.getContext()
    assert first.get_timeout() == 3600
    clock.advance(3599)
    assert options.getContext() is first
    clock.advance(1)
    assert options.getContext() is not first
    unending = options.derive(resumption=0)
    unending.seconds = clock.seconds
    context = unending.getContext()
    clock.advance(10 ** 6)
    assert unending.getContext() is context


def test_tlsOptionsChecked(tmp_path):
    """[tls] ciphers and groups are strings; a value OpenSSL cannot use stops the start with its name."""
    config = parseConfig({"tls": {"ciphers": "ECDHE+AESGCM", "groups": "X25519"}})
    assert (config.tls_ciphers, config.tls_groups) == ("ECDHE+AESGCM", "X25519")
    with pytest.raises(ConfigError, match="tls.groups"):
        parseConfig({"tls": {"groups": 25519}})
    for option, value in (("ciphers", "NOT-A-CIPHER"), ("groups", "X25519:nosuchgroup")):
        (tmp_path / option).mkdir()
        server = RunningServer(tmp_path / option, f'[tls]\n{option} = "{value}"\n')
        with pytest.raises(RuntimeError, match=f"tls.{option}"):
            server.start()
        server.stop()


def test_internationalisedHostNames(tmp_path):
    """A host with a non-ASCII name gets its A-label in the certificate, as TLS clients check."""
    generateSelfSigned(tmp_path / "c.pem", tmp_path / "k.pem", ["bücher.test", "localhost"])
    certificate = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["xn--bcher-kva.test", "localhost"]
