"""
The server side of stream negotiation (RFC 6120): stream headers, STARTTLS,
SASL (SCRAM-SHA-256, SCRAM-SHA-1 through scramp, their -PLUS variants
bound to the TLS channel, and PLAIN once encrypted), resource binding, and
the IQs that modules answer before authentication (in-band registration,
invite tokens) through the C{preauth-iq} hook.

One L{C2SAuthenticator} per connection. Until a resource is bound the
connection is on a timer; after that its stanzas go to the bound L{Session}.

A SASL mechanism is an exchange object (L{ScramExchange}, L{PlainExchange})
whose C{step(data)} fires with a challenge (bytes) or, at the end, a
L{Success}: RFC 6120's SASL here and XEP-0388's SASL2 (the C{sasl2} module)
drive the same exchanges, with the same failure counting and throttling.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Mapping
from typing import NamedTuple

import scramp
from twisted.internet import defer
from twisted.words.protocols.jabber import error, jid, xmlstream
from twisted.words.xish import domish

from invitesrv.credentials import fakeCredentials
from invitesrv.logs import logger
from invitesrv.store.interfaces import StoreUnavailable
from invitesrv.xmpp.c2s import NS_SESSION, Session
from invitesrv.xmpp.channelbinding import NS_SASL_CB, channelBindings
from invitesrv.xmpp.router import parseJID, preparedJID, prepareResource, prepareUsername
from invitesrv.xmpp.stream import NS_CLIENT, NS_SASL, NS_STREAMS, NS_TLS
from invitesrv.xmpp.xmlparser import speaksXMPP1

log = logger()

NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_LIMITS = "urn:xmpp:stream-limits:0"


class SASLFailure(Exception):
    """Ends a SASL exchange with C{<failure><condition/></failure>}."""

    def __init__(self, condition: str, text: str | None = None):
        Exception.__init__(self, condition)
        self.condition = condition
        self.text = text


def decodeSASL(element) -> bytes | None:
    """The base64 payload of a SASL element; None when absent, b'' for '='."""
    text = str(element).strip()
    if not text:
        return None
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SASLFailure("incorrect-encoding") from None


class Success(NamedTuple):
    """The end of a successful exchange: who logged in, and the server's last data."""

    username: str
    data: bytes | None


def scramUsername(clientFirst: str) -> tuple[str, str]:
    """
    The GS2 channel-binding flag (C{n}, C{y} or C{p=TYPE}) and the username
    of a SCRAM client-first message (RFC 5802 section 5.1).
    """
    try:
        gs2, authzid, bare = clientFirst.split(",", 2)
    except ValueError:
        raise SASLFailure("malformed-request") from None
    if gs2 not in ("n", "y") and not gs2.startswith("p="):
        raise SASLFailure("malformed-request")
    for attribute in bare.split(","):
        if attribute.startswith("n="):
            return gs2, attribute[2:].replace("=2C", ",").replace("=3D", "=")
    raise SASLFailure("malformed-request")


def downgradeProtection(mechanism: str, offered, bindings) -> str:
    """
    XEP-0474 (SSDP): the C{d} attribute of server-first, a hash of the
    mechanisms and channel-binding types offered, so that a client sees
    whether a man in the middle took some out of the offer.
    """
    text = ",".join(sorted(offered))
    if bindings:
        text += "|" + ",".join(sorted(bindings))
    name = scramp.ScramMechanism(mechanism.removesuffix("-PLUS")).hf().name
    return "d=" + base64.b64encode(hashlib.new(name, text.encode()).digest()).decode("ascii")


