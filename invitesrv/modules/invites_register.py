"""
Invite tokens on the wire: XEP-0401/XEP-0445 preauth before registration, and
XEP-0379 pre-authenticated subscriptions.

Before authentication a client presents the token of an C{xmpp:} invite URI
in C{<preauth xmlns='urn:xmpp:pars:0' token='…'/>}. One use of the invite is
then reserved for the stream, atomically in the store, so twenty streams
racing on a single-use token get one reservation between them; the registrar
turns it into a use when the account is written, and the reservation is given
back when the stream ends without one. Features and answers are Prosody's
(C{spec/invites-prosody-0.12.md}, sections 3.1, 3.2, 3.6 and 3.7), minus its
holes: no preauth before TLS where TLS is required, no token in the logs,
tokens bound to their host.

After a registration with an invite, whoever made it gets a note (the roster
module pushes the mutual subscription that the registrar wrote with the
account), and every new account gets the host's C{welcome_message}. A subscription request that
carries a valid contact token of the addressed user is approved at once, and
answered with a subscription of the user's own, so both sides end at C{both}.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.words.protocols.jabber import error
from twisted.words.protocols.jabber.xmlstream import toResponse

from invitesrv.invites import InviteManager, creatorOf, hashToken
from invitesrv.logs import logger
from invitesrv.modules.base import HostModule
from invitesrv.store.interfaces import InviteUnavailable, InviteUse

log = logger()

NS_INVITE = "urn:xmpp:invite"
NS_IBR_TOKEN = "urn:xmpp:ibr-token:0"
NS_PARS = "urn:xmpp:pars:0"
NS_CLIENT = "jabber:client"
INVALID_TOKEN = "The invite token is invalid or expired"


def invalidToken() -> error.StanzaError:
    return error.StanzaError("forbidden", "cancel", INVALID_TOKEN)


class InvitesRegisterModule(HostModule):
    """
    Redeems invite tokens: preauth on unauthenticated streams, and XEP-0379.
    The reservation a token makes is the registrar's (C{reservations}); the
    C{register} and C{presence} modules are used when loaded.
    """

    name = "invites_register"
    hooks = (
        ("stream-features", "onStreamFeatures"),
        ("preauth-iq", "onPreauthIQ"),
        ("invite-preauth", "redeem"),
        ("user-registered", "onUserRegistered"),
        ("invite-used", "onInviteUsed"),
        ("subscription-request", "onSubscriptionRequest"),
    )

    def __init__(self):
        HostModule.__init__(self)
        self.manager: InviteManager | None = None

    def connectionInitialized(self):
        self.manager = InviteManager(self.parent)
        HostModule.connectionInitialized(self)

    def registrationAvailable(self) -> bool:
        """Is there an in-band registration for a token to open? (No point advertising otherwise.)"""
        register = self.parent.modules.get("register")
        return register is not None and register.available()

    # -- before authentication ------------------------------------------------

    def onStreamFeatures(self, session, features) -> None:
        """Both namespaces: Conversations and Siskin look for the first, Borogove the second."""
        if not session.authenticated and session.preauthAllowed and self.registrationAvailable():
            features.addElement((NS_INVITE, "register"))
            features.addElement((NS_IBR_TOKEN, "register"))

    def onPreauthIQ(self, session, iq):
        """The preauth IQ (get or set, as Prosody accepts both): an empty result or an error."""
        preauth = next(iq.elements(), None)
        if preauth is None or preauth.uri != NS_PARS or preauth.name != "preauth":
            return None
        d = self.redeem(session, preauth.getAttribute("token"))
        d.addCallback(lambda invite: toResponse(iq, "result"))
        return d

    @defer.inlineCallbacks
    def redeem(self, session, token: str | None):
        """
        Reserve the invite of C{token} for this stream (hook C{invite-preauth});
        fire with it, or fail with C{forbidden}. An earlier reservation of the
        stream is given back once the new one is held; a failed attempt keeps it.
        """
        reservations = self.parent.registrar.reservations
        if not session.preauthAllowed:
            raise error.StanzaError("policy-violation", "modify", "Encryption is required")
        tokenHash = hashToken(token)
        if tokenHash is None:
            raise invalidToken()
        held = reservations.held(session, tokenHash)
        if held is not None:
            return held
        invite = yield self.manager.reserve(token)
        if invite is None:
            yield session.tokenRefused()  # logs it; waits when the address keeps guessing
            raise invalidToken()
        if not (yield reservations.hold(session, invite, tokenHash)):
            raise invalidToken()  # the stream ended meanwhile
        log.info("Invite {id} reserved by a stream from {address}", id=invite.id,
                 address=session.address)
        return invite

    # -- after a registration -------------------------------------------------

    def onUserRegistered(self, registration) -> None:
        """
        Every new account gets the host's welcome message, if it has one, and
        the welcome text of the invite it used, from whoever made the invite.
        """
        host = self.parent
        newJID = f"{registration.username}@{host.name}"
        if host.options.welcome_message:
            text = (host.options.welcome_message.replace("{username}", registration.username)
                    .replace("{host}", host.name))
            host.sendChat(newJID, text)
        invite = registration.invite
        if invite is not None and invite.welcome and not registration.reset:
            host.sendChat(newJID, invite.welcome, sender=creatorOf(invite))

    def onInviteUsed(self, invite, username: str, path: str) -> None:
        """
        A chat message from the host to whoever made the invite, if a local
        user did and C{notify_inviter} is on. A contact redeeming a contact
        invite (path C{contact}) shows up as a roster change instead.
        """
        host = self.parent
        recipient = creatorOf(invite)
        if path == "contact" or not host.options.notify_inviter or recipient is None:
            return
        newJID = f"{username}@{host.name}"
        if invite.kind == "reset":
            text = f"The password of {newJID} was reset with invite {invite.id}."
        elif invite.inviter:
            text = f"{newJID} accepted your invite and is now one of your contacts."
        else:
            text = f"{newJID} registered with your invite {invite.id}."
        host.sendChat(recipient, text)

    # -- XEP-0379 -------------------------------------------------------------

    def onSubscriptionRequest(self, host, username: str, contact: str, stanza):
        """
        An inbound subscribe to C{username} from C{contact}: if it carries a
        valid contact token of C{username}'s, spend it and approve, and ask
        for the reverse subscription. Fire True when done that way; None
        (no token) or False (a token that does not apply) leaves the request
        to the normal flow.
        """
        preauth = next(stanza.elements(NS_PARS, "preauth"), None)
        if preauth is None:
            return None
        return self._preauthorisedSubscription(username, contact, preauth.getAttribute("token"))

    @defer.inlineCallbacks
    def _preauthorisedSubscription(self, username: str, contact: str, token: str | None):
        host = self.parent
        invite = yield self.manager.findContactInvite(token, username)
        if invite is None:
            log.info("Ignored an invalid contact token from {contact} to {user}", contact=contact,
                     user=username)
            return False
        item = yield host.store.getRosterItem(host.name, username, contact)
        if item is not None and item.subscription in ("from", "both"):
            return False  # already approved: the token stays unspent
        presence = host.modules.get("presence")
        if presence is None:
            return False
        try:
            yield host.store.consumeInvite(InviteUse(invite.id, "contact"), host.now(),
                                            usedBy=contact)
        except InviteUnavailable:
            return False
        log.info("Invite {id}: {contact} is now a contact of {user}", id=invite.id,
                 contact=contact, user=username)
        yield presence.approveSubscription(username, contact)
        yield presence.requestSubscription(username, contact)
        yield host.hooks.fire("invite-used", invite, contact, "contact")
        return True
