"""
Invites as XEP-0050 ad-hoc commands, the way clients create them.

The two commands clients know (Conversations' "invite" button runs the first
and reads the result by field name, waiting about two seconds) keep
Prosody's nodes, names and single step (C{spec/invites-prosody-0.12.md},
section 3.8), answering with the form XEP-0401 now specifies: C{type='result'},
FORM_TYPE C{urn:xmpp:invite#invitation}, then C{landing-url}, C{uri} and
C{expire}. Admins also get Prosody 13's password-reset command, and every
inviter can list and revoke their own pending invites and see who joined
through them.
"""

from __future__ import annotations

from twisted.internet import defer
from wokkel import data_form

from invitesrv.invites import InviteError, InviteManager, isoTime
from invitesrv.modules.adhoc import (
    AdHocCommand,
    CommandError,
    CommandProvider,
    CommandResult,
    FormCommand,
)

NS_INVITATION = "urn:xmpp:invite#invitation"
NODE_CONTACT = "urn:xmpp:invite#invite"
NODE_ACCOUNT = "urn:xmpp:invite#create-account"
NODE_RESET = "xmpp:prosody.im/mod_invites_adhoc#password-reset"
NODE_LIST = "urn:x-invitesrv:invites#list"
NODE_REVOKE = "urn:x-invitesrv:invites#revoke"
NODE_JOINED = "urn:x-invitesrv:invites#joined"


def isLocalUser(requester, host) -> bool:
    return requester.user is not None and requester.host == host.name


def mayInviteNewUsers(requester, host):
    """Fire with whether this requester may hand out invites that create accounts."""
    if isLocalUser(requester, host) and host.options.allow_user_invites:
        return defer.succeed(True)
    return host.isAdmin(requester)


def invitationForm(created) -> data_form.Form:
    """The result of a creation, in the order clients read it."""
    form = data_form.Form("result", title="Your invite has been created",
                          formNamespace=NS_INVITATION)
    form.addField(data_form.Field("text-single", "landing-url", label="Invite web page",
                                  values=[created.landing] if created.landing else []))
    form.addField(data_form.Field("text-single", "uri", created.uri, label="Invite URI"))
    form.addField(data_form.Field("text-single", "expire", isoTime(created.invite.expires),
                                  label="Invite valid until"))
    return form


def describe(invite) -> str:
    if invite.kind == "reset":
        what = f"password reset for {invite.username}"
    elif invite.kind == "contact":
        what = "contact" + (" and account" if invite.allowRegistration else "")
    else:
        what = f"account {invite.username}" if invite.username else "account"
    uses = "unlimited" if invite.usesAllowed is None else f"{invite.uses}/{invite.usesAllowed}"
    return f"{invite.id}: {what}, used {uses}, until {isoTime(invite.expires)}"


class CreationCommand(AdHocCommand):
    """A single-step command creating one invite for its requester."""

    def create(self, manager: InviteManager, requester):
        raise NotImplementedError()

    @defer.inlineCallbacks
    def execute(self, requester, action, form, session):
        manager = InviteManager(session.host)
        try:
            created = yield self.create(manager, requester)
        except InviteError as e:
            raise CommandError("not-allowed", str(e)) from None
        return CommandResult.completed(invitationForm(created))


class ContactInviteCommand(CreationCommand):
    """
    A contact invite from the requester (XEP-0379): any local user when
    C{allow_contact_invites}, else admins only; it lets a newcomer register
    too (C{ibr=y}) when the requester may invite new users.
    """

    node = NODE_CONTACT
    name = "Create new contact invite"

    def isAllowed(self, requester, host):
        if not isLocalUser(requester, host):
            return False
        return host.options.allow_contact_invites or host.isAdmin(requester)

    @defer.inlineCallbacks
    def create(self, manager, requester):
        host = manager.host
        bare = requester.userhost()
        allowRegistration = yield mayInviteNewUsers(requester, host)
        return (yield manager.createContact(requester.user, allowRegistration, creator=bare,
                                            source=bare))


class AccountInviteCommand(CreationCommand):
    """A plain account invite: admins, or any local user when C{allow_user_invites}."""

    node = NODE_ACCOUNT
    name = "Create new account invite"

    def isAllowed(self, requester, host):
        return mayInviteNewUsers(requester, host)

    def create(self, manager, requester):
        bare = requester.userhost()
        return manager.createAccount(creator=bare, source=bare)


