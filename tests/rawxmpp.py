"""
A raw-XML XMPP client for tests that need exact bytes: blocking sockets,
real STARTTLS, and SCRAM done by scramp's client side.
"""

from __future__ import annotations

import base64
import re
import select
import socket
import ssl
import time

import scramp

NS_STREAM_HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                    "xmlns:stream='http://etherx.jabber.org/streams' to='{host}' version='1.0'>")


class RawClient:
    """One TCP connection to the server, spoken to in raw XML."""

    def __init__(self, port: int, host: str = "localhost", timeout: float = 10.0,
                 source: str | None = None, receiveBuffer: int | None = None):
        """
        C{source}: the local address to connect from (127.0.0.2, ...: another
        client address). C{receiveBuffer}: the socket's receive buffer, set
        before connecting so that the TCP window stays that small (a client
        that stops reading then soon stops the server's writes).
        """
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if receiveBuffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receiveBuffer)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.timeout = timeout

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: str | bytes) -> None:
        self.sock.sendall(data.encode("utf-8") if isinstance(data, str) else data)

    def recvUntil(self, pattern: str, timeout: float | None = None) -> str:
        """Read until the buffered text matches C{pattern}; return and consume it."""
        deadline = time.monotonic() + (timeout or self.timeout)
        regex = re.compile(pattern, re.S)
        while True:
            text = self.buffer.decode("utf-8", "replace")
            match = regex.search(text)
            if match:
                consumed = text[: match.end()]
                self.buffer = self.buffer[len(consumed.encode("utf-8")):]
                return consumed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {pattern!r} in {text!r}")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before {pattern!r}; got {text!r}")
            self.buffer += chunk

    def readAll(self, timeout: float = 2.0) -> str:
        """Everything until the server closes the connection (or C{timeout})."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                break
            if not chunk:
                break
            self.buffer += chunk
        text, self.buffer = self.buffer.decode("utf-8", "replace"), b""
        return text

    def isClosed(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return False
            except OSError:
                return True
            if not chunk:
                return True
            self.buffer += chunk
        return False

    # -- negotiation steps ---------------------------------------------------

    def openStream(self) -> str:
        self.send(NS_STREAM_HEADER.format(host=self.host))
        return self.recvUntil(r"</stream:features>")

    def startTLS(self) -> str:
        self.openStream()
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.recvUntil(r"<proceed[^>]*/>")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
        return self.openStream()

    def scram(self, username: str, password: str, mechanism: str = "SCRAM-SHA-256") -> str:
        """Run a SCRAM exchange; return the server's final element (success or failure)."""
        client = scramp.ScramClient([mechanism], username, password)
        first = base64.b64encode(client.get_client_first().encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{first}</auth>")
        reply = self.recvUntil(r"<(challenge|failure)[^>]*(/>|>.*?</\1>)")
        if "<failure" in reply:
            return reply
        challenge = re.search(r">([^<]*)</challenge>", reply).group(1)
        client.set_server_first(base64.b64decode(challenge).decode())
        final = base64.b64encode(client.get_client_final().encode()).decode()
        self.send(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{final}</response>")
        return self.recvUntil(r"<(success|failure)[^>]*(/>|>.*?</\1>)")

    def login(self, username: str, password: str, resource: str = "raw",
              mechanism: str = "SCRAM-SHA-256") -> str:
        """STARTTLS, SCRAM, bind; return the bound full JID."""
        self.startTLS()
        result = self.scram(username, password, mechanism)
        assert "<success" in result, result
        self.openStream()
        self.send(f"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  f"<resource>{resource}</resource></bind></iq>")
        reply = self.recvUntil(r"<iq[^>]*id=.bind1.*?</iq>")
        return re.search(r"<jid>([^<]+)</jid>", reply).group(1)


def readFor(seconds: float, received: dict, closedAt: dict, started: float) -> None:
    """
    For C{seconds}, read whatever the open sockets among C{received}'s keys
    get (into C{received}), noting in C{closedAt} when each one closes
    (seconds since C{started}): how a test watches many slow connections.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readable, _, _ = select.select([s for s in received if s not in closedAt], [], [], 0.1)
        for sock in readable:
            try:
                chunk = sock.recv(4096)
            except OSError:
                chunk = b""
            received[sock] += chunk
            if not chunk:
                closedAt[sock] = time.monotonic() - started
