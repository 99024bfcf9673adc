"""
Invites: what they are and how they are made, listed and revoked, with no XML.

An invite is a secret token that lets its holder create an account (an
I{account} invite, possibly bound to one username), become a contact of the
inviter (a I{contact} invite, XEP-0379, which may also allow registration:
C{ibr=y}) or set a new password for an existing account (a I{reset} invite).
The token is shown once, at creation, inside an C{xmpp:} URI and a landing
URL; only its SHA-256 is stored, under an id of its own, so a leaked database
or an id in a log line redeems nothing.

L{InviteManager} holds no state of its own beyond its host: the in-band
protocol modules, the ad-hoc commands, the web pages and C{invitesrvctl} each
build one and share the rules written here (quotas, the delay before a new
invitee may invite, which account a reset applies to).
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
from dataclasses import dataclass

from twisted.internet import defer

from invitesrv.logs import logger
from invitesrv.store.interfaces import Invite
from invitesrv.usernames import precisUsername

log = logger()

TOKEN_BYTES = 18  # 24 characters of base64url: what Prosody's util.id.medium() gives
MAX_TOKEN_LENGTH = 64  # longer presented tokens are refused before any lookup
STATUSES = ("pending", "used", "expired", "revoked")
WELCOME_MAX_LENGTH = 1000  # characters of an inviter's welcome text
MAX_EXPIRY = 365 * 86400  # the longest an invite may be valid, in seconds
MAX_USES = 1_000_000  # the most uses one invite may allow, short of unlimited
ROLE = re.compile(r"[\w:.-]{1,64}")  # a role's or group's name


class InviteError(Exception):
    """An invite that cannot be created or changed; the message says why, for users."""


def newToken() -> str:
    """A fresh token: 18 random bytes, base64url without padding (24 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hashToken(token: str | None) -> bytes | None:
    """
    The stored form of a token, or None for what cannot be one (empty, or over
    L{MAX_TOKEN_LENGTH} characters), so that junk never reaches the store.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    return hashlib.sha256(token.encode("utf-8")).digest()


def welcomeText(text: str | None) -> str:
    """
    The welcome text an inviter wrote, trimmed; refuse one too long or with
    control characters other than line breaks (it becomes a message body
    and a paragraph of the landing page).
    """
    text = (text or "").strip().replace("\r\n", "\n")
    if len(text) > WELCOME_MAX_LENGTH:
        raise InviteError(f"The welcome text is longer than {WELCOME_MAX_LENGTH} characters")
    if any(ord(c) < 32 and c not in "\n\t" or 0x7F <= ord(c) < 0xA0 for c in text):
        raise InviteError("The welcome text contains control characters")
    return text


def creatorOf(invite: Invite) -> str | None:
    """
    The bare JID of the local user who made the invite (its inviter, or the
    user who asked for it), or None when an admin tool or the API did.
    """
    if invite.inviter:
        return f"{invite.inviter}@{invite.host}"
    if invite.source.endswith("@" + invite.host) and "/" not in invite.source:
        return invite.source
    return None


def isoTime(seconds: float) -> str:
    """An XEP-0082 UTC DateTime, as the ad-hoc result and the CLI show expiry."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CreatedInvite:
    """A new invite and the only moment its token and links are known."""

    invite: Invite
    token: str
    uri: str
    landing: str | None


class InviteManager:
    """The invites of one virtual host."""

    def __init__(self, host):
        self.host = host

    # -- links ----------------------------------------------------------------

    def uri(self, invite: Invite, token: str) -> str:
        """
        The C{xmpp:} URI of an invite, exactly as Prosody builds it (clients
        such as Conversations parse nothing else): account and reset invites
        use C{?register}, contact invites C{?roster} plus C{;ibr=y} when they
        also allow registration.
        """
        host = self.host.name
        if invite.kind == "contact":
            uri = f"xmpp:{invite.inviter}@{host}?roster;preauth={token}"
            return uri + ";ibr=y" if invite.allowRegistration else uri
        address = f"{invite.username}@{host}" if invite.username else host
        return f"xmpp:{address}?register;preauth={token}"

    def landingURL(self, invite: Invite, token: str) -> str | None:
        """
        The web page to share: the C{invites_page} template (C{{token}} and
        C{{host}} are replaced), else C{public_url}C{/invite/TOKEN}, else
        none. Contact-only invites have none: the web cannot redeem them.
        """
        if not invite.allowRegistration:
            return None
        template = self.host.options.invites_page
        if template:
            return template.replace("{token}", token).replace("{host}", self.host.name)
        base = self.host.config.public_url
        if base:
            return f"{base.rstrip('/')}/invite/{token}"
        return None

    # -- creation -------------------------------------------------------------

    @defer.inlineCallbacks
    def createAccount(self, username: str | None = None, *, creator: str | None = None,
                      usesAllowed: int | None = 1, ttl: float | None = None,
                      roles: tuple[str, ...] = (), groups: tuple[str, ...] = (), note: str = "",
                      source: str = "", welcome: str = ""):
        """
        An invite to create one account (or C{usesAllowed} accounts; None
        means any number until it expires). With C{username} it creates only
        that account, and the name is held for it: nobody else may take it
        while the invite is pending. C{creator} is the bare JID of the local
        user asking, to whom quotas apply (admins and the command line have
        none). C{welcome} is the creator's text for whoever accepts it, sent
        to the new account from the creator. Fire with a L{CreatedInvite};
        fail with L{InviteError}.
        """
        if username is not None:
            if usesAllowed != 1:
                raise InviteError("An invite for one username can be used only once")
            yield self._checkUsernameFree(username)
        return (yield self._create("account", creator, username=username, usesAllowed=usesAllowed,
                                   ttl=ttl, roles=roles, groups=groups, note=note, source=source,
                                   welcome=welcome))

    @defer.inlineCallbacks
    def createContact(self, inviter: str, allowRegistration: bool = False, *,
                      creator: str | None = None, usesAllowed: int | None = 1,
                      ttl: float | None = None, roles: tuple[str, ...] = (), note: str = "",
                      source: str = "", welcome: str = "", room: str = ""):
        """
        A contact invite (XEP-0379) from local user C{inviter}: whoever
        redeems it becomes a mutual contact without a prompt; with
        C{allowRegistration} the token also creates an account (C{ibr=y})
        with C{roles}. With C{room} (a persistent room of the host's group
        chats that the inviter owns) the redeemer is also invited into it.
        """
        if not (yield self.host.store.accountExists(self.host.name, inviter)):
            raise InviteError(f"There is no account {inviter}@{self.host.name}")
        if room:
            from invitesrv.components.muc.service import ownedRoom
            room = yield ownedRoom(self.host, inviter, room)
            if room is None:
                raise InviteError(f"{inviter}@{self.host.name} owns no such persistent room")
        return (yield self._create("contact", creator, inviter=inviter,
                                   allowRegistration=allowRegistration, usesAllowed=usesAllowed,
                                   ttl=ttl, roles=roles if allowRegistration else (), note=note,
                                   source=source, welcome=welcome, room=room))

    @defer.inlineCallbacks
    def createReset(self, username: str, *, ttl: float | None = None, note: str = "",
                    source: str = ""):
        """A single-use invite to set a new password for an existing account."""
        if not (yield self.host.store.accountExists(self.host.name, username)):
            raise InviteError(f"There is no account {username}@{self.host.name} to reset")
        if ttl is None:
            ttl = self.host.options.reset_invite_expiry
        return (yield self._create("reset", None, username=username, ttl=ttl, note=note,
                                   source=source))

    @defer.inlineCallbacks
    def _checkUsernameFree(self, username: str):
        host = self.host
        try:
            valid = precisUsername(username) == username
        except ValueError:
            valid = False
        if not valid:
            raise InviteError(f"{username!r} cannot be the username of a new account")
        if f"{username}@{host.name}" in host.options.admins:
            raise InviteError(f"{username}@{host.name} is an admin named in the configuration;"
                              " only invitesrvctl adduser can create it")
        if (yield host.store.accountExists(host.name, username)):
            raise InviteError(f"The account {username}@{host.name} already exists")
        now = host.now()
        for invite in (yield host.store.listInvites(host.name)):
            if (invite.kind == "account" and invite.username == username
                    and invite.status(now) == "pending"):
                raise InviteError(f"A pending invite already holds the username {username}")

    @defer.inlineCallbacks
    def _create(self, kind: str, creator: str | None, *, username: str | None = None,
                inviter: str | None = None, allowRegistration: bool = True,
                usesAllowed: int | None = 1, ttl: float | None = None,
                roles: tuple[str, ...] = (), groups: tuple[str, ...] = (), note: str = "",
                source: str = "", welcome: str = "", room: str = ""):
        host = self.host
        welcome = welcomeText(welcome)
        if usesAllowed is not None and usesAllowed < 1:
            raise InviteError("An invite must allow at least one use")
        if ttl is None:
            ttl = host.options.invite_expiry
        if ttl <= 0:
            raise InviteError("An invite must be valid for some time")
        if creator is not None:
            yield self.checkMayInvite(creator, allowRegistration)
        now = host.now()
        invite = Invite(id=secrets.token_hex(6), host=host.name, kind=kind, created=now,
                        expires=now + ttl, username=username, inviter=inviter,
                        allowRegistration=allowRegistration, usesAllowed=usesAllowed,
                        roles=tuple(roles), groups=tuple(groups), note=note,
                        source=source or creator or "", welcome=welcome, room=room)
        token = newToken()
        yield host.store.createInvite(invite, hashToken(token))
        links = {"uri": self.uri(invite, token), "landing": self.landingURL(invite, token),
                 "token": token}
        yield host.hooks.fire("invite-created", invite, links)
        log.info("Invite {id} created on {host}: {kind}{who}, {uses} use(s), by {source}",
                 id=invite.id, host=host.name, kind=kind,
                 who=f" for {username}" if username else f" from {inviter}" if inviter else "",
                 uses=usesAllowed or "unlimited", source=invite.source or "?")
        return CreatedInvite(invite, token, links["uri"], links["landing"])

    @defer.inlineCallbacks
    def checkMayInvite(self, creator: str, allowRegistration: bool = True):
        """
        Fail with L{InviteError} when local user C{creator} (a bare JID) may
        not create one more invite now: too many pending ones
        (C{max_pending_invites}), or, for invites that create accounts, an
        account itself created by an invite less than
        C{invitee_invite_delay} ago. Admins are exempt.
        """
        host = self.host
        if (yield host.isAdmin(creator)):
            return
        options = host.options
        now = host.now()
        pending = [invite for invite in (yield host.store.listInvites(host.name))
                   if self.isOwner(invite, creator) and invite.status(now) == "pending"]
        if len(pending) >= options.max_pending_invites:
            raise InviteError(f"You already have {len(pending)} pending invites; "
                              "revoke one or wait until they are used or expire")
        if allowRegistration and options.invitee_invite_delay > 0:
            username = creator.split("@", 1)[0]
            invitedAt = yield host.store.accountInvitedAt(host.name, username)
            if invitedAt is not None and now < invitedAt + options.invitee_invite_delay:
                raise InviteError("Your account is too new to invite others; try again after "
                                  + isoTime(invitedAt + options.invitee_invite_delay))

    # -- what exists ----------------------------------------------------------

    def isOwner(self, invite: Invite, who: str) -> bool:
        """Did local user C{who} (a bare JID) create this invite?"""
        if invite.host != self.host.name:
            return False
        return invite.source == who or (invite.inviter is not None
                                        and f"{invite.inviter}@{invite.host}" == who)

    @defer.inlineCallbacks
    def list(self, status: str | None = None, owner: str | None = None):
        """The host's invites, newest first, optionally by status and creator (a bare JID)."""
        now = self.host.now()
        invites = yield self.host.store.listInvites(self.host.name)
        return [invite for invite in invites
                if (status is None or invite.status(now) == status)
                and (owner is None or self.isOwner(invite, owner))]

    @defer.inlineCallbacks
    def get(self, inviteId: str):
        """Fire with the invite of this host with that id (and its uses), or None."""
        invite = yield self.host.store.getInvite(inviteId)
        return invite if invite is not None and invite.host == self.host.name else None

    @defer.inlineCallbacks
    def revoke(self, inviteId: str, owner: str | None = None):
        """
        Revoke a pending invite (only one of C{owner}'s, when given); fire
        with True if it was, False if there is no such pending invite.
        """
        invite = yield self.get(inviteId)
        if invite is None or (owner is not None and not self.isOwner(invite, owner)):
            return False
        revoked = yield self.host.store.revokeInvite(invite.id, self.host.now())
        if revoked:
            log.info("Invite {id} on {host} revoked", id=invite.id, host=self.host.name)
        return revoked

    # -- redemption -----------------------------------------------------------

    @defer.inlineCallbacks
    def reserve(self, token: str | None):
        """
        Take one use of a pending invite that allows registration, for an
        attempt under way on this host. Fire with the L{Invite}, or None for
        any token that cannot be used (unknown, used, expired, revoked, for
        another host, contact-only, or junk): the reasons look the same to
        whoever presents it.
        """
        tokenHash = hashToken(token)
        if tokenHash is None:
            return None
        store = self.host.store
        invite = yield store.reserveInvite(tokenHash, self.host.name, self.host.now())
        if invite is not None and not invite.allowRegistration:
            yield store.releaseInvite(invite.id)
            return None
        return invite

    def release(self, invite: Invite):
        """Give back a reserved use: the attempt it was taken for is over."""
        return self.host.store.releaseInvite(invite.id)

    @defer.inlineCallbacks
    def findContactInvite(self, token: str | None, username: str):
        """The pending contact invite of local user C{username} with this token, or None."""
        tokenHash = hashToken(token)
        if tokenHash is None:
            return None
        invite = yield self.host.store.findInvite(tokenHash)
        if (invite is None or invite.kind != "contact" or invite.host != self.host.name
                or invite.inviter != username or invite.status(self.host.now()) != "pending"):
            return None
        return invite

    def sweep(self):
        """Delete the invites that can no longer be used (their audit stays)."""
        return self.host.store.sweepInvites(self.host.now())

    @defer.inlineCallbacks
    def remind(self, before: float):
        """
        Tell each local user whose invite expires within C{before} seconds,
        and has not been used at all, once; fire with the invites reminded of.
        Only invites that have lived at least that long count, so that a
        short-lived invite is not announced as expiring when it is made.
        """
        host = self.host
        now = host.now()
        reminded = []
        for invite in (yield host.store.listInvites(host.name)):
            recipient = creatorOf(invite)
            if (recipient is None or invite.reminded is not None or invite.uses or invite.reserved
                    or invite.status(now) != "pending" or invite.expires - now > before
                    or now - invite.created < before):
                continue
            yield host.store.updateInvite(invite.id, reminded=now)
            what = "contact invite" if invite.kind == "contact" else "invite"
            note = f" ({invite.note})" if invite.note else ""
            host.sendChat(recipient, f"Your {what} {invite.id}{note} expires at "
                          f"{isoTime(invite.expires)} and nobody has used it yet. If the person "
                          "you invited still wants to join, send them a new invite.")
            reminded.append(invite)
        return reminded
