"""
XEP-0388 Extensible SASL Profile (SASL2): authentication in one element,
with everything a client wants done at login carried inline, so that a
reconnect takes one round trip (with a FAST token) instead of several.

Before authentication the stream offers C{<authentication
xmlns='urn:xmpp:sasl:2'>} with the mechanisms RFC 6120's SASL offers (the
same exchanges, failure counting and throttling: L{C2SAuthenticator}) and
C{<inline/>}, which other modules fill through the C{sasl2-features} hook.
On success, the C{sasl2-inline} hook lets them act on the request before
C{<success/>} goes (the C{bind2} module binds a resource, C{fast} issues a
token, stream management will resume a session); the stream is not
restarted.

A client names itself with C{<user-agent id='...'>}: each such device is
recorded for the account (C{[modules.sasl2] max_devices}, the least
recently used forgotten first), and the "My devices" ad-hoc command lists
them and logs one out (its FAST tokens revoked, its sessions ended).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from twisted.internet import defer
from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish
from wokkel import data_form

from invitesrv.logs import logger
from invitesrv.modules.adhoc import CommandProvider, CommandResult, FormCommand
from invitesrv.services.batches import BatchWriter
from invitesrv.services.slots import Slot
from invitesrv.store.interfaces import Device
from invitesrv.xmpp.auth import SASLFailure, Success, decodeSASL
from invitesrv.xmpp.stream import NS_SASL

log = logger()

# A login's device and time wait this long (seconds) for other logins' to be
# recorded with them: under load one transaction a second, not one a login.
DEVICE_RECORD_DELAY = 1.0

NS_SASL2 = "urn:xmpp:sasl:2"
NODE_DEVICES = "urn:invitesrv:devices"
MAX_AGENT_ID = 128  # a UUID is 36 characters
MAX_AGENT_TEXT = 100  # software and device names are shown, not parsed: longer ones are cut


@dataclass(frozen=True)
class UserAgent:
    """What a SASL2 client says it is (C{<user-agent/>}): the device's stable id, and names."""

    id: str
    software: str = ""
    name: str = ""


@dataclass(frozen=True)
class SASL2Options:
    """C{[modules.sasl2]}: the devices remembered per account, least recently used forgotten first."""

    max_devices: int = 32


@dataclass
class Pending:
    """A SASL2 exchange under way on a stream: the exchange and the C{<authenticate/>} request."""

    exchange: object
    request: domish.Element


AGENT = Slot("sasl2.agent", UserAgent)  # on the authenticator, and on sessions bound after SASL2
PENDING = Slot("sasl2.pending", Pending)


def userAgent(request: domish.Element) -> UserAgent | None:
    """The C{<user-agent/>} of C{<authenticate/>}, checked (L{SASLFailure} when malformed)."""
    element = next(request.elements(NS_SASL2, "user-agent"), None)
    if element is None:
        return None
    agentId = (element.getAttribute("id") or "").strip()
    if not agentId or len(agentId) > MAX_AGENT_ID:
        raise SASLFailure("malformed-request", f"A user-agent id has 1 to {MAX_AGENT_ID} characters")
    texts = {child.name: str(child).strip()[:MAX_AGENT_TEXT] for child in element.elements(NS_SASL2)}
    return UserAgent(agentId, texts.get("software", ""), texts.get("device", ""))


def failureElement(reason: SASLFailure) -> domish.Element:
    """XEP-0388's C{<failure/>}: the RFC 6120 condition, and a text."""
    element = domish.Element((NS_SASL2, "failure"))
    element.addElement((NS_SASL, reason.condition))
    if reason.text:
        element.addElement("text", content=reason.text)
    return element


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii") if data else "="