class ResetInviteCommand(FormCommand):
    """Admins: a password-reset invite for an existing account of the host."""

    node = NODE_RESET
    name = "Create password reset invite"
    adminOnly = True

    def makeForm(self, requester, session):
        form = data_form.Form("form", title="Create password reset invite",
                              instructions=["The account whose password is to be reset"])
        form.addField(data_form.Field("jid-single", "accountjid", label="Account JID",
                                      required=True))
        return form

    @defer.inlineCallbacks
    def submit(self, requester, form, session):
        host = session.host
        account = form.fields["accountjid"].value
        if account.host != host.name or not account.user or account.resource:
            raise CommandError("bad-request", f"Give an account of {host.name} (user@{host.name})",
                               "bad-payload")
        try:
            created = yield InviteManager(host).createReset(account.user,
                                                            source=requester.userhost())
        except InviteError as e:
            raise CommandError("item-not-found", str(e)) from None
        return CommandResult.completed(invitationForm(created))


class ListInvitesCommand(AdHocCommand):
    """The requester's own pending invites, one line each."""

    node = NODE_LIST
    name = "List my pending invites"

    def isAllowed(self, requester, host):
        return isLocalUser(requester, host) or host.isAdmin(requester)

    @defer.inlineCallbacks
    def execute(self, requester, action, form, session):
        invites = yield InviteManager(session.host).list("pending", owner=requester.userhost())
        result = data_form.Form("result", title="Your pending invites")
        result.addField(data_form.Field("text-multi", "invites", label="Pending invites",
                                        values=[describe(invite) for invite in invites]))
        return CommandResult.completed(result, note=f"{len(invites)} pending")


class RevokeInviteCommand(FormCommand):
    """Pick one of the requester's pending invites and revoke it."""

    node = NODE_REVOKE
    name = "Revoke one of my invites"

    def isAllowed(self, requester, host):
        return isLocalUser(requester, host) or host.isAdmin(requester)

    @defer.inlineCallbacks
    def execute(self, requester, action, form, session):
        if session.stage == 0:
            invites = yield InviteManager(session.host).list("pending", owner=requester.userhost())
            if not invites:
                return CommandResult.completed(note="You have no pending invites")
        return (yield FormCommand.execute(self, requester, action, form, session))

    @defer.inlineCallbacks
    def makeForm(self, requester, session):
        invites = yield InviteManager(session.host).list("pending", owner=requester.userhost())
        form = data_form.Form("form", title="Revoke an invite")
        form.addField(data_form.Field("list-single", "invite", label="Invite", required=True,
                                      options={invite.id: describe(invite) for invite in invites}))
        return form

    @defer.inlineCallbacks
    def submit(self, requester, form, session):
        inviteId = form.fields["invite"].value
        revoked = yield InviteManager(session.host).revoke(inviteId, owner=requester.userhost())
        if not revoked:
            raise CommandError("item-not-found", "No such pending invite of yours")
        return CommandResult.completed(note=f"Invite {inviteId} revoked")


class JoinedCommand(AdHocCommand):
    """
    What the inviter sees: each account made with one of the requester's
    invites, oldest first, as the admin API's C{invites/ID/joined} tells it.
    """

    node = NODE_JOINED
    name = "Who joined through my invites"

    def isAllowed(self, requester, host):
        return isLocalUser(requester, host) or host.isAdmin(requester)

    @defer.inlineCallbacks
    def execute(self, requester, action, form, session):
        host = session.host
        manager = InviteManager(host)
        joined = []
        for listed in (yield manager.list(owner=requester.userhost())):
            if listed.kind == "reset" or not listed.uses:
                continue
            invite = yield manager.get(listed.id)
            joined.extend((use["used_at"], f"{use['username']}@{host.name}", invite.id)
                          for use in invite.uses_log)
        joined.sort()
        result = data_form.Form("result", title="Who joined through your invites")
        result.addField(data_form.Field(
            "text-multi", "joined", label="Joined",
            values=[f"{who} at {isoTime(at)} (invite {inviteId})"
                    for at, who, inviteId in joined]))
        return CommandResult.completed(result, note=f"{len(joined)} joined")


class InvitesAdHocModule(CommandProvider):
    """Offers the invite commands through the C{adhoc-commands} hook."""

    name = "invites_adhoc"

    def __init__(self) -> None:
        CommandProvider.__init__(self)
        self.commands = (ContactInviteCommand(), AccountInviteCommand(), ResetInviteCommand(),
                         ListInvitesCommand(), RevokeInviteCommand(), JoinedCommand())

    def adhocCommands(self):
        return self.commands
