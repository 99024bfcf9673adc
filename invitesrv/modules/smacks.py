"""
XEP-0198 stream management (C{urn:xmpp:sm:3}): a phone that changes
networks loses no message, and picks up its session where it was.

After authentication the stream offers C{<sm/>}. A bound session that sends
C{<enable/>} has every stanza it is sent counted and kept until the client
acknowledges it (C{<a h='…'/>}, asked for with C{<r/>} after each burst),
and every stanza it sends counted, so that it may ask the server the same.
Counts wrap at 2^32. The output wrapper is the one nearest the stream (its
C{session-bound} hook runs first), so what is counted is what was written:
stanzas client state indication holds back are counted once sent.

With C{resume='true'} the session gets an unguessable token (from
L{secrets}). When its connection is lost (not closed by the client) the
session hibernates for C{hibernation_time}: it stays bound and keeps queuing
what it is sent, as Prosody's mod_smacks does, and C{hibernated-stanza} lets
push notifications wake the device. A new stream, authenticated as the same
account, resumes it with C{<resume previd='token' h='…'/>}: the server
forgets what the client acknowledged, answers C{<resumed/>} with its own
count, and sends again exactly the rest; an old connection still open ends
with C{<conflict/>}. A token of another account, or one unknown, gets
C{<failed><item-not-found/></failed>}; for a session of the same account that
ended not long ago the C{<failed/>} carries its C{h} (XEP-0198 1.6), so the
client knows which of its stanzas arrived.

Both may be done inline: C{<enable/>} inside XEP-0386 Bind2's C{<bind/>}
(answered in C{<bound/>}) and C{<resume/>} inside XEP-0388 SASL2's
C{<authenticate/>} (answered in C{<success/>}, before Bind2, which then binds
nothing).

A session that ends without resumption (the hibernation ran out, the client
closed its stream with stanzas unacknowledged, too many unacknowledged
stanzas: C{max_queue}, which ends the session with C{resource-constraint})
hands on what it was not known to receive, following Prosody's mod_smacks
and doing a little better: a chat or normal message goes to the account's
other available resources (those that already had it, as a recipient of
the same delivery or as a carbon copy, get nothing again), or, when there
are none, to offline storage through the C{offline-message} hook; refused
there, its sender is told C{service-unavailable}. Carbon copies are dropped
(the device that took part in the conversation has it), as are presence,
headlines and errors; an IQ request and a groupchat message bounce with
C{recipient-unavailable}, as in Prosody. A session whose client queried the
message archive leaves to the archive the messages it holds (as Prosody's
C{mam_requested}): they are not stored offline, where the client would find
them a second time; the archive results it was sent are dropped. What is
sent again, on resumption
or to another resource, carries an XEP-0203 delay with the time it was first
sent.

When the host stops (a shutdown: the listeners have let their clients go,
so their sessions hibernate), every managed session ends and its messages
go to offline storage, the other resources ending too; the store closes
once they are kept (the C{host-stopping} hook).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass

from twisted.internet import defer
from twisted.words.xish import domish

from invitesrv.config import Duration
from invitesrv.logs import logger
from invitesrv.modules.base import HostModule
from invitesrv.modules.carbons import NS_CARBONS, copyElement
from invitesrv.modules.mam import NS_MAM
from invitesrv.modules.offline import NS_DELAY, delayStamp
from invitesrv.services.slots import Slot
from invitesrv.xmpp.router import bounce

log = logger()

NS_SM = "urn:xmpp:sm:3"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
MODULUS = 2 ** 32
# Ended sessions whose last count a late <resume/> is told (the oldest forgotten first).
REMEMBERED = 1000


@dataclass(frozen=True)
class SmacksOptions:
    """
    C{[modules.smacks]}: how long a session whose connection was lost waits
    to be resumed, how many unacknowledged stanzas it may hold, and how many
    of an account's sessions may wait at once (the oldest ends first).
    """

    hibernation_time: Duration = Duration(600)
    max_queue: int = 500
    max_hibernated: int = 10


class Unacked:
    """A stanza sent to a session and not acknowledged yet, and who else has it."""

    __slots__ = ("element", "stamp", "holders", "written", "waiters")

    def __init__(self, element: domish.Element, stamp: float, written: bool):
        self.element = element
        self.stamp = stamp
        self.holders: tuple = ()  # other sessions of the account that got it or a carbon of it
        self.written = written  # False: queued while the connection was gone, never on the wire
        self.waiters: list | None = None  # whenSent Deferreds: their callers keep the stanza


class Managed:
    """The stream management state of one session; it survives resumption."""

    __slots__ = ("queue", "acked", "handled", "token", "awaiting", "requestCall", "hibernation",
                 "hibernatedAt", "overflowCall")

    def __init__(self) -> None:
        self.queue: deque[Unacked] = deque()
        self.acked = 0  # the client's last h: stanzas it acknowledged, modulo 2^32
        self.handled = 0  # stanzas received from the client, modulo 2^32
        self.token: str | None = None  # the resumption token, if the session may be resumed
        self.awaiting = False  # an <r/> is out, not answered yet
        self.requestCall = None  # the <r/> about to be sent
        self.hibernation = None  # the end of hibernation, while the connection is gone
        self.hibernatedAt = 0.0
        self.overflowCall = None  # the end of a session over max_queue

    @property
    def sent(self) -> int:
        return (self.acked + len(self.queue)) % MODULUS

    def cancelTimers(self) -> None:
        for call in (self.requestCall, self.hibernation, self.overflowCall):
            if call is not None and call.active():
                call.cancel()
        self.requestCall = self.hibernation = self.overflowCall = None


STATE = Slot("smacks.state", Managed)


def sm(name: str, **attributes) -> domish.Element:
    """An element of the stream management namespace."""
    element = domish.Element((NS_SM, name))
    for key, value in attributes.items():
        element[key] = str(value)
    return element


def failed(condition: str, h: int | None = None) -> domish.Element:
    """C{<failed/>} with a stanza error condition (and the C{h} known, if any)."""
    element = sm("failed") if h is None else sm("failed", h=h)
    element.addElement((NS_STANZAS, condition))
    return element


def isCarbon(message: domish.Element) -> bool:
    return any(child.uri == NS_CARBONS for child in message.elements())


def isArchiveResult(message: domish.Element) -> bool:
    """A message of an archive query's results: the client asks again if it wants it."""
    return any(True for _ in message.elements(NS_MAM, "result"))


