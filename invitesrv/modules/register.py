"""
XEP-0077 In-Band Registration, on both sides of authentication.

Before authentication (through the C{preauth-iq} hook) a client fetches the
form and submits a username and password, as legacy children or as a data
form; the registrar does the real work, with the invite that a preauth token
reserved for this stream (the registrar's
L{invitesrv.services.reservation.Reservations}). After authentication a user changes
their password or removes their account. Answers follow Prosody's error table
(C{spec/invites-prosody-0.12.md}, section 3.4) so clients see what they know,
without Prosody's holes: an invite serves one registration per stream.

Registration is offered when it can succeed: open registration
(C{allow_registration} without C{registration_invite_only}), or invite-only
registration with a module that redeems invite tokens.
"""

from __future__ import annotations

from typing import ClassVar

from twisted.internet import defer
from twisted.words.protocols.jabber import error, jid
from twisted.words.protocols.jabber.xmlstream import toResponse
from twisted.words.xish import domish
from wokkel import data_form
from wokkel.subprotocols import IQHandlerMixin

from invitesrv.logs import logger
from invitesrv.modules.base import HostModule
from invitesrv.registrar import RegistrationError, prepareUsername
from invitesrv.xmpp.router import parseJID

log = logger()

NS_REGISTER = "jabber:iq:register"
NS_FEATURE = "http://jabber.org/features/iq-register"
NS_X_DATA = "jabber:x:data"
NS_PARS = "urn:xmpp:pars:0"
REQUEST = f"/iq[@type='get' or @type='set']/query[@xmlns='{NS_REGISTER}']"

TITLE = "Creating a new account"
INSTRUCTIONS = "Choose a username and password for use with this service."
FIELDS = ("username", "password")


def registrationQuery() -> domish.Element:
    """The form of section 3.3: legacy fields, then the same as a data form."""
    query = domish.Element((NS_REGISTER, "query"))
    query.addElement("instructions", content=INSTRUCTIONS)
    for name in FIELDS:
        query.addElement(name)
    form = data_form.Form("form", title=TITLE, instructions=[INSTRUCTIONS],
                          formNamespace=NS_REGISTER, fields=[
                              data_form.Field("text-single", var="username", label="Username",
                                              required=True),
                              data_form.Field("text-private", var="password", label="Password",
                                              required=True)])
    query.addChild(form.toElement())
    return query


def submittedValues(query) -> dict[str, str]:
    """
    The username and password of a submission: from the data form when the
    query carries one (its FORM_TYPE is not checked, unknown fields are
    ignored, as Prosody does), else from the legacy children.
    """
    values = {}
    form = next((child for child in query.elements(NS_X_DATA, "x")), None)
    if form is not None:
        for field in form.elements(NS_X_DATA, "field"):
            name = field.getAttribute("var")
            if name in FIELDS and name not in values:
                value = next(field.elements(NS_X_DATA, "value"), None)
                values[name] = str(value) if value is not None else ""
    else:
        for name in FIELDS:
            child = next(query.elements(NS_REGISTER, name), None)
            if child is not None:
                values[name] = str(child)
    return values


def checkRequired(values: dict[str, str]) -> None:
    """Refuse a submission with empty fields, one line per field, as Prosody words it."""
    missing = [f"{name.capitalize()}: Required value missing" for name in FIELDS
               if not values.get(name)]
    if missing:
        raise error.StanzaError("not-acceptable", "modify", "\n".join(missing))