class SASL2Module(CommandProvider):
    """Offers and runs SASL2, and the devices command."""

    name = "sasl2"
    Options = SASL2Options
    features = (NS_SASL2,)
    hooks = (("stream-features", "onFeatures"), ("session-bound", "onSessionBound"),
             ("adhoc-commands", "offeredCommands"), ("host-stopping", "onHostStopping"))
    nonzas = {(NS_SASL2, "authenticate"): "onAuthenticate", (NS_SASL2, "response"): "onResponse",
              (NS_SASL2, "abort"): "onAbort"}

    def connectionInitialized(self) -> None:
        CommandProvider.connectionInitialized(self)
        host = self.host
        self.devices = BatchWriter(
            lambda batch: host.store.recordDevices(host.name, batch, self.options.max_devices),
            f"record the devices that logged in to {host.name}", host.clock, DEVICE_RECORD_DELAY)

    def onHostStopping(self, host) -> defer.Deferred:
        """Hook C{host-stopping}: the store closes once the devices recorded so far are written."""
        return self.devices.written()

    def adhocCommands(self):
        return (DevicesCommand(self),)

    def onFeatures(self, stream, features) -> None:
        if stream.authenticated or not stream.preauthAllowed:
            return
        offer = features.addElement((NS_SASL2, "authentication"))
        for mechanism in stream.mechanisms():
            offer.addElement("mechanism", content=mechanism)
        inline = offer.addElement("inline")
        self.host.hooks.run("sasl2-features", stream, inline)

    def onSessionBound(self, session) -> None:
        """A session bound with RFC 6120's bind after SASL2 belongs to the stream's device too."""
        agent = AGENT.get(session.stream.authenticator)
        if agent is not None and AGENT.get(session) is None:
            AGENT.set(session, agent)

    # -- the exchange -------------------------------------------------------

    def onAuthenticate(self, stream, element) -> None:
        if stream.authenticated:
            stream.xmlstream.closeWithError("policy-violation", "Already authenticated")
            return
        self._run(stream, True, self._authenticate, stream, element)

    def onResponse(self, stream, element) -> None:
        self._run(stream, False, self._respond, stream, element)

    def onAbort(self, stream, element) -> None:
        def abort():
            PENDING.pop(stream)
            raise SASLFailure("aborted")
        self._run(stream, False, abort)

    def _run(self, stream, starting: bool, action, *args) -> None:
        """Run one step the way RFC 6120's SASL does: one at a time, failures counted."""
        if stream.authenticated or not stream.beginSASL(starting):
            return
        d = defer.maybeDeferred(action, *args)
        d.addErrback(self._failed, stream)
        d.addBoth(stream.endSASL)

    def _failed(self, failure, stream):
        PENDING.pop(stream)
        if stream.authenticated:  # after the exchange: inline work failed; no half-done login
            log.failure("SASL2 inline work for {address} failed", failure, address=stream.address)
            stream.xmlstream.closeWithError("internal-server-error")
            return None
        return stream.saslFailed(failure, failureElement)

    def _authenticate(self, stream, request):
        if PENDING.get(stream) is not None:
            raise SASLFailure("malformed-request", "A SASL exchange is already under way")
        if not stream.preauthAllowed:
            raise SASLFailure("encryption-required")
        stream.attempted = ""
        agent = userAgent(request)
        if agent is not None:
            AGENT.set(stream, agent)
        else:
            AGENT.pop(stream)
        mechanism = request.getAttribute("mechanism")
        exchange = (self.host.hooks.first("sasl2-mechanism", stream, mechanism, request)
                    or stream.newExchange(mechanism))
        PENDING.set(stream, Pending(exchange, request))
        initial = next(request.elements(NS_SASL2, "initial-response"), None)
        return self._step(stream, None if initial is None else decodeSASL(initial))

    def _respond(self, stream, element):
        if PENDING.get(stream) is None:
            raise SASLFailure("malformed-request", "No SASL exchange is under way")
        return self._step(stream, decodeSASL(element) or b"")

    @defer.inlineCallbacks
    def _step(self, stream, data: bytes | None):
        pending = PENDING.get(stream)
        result = yield defer.maybeDeferred(pending.exchange.step, data)
        if not isinstance(result, Success):
            challenge = domish.Element((NS_SASL2, "challenge"))
            challenge.addContent(b64(result))
            stream.xmlstream.send(challenge)
            return
        yield self._succeeded(stream, pending.request, result)

    @defer.inlineCallbacks
    def _succeeded(self, stream, request, result: Success):
        """
        Authenticate the stream, let modules act inline, say so, then record
        the device (not on the way of the answer, in a batch with other
        logins' under load; a failure there is logged).
        """
        host = self.host
        PENDING.pop(stream)
        stream.authenticatedAs(result.username)
        success = domish.Element((NS_SASL2, "success"))
        if result.data is not None:
            success.addElement("additional-data", content=b64(result.data))
        identifier = success.addElement("authorization-identifier")
        after = yield host.hooks.fire("sasl2-inline", stream, request, success)
        session = stream.session
        identifier.addContent(session.full if session is not None
                              else f"{result.username}@{host.name}")
        stream.xmlstream.send(success)
        for callback in after:
            if callable(callback):
                callback()
        agent = AGENT.get(stream)
        if agent is not None:
            self.devices.add((result.username, Device(agent.id, agent.software, agent.name,
                                                      host.now())))

    # -- devices ------------------------------------------------------------

    @defer.inlineCallbacks
    def logOut(self, username: str, deviceIds) -> defer.Deferred:
        """Forget the devices (their FAST tokens with them) and end their sessions."""
        host = self.host
        yield self.devices.written()  # a login recorded just before would bring one back
        for deviceId in deviceIds:
            yield host.store.forgetDevice(host.name, username, deviceId)
        for session in list(host.router.resourcesOf(f"{username}@{host.name}").values()):
            agent = AGENT.get(session)
            if agent is not None and agent.id in deviceIds:
                session.close("not-authorized", "This device was logged out")


class DevicesCommand(FormCommand):
    """
    "My devices": the devices the user logged in from with SASL2 (software,
    name, last login), and the ones to log out.
    """

    node = NODE_DEVICES
    name = "My devices"

    def __init__(self, module: SASL2Module):
        self.module = module

    @defer.inlineCallbacks
    def makeForm(self, requester: jid.JID, session):
        host = self.module.host
        yield self.module.devices.written()
        devices = yield host.store.getDevices(host.name, requester.user)
        form = data_form.Form("form", title="My devices", instructions=[
            "The devices that logged in to your account. Choose those to log out: their"
            " sessions end, and they must log in with the password again."])
        options = {}
        for device in devices:
            label = " — ".join(part for part in (device.name, device.software) if part) or device.id
            options[device.id] = f"{label} (last login {formatAge(host.now() - device.lastLogin)} ago)"
        form.addField(data_form.Field("list-multi", "logout", label="Log out", options=options))
        session.data["devices"] = set(options)
        return form

    @defer.inlineCallbacks
    def submit(self, requester: jid.JID, form, session):
        chosen = [deviceId for deviceId in form.fields["logout"].values
                  if deviceId in session.data["devices"]] if "logout" in form.fields else []
        yield self.module.logOut(requester.user, chosen)
        return CommandResult.completed(note=f"{len(chosen)} device(s) logged out")


def formatAge(seconds: float) -> str:
    """A short, human duration: 40 s, 12 min, 5 h, 3 days."""
    seconds = max(0, int(seconds))
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