class SmacksModule(HostModule):
    """Counts, queues and resends what a stream-managed session is sent; resumes it."""

    name = "smacks"
    Options = SmacksOptions
    hooks = (("stream-features", "onFeatures"),
             ("session-bound", "onSessionBound", 100),  # first: its wrapper is nearest the stream
             ("message-delivered", "onDelivered"),
             ("stream-lost", "onStreamLost"),
             ("session-closed", "onSessionClosed", -100),  # last: after CSI sent what it held
             ("when-sent", "onWhenSent"),
             ("host-stopping", "onHostStopping"),
             ("sasl2-features", "onSASL2Features"),
             ("sasl2-inline", "onSASL2Inline", 10),  # before bind2, which binds only if not resumed
             ("bind2-features", "bind2Feature"), ("bind2-inline", "onBind2"))
    nonzas = {(NS_SM, "enable"): "onEnable", (NS_SM, "resume"): "onResume",
              (NS_SM, "r"): "onRequest", (NS_SM, "a"): "onAck"}

    def __init__(self) -> None:
        HostModule.__init__(self)
        self.resumable: dict[str, object] = {}  # token -> session
        self.ended: OrderedDict[str, tuple[str, int]] = OrderedDict()  # token -> (user, h)
        self.managed: set = set()  # the sessions with stream management on
        self.keeping: set[defer.Deferred] = set()  # offline storage of what sessions handed on
        self.leaving: set = set()  # sessions being handed to another node (cluster mode)
        self.stopping = False

    def connectionInitialized(self) -> None:
        HostModule.connectionInitialized(self)
        self.stopping = False  # a host started again

    def onHostStopping(self, host) -> defer.Deferred:
        """
        Hook C{host-stopping}: every stream-managed session ends (at a
        shutdown, those whose clients the listener let go are hibernating),
        its unacknowledged messages kept offline, as the account's other
        sessions end too; fire once they are all kept.
        """
        self.stopping = True
        for session in list(self.managed):
            session.close()
        return defer.DeferredList(list(self.keeping))

    # -- negotiation ----------------------------------------------------------

    def onFeatures(self, stream, features) -> None:
        if stream.authenticated:
            features.addElement((NS_SM, "sm"))

    def onSessionBound(self, session) -> None:
        session.addOutput(self.output)

    def output(self, session, element, forward) -> None:
        """Every stanza to a session passes here: counted and kept once management is on."""
        state = STATE.get(session)
        if state is not None:
            self._queue(session, state, element)
        forward(element)

    @staticmethod
    def counted(session, stanza, forward) -> None:
        """Every stanza from a managed session passes here: counted for the client's <a/>."""
        state = STATE.get(session)
        if state is not None:
            state.handled = (state.handled + 1) % MODULUS
        forward(stanza)

    def onEnable(self, stream, element) -> None:
        stream.xmlstream.send(self._enable(stream.session, element))

    def _enable(self, session, element) -> domish.Element:
        """Manage C{session} (None: not bound yet); C{<enabled/>} or C{<failed/>}."""
        if session is None or STATE.get(session) is not None:
            return failed("unexpected-request")
        state = self._manage(session)
        enabled = sm("enabled")
        if element.getAttribute("resume") in ("true", "1"):
            state.token = secrets.token_urlsafe(24)
            self.resumable[state.token] = session
            enabled["id"] = state.token
            enabled["resume"] = "true"
            enabled["max"] = str(int(self.options.hibernation_time))
        return enabled

    def _manage(self, session) -> Managed:
        """Count and keep from now on what C{session} is sent, and count what it sends."""
        state = Managed()
        STATE.set(session, state)
        self.managed.add(session)
        session.addInput(self.counted)
        return state

    # -- acknowledgements -------------------------------------------------------

    def onRequest(self, stream, element) -> None:
        """C{<r/>}: say how many stanzas the client sent (ignored before C{<enable/>})."""
        state = STATE.get(stream.session) if stream.session is not None else None
        if state is not None:
            stream.xmlstream.send(sm("a", h=state.handled))

    def onAck(self, stream, element) -> None:
        """C{<a/>}: forget what the client has; ask again if more was sent since the question."""
        session = stream.session
        state = STATE.get(session) if session is not None else None
        if state is None:
            return
        state.awaiting = False
        if self._acknowledge(stream, state, element.getAttribute("h")) and state.queue:
            self._requestAck(session, state)

    def _acknowledge(self, stream, state: Managed, text: str | None) -> bool:
        """Drop what C{h} acknowledges from the queue; a wrong C{h} ends the stream."""
        if text is None or not text.isdigit() or int(text) >= MODULUS:
            stream.xmlstream.closeWithError("invalid-xml", "h must be a number below 2^32")
            return False
        h = int(text)
        count = (h - state.acked) % MODULUS
        if count > len(state.queue):
            log.info("{label} acknowledged {h}, but only {sent} stanzas were sent",
                     label=stream.label, h=h, sent=state.sent)
            self._forgetToken(state)
            stream.xmlstream.closeWithError(
                "undefined-condition", "You acknowledged more stanzas than were sent",
                sm("handled-count-too-high", h=h, **{"send-count": state.sent}))
            return False
        delivered = [state.queue.popleft() for _ in range(count)]
        state.acked = h
        for entry in delivered:
            for d in entry.waiters or ():
                d.callback(True)  # offline delivery sends its next message now
        return True

    def _queue(self, session, state: Managed, element: domish.Element) -> None:
        state.queue.append(Unacked(element, self.host.now(), state.hibernation is None))
        if len(state.queue) > self.options.max_queue and state.overflowCall is None:
            state.overflowCall = self.host.clock.callLater(0, self._overflow, session)
        if state.hibernation is not None:
            self.host.hooks.run("hibernated-stanza", session, element)
        else:
            self._requestAck(session, state)

    def _requestAck(self, session, state: Managed) -> None:
        """Ask for an ack once the stanzas sent in this turn of the reactor are out."""
        if not state.awaiting and state.requestCall is None:
            state.requestCall = self.host.clock.callLater(0, self._sendRequest, session, state)

    def _sendRequest(self, session, state: Managed) -> None:
        state.requestCall = None
        if not session.closed and state.hibernation is None and state.queue:
            state.awaiting = True
            session.stream.send(sm("r"))

    def _overflow(self, session) -> None:
        state = STATE.get(session)
        if state is None or session.closed:
            return
        state.overflowCall = None
        if len(state.queue) <= self.options.max_queue:
            return
        log.info("{jid}: more than {count} stanzas unacknowledged; ending the session",
                 jid=session.full, count=self.options.max_queue)
        self.host.metrics["smacks.overflow"] += 1
        self._forgetToken(state)
        session.close("resource-constraint", "Too many unacknowledged stanzas")

    def onWhenSent(self, session):
        """
        Hook C{when-sent}: what was sent so far is delivered once the client
        acknowledges it. The caller (offline delivery) keeps the stanza until
        then, so the stanza is not handed on with the others if the session
        ends: it fires False and the caller still has it. One queued while
        the connection is gone was never written: it is taken back at once.
        """
        state = STATE.get(session)
        if state is None:
            return None
        if not state.queue:
            return defer.succeed(True)
        last = state.queue[-1]
        if not last.written:
            state.queue.pop()
            return defer.succeed(False)
        d = defer.Deferred()
        if last.waiters is None:
            last.waiters = []
        last.waiters.append(d)
        return d

    # -- who else has a message ---------------------------------------------------

    def onDelivered(self, message, sessions) -> None:
        """Note, for a session's unacked copy, the sessions that have it too (or a carbon of it)."""
        carbons = self.host.modules.get("carbons")
        copies = carbons.copiedTo(message, sessions) if carbons is not None else []
        self._noteHolders(message, sessions, copies)

    def _noteHolders(self, message, sessions, copies) -> None:
        """C{message} went to C{sessions}, and copies of it to C{copies}: each has it."""
        if len(sessions) < 2 and not copies:
            return
        for session in sessions:
            state = STATE.get(session)
            if state is None:
                continue
            for entry in reversed(state.queue):
                if entry.element is message:
                    entry.holders = tuple(s for s in sessions if s is not session) + tuple(copies)
                    break

    # -- hibernation and resumption ----------------------------------------------

    def onStreamLost(self, session, reason):
        """The connection is gone: a resumable session waits for its client."""
        state = STATE.get(session)
        if state is None or state.token is None:
            return None
        state.cancelTimers()
        state.awaiting = False
        seconds = self.options.hibernation_time
        state.hibernation = self.host.clock.callLater(seconds, self._expire, session)
        state.hibernatedAt = self.host.now()
        self.host.metrics["smacks.hibernated"] += 1
        # A phone does this many times a day: at debug level, as Prosody has it (the metrics count it).
        log.debug("{jid}: connection lost; the session waits {seconds:.0f} s to be resumed"
                 " ({count} stanzas unacknowledged)", jid=session.full, seconds=seconds,
                 count=len(state.queue))
        for entry in state.queue:
            self.host.hooks.run("hibernated-stanza", session, entry.element)
        self._limitHibernated(session.bare)
        return True

    def _limitHibernated(self, bare: str) -> None:
        """At most C{max_hibernated} sessions of an account wait: the oldest ends, handing on."""
        waiting = sorted((STATE.get(s).hibernatedAt, index, s)
                         for index, s in enumerate(self.host.resources.online(bare))
                         if STATE.get(s) is not None and STATE.get(s).hibernation is not None)
        for _, _, oldest in waiting[:max(0, len(waiting) - self.options.max_hibernated)]:
            self.host.metrics["smacks.hibernation-limit"] += 1
            log.info("{jid}: more than {count} sessions of the account wait to be resumed;"
                     " the oldest ends", jid=oldest.full, count=self.options.max_hibernated)
            oldest.close()

    def _expire(self, session) -> None:
        state = STATE.get(session)
        if state is not None:
            state.hibernation = None
        self.host.metrics["smacks.expired"] += 1
        log.info("{jid}: not resumed in time; the session ends", jid=session.full)
        session.close()

    def onResume(self, stream, element) -> None:
        """C{<resume previd h/>} on an authenticated stream not bound yet."""
        if not stream.authenticated or stream.session is not None:
            stream.xmlstream.send(failed("unexpected-request"))
            return
        d = defer.maybeDeferred(self._resume, stream, element)
        d.addCallback(self._answerResume, stream)
        d.addErrback(self._resumeError, stream)

    def _answerResume(self, answer, stream) -> None:
        if answer is not None:
            stream.xmlstream.send(answer)
            self._resend(stream)

    def _resumeError(self, failure, stream) -> None:
        log.failure("{label}: resumption failed", failure, label=stream.label)
        stream.xmlstream.send(failed("internal-server-error"))

    def _resume(self, stream, element):
        """
        Take over the session C{element} names: C{<resumed/>} (then
        L{_resend}), C{<failed/>}, or None when a wrong C{h} ended the
        stream; or a Deferred firing with one of them when another node of
        a cluster may hold the session (the C{resume-elsewhere} hook).
        """
        token = element.getAttribute("previd") or ""
        session = self.resumable.get(token)
        if session is None:
            elsewhere = self.host.hooks.first("resume-elsewhere", stream, token)
            if elsewhere is not None:
                return elsewhere.addCallback(self._takeUp, stream, element, token)
        return self._takeUp(session, stream, element, token)

    def _takeUp(self, session, stream, element, token: str) -> domish.Element | None:
        """Resume C{session} (held here, or adopted from another node) on C{stream}."""
        if session is None or session.user != stream.username:
            ended = self.ended.pop(token, None)
            known = ended[1] if ended is not None and ended[0] == stream.username else None
            if ended is not None and known is None:
                self.ended[token] = ended  # another account's: left as it was
            self.host.metrics["smacks.resume-failed"] += 1
            log.info("{label}: no session of {user} to resume", label=stream.label,
                     user=stream.username)
            return failed("item-not-found", known)
        state = STATE.get(session)
        if not self._acknowledge(stream, state, element.getAttribute("h")):
            return None
        state.cancelTimers()
        state.awaiting = False
        if stream.session is not session:  # one adopted from another node is bound already
            stream.takeOver(session)
        self.host.metrics["smacks.resumed"] += 1
        log.debug("{jid} resumed from {address}; {count} stanzas sent again", jid=session.full,
                 address=stream.address, count=len(state.queue))
        return sm("resumed", previd=token, h=state.handled)

    def _resend(self, stream) -> None:
        """After C{<resumed/>}: what the client did not acknowledge, again, and a request."""
        session = stream.session
        state = STATE.get(session) if session is not None else None
        if state is None:
            return
        for entry in state.queue:
            entry.written = True
            stream.xmlstream.send(self._again(entry))
        if state.queue:
            self._requestAck(session, state)

    # -- resumption on another node of a cluster (invitesrv.cluster.resumption) ------

    def heldFor(self, user: str, token: str):
        """The session of C{user} that C{token} resumes, if this node holds it, else None."""
        session = self.resumable.get(token)
        return session if session is not None and session.user == user else None

    def handOver(self, session) -> Managed:
        """
        Another node resumes C{session}: end it here with its old stream
        (C{<conflict/>}), handing nothing on (what it held for an inactive
        client is queued first), and return its state for that node. What
        offline delivery waits for counts as delivered: the other node has it.
        """
        state = STATE.get(session)
        self.leaving.add(session)
        try:
            session.close("conflict", "Resumed on another connection")
        finally:
            self.leaving.discard(session)
        for entry in state.queue:
            for d in entry.waiters or ():
                d.callback(True)
            entry.waiters = None
        self.host.metrics["smacks.handed-over"] += 1
        return state

    def adopt(self, session, token: str, acked: int, handled: int, queue) -> None:
        """
        Take on C{session}, handed over by another node with its counts and
        what the client has not acknowledged (C{queue}: element and the
        time it was first sent); it may be resumed again with C{token}.
        """
        state = self._manage(session)
        state.acked, state.handled = acked, handled
        state.queue.extend(Unacked(element, stamp, False) for element, stamp in queue)
        state.token = token
        self.resumable[token] = session

    # -- inline in SASL2 (XEP-0388) and Bind2 (XEP-0386) ---------------------------

    def onSASL2Features(self, stream, inline) -> None:
        inline.addElement((NS_SM, "sm"))

    def onSASL2Inline(self, stream, request, success):
        """A C{<resume/>} inside C{<authenticate/>}: resumed (or failed) in C{<success/>}."""
        resume = next(request.elements(NS_SM, "resume"), None)
        if resume is None:
            return None

        def answered(answer):
            if answer is None:
                return None
            success.addChild(answer)
            return lambda: self._resend(stream)
        return defer.maybeDeferred(self._resume, stream, resume).addCallback(answered)

    def bind2Feature(self, stream) -> str:
        """Stream management can be enabled inside XEP-0386's bind."""
        return NS_SM

    def onBind2(self, session, request, bound) -> None:
        """C{<enable/>} inside C{<bind/>}: C{<enabled/>} (or C{<failed/>}) inside C{<bound/>}."""
        enable = next(request.elements(NS_SM, "enable"), None)
        if enable is not None:
            bound.addChild(self._enable(session, enable))

    # -- the end of a managed session ------------------------------------------

    def onSessionClosed(self, session) -> None:
        """Say how much was handled, and hand on what the client did not acknowledge."""
        state = STATE.pop(session)
        if state is None:
            return
        self.managed.discard(session)
        state.cancelTimers()
        if session in self.leaving:  # resumed on another node, which has its state
            self._forgetToken(state)
            return
        self._forgetToken(state, session.user)
        session.stream.send(sm("a", h=state.handled))  # XEP-0198 1.5.2; dropped if the stream is gone
        entries = list(state.queue)
        state.queue.clear()
        unacked = [entry for entry in entries if not entry.waiters]  # waiters' callers keep theirs
        for entry in entries:
            for d in entry.waiters or ():
                d.callback(False)
        if unacked:
            log.info("{jid}: the session ended with {count} stanzas unacknowledged; handing"
                     " them on", jid=session.full, count=len(unacked))
            self.host.metrics["smacks.unacked"] += len(unacked)
            self._handOn(session, unacked)

    def _forgetToken(self, state: Managed, user: str | None = None) -> None:
        """The session cannot be resumed any more; remember its count for C{user}, if given."""
        if state.token is None:
            return
        self.resumable.pop(state.token, None)
        if user is not None:
            self.ended[state.token] = (user, state.handled)
            while len(self.ended) > REMEMBERED:
                self.ended.popitem(last=False)
        state.token = None

    def _handOn(self, session, unacked: list[Unacked]) -> None:
        """Re-route what a session that ended was not known to receive (see the module docstring)."""
        host = self.host
        offline = []
        for entry in unacked:
            element = entry.element
            kind = element.getAttribute("type", "normal")
            if element.name == "iq" and kind in ("get", "set") or (
                    element.name == "message" and kind == "groupchat"):
                self._bounce(element, "recipient-unavailable")
            if (element.name != "message" or kind not in ("chat", "normal") or isCarbon(element)
                    or isArchiveResult(element)):
                continue
            if any(not holder.closed for holder in entry.holders):
                continue
            recipients = () if self.stopping else host.resources.recipients(session.bare)
            if recipients:
                again = self._again(entry)
                for recipient in recipients:
                    recipient.send(again)
                self._noteHolders(again, recipients, ())  # should they all end, it is kept once
            else:
                offline.append(self._again(entry))
        if offline:
            d = self._keep(session, offline)
            d.addErrback(lambda failure: log.failure(
                "Cannot keep the unacknowledged messages of {jid}", failure, jid=session.full))
            self.keeping.add(d)
            d.addBoth(lambda _: self.keeping.discard(d))

    @defer.inlineCallbacks
    def _keep(self, session, messages: list[domish.Element]):
        """
        Offline storage, one message after the other (so they stay in
        order), but for those the client reads from the archive.
        """
        mam = self.host.modules.get("mam")
        archived = []
        if mam is not None:
            try:
                archived = yield mam.readFromArchive(session, messages)
            except Exception:
                log.failure("Cannot tell what the archive holds for {jid}; keeping all offline",
                            jid=session.full)
        if archived:
            log.info("{jid}: {count} unacknowledged messages left to the archive, which the"
                     " client reads", jid=session.full, count=len(archived))
            self.host.metrics["smacks.archived"] += len(archived)
            left = {id(message) for message in archived}
            messages = [m for m in messages if id(m) not in left]
        for message in messages:
            d = self.host.hooks.first("offline-message", session.user, message)
            kept = (yield d) if d is not None else False
            if not kept:
                self._bounce(message, "service-unavailable")

    def _bounce(self, stanza: domish.Element, condition: str) -> None:
        reply = bounce(stanza, condition)
        if reply is not None:
            self.host.router.route(reply)

    def _again(self, entry: Unacked) -> domish.Element:
        """The stanza to send once more: a copy, with the delay since it was first sent."""
        element = copyElement(entry.element)
        if element.name != "iq" and not any(True for _ in element.elements(NS_DELAY, "delay")):
            delay = element.addElement((NS_DELAY, "delay"))
            delay["from"] = self.host.name
            delay["stamp"] = delayStamp(entry.stamp)
        return element
