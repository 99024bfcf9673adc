"""
Server-to-server streams (RFC 6120): federation as the router's default route.

A stanza for a domain this server does not host reaches L{S2SService.route}.
It goes out on the outgoing stream of its (local domain, remote domain)
pair, which is opened on demand: the remote server is found
(L{invitesrv.xmpp.resolve}), TLS is started, and this server proves its
domain with SASL EXTERNAL (XEP-0178) when the peer accepts our certificate,
else with dialback (XEP-0220). Stanzas wait in a bounded queue meanwhile and
are bounced with C{remote-server-not-found} or C{remote-server-timeout} when
the peer cannot be reached or refuses us.

Incoming streams arrive on their own listener. A peer proves a domain with
SASL EXTERNAL (its certificate is valid for that domain) or dialback (the
domain's authoritative server, reached over our outgoing stream to it,
confirms the key); only then may it send stanzas, and only C{from} domains it
proved (else stream error C{invalid-from}) to domains we host (else
C{host-unknown}). Verified stanzas go to C{host.receive(stanza, target)}.
Each stream is read with the restricted parser, with the pre-authentication
stanza size until a domain is proved; a peer that breaks a rule loses its own
stream and nothing else. Idle streams are closed after C{[s2s] idle_timeout}
by sending the closing tag and reading on until the peer's, so that nothing
the peer sent in the meantime is lost.

The package: L{tls} (the TLS layer and certificate checks), L{stream} (the
stream, a L{invitesrv.xmpp.stream.RestrictedStream}, and helpers both
directions use), L{incoming} (the receiving side), L{outgoing} (the
initiating side and the queue per domain pair) and L{service} (the router's
default route, the listener factory, dialback keys).

Wokkel's C{wokkel.server} has the same parts (its listen and connect
authenticators, C{ServerService} with queues of stanzas per domain pair and
dialback key helpers, used here through L{invitesrv.xmpp.dialback}), but no
STARTTLS or SASL EXTERNAL, an expat parser with no limits, a C{wokkel.component}
router and the global reactor; this package keeps its shape and replaces those.
"""
