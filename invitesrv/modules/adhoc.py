"""
XEP-0050 Ad-Hoc Commands: the framework, and the public API other modules
use to offer commands.

Offering a command takes no knowledge of this module's internals:

  1. subclass L{AdHocCommand} (or L{FormCommand} for "one form, then a
     result"), giving C{node}, C{name} and C{execute} (and C{isAllowed},
     which may return a Deferred, or C{adminOnly} for who may see and run it);
  2. return instances from the C{adhoc-commands} hook: either add a callback
     C{(host) -> list[AdHocCommand]} to C{host.hooks}, or make the module a
     L{CommandProvider} and define C{adhocCommands()}.

The hook is run at every request, so the list may depend on the options of
the moment. A single-step command is a few lines::

    class Hello(AdHocCommand):
        node = "urn:example:hello"
        name = "Say hello"

        def execute(self, requester, action, form, session):
            result = data_form.Form("result", title="Hello")
            result.addField(data_form.Field(var="greeting", value=f"Hello {requester.user}"))
            return CommandResult.completed(result)

C{execute} may return a L{CommandResult} or a Deferred firing with one, and
may raise (or fail with) a L{CommandError} or any Twisted C{StanzaError}. A
command that returns C{CommandResult.executing(form, ...)} gets called again,
with the same L{CommandSession}, when the requester answers with C{next},
C{prev} or C{complete}; C{session.data} keeps its state in between. This
module checks everything else: the node exists, the requester may use it
(checked again at every step), the session belongs to the requester and has
not expired, the action is one the last step offered. C{cancel} ends a
session, as do a failed step and ten idle minutes (the command's C{cancel}
method is told, to free what the session holds).

Commands are listed in disco#items on node C{http://jabber.org/protocol/commands}
(only those the requester may run) and described by disco#info on their node.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from twisted.internet import defer
from twisted.words.protocols.jabber import error, jid, xmlstream
from twisted.words.xish import domish
from wokkel import data_form, disco
from wokkel.subprotocols import IQHandlerMixin

from invitesrv.logs import logger
from invitesrv.modules.base import HostModule
from invitesrv.xmpp.router import parseJID

log = logger()

NS_COMMANDS = "http://jabber.org/protocol/commands"
COMMAND = f"/iq[@type='set']/command[@xmlns='{NS_COMMANDS}']"

ACTIONS = frozenset(("execute", "cancel", "prev", "next", "complete"))
STEP_ACTIONS = ("prev", "next", "complete")  # the order of <actions/> children
NOTE_TYPES = frozenset(("info", "warn", "error"))

# How long an unanswered multi-step session lives, how many one requester may
# hold, and how many expired session ids are remembered for a clear error.
SESSION_TIMEOUT = 600.0
MAX_SESSIONS_PER_REQUESTER = 10
REMEMBERED_EXPIRED = 1024

NOT_AVAILABLE = "This item is not available to you"
NOT_PERMITTED = "You don't have permission to execute this command"


class CommandError(error.StanzaError):
    """
    A stanza error from an ad-hoc command: C{specific} is XEP-0050's own
    condition (C{bad-action}, C{bad-sessionid}, C{bad-payload},
    C{session-expired}, ...); C{command}, when given, is the C{<command/>}
    element sent back in the error instead of an echo of the request.
    """

    def __init__(self, condition: str, text: str | None = None, specific: str | None = None,
                 command: domish.Element | None = None):
        appCondition = domish.Element((NS_COMMANDS, specific)) if specific else None
        error.StanzaError.__init__(self, condition, text=text, appCondition=appCondition)
        self.command = command

    def toResponse(self, stanza):
        if self.command is None:
            return error.StanzaError.toResponse(self, stanza)
        response = xmlstream.toResponse(stanza, "error")
        response.addChild(self.command)
        response.addChild(self.getElement())
        return response


@dataclass
class CommandResult:
    """
    What one step of a command produced. C{status} is C{completed},
    C{executing} (the requester is expected to answer with one of
    C{actions}; C{default} is what a plain C{execute} means) or C{canceled}.
    C{notes} are C{(type, text)} pairs, type C{info}, C{warn} or C{error}.
    """

    status: str = "completed"
    form: data_form.Form | None = None
    notes: tuple[tuple[str, str], ...] = ()
    actions: tuple[str, ...] = ()
    default: str | None = None

    @classmethod
    def completed(cls, form: data_form.Form | None = None, note: str | None = None,
                  noteType: str = "info") -> CommandResult:
        """The command is done: C{form} (type C{result}) and a note carry the outcome."""
        return cls("completed", form, ((noteType, note),) if note else ())

    @classmethod
    def executing(cls, form: data_form.Form, actions: Iterable[str] = ("complete",),
                  default: str | None = None, note: str | None = None,
                  noteType: str = "info") -> CommandResult:
        """Ask the requester to fill in C{form} and answer with one of C{actions}."""
        return cls("executing", form, ((noteType, note),) if note else (), tuple(actions), default)

    @classmethod
    def canceled(cls, note: str | None = None, noteType: str = "info") -> CommandResult:
        """The command stopped without doing anything."""
        return cls("canceled", None, ((noteType, note),) if note else ())


@dataclass
class CommandSession:
    """
    One run of a command by one requester (a full JID). C{data} is the
    command's own state between steps; C{stage} counts the steps answered so
    far (0 at the first call of C{execute}).
    """

    id: str
    node: str
    requester: jid.JID
    host: Any
    data: dict = field(default_factory=dict)
    stage: int = 0
    actions: tuple[str, ...] = ()
    default: str | None = None
    timer: Any = None


class AdHocCommand:
    """
    A command offered over XEP-0050. Subclasses set C{node} and C{name} and
    implement L{execute}. By default any account of the host may see and run
    it; C{adminOnly = True} restricts it to the host's admins, and overriding
    L{isAllowed} allows any other rule.
    """

    node: str = ""
    name: str = ""
    adminOnly: bool = False

    def isAllowed(self, requester: jid.JID, host):
        """
        Whether C{requester} (a full JID) may see and run the command on
        C{host}: a bool, or a Deferred firing with one (admin rights are
        read from the store, L{invitesrv.host.VirtualHost.isAdmin}).
        """
        if self.adminOnly:
            return host.isAdmin(requester)
        return requester.user is not None and requester.host == host.name

    def execute(self, requester: jid.JID, action: str, form: data_form.Form | None,
                session: CommandSession):
        """
        Run one step. C{action} is C{execute} at the first call, then the
        requester's C{next}, C{prev} or C{complete} (a plain C{execute}
        becomes the default action of the previous step); C{form} is the form
        the requester sent, if any. Return a L{CommandResult} or a Deferred
        firing with one.
        """
        raise NotImplementedError()

    def cancel(self, requester: jid.JID, session: CommandSession) -> None:
        """The session ends unfinished (canceled or expired): free what it holds."""


class FormCommand(AdHocCommand):
    """
    A command in two steps: L{makeForm} builds the form shown first, and
    L{submit} gets the requester's answer, already checked against that form
    (field types converted, required fields present).
    """

    def makeForm(self, requester: jid.JID, session: CommandSession) -> data_form.Form:
        """The form (type C{form}) to fill in; may return a Deferred."""
        raise NotImplementedError()

    def submit(self, requester: jid.JID, form: data_form.Form, session: CommandSession):
        """Act on the submitted form; return a L{CommandResult} (or a Deferred)."""
        raise NotImplementedError()

    def execute(self, requester, action, form, session):
        if session.stage == 0:
            d = defer.maybeDeferred(self.makeForm, requester, session)
            d.addCallback(self._shown, session)
            return d
        return self.submit(requester, checkForm(form, session.data["form"]), session)

    @staticmethod
    def _shown(form: data_form.Form, session: CommandSession) -> CommandResult:
        session.data["form"] = form
        return CommandResult.executing(form)


def checkForm(submitted: data_form.Form | None, shown: data_form.Form) -> data_form.Form:
    """
    Check a submitted form against the one shown: known fields only, values
    converted to their types (booleans, JIDs), required fields present.
    Raises a C{bad-request}/C{bad-payload} L{CommandError} otherwise.
    """
    if submitted is None or submitted.formType != "submit":
        raise CommandError("bad-request", "Submit the form", "bad-payload")
    definitions = {f.var: {"type": f.fieldType} for f in shown.fieldList
                   if f.var and f.fieldType != "fixed"}
    try:
        submitted.typeCheck(definitions, filterUnknown=True)
    except (TypeError, ValueError, jid.InvalidFormat, data_form.Error) as e:
        raise CommandError("bad-request", f"Invalid form: {e}", "bad-payload") from None
    for f in shown.fieldList:
        if f.required and not (f.var in submitted.fields and submitted.fields[f.var].values):
            raise CommandError("bad-request", f"The field {f.label or f.var!r} is required",
                               "bad-payload")
    return submitted


def formElement(form: data_form.Form) -> domish.Element:
    """
    A form as XML. Wokkel drops labels from result forms; a generic ad-hoc
    client shows nothing but the labels to a human, so they are put back.
    """
    element = form.toElement()
    if form.formType == "result":
        fields = list(element.elements(data_form.NS_X_DATA, "field"))
        if form.formNamespace is not None:
            fields = fields[1:]  # the FORM_TYPE field Wokkel puts first
        for child, definition in zip(fields, form.fieldList, strict=False):
            if definition.label is not None:
                child["label"] = definition.label
    return element


class CommandProvider(HostModule):
    """
    A module whose job is to offer ad-hoc commands: define L{adhocCommands}
    and they are offered through the C{adhoc-commands} hook while the module
    is loaded.
    """

    def adhocCommands(self) -> Iterable[AdHocCommand]:
        """The commands offered now."""
        raise NotImplementedError()

    hooks = (("adhoc-commands", "offeredCommands"),)

    def offeredCommands(self, host) -> list[AdHocCommand]:
        """The C{adhoc-commands} hook."""
        return list(self.adhocCommands())


class AdHocModule(HostModule, IQHandlerMixin):
    """
    Runs the commands offered through the C{adhoc-commands} hook, addressed
    to the server's JID, and keeps the sessions of multi-step commands.
    """

    name = "adhoc"
    observers = ((COMMAND, "onRequest"),)
    iqHandlers: ClassVar[dict[str, str]] = {COMMAND: "onCommand"}

    def __init__(self) -> None:
        HostModule.__init__(self)
        self.sessions: dict[str, CommandSession] = {}
        self.expired: OrderedDict[str, None] = OrderedDict()

    def connectionLost(self, reason):
        for session in list(self.sessions.values()):
            self._end(session, canceled=True)
        HostModule.connectionLost(self, reason)

    def commands(self) -> dict[str, AdHocCommand]:
        """Every command offered now, by node (the first offer of a node wins)."""
        found: dict[str, AdHocCommand] = {}
        for offered in self.parent.hooks.run("adhoc-commands", self.parent):
            for command in offered or ():
                found.setdefault(command.node, command)
        return found

    @defer.inlineCallbacks
    def allowedCommands(self, requester: jid.JID):
        """Fire with the commands C{requester} may see and run."""
        allowed = []
        for command in self.commands().values():
            if (yield defer.maybeDeferred(command.isAllowed, requester, self.parent)):
                allowed.append(command)
        return allowed

    # -- execution ----------------------------------------------------------

    def onRequest(self, iq) -> None:
        """Commands are run by the server's own JID; others are not ours."""
        to = iq.getAttribute("to")
        if to is not None and parseJID(to) == self.parent.jid:
            self.handleRequest(iq)

    @defer.inlineCallbacks
    def onCommand(self, iq):
        """Check the request against the command, its session and the actions offered; run a step."""
        request = iq.command
        node = request.getAttribute("node")
        action = request.getAttribute("action", "execute")
        sessionID = request.getAttribute("sessionid")
        requester = parseJID(iq["from"])
        if not node:
            raise CommandError("bad-request", "A command needs a node")
        if action not in ACTIONS:
            raise CommandError("bad-request", f"Unknown action {action!r}", "malformed-action")
        command = self.commands().get(node)
        if command is None:
            raise CommandError("item-not-found", "No such command")
        if not (yield defer.maybeDeferred(command.isAllowed, requester, self.parent)):
            raise CommandError("forbidden", NOT_PERMITTED,
                               command=self._element(node, sessionID, CommandResult.canceled(
                                   NOT_PERMITTED, "error")))
        if sessionID is None:
            if action != "execute":
                raise CommandError("bad-request", "This action needs a session", "bad-sessionid")
            session = self._newSession(command, requester)
        else:
            session = self._session(sessionID, node, requester)
            if session.timer is None:
                raise CommandError("bad-request", "The previous step is still running", "bad-action")
            if action == "cancel":
                self._end(session, canceled=True)
                return self._element(node, session.id, CommandResult.canceled())
            if action == "execute":
                action = session.default
            if action not in session.actions:
                raise CommandError("bad-request", f"The action {action!r} is not offered now",
                                   "bad-action")
            session.timer.cancel()
            session.timer = None
        form = next((data_form.Form.fromElement(x) for x in
                     request.elements(data_form.NS_X_DATA, "x")), None)
        d = defer.maybeDeferred(command.execute, requester, action, form, session)
        d.addCallback(self._stepDone, session)
        d.addErrback(self._stepFailed, session)
        return (yield d)

    def _newSession(self, command: AdHocCommand, requester: jid.JID) -> CommandSession:
        mine = [s for s in self.sessions.values() if s.requester == requester]
        if len(mine) >= MAX_SESSIONS_PER_REQUESTER:
            idle = [s for s in mine if s.timer is not None]
            if not idle:
                raise CommandError("resource-constraint", "Too many commands under way")
            self._end(idle[0], canceled=True)
        session = CommandSession(secrets.token_urlsafe(12), command.node, requester, self.parent)
        self.sessions[session.id] = session
        return session

    def _session(self, sessionID: str, node: str, requester: jid.JID) -> CommandSession:
        """The session to continue; it must be the requester's own, for this node."""
        session = self.sessions.get(sessionID)
        if session is None or session.requester != requester or session.node != node:
            if sessionID in self.expired:
                raise CommandError("not-allowed", "The session has expired", "session-expired")
            raise CommandError("bad-request", "No such session", "bad-sessionid")
        return session

    def _stepDone(self, result: CommandResult, session: CommandSession) -> domish.Element:
        """Answer with the step's result; a session waits for the next step for a while."""
        if result.status == "executing":
            actions = tuple(a for a in STEP_ACTIONS if a in result.actions) or ("complete",)
            session.actions = actions
            session.default = result.default if result.default in actions else next(
                a for a in ("next", "complete", "prev") if a in actions)
            session.stage += 1
            session.timer = self.parent.clock.callLater(SESSION_TIMEOUT, self._expire, session.id)
        else:
            self._end(session, canceled=False)
        return self._element(session.node, session.id, result, session)

    def _stepFailed(self, failure, session: CommandSession):
        """A failed step ends the session; a command's stanza error goes back as it is."""
        self._end(session, canceled=True)
        if not failure.check(error.StanzaError):
            log.failure("Ad-hoc command {node} failed", failure, node=session.node)
            raise CommandError("internal-server-error", "The command failed")
        return failure

    def _end(self, session: CommandSession, canceled: bool) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        if canceled and session.stage:
            command = self.commands().get(session.node)
            if command is not None:
                d = defer.maybeDeferred(command.cancel, session.requester, session)
                d.addErrback(lambda f: log.failure("Canceling {node}", f, node=session.node))

    def _expire(self, sessionID: str) -> None:
        session = self.sessions.get(sessionID)
        if session is not None:
            session.timer = None
            self._end(session, canceled=True)
            self.expired[sessionID] = None
            while len(self.expired) > REMEMBERED_EXPIRED:
                self.expired.popitem(last=False)

    @staticmethod
    def _element(node: str, sessionID: str | None, result: CommandResult,
                 session: CommandSession | None = None) -> domish.Element:
        """The C{<command/>} element describing C{result}."""
        element = domish.Element((NS_COMMANDS, "command"))
        element["node"] = node
        if sessionID:
            element["sessionid"] = sessionID
        element["status"] = result.status
        if result.status == "executing" and session is not None:
            actions = element.addElement("actions")
            actions["execute"] = session.default
            for action in session.actions:
                actions.addElement(action)
        for noteType, text in result.notes:
            note = element.addElement("note", content=text)
            note["type"] = noteType if noteType in NOTE_TYPES else "info"
        if result.form is not None:
            element.addChild(formElement(result.form))
        return element

    # -- discovery ----------------------------------------------------------

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        if target.user is not None:
            return []
        if not nodeIdentifier:
            return [disco.DiscoFeature(NS_COMMANDS)]
        if nodeIdentifier == NS_COMMANDS:
            return [disco.DiscoIdentity("automation", "command-list", "Commands")]
        command = self.commands().get(nodeIdentifier)
        if command is None:
            return []
        return self._describe(command, requestor)

    @defer.inlineCallbacks
    def _describe(self, command: AdHocCommand, requestor: jid.JID):
        """The disco#info of a command's node, for those who may run it."""
        if not (yield defer.maybeDeferred(command.isAllowed, requestor, self.parent)):
            raise error.StanzaError("forbidden", text=NOT_AVAILABLE)
        return [disco.DiscoIdentity("automation", "command-node", command.name),
                disco.DiscoFeature(NS_COMMANDS), disco.DiscoFeature(data_form.NS_X_DATA)]

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        if target.user is not None or nodeIdentifier != NS_COMMANDS:
            return []
        d = self.allowedCommands(requestor)
        return d.addCallback(lambda commands: [
            disco.DiscoItem(self.parent.jid, command.node, command.name) for command in commands])
