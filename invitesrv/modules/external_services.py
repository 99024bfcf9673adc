"""
XEP-0215 External Service Discovery: the STUN and TURN servers a client
needs for calls (Jingle audio and video) to cross NAT.

The servers come from C{[modules.external_services]}: C{stun} (STUN over
UDP), C{turn} (TURN over UDP and TCP) and C{turns} (TURN over TLS), each a
list of C{"host:port"}. TURN needs credentials; they are made for each
account from C{secret}, the TURN server's shared secret, by the scheme of
coturn's REST API (C{use-auth-secret} and C{static-auth-secret} in
C{turnserver.conf}), which Prosody's C{mod_turn_external} and ejabberd use
too: the username is C{EXPIRY:USER} (the Unix time the credentials stop
working, then the account's name) and the password the base64 HMAC-SHA1 of
the username under the secret. The TURN server checks both without asking
us, and refuses them after C{credential_lifetime}.

A local account asks the host for C{<services/>} (all, or of one
C{type}); TURN entries carry their credentials (C{restricted='1'},
C{username}, C{password}, C{expires}), as Prosody's answers do, so that a
client needs one round trip. C{<credentials/>} asks for those of one
service. Anyone else is refused: the credentials relay traffic at the
operator's expense.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from twisted.words.protocols.jabber import error, jid
from twisted.words.protocols.jabber.xmlstream import toResponse

from invitesrv.config import ConfigError, Duration, parseHostPort
from invitesrv.invites import isoTime
from invitesrv.modules.base import HostModule

NS_EXTDISCO = "urn:xmpp:extdisco:2"
SERVICES = f"/iq[@type='get']/services[@xmlns='{NS_EXTDISCO}']"
CREDENTIALS = f"/iq[@type='get']/credentials[@xmlns='{NS_EXTDISCO}']"
STUN_PORT, TURNS_PORT = 3478, 5349


@dataclass(frozen=True)
class ExternalServicesOptions:
    """C{[modules.external_services]}: the STUN and TURN servers, and TURN's shared secret."""

    stun: tuple[str, ...] = ()
    turn: tuple[str, ...] = ()
    turns: tuple[str, ...] = ()
    secret: str = ""
    credential_lifetime: Duration = Duration(86400)


@dataclass(frozen=True)
class Service:
    """One entry of the answer: C{type} (stun, turn, turns), host, port and transport."""

    type: str
    host: str
    port: int
    transport: str

    @property
    def restricted(self) -> bool:
        """TURN needs credentials; STUN does not."""
        return self.type != "stun"


def turnCredentials(secret: str, username: str, expires: int) -> tuple[str, str]:
    """(username, password) for coturn's REST API scheme: C{EXPIRY:USER}, base64 HMAC-SHA1."""
    name = f"{expires}:{username}"
    digest = hmac.new(secret.encode("utf-8"), name.encode("utf-8"), hashlib.sha1).digest()
    return name, base64.b64encode(digest).decode("ascii")


class ExternalServicesModule(HostModule):
    """Answers XEP-0215 C{services} and C{credentials} requests of the host's accounts."""

    name = "external_services"
    features = (NS_EXTDISCO,)
    observers = ((SERVICES, "onServices"), (CREDENTIALS, "onCredentials"))
    Options = ExternalServicesOptions

    services: tuple[Service, ...] = ()

    def connectionInitialized(self) -> None:
        """Check the configured servers (a wrong one stops start-up) and attach."""
        self.services = self.configured()
        HostModule.connectionInitialized(self)

    def configured(self) -> tuple[Service, ...]:
        """The services of the options, in order; a L{ConfigError} names a wrong entry."""
        options, source = self.options, self.host.config.source
        services = []
        for kind, transports, port in (("stun", ("udp",), STUN_PORT), ("turn", ("udp", "tcp"), STUN_PORT),
                                       ("turns", ("tcp",), TURNS_PORT)):
            entries = getattr(options, kind)
            if entries and kind != "stun" and not options.secret:
                raise ConfigError(f"{source}: modules.external_services.{kind}: TURN servers need"
                                  " the secret they share with this server (secret)")
            for entry in entries:
                try:
                    host, number = parseHostPort(entry, port)
                except ValueError as e:
                    raise ConfigError(f"{source}: modules.external_services.{kind}: {e}") from None
                services += [Service(kind, host, number, transport) for transport in transports]
        return tuple(services)

    # -- the protocol ---------------------------------------------------------------

    def _requestor(self, iq) -> jid.JID:
        """The local account asking; others get C{forbidden}."""
        requestor = jid.JID(iq["from"])
        if requestor.host != self.host.name or requestor.user is None:
            raise error.StanzaError("forbidden", "auth",
                                    f"Only accounts of {self.host.name} get these services")
        return requestor

    def _element(self, parent, service: Service, requestor: jid.JID) -> None:
        """Add C{service} to C{parent}, with fresh credentials when it is restricted."""
        entry = parent.addElement("service")
        entry["type"], entry["host"] = service.type, service.host
        entry["port"], entry["transport"] = str(service.port), service.transport
        if service.restricted:
            expires = int(self.host.now() + self.options.credential_lifetime)
            entry["username"], entry["password"] = turnCredentials(self.options.secret,
                                                                   requestor.user, expires)
            entry["expires"] = isoTime(expires)
            entry["restricted"] = "1"

    def _answer(self, iq, build) -> None:
        """Send what C{build(requestor)} makes of C{iq}, or its stanza error."""
        iq.handled = True
        try:
            reply = build(self._requestor(iq))
        except error.StanzaError as e:
            reply = e.toResponse(iq)
        self.send(reply)

    def onServices(self, iq) -> None:
        """C{<services/>}: every service, or those of the asked C{type}."""
        def build(requestor):
            kind = iq.services.getAttribute("type")
            reply = toResponse(iq, "result")
            answer = reply.addElement((NS_EXTDISCO, "services"))
            if kind is not None:
                answer["type"] = kind
            for service in self.services:
                if kind in (None, service.type):
                    self._element(answer, service, requestor)
            return reply
        self._answer(iq, build)

    def onCredentials(self, iq) -> None:
        """C{<credentials/>}: those of the service named by host and type (and port, if given)."""
        def build(requestor):
            asked = iq.credentials.service
            if asked is None or not asked.getAttribute("host") or not asked.getAttribute("type"):
                raise error.StanzaError("bad-request", "modify", "Name a service: host and type")
            port = asked.getAttribute("port")
            matching = [s for s in self.services if s.restricted and s.host == asked["host"]
                        and s.type == asked["type"] and port in (None, str(s.port))]
            if not matching:
                raise error.StanzaError("item-not-found", "cancel",
                                        "No such service needs credentials here")
            reply = toResponse(iq, "result")
            answer = reply.addElement((NS_EXTDISCO, "credentials"))
            for service in matching:
                self._element(answer, service, requestor)
            return reply
        self._answer(iq, build)