class RegisterModule(HostModule, IQHandlerMixin):
    """
    In-band registration, password change and account removal. The host
    advertises C{jabber:iq:register} in disco: clients such as Conversations
    offer their "change password" action only then.
    """

    name = "register"
    features = (NS_REGISTER,)
    hooks = (("stream-features", "onStreamFeatures"), ("preauth-iq", "onPreauthIQ"))
    observers = ((REQUEST, "onRequest"),)
    iqHandlers: ClassVar[dict[str, str]] = {
        f"/iq[@type='get']/query[@xmlns='{NS_REGISTER}']": "onGet",
        f"/iq[@type='set']/query[@xmlns='{NS_REGISTER}']": "onSet",
    }

    def available(self) -> bool:
        """Can a stranger register here at all (openly, or with an invite)?"""
        options = self.parent.options
        if not options.registration_invite_only:
            return options.allow_registration
        return bool(self.parent.hooks.callbacks("invite-preauth"))

    # -- before authentication ------------------------------------------------

    def onStreamFeatures(self, session, features) -> None:
        if not session.authenticated and session.preauthAllowed and self.available():
            features.addElement((NS_FEATURE, "register"))

    def onPreauthIQ(self, session, iq):
        query = next(iq.elements(), None)
        if query is None or query.uri != NS_REGISTER or query.name != "query":
            return None
        if not self.available():
            return None
        return defer.maybeDeferred(self._unauthenticated, session, iq, query)

    @defer.inlineCallbacks
    def _unauthenticated(self, session, iq, query):
        if not session.preauthAllowed:
            raise error.StanzaError("policy-violation", "modify", "Encryption is required")
        reply = toResponse(iq, "result")
        if iq.getAttribute("type") == "get":
            reply.addChild(registrationQuery())
            return reply
        first = next(query.elements(), None)
        if first is not None and first.name == "remove":
            raise error.StanzaError("registration-required", "auth")
        values = submittedValues(query)
        checkRequired(values)
        preauth = next(query.elements(NS_PARS, "preauth"), None)
        if preauth is not None:
            # Obsolete drafts (and one server library) put the token in the query itself.
            redeem = self.parent.hooks.first("invite-preauth", session, preauth.getAttribute("token"))
            if redeem is not None:
                yield redeem
        yield self._register(session, values)
        return reply

    @defer.inlineCallbacks
    def _register(self, session, values):
        """
        One registration on this stream, with the invite it holds, taken off
        the stream for the attempt: a second request sent meanwhile finds
        none, and after a success a new preauth is needed. A failed attempt
        puts the invite back for a retry (another username, say), unless the
        stream is gone, logged in or holds a newer invite: then its
        reservation is given back.
        """
        registrar = self.parent.registrar
        invite = registrar.reservations.take(session)
        try:
            yield registrar.register(values["username"], values["password"], "ibr",
                                     session.address, invite=invite)
        except Exception:
            if invite is not None:
                yield registrar.reservations.putBack(session, invite)
            raise

    # -- after authentication -------------------------------------------------

    def onRequest(self, iq) -> None:
        """Only the host itself answers, and only for its own accounts."""
        if iq.getAttribute("to") not in (None, self.parent.name):
            return
        try:
            sender = parseJID(iq["from"])
        except (KeyError, jid.InvalidFormat):
            return
        if sender.host != self.parent.name or sender.user is None:
            return
        query = next(iq.elements(NS_REGISTER, "query"))
        if iq["type"] == "set" and next(query.elements(NS_REGISTER, "remove"), None) is not None:
            iq.handled = True
            self._removeAccount(iq, sender)
            return
        self.handleRequest(iq)

    def onGet(self, iq):
        query = domish.Element((NS_REGISTER, "query"))
        query.addElement("registered")
        query.addElement("username", content=parseJID(iq["from"]).user)
        query.addElement("password")
        return query

    @defer.inlineCallbacks
    def onSet(self, iq):
        """
        A password change: the username must be the user's own. The
        account's other sessions end; this one stays.
        """
        sender = parseJID(iq["from"])
        values = submittedValues(next(iq.elements(NS_REGISTER, "query")))
        checkRequired(values)
        try:
            username = prepareUsername(values["username"])
        except RegistrationError:
            username = None
        if username != sender.user:
            raise error.StanzaError("not-allowed", "cancel", "You can only change your own password")
        changed = yield self.parent.registrar.changePassword(sender.user, values["password"],
                                                             keep=sender.full())
        if not changed:
            raise error.StanzaError("registration-required", "auth")

    def _removeAccount(self, iq, sender):
        """
        XEP-0077 section 3.2: answer first (the stream is about to end), then
        delete the account, which ends its sessions.
        """
        host = self.parent
        d = host.store.accountExists(host.name, sender.user)
        d.addCallback(self._removeExisting, iq, sender)
        d.addErrback(lambda failure: log.failure("Removing the account {user}@{host} failed",
                                                 failure, user=sender.user, host=host.name))

    @defer.inlineCallbacks
    def _removeExisting(self, exists: bool, iq, sender):
        host = self.parent
        if not exists:
            self.send(error.StanzaError("registration-required", "auth").toResponse(iq))
            return
        self.send(toResponse(iq, "result"))
        yield host.registrar.deleteAccount(sender.user)
