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

# What invitesrv's direct-TLS listener sends before authentication, byte for byte
# (the default modules, one host, on localhost).
HEADER = (b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client'"
          b" from='localhost' id='c276d66ea481c20d' version='1.0'>"
          b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
          b"<mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-1-PLUS</mechanism>"
          b"<mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism>"
          b"<mechanism>PLAIN</mechanism></mechanisms><sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'>"
          b"<channel-binding type='tls-exporter'/><channel-binding type='tls-server-end-point'/>"
          b"</sasl-channel-binding><limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>10000</max-bytes>"
          b"</limits><register xmlns='http://jabber.org/features/iq-register'/>"
          b"<register xmlns='urn:xmpp:invite'/><register xmlns='urn:xmpp:ibr-token:0'/>"
          b"<authentication xmlns='urn:xmpp:sasl:2'><mechanism>SCRAM-SHA-256-PLUS</mechanism>"
          b"<mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism>"
          b"<mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism><inline>"
          b"<bind xmlns='urn:xmpp:bind:0'><inline><feature var='urn:xmpp:carbons:2'/>"
          b"<feature var='urn:xmpp:csi:0'/><feature var='urn:xmpp:sm:3'/></inline></bind>"
          b"<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-EXPR</mechanism>"
          b"<mechanism>HT-SHA-256-ENDP</mechanism><mechanism>HT-SHA-256-NONE</mechanism></fast>"
          b"<sm xmlns='urn:xmpp:sm:3'/></inline></authentication></stream:features>")


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
