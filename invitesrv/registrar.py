"""
The one registrar: every way to create an account or reset a password (in-band
registration, the web form, the admin API, the command line) goes through
L{Registrar}, so the rules live in one place: username and password policy,
invite-only, what each kind of invite allows, and the vetoes of the
C{user-registering} hook (throttles). Errors are L{RegistrationError}s, stanza
errors that the web and command line show by their text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.words.protocols.jabber import error
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep

from invitesrv.credentials import MECHANISMS, checkPassword, fakeCredentials, makeCredentials
from invitesrv.logs import logger
from invitesrv.services.reservation import Reservations
from invitesrv.store.interfaces import (
    AccountExists,
    Invite,
    InviteUnavailable,
    InviteUse,
    NewAccount,
    RosterItem,
    StoreUnavailable,
    UsernameConfusable,
    UsernameReserved,
)
from invitesrv.usernames import precisUsername

log = logger()

INVITE_ONLY = "Registration on this server is through invitation only"
PASSWORD_CHANGED = "Password changed"
INVALID_USERNAME = "The requested username is invalid."
ADMIN_NAME = "The requested username is reserved for the administrators of this server."


class RegistrationError(error.StanzaError):
    """
    A registration refused, with the XMPP error that says why. C{text} is
    English with C{{name}} placeholders filled from C{params}; the web pages
    translate C{message} (the text before filling) and fill it themselves.
    """

    def __init__(self, condition: str, text: str | None = None, errorType: str | None = None,
                 **params):
        self.message = text
        self.params = params
        error.StanzaError.__init__(self, condition, errorType,
                                   text.format(**params) if text and params else text)

    def __str__(self) -> str:
        return self.text or self.condition


@dataclass
class Registration:
    """One attempt to create an account (or reset a password), as hooks see it."""

    host: str
    username: str
    path: str  # "ibr", "web", "api" or "cli"
    address: str = ""
    invite: Invite | None = None
    trusted: bool = False  # an admin's own action: invite-only does not apply
    roles: list[str] = field(default_factory=list)
    rosterItems: list[tuple[str, RosterItem]] = field(default_factory=list)
    reset: bool = False
    circles: list[str] = field(default_factory=list)  # joined with the account


def prepareUsername(raw: str | None) -> str:
    """
    Nodeprep the username of an existing account (case folded), as logins
    do; refuse what is not valid.
    """
    try:
        username = nodeprep.prepare(raw or "")
    except UnicodeError:
        username = ""
    return _checkLength(username)


def prepareNewUsername(raw: str | None) -> str:
    """The username of a new account, by PRECIS (L{invitesrv.usernames}); refuse what is not valid."""
    try:
        username = precisUsername(raw or "")
    except ValueError:
        username = ""
    return _checkLength(username)


def _checkLength(username: str) -> str:
    if not username or len(username.encode("utf-8")) > 1023:
        raise RegistrationError("not-acceptable", INVALID_USERNAME, "modify")
    return username


class Registrar:
    """Creates accounts and changes passwords for one virtual host."""

    def __init__(self, host):
        self.host = host
        self.reservations = Reservations(host)

    def checkPassword(self, password: str | None, username: str = "") -> None:
        options = self.host.options
        if not password:
            raise RegistrationError("not-acceptable", "Password: Required value missing", "modify")
        if len(password) < options.password_min_length:
            raise RegistrationError("not-acceptable",
                                    "Password is too short (minimum {minimum} characters)",
                                    "modify", minimum=options.password_min_length)
        if len(password) > options.password_max_length:
            raise RegistrationError("not-acceptable",
                                    "Password is too long (maximum {maximum} characters)",
                                    "modify", maximum=options.password_max_length)
        if username and password.lower() == username.lower():
            raise RegistrationError("not-acceptable", "The password must not be the username", "modify")

    def _credentials(self, password: str):
        return self.host.deferToThread(makeCredentials, password, self.host.config.scram_iterations)

    def _checkInvite(self, registration: Registration) -> None:
        invite = registration.invite
        options = self.host.options
        if invite is None:
            if not registration.trusted and (options.registration_invite_only
                                             or not options.allow_registration):
                raise RegistrationError("not-acceptable", INVITE_ONLY, "modify")
            return
        if invite.host != self.host.name or not invite.allowRegistration:
            raise RegistrationError("not-acceptable", INVITE_ONLY, "modify")
        if invite.kind == "reset":
            if registration.username != invite.username:
                raise RegistrationError("not-acceptable", "Incorrect username for password reset",
                                        "modify")
            registration.reset = True
        elif invite.kind == "account" and invite.username and registration.username != invite.username:
            raise RegistrationError("not-acceptable",
                                    "The chosen username is not valid with this invitation", "modify")
        registration.roles.extend(invite.roles)
        inviter = invite.inviter
        if inviter and not registration.reset:
            me = f"{registration.username}@{self.host.name}"
            them = f"{inviter}@{self.host.name}"
            groups = tuple(invite.groups)
            registration.rosterItems.append(
                (registration.username, RosterItem(them, subscription="both")))
            registration.rosterItems.append((inviter, RosterItem(me, subscription="both",
                                                                 groups=groups)))

    @defer.inlineCallbacks
    def register(self, username: str | None, password: str | None, path: str, address: str = "",
                 invite: Invite | None = None, trusted: bool = False):
        """
        Create an account (or, with a reset invite, set its new password).
        Fire with the L{Registration}; fail with L{RegistrationError}.
        An C{invite} must already be reserved by the caller, who releases it
        if this fails; on success its use is recorded with the account.
        """
        if invite is not None and invite.kind == "reset":
            name = prepareUsername(username)  # an existing account, named as it logs in
        else:
            name = prepareNewUsername(username)
            if f"{name}@{self.host.name}" in self.host.options.admins and path != "cli":
                # Named in the config: whoever registered it would be admin.
                raise RegistrationError("conflict", ADMIN_NAME, "cancel")
        registration = Registration(self.host.name, name, path, address, invite, trusted)
        self._checkInvite(registration)
        self.checkPassword(password, name)
        yield self.host.hooks.fire("user-registering", registration)
        credentials = yield self._credentials(password)
        use = InviteUse(invite.id, path, address) if invite else None
        now = self.host.now()
        try:
            if registration.reset:
                changed = yield self.host.store.setCredentials(self.host.name, name, credentials,
                                                               use, now)
                if not changed:
                    raise RegistrationError("item-not-found", "That account no longer exists",
                                            "cancel")
            else:
                yield self.host.store.createAccount(NewAccount(
                    self.host.name, name, credentials, tuple(registration.roles), use,
                    tuple(registration.rosterItems), now, circles=tuple(registration.circles)))
        except AccountExists:
            raise RegistrationError("conflict", "The requested username already exists.",
                                    "cancel") from None
        except UsernameConfusable:
            raise RegistrationError("conflict", "The requested username is too similar to an"
                                    " existing one.", "cancel") from None
        except UsernameReserved:
            raise RegistrationError("conflict", "The requested username is reserved by an invitation.",
                                    "cancel") from None
        except InviteUnavailable:
            raise RegistrationError("not-acceptable", INVITE_ONLY, "modify") from None
        except StoreUnavailable:  # the store logs the episode, once
            raise RegistrationError("resource-constraint", "The server cannot store this now; "
                                    "try again later", "wait") from None
        log.info("Account {user}@{host} {what} via {path}{invite}", user=name, host=self.host.name,
                 what="password reset" if registration.reset else "registered", path=path,
                 invite=f" with invite {invite.id}" if invite else "")
        if registration.reset:
            self.host.endSessions(name, PASSWORD_CHANGED)
            yield self._runAfter("password-changed", self.host.name, name)
        else:
            yield self._runAfter("user-registered", registration)
        if invite is not None:
            yield self._runAfter("invite-used", invite, name, path)
        return registration

    @defer.inlineCallbacks
    def _runAfter(self, hook: str, *args):
        """Run an after-the-fact hook; its failures are logged, not reported to the user."""
        try:
            yield self.host.hooks.fire(hook, *args)
        except Exception:
            log.failure("Hook {hook} failed", hook=hook)

    @defer.inlineCallbacks
    def changePassword(self, username: str, password: str | None, keep: str | None = None):
        """
        Set a new password for an existing account; fire with True if it
        exists. The account's sessions end, but for C{keep} (the full JID
        of the session that changed it): whoever knew the old password is
        out.
        """
        self.checkPassword(password, username)
        credentials = yield self._credentials(password)
        changed = yield self.host.store.setCredentials(self.host.name, username, credentials)
        if changed:
            log.info("Password of {user}@{host} changed", user=username, host=self.host.name)
            self.host.endSessions(username, PASSWORD_CHANGED, keep)
            yield self._runAfter("password-changed", self.host.name, username)
        return changed

    @defer.inlineCallbacks
    def verifyPassword(self, username: str | None, password: str, secret: bytes):
        """
        Check a plaintext password (SASL PLAIN); fire with a bool. An unknown
        C{username} (or None) costs the same PBKDF2 against fake keys derived
        from C{secret}. An account that has SCRAM-SHA-1 keys only (imported)
        gets the keys of every mechanism at its first such login: the
        password is known then, and SCRAM-SHA-256 can be offered again.
        """
        host = self.host
        credentials = legacy = None
        if username:
            credentials = yield host.store.getCredentials(host.name, username, MECHANISMS[0])
            if credentials is None:
                credentials = legacy = yield host.store.getCredentials(host.name, username,
                                                                       MECHANISMS[1])
        known = credentials is not None
        if not known:
            credentials = fakeCredentials(secret, username or "", MECHANISMS[0],
                                          host.config.scram_iterations)
        valid = (yield self.host.deferToThread(checkPassword, password, credentials)) and known
        if valid and legacy is not None:
            upgraded = yield self._credentials(password)
            yield host.store.setCredentials(host.name, username, upgraded)
            log.info("Account {user}@{host} now has SCRAM-SHA-256 keys too (PLAIN login)",
                     user=username, host=host.name)
            yield host.refreshMechanisms()
        return valid

    @defer.inlineCallbacks
    def deleteAccount(self, username: str):
        """
        Delete an account and all it owns, with the invites it made or that
        name it, and end its sessions; fire with True if it existed.
        """
        if not (yield self.host.store.accountExists(self.host.name, username)):
            return False
        yield self._runAfter("user-deleting", self.host.name, username)
        deleted = yield self.host.store.deleteAccount(self.host.name, username, self.host.now())
        if deleted:
            log.info("Account {user}@{host} deleted", user=username, host=self.host.name)
            self.host.endSessions(username, "Account deleted")
            yield self._runAfter("user-deleted", self.host.name, username)
        return deleted
