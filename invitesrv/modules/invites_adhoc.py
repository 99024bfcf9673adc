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

from invitesrv.invites import (
    MAX_EXPIRY,
    MAX_USES,
    ROLE,
    InviteError,
    InviteManager,
    isoTime,
    welcomeText,
)
from invitesrv.modules.adhoc import (
    AdHocCommand,
    CommandError,
    CommandProvider,
    CommandResult,
    FormCommand,
    checkForm,
)
from invitesrv.registrar import RegistrationError, prepareUsername

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


def choiceFields(form: data_form.Form, host) -> None:
    """The fields every creation form has: how many uses, how long valid, a welcome text."""
    form.addField(data_form.Field("text-single", "uses", "1", label="How many uses",
                                  desc='A whole number, or "unlimited"'))
    form.addField(data_form.Field("text-single", "ttl", str(int(host.options.invite_expiry)),
                                  label="Valid for (seconds)"))
    form.addField(data_form.Field("text-multi", "welcome", label="Welcome text",
                                  desc="Shown on the invite page and sent to the new account"))


def readChoices(form: data_form.Form) -> dict:
    """
    The submitted choices as keyword arguments of L{InviteManager}'s
    creation methods; a value out of bounds is a C{bad-request}.
    """
    values = {var: f.value for var, f in form.fields.items()}
    chosen = {}
    try:
        if values.get("username"):
            chosen["username"] = prepareUsername(values["username"])
        for var in ("roles", "groups"):
            if var in form.fields:
                names = tuple(v.strip() for v in form.fields[var].values if v.strip())
                if not all(ROLE.fullmatch(name) for name in names):
                    raise ValueError(f"{var} are names of letters, digits, : . - _")
                chosen[var] = names
        if values.get("uses"):
            chosen["usesAllowed"] = (None if values["uses"] == "unlimited"
                                     else int(values["uses"]))
            if chosen["usesAllowed"] is not None and not 1 <= chosen["usesAllowed"] <= MAX_USES:
                raise ValueError(f"uses is a whole number from 1 to {MAX_USES}, or unlimited")
        if values.get("ttl"):
            chosen["ttl"] = float(int(values["ttl"]))
            if not 0 < chosen["ttl"] <= MAX_EXPIRY:
                raise ValueError(f"ttl is a number of seconds from 1 to {MAX_EXPIRY}")
        if "ibr" in form.fields:
            chosen["allowRegistration"] = bool(values["ibr"])
        if "welcome" in form.fields:
            chosen["welcome"] = welcomeText("\n".join(form.fields["welcome"].values))
    except (ValueError, RegistrationError, InviteError) as e:
        raise CommandError("bad-request", f"Invalid form: {e}", "bad-payload") from None
    return chosen


class CreationCommand(AdHocCommand):
    """
    A command creating one invite for its requester. A plain C{execute}
    answers at once (Prosody's single step, which clients like Conversations
    wait for), unless C{asksFirst} and the requester has something to choose:
    then the form of L{choices} comes first (XEP-0401's newer flow). A form
    submitted with the first C{execute} is read at once.
    """

    asksFirst = False

    def choices(self, requester, host):
        """Fire with the form of what this requester may choose, or None."""
        return defer.succeed(None)

    def create(self, manager: InviteManager, requester, chosen: dict):
        raise NotImplementedError()

    @defer.inlineCallbacks
    def execute(self, requester, action, form, session):
        shown = session.data.get("form")
        if session.stage == 0:
            shown = yield self.choices(requester, session.host)
            if shown is not None and form is None and self.asksFirst:
                session.data["form"] = shown
                return CommandResult.executing(shown)
        chosen = {}
        if form is not None or session.stage:
            if shown is None:
                raise CommandError("not-allowed", "There is nothing you may choose for this invite")
            chosen = readChoices(checkForm(form, shown))
        try:
            created = yield self.create(InviteManager(session.host), requester, chosen)
        except InviteError as e:
            raise CommandError("not-allowed", str(e)) from None
        return CommandResult.completed(invitationForm(created))


class ContactInviteCommand(CreationCommand):
    """
    A contact invite from the requester (XEP-0379): any local user when
    C{allow_contact_invites}, else admins only; it lets a newcomer register
    too (C{ibr=y}) when the requester may invite new users. Such a requester
    may submit a form with the first C{execute} to choose C{ibr}, uses and
    expiry; a plain C{execute} stays one step, as Conversations expects.
    """

    node = NODE_CONTACT
    name = "Create new contact invite"

    def isAllowed(self, requester, host):
        if not isLocalUser(requester, host):
            return False
        return host.options.allow_contact_invites or host.isAdmin(requester)

    @defer.inlineCallbacks
    def choices(self, requester, host):
        if not (yield mayInviteNewUsers(requester, host)):
            return None
        form = data_form.Form("form", title="Create new contact invite")
        form.addField(data_form.Field("boolean", "ibr", True,
                                      label="Let them create an account here"))
        choiceFields(form, host)
        return form

    @defer.inlineCallbacks
    def create(self, manager, requester, chosen):
        bare = requester.userhost()
        if "allowRegistration" not in chosen:
            chosen["allowRegistration"] = yield mayInviteNewUsers(requester, manager.host)
        return (yield manager.createContact(requester.user, creator=bare, source=bare, **chosen))


class AccountInviteCommand(CreationCommand):
    """
    A plain account invite: admins, or any local user when
    C{allow_user_invites}. Admins are first shown a form to reserve a
    username and set roles, groups, uses and expiry (Conversations handles
    this step too); others get the invite at once.
    """

    node = NODE_ACCOUNT
    name = "Create new account invite"
    asksFirst = True

    def isAllowed(self, requester, host):
        return mayInviteNewUsers(requester, host)

    @defer.inlineCallbacks
    def choices(self, requester, host):
        if not (yield host.isAdmin(requester)):
            return None
        form = data_form.Form("form", title="Create new account invite",
                              instructions=["Every field may be left as it is"])
        form.addField(data_form.Field("text-single", "username", label="Reserve a username"))
        form.addField(data_form.Field("text-multi", "roles", label="Roles of the new account"))
        form.addField(data_form.Field("text-multi", "groups", label="Circles the new account joins"))
        choiceFields(form, host)
        return form

    def create(self, manager, requester, chosen):
        bare = requester.userhost()
        return manager.createAccount(creator=bare, source=bare, **chosen)


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