class ScramExchange:
    """
    One SCRAM login: server-first from stored keys, then the proof check.
    A C{-PLUS} mechanism checks the channel binding the client names; a
    client that says C{y} (it would bind, but thinks the server cannot)
    while this stream offers C{-PLUS} mechanisms met a downgrade, and fails.
    """

    def __init__(self, authenticator, mechanism: str):
        self.authenticator = authenticator
        self.mechanism = mechanism
        self.username: str | None = None
        self.server = None

    def step(self, data: bytes | None):
        """The client-first (None: send an empty challenge first), then the client-final."""
        if data is None:
            return b""
        if self.server is None:
            return self.start(data)
        return self.finish(data)

    def channelBinding(self, gs2: str) -> tuple[str, bytes] | None:
        """What scramp checks the client's binding against, after the downgrade checks."""
        bindings = self.authenticator.channelBindings()
        if self.mechanism.endswith("-PLUS"):
            name = gs2[2:] if gs2.startswith("p=") else None
            if name not in bindings:
                raise SASLFailure("malformed-request", "Unsupported channel-binding type")
            return name, bindings[name]
        if gs2.startswith("p="):
            raise SASLFailure("malformed-request", "Channel binding needs a -PLUS mechanism")
        if gs2 == "y" and bindings:
            raise SASLFailure("not-authorized", "Channel binding downgrade detected")
        return None

    @defer.inlineCallbacks
    def start(self, clientFirst: bytes):
        auth = self.authenticator
        host = auth.host
        try:
            text = clientFirst.decode("utf-8")
        except UnicodeError:
            raise SASLFailure("malformed-request") from None
        gs2, name = scramUsername(text)
        binding = self.channelBinding(gs2)
        try:
            self.username = prepareUsername(name) or None
        except UnicodeError:
            self.username = None
        auth.attempted = self.username or ""
        stored = self.mechanism.removesuffix("-PLUS")
        credentials = None
        if self.username:
            credentials = yield host.store.getCredentials(host.name, self.username, stored)
        if credentials is None:
            self.username = None
            credentials = fakeCredentials(auth.server.secret, name, stored,
                                          host.config.scram_iterations)
        keys = (credentials.salt, credentials.storedKey, credentials.serverKey, credentials.iterations)
        self.server = scramp.ScramMechanism(self.mechanism).make_server(
            lambda user: keys, channel_binding=binding)
        try:
            self.server.set_client_first(text)
        except scramp.ScramException:
            raise SASLFailure("malformed-request") from None
        serverFirst = self.server.get_server_first()
        # scramp keeps the server-first it made for the proof: the extension goes on both.
        self.server.server_first = serverFirst = ",".join((
            serverFirst, downgradeProtection(self.mechanism, auth.mechanisms(),
                                             auth.channelBindings())))
        return serverFirst.encode("utf-8")

    def finish(self, clientFinal: bytes) -> Success:
        try:
            self.server.set_client_final(clientFinal.decode("utf-8"))
        except (scramp.ScramException, UnicodeError):
            raise SASLFailure("not-authorized") from None
        if self.username is None:
            raise SASLFailure("not-authorized")
        return Success(self.username, self.server.get_server_final().encode("utf-8"))


class PlainExchange:
    """SASL PLAIN (once encrypted): the password checked against the stored SCRAM keys."""

    def __init__(self, authenticator, mechanism: str = "PLAIN"):
        self.authenticator = authenticator

    @defer.inlineCallbacks
    def step(self, data: bytes | None):
        if data is None:
            raise SASLFailure("malformed-request", "PLAIN needs an initial response")
        parts = data.split(b"\0", 2)  # a NUL inside the password makes it wrong, not malformed
        if len(parts) != 3:
            raise SASLFailure("malformed-request")
        try:
            authzid, authcid, password = (part.decode("utf-8") for part in parts)
            username = prepareUsername(authcid)
        except UnicodeError:
            raise SASLFailure("not-authorized") from None
        auth = self.authenticator
        auth.attempted = username
        host = auth.host
        valid = yield host.registrar.verifyPassword(username, password, auth.server.secret)
        if not valid:
            raise SASLFailure("not-authorized")
        if authzid and authzid != f"{username}@{host.name}":
            raise SASLFailure("invalid-authzid")
        return Success(username, None)


