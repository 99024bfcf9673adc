#!/usr/bin/env python3
"""
A bare Twisted TLS responder: the floor under every reconnect.

It accepts direct TLS with invitesrv's own TLS options (the same
certificate, suites, groups and session tickets, through
C{invitesrv.tls.loadContextFactory}), answers a stream header with a
canned header and features, and a closing tag with its own, then closes.
No XMPP code runs: C{bench/run.py --scenarios tlsfloor} drives it with the
C{connectresumed} workload, so the server CPU it reports is what the TCP
connection, the resumed TLS handshake and Twisted cost before invitesrv does
anything.

    python bench/tlsfloor.py --cert CERT --key KEY   # prints "listening on PORT"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import protocol, reactor  # noqa: E402
from twisted.protocols.tls import TLSMemoryBIOFactory  # noqa: E402

from invitesrv.config import Config  # noqa: E402
from invitesrv.tls import loadContextFactory  # noqa: E402

# What invitesrv's direct-TLS listener sends before authentication, in size and shape.
HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client'"
          b" xmlns:stream='http://etherx.jabber.org/streams' from='localhost'"
          b" id='5f3c1e0a9b7d4c2e' version='1.0' xml:lang='en'><stream:features>"
          b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256-PLUS"
          b"</mechanism><mechanism>SCRAM-SHA-256</mechanism><mechanism>PLAIN</mechanism>"
          b"</mechanisms><authentication xmlns='urn:xmpp:sasl:2'><mechanism>SCRAM-SHA-256"
          b"</mechanism><inline><bind xmlns='urn:xmpp:bind:0'/><fast xmlns='urn:xmpp:fast:0'>"
          b"<mechanism>HT-SHA-256-NONE</mechanism></fast><sm xmlns='urn:xmpp:sm:3'/></inline>"
          b"</authentication></stream:features>")


class Bare(protocol.Protocol):
    """Answers the header and the close, as a server does before a login."""

    def dataReceived(self, data: bytes) -> None:
        if b"<stream:stream" in data:
            self.transport.write(HEADER)
        if b"</stream:stream>" in data:
            self.transport.write(b"</stream:stream>")
            self.transport.loseConnection()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--cert", required=True, type=Path)
    parser.add_argument("--key", required=True, type=Path)
    options = parser.parse_args(argv)
    tls = loadContextFactory(options.cert, options.key, ["localhost"], False,
                             resumption=Config.tls_resumption)
    port = reactor.listenTCP(0, TLSMemoryBIOFactory(tls, False, protocol.Factory.forProtocol(Bare)),
                             interface="127.0.0.1")
    print(f"listening on {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