class C2SAuthenticator(xmlstream.ListenAuthenticator):
    """
    Negotiates one client stream. Modules see it as the C{session} of the
    C{stream-features} and C{preauth-iq} hooks and of nonza handlers
    (L{invitesrv.host.VirtualHost.addNonza}): C{host}, C{address},
    C{encrypted}, C{authenticated}, C{xmlstream}, C{session} once bound,
    and C{slots} for per-connection state
    (L{invitesrv.services.slots.Slot}); a module that refuses an invite
    token reports it with L{tokenRefused}.

    The server's limiter (L{invitesrv.limits.Limiter}) admits the connection
    or refuses it with a stream error, throttles failed logins per address
    and per account, and blocks an address that keeps failing.

    The C{sasl2} and C{bind2} modules log in through the same steps:
    L{channelBindings}, L{newExchange}, L{beginSASL} / L{endSASL},
    L{saslFailed}, L{authenticatedAs} and L{bindSession}.
    """

    namespace = NS_CLIENT

    def __init__(self, server, encrypted: bool = False):
        xmlstream.ListenAuthenticator.__init__(self)
        self.server = server
        self.host = None
        self.address = ""
        self.encrypted = encrypted
        self.authenticated = False
        self.username: str | None = None
        self.session: Session | None = None
        self.slots: dict = {}  # see invitesrv.services.slots
        self._sasl = None
        self._saslBusy = False
        self._bindings: Mapping[str, bytes] | None = None
        self._failures = 0
        self._delayed = None  # an answer held back by a throttle
        self.attempted = ""  # the username of the SASL attempt under way, prepared

    # -- connection ---------------------------------------------------------

    @property
    def label(self) -> str:
        """How log lines name this stream."""
        return f"client stream from {self.address}"

    def connectionMade(self):
        self.address = self.xmlstream.address

    def connectionLost(self, reason):
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None
        session = self.session
        if session is not None and not session.closed and (
                self.xmlstream.peerClosed or not self.host.hooks.first("stream-lost", session, reason)):
            session.close()
        if self.host is not None:
            self.host.registrar.reservations.release(self, closed=True)
            self.host.hooks.run("stream-closed", self)

    def connectionDead(self, condition: str, text: str) -> None:
        """
        The connection is deemed lost (no answer to a ping): end the stream
        with C{condition}, and its session as a lost connection's is ended
        (the C{stream-lost} hook may keep it for resumption).
        """
        session = self.session
        if session is not None and not session.closed and self.host.hooks.first(
                "stream-lost", session, None):
            self.session = None
            self.xmlstream.closeWithError(condition, text)
        elif session is not None:
            session.close(condition, text)
        else:
            self.xmlstream.closeWithError(condition, text)

    def takeOver(self, session: Session) -> None:
        """
        Carry on C{session} over this stream, which is authenticated as its
        account: stream management's resumption. Its old stream, if still
        open, ends with C{<conflict/>}.
        """
        if (not self.authenticated or self.session is not None or self.username != session.user
                or session.closed):
            raise ValueError("only a live session of the stream's own account can be taken over")
        oldStream = session.stream
        if oldStream.authenticator.session is session:
            oldStream.authenticator.session = None
        oldStream.closeWithError("conflict", "Replaced by a resumed stream")
        session.attach(self.xmlstream)
        self.session = session
        self.xmlstream.established()

    # -- stream header ------------------------------------------------------

    def streamStarted(self, root):
        xs = self.xmlstream
        xs.namespace = NS_CLIENT
        xs.sid = secrets.token_hex(8)
        if self.host is not None:
            xs.thisEntity = self.host.jid
        if root.uri != NS_STREAMS or root.name != "stream" or root.defaultUri != NS_CLIENT:
            xs.closeWithError("invalid-namespace")
            return
        to = root.getAttribute("to")
        host = None
        if to is not None:
            try:
                host = self.server.router.hosts.get(parseJID(to).host) if "@" not in to else None
            except (jid.InvalidFormat, UnicodeError):
                host = None
        if host is None or (self.host is not None and host is not self.host):
            xs.closeWithError("host-unknown")
            return
        self.host = host
        xs.thisEntity = host.jid
        if not speaksXMPP1(root):
            xs.closeWithError("unsupported-version")
            return
        xs.sendHeader()
        xs.send(self.host.streamFeatures(self.featuresStage(), self.serialisedFeatures))

    def featuresStage(self) -> tuple:
        """What the features offered to this stream depend on (L{VirtualHost.streamFeatures})."""
        return (self.authenticated, self.encrypted, self.server.tls is not None,
                tuple(self.channelBindings()), self.host.scramMechanisms, self.xmlstream.namespace)

    def serialisedFeatures(self) -> bytes:
        """L{features} as this stream would send them."""
        xs = self.xmlstream
        return self.features().toXml(prefixes=xs.prefixes, defaultUri=xs.namespace,
                                     prefixesInScope=list(xs.prefixes.values())).encode("utf-8")

    def features(self):
        features = domish.Element((NS_STREAMS, "features"))
        config = self.server.config
        if not self.authenticated:
            if not self.encrypted and self.server.tls is not None:
                starttls = features.addElement((NS_TLS, "starttls"))
                if config.require_encryption:
                    starttls.addElement("required")
            if self.encrypted or not config.require_encryption:
                mechanisms = features.addElement((NS_SASL, "mechanisms"))
                for name in self.mechanisms():
                    mechanisms.addElement("mechanism", content=name)
                bindings = self.channelBindings()
                if bindings:  # XEP-0440
                    offer = features.addElement((NS_SASL_CB, "sasl-channel-binding"))
                    for name in bindings:
                        offer.addElement("channel-binding")["type"] = name
        else:
            features.addElement((NS_BIND, "bind"))
            features.addElement((NS_SESSION, "session")).addElement("optional")
        # XEP-0478: the largest stanza this stream takes (the watchdog adds <idle-seconds/>).
        size = config.limits.stanza_size if self.authenticated else config.limits.stanza_size_preauth
        features.addElement((NS_LIMITS, "limits")).addElement("max-bytes", content=str(size))
        self.host.hooks.run("stream-features", self, features)
        return features

    def mechanisms(self) -> tuple[str, ...]:
        """The SASL mechanisms this stream offers now, strongest first."""
        scram = self.host.scramMechanisms
        if not self.encrypted:
            return scram
        plus = tuple(f"{name}-PLUS" for name in scram) if self.channelBindings() else ()
        return plus + scram + ("PLAIN",)

    def channelBindings(self) -> Mapping[str, bytes]:
        """
        The channel-binding data of this stream's TLS session, by type (empty
        before TLS); each type's data is computed when first looked up.
        """
        if self._bindings is None:
            self._bindings = channelBindings(self.xmlstream.transport) if self.encrypted else {}
        return self._bindings

    def newExchange(self, mechanism: str):
        """
        An exchange of C{mechanism}, one this stream offers: RFC 6120's SASL
        and the C{sasl2} module start theirs here.
        """
        if self.server.config.require_encryption and not self.encrypted:
            raise SASLFailure("encryption-required")
        if not mechanism:
            raise SASLFailure("malformed-request")
        if mechanism not in self.mechanisms():
            raise SASLFailure("invalid-mechanism")
        return (PlainExchange if mechanism == "PLAIN" else ScramExchange)(self, mechanism)

    @property
    def preauthAllowed(self) -> bool:
        """May this stream register or redeem invites now (encryption rule)?"""
        return self.encrypted or not self.server.config.require_encryption

    # -- elements -----------------------------------------------------------

    def elementReceived(self, element):
        uri = element.uri
        if uri != NS_CLIENT:
            handler = self.host.nonzas.get((uri, element.name))
            if handler is not None:
                handler(self, element)
                return
        if self.session is not None:
            self.session.receive(element)
            return
        if uri == NS_STREAMS:
            self.xmlstream.close() if element.name == "error" else \
                self.xmlstream.closeWithError("unsupported-stanza-type")
        elif self.authenticated:
            self._beforeBind(element)
        elif uri == NS_TLS and element.name == "starttls":
            self._startTLS()
        elif uri == NS_SASL:
            self._sasl_(element)
        elif uri == NS_CLIENT and element.name == "iq":
            self._preauthIQ(element)
        else:
            self.xmlstream.closeWithError("not-authorized")

    def _startTLS(self):
        xs = self.xmlstream
        if self.encrypted or self.server.tls is None:
            xs.send(domish.Element((NS_TLS, "failure")))
            xs.close()
            return
        xs.send(domish.Element((NS_TLS, "proceed")))
        xs.startTLS(self.server.tls)
        self.encrypted = True
        self._bindings = None
        xs.reset()

    # -- SASL ---------------------------------------------------------------

    def _sasl_(self, element):
        name = element.name
        if not self.beginSASL(name == "auth"):
            return
        if name == "auth":
            self.attempted = ""
            d = defer.maybeDeferred(self._saslAuth, element)
        elif name == "response" and self._sasl is not None:
            d = defer.maybeDeferred(self._saslStep, decodeSASL(element) or b"")
        elif name == "abort":
            self._sasl = None
            d = defer.fail(SASLFailure("aborted"))
        else:
            d = defer.fail(SASLFailure("malformed-request"))
        d.addErrback(self.saslFailed, self._failureElement)
        d.addBoth(self.endSASL)

    def beginSASL(self, starting: bool) -> bool:
        """
        Admit a SASL or SASL2 element (C{starting}: one that starts an
        exchange): one at a time, and none from an address that keeps
        failing. False: refused, the stream is closing. Call L{endSASL} when
        the element is answered.
        """
        if self._saslBusy:
            self.xmlstream.closeWithError("policy-violation", "SASL exchange already in progress")
            return False
        if starting and self.server.limiter.authBlocked(self.address):
            self.server.metrics["auth.blocked"] += 1
            log.info('Authentication failure from {address} for user "" (blocked)',
                     address=self.address)
            self.xmlstream.closeWithError("policy-violation", "Too many failed authentication"
                                          " attempts from your address; try again later")
            return False
        self._saslBusy = True
        return True

    def endSASL(self, _=None):
        self._saslBusy = False

    def _saslAuth(self, element):
        if self._sasl is not None:
            raise SASLFailure("malformed-request", "A SASL exchange is already under way")
        self._sasl = self.newExchange(element.getAttribute("mechanism"))
        return self._saslStep(decodeSASL(element))

    def _saslStep(self, data: bytes | None):
        d = defer.maybeDeferred(self._sasl.step, data)
        d.addCallback(self._saslStepped)
        return d

    def _saslStepped(self, result):
        if not isinstance(result, Success):
            self._sendSASL("challenge", result)
            return
        self._sasl = None
        self.authenticatedAs(result.username)
        self._sendSASL("success", result.data)
        self.xmlstream.reset()

    def _sendSASL(self, name: str, data: bytes | None):
        element = domish.Element((NS_SASL, name))
        if data is not None:
            element.addContent(base64.b64encode(data).decode("ascii") if data else "=")
        self.xmlstream.send(element)

    @staticmethod
    def _failureElement(reason: SASLFailure) -> domish.Element:
        element = domish.Element((NS_SASL, "failure"))
        element.addElement(reason.condition)
        if reason.text:
            element.addElement("text", content=reason.text)
        return element

    def saslFailed(self, failure, makeElement):
        """
        Answer a failed exchange with C{makeElement(reason)} (a
        L{SASLFailure}). A wrong password or token (or unknown user: the
        same to the client) is counted by the limiter and logged in one
        fixed format for fail2ban; past the free attempts the answer waits.
        """
        self._sasl = None
        if failure.check(SASLFailure):
            reason = failure.value
        else:
            if not failure.check(StoreUnavailable):  # the store logs its faults once
                log.failure("SASL exchange with {address} failed", failure, address=self.address)
            reason = SASLFailure("temporary-auth-failure")
        delay = 0.0
        if reason.condition == "not-authorized":
            self._failures += 1
            delay = self.server.limiter.authFailed(self.address,
                                                   f"{self.attempted}@{self.host.name}")
            log.info('Authentication failure from {address} for user "{user}"{throttled}',
                     address=self.address, user=self.attempted,
                     throttled=" (throttled)" if delay else "")
        element = makeElement(reason)
        if not delay:
            self._sendFailure(element)
            return None
        d = defer.Deferred()
        self._delayed = self.server.clock.callLater(delay, d.callback, element)
        d.addCallback(self._sendFailure)
        return d

    def _sendFailure(self, element) -> None:
        self._delayed = None
        self.xmlstream.send(element)
        if self._failures >= 5:
            self.xmlstream.closeWithError("policy-violation", "Too many failed authentication attempts")

    def authenticatedAs(self, username: str) -> None:
        """The stream is now C{username}'s (the caller tells the client)."""
        self.authenticated = True
        self.username = username
        self.server.metrics["auth.succeeded"] += 1
        # The account's own failures stop counting: only its owner can log in.
        self.server.limiter.authByAccount.reset(f"{username}@{self.host.name}")

    # -- binding ------------------------------------------------------------

    def _beforeBind(self, element):
        if element.uri != NS_CLIENT or element.name != "iq" or element.getAttribute("type") != "set":
            self.xmlstream.closeWithError("not-authorized")
            return
        child = next(element.elements(), None)
        if child is not None and child.uri == NS_SESSION:
            self.xmlstream.send(xmlstream.toResponse(element, "result"))
        elif child is not None and child.uri == NS_BIND and child.name == "bind":
            self._bind(element, child)
        else:
            self.xmlstream.closeWithError("not-authorized")

    def _bind(self, iq, bind):
        requested = str(bind.resource or "").strip() if bind.resource else ""
        try:
            resource = prepareResource(requested) if requested else ""
        except UnicodeError:
            resource = None
        if resource is None or len(resource.encode("utf-8")) > 1023:
            self.xmlstream.send(error.StanzaError("bad-request", "modify").toResponse(iq))
            return
        session = self.bindSession(resource or secrets.token_hex(6))
        reply = xmlstream.toResponse(iq, "result")
        reply.addElement((NS_BIND, "bind")).addElement("jid", content=session.full)
        self.xmlstream.send(reply)
        self.host.hooks.run("session-bound", session)

    def bindSession(self, resource: str) -> Session:
        """
        Bind C{resource} (prepared) to this authenticated stream, replacing
        an older session of the same full JID. The caller answers the client,
        then runs the C{session-bound} hook (Bind2 does so inside SASL2's success).
        """
        host = self.host
        full = preparedJID(self.username, host.jid.host, resource)
        session = Session(self.xmlstream, host, full, self.address)
        old = host.router.session(full)
        if old is not None:
            old.close("conflict", "Replaced by a new connection")
        host.router.bind(session)
        self.session = session
        host.registrar.reservations.release(self)  # logged in: it will not register
        self.xmlstream.established()
        return session

    # -- IQs before authentication ------------------------------------------

    def _preauthIQ(self, iq):
        kind = iq.getAttribute("type")
        if kind not in ("get", "set"):
            return
        if self.server.limiter.tokenBlocked(self.address):
            self.server.metrics["tokens.blocked"] += 1
            log.info("Authentication failure from {address} for an invite token (blocked)",
                     address=self.address)
            self.xmlstream.closeWithError("policy-violation", "Too many invalid invite tokens"
                                          " from your address; try again later")
            return
        to = iq.getAttribute("to")
        if to is not None and to != self.host.name:
            self.xmlstream.send(error.StanzaError("service-unavailable").toResponse(iq))
            return
        d = self.host.hooks.first("preauth-iq", self, iq)
        if d is None:
            self.xmlstream.send(error.StanzaError("service-unavailable").toResponse(iq))
            return
        d.addErrback(self._preauthError, iq)
        d.addCallback(self.xmlstream.send)

    def _preauthError(self, failure, iq):
        if failure.check(error.StanzaError):  # StoreUnavailable too: wait/resource-constraint
            return failure.value.toResponse(iq)
        log.failure("Error answering an iq before authentication", failure)
        return error.StanzaError("internal-server-error").toResponse(iq)

    def tokenRefused(self) -> defer.Deferred:
        """
        An invite token presented on this stream was refused (called by the
        module that redeems tokens). Count and log it like a failed login;
        fire when the refusal may be sent, at once for the first few.
        """
        delay = self.server.limiter.tokenFailed(self.address)
        log.info("Authentication failure from {address} for an invite token{throttled}",
                 address=self.address, throttled=" (throttled)" if delay else "")
        if not delay:
            return defer.succeed(None)
        d = defer.Deferred()
        self._delayed = self.server.clock.callLater(delay, d.callback, None)
        return d
