"""
XEP-0198 resumption across the nodes of a cluster: a client whose session
waits on one node (hibernating, or still attached to a link not yet known
dead) resumes it on another, where the balancer sent its new connection.

A token names no node: it is an unguessable secret, known only to the node
holding the session. A node that does not hold it asks, on their channels
(C{q}), the other nodes where the directory shows a session of the
authenticated account; only a session of that account answers to it, so a
token is no use to another account, and a wrong one fails as on one node.
The node holding it (A) ends it there without a word to anyone: no
unavailable presence, nothing handed to offline storage; its old stream
ends with C{<conflict/>}. It answers (C{a}) with the session's state: full
JID, presence, priority and boolean flags (carbons, blocklist asked, archive
read), directed presence, whether the client is inactive (XEP-0352), the
stream management counts, and what the client has not acknowledged, as XML.
The node resuming it (B) binds the session with that state, registers it
under itself, answers C{<resumed/>} and sends again what the client did
not acknowledge.

Nothing sent meanwhile is lost: what reaches A before the hand-over is in
the queue handed over; from then on A's directory names B for that session
(L{Directory.moved}), so A forwards what comes later on B's channel, behind
its answer. A node that does not answer within C{resume_timeout} (a dead
one answers at once: nobody listens on its channel) makes the resumption
fail with C{<failed/>}; the client binds afresh, and what the dead node held
went to offline storage and the archive as for any node that dies. A hand-over
that arrives after B gave up, or after the client went, is not dropped: the
session is rebuilt and ended at once, which hands its messages on as any
session that ends.
"""

from __future__ import annotations

import json
import secrets

from twisted.internet import defer

from invitesrv.cluster.directory import applyState, sessionKey, sessionState
from invitesrv.cluster.redis import RedisUnavailable
from invitesrv.logs import logger
from invitesrv.modules.csi import HELD
from invitesrv.services.slots import Slot
from invitesrv.xmpp.c2s import NOBODY, Session
from invitesrv.xmpp.router import parseJID

log = logger()

REQUEST = b"q"
ANSWER = b"a"


class NoStream:
    """
    The stream of a handed-over session that nobody can take any more: it
    is ended at once, and what it would write goes nowhere.
    """

    ended = True

    def send(self, element) -> None:
        pass

    def close(self) -> None:
        pass

    def closeWithError(self, condition: str, text: str | None = None) -> None:
        pass


class Pending:
    """A resumption asked of other nodes: the stream waiting, the nodes that have not answered."""

    __slots__ = ("stream", "deferred", "waiting", "timeout")

    def __init__(self, stream, waiting: set[str]):
        self.stream = stream
        self.deferred = defer.Deferred()
        self.waiting = waiting
        self.timeout = None


class Resumption:
    """Asks other nodes for sessions to resume here, and hands this node's over."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.pending: dict[str, Pending] = {}

    def attach(self, host) -> None:
        host.hooks.add("resume-elsewhere", self.resumeElsewhere)

    def detach(self, host) -> None:
        host.hooks.remove("resume-elsewhere", self.resumeElsewhere)

    # -- the node where the client comes back ------------------------------------

    def resumeElsewhere(self, stream, token: str) -> defer.Deferred | None:
        """
        Hook C{resume-elsewhere}: ask the nodes with a session of the
        stream's account for the one C{token} resumes; fire with it, bound
        to C{stream}, or None.
        """
        cluster = self.cluster
        host = stream.host
        nodes = cluster.directory.nodesOf(f"{stream.username}@{host.name}")
        if not token or not nodes or not cluster.ready:
            return None
        ident = secrets.token_hex(8)
        pending = self.pending[ident] = Pending(stream, set(nodes))
        pending.timeout = cluster.reactor.callLater(cluster.options.resume_timeout,
                                                    self._timedOut, ident)
        request = REQUEST + json.dumps({"i": ident, "n": cluster.node, "h": host.name,
                                        "u": stream.username, "t": token}).encode()
        for node in nodes:
            d = cluster.commands.execute("PUBLISH", cluster.channelOf(node), request)
            d.addCallbacks(self._asked, self._notAsked, (ident, node), None, (ident, node), None)
        return pending.deferred

    def _asked(self, receivers: int, ident: str, node: str) -> None:
        if not receivers:  # gone: what it held went offline
            self.cluster.nodeGone(node, "nobody listens on its channel")
            self._notHeld(ident, node)

    def _notAsked(self, failure, ident: str, node: str) -> None:
        if not failure.check(RedisUnavailable):
            log.failure("Cluster: cannot ask node {node} for a session to resume", failure,
                        node=node)
        self._notHeld(ident, node)

    def _notHeld(self, ident: str, node: str) -> None:
        pending = self.pending.get(ident)
        if pending is not None:
            pending.waiting.discard(node)
            if not pending.waiting:
                self._done(ident, None)

    def _timedOut(self, ident: str) -> None:
        pending = self.pending.get(ident)
        log.warn("Cluster: no answer from {nodes} within {timeout:.0f} s for a session to resume",
                 nodes=", ".join(sorted(pending.waiting)),
                 timeout=float(self.cluster.options.resume_timeout))
        self.cluster.server.metrics["cluster.resume-timeout"] += 1
        self._done(ident, None)

    def _done(self, ident: str, session) -> None:
        pending = self.pending.pop(ident)
        if pending.timeout.active():
            pending.timeout.cancel()
        pending.deferred.callback(session)

    def onAnswer(self, data: bytes) -> None:
        """
        A node answered: C{a}, then the session it handed over, or only
        that it does not hold the token. A session arriving for a stream
        that stopped waiting is ended here at once (its messages handed on).
        """
        answer = json.loads(data[1:])
        ident = answer["i"]
        if "j" not in answer:
            self._notHeld(ident, answer["n"])
            return
        host = self.cluster.server.hosts[answer["h"]]
        pending = self.pending.get(ident)
        stream = pending.stream if pending is not None else None
        if (stream is None or stream.xmlstream.ended or stream.xmlstream.closing
                or stream.session is not None):
            stream = None
        full = parseJID(answer["j"])
        if stream is not None:
            session = stream.bindSession(full.resource)
            address = session.address
        else:
            session = Session(NoStream(), host, full, "")
            address = answer["st"][-1]
        applyState(session, answer["st"], Slot.named)
        session.address = address
        session.directed = NOBODY.union(answer["d"])
        if stream is not None:
            host.hooks.run("session-bound", session)
        if answer["x"]:
            HELD.set(session, {})
        reader = self.cluster.reader
        host.modules["smacks"].adopt(session, answer["t"], answer["a"], answer["hd"], [
            (reader.parse(xml.encode()), stamp) for xml, stamp in answer["q"]])
        log.info("{jid}: handed over by node {node} ({count} stanzas unacknowledged)",
                 jid=session.full, node=answer["n"], count=len(answer["q"]))
        if stream is not None:
            self._done(ident, session)
            return
        log.info("{jid}: the client stopped waiting for the session; it ends", jid=session.full)
        self.cluster._publish(session, closed=True)  # A named this node for it meanwhile
        session.close()

    # -- the node that holds the session -------------------------------------------

    def onRequest(self, data: bytes) -> None:
        """Another node asks for the session a token resumes: hand it over, or say it is not here."""
        request = json.loads(data[1:])
        cluster = self.cluster
        host = cluster.server.hosts.get(request["h"])
        smacks = host.modules.get("smacks") if host is not None else None
        session = smacks.heldFor(request["u"], request["t"]) if smacks is not None else None
        answer = {"i": request["i"], "n": cluster.node}
        if session is not None:
            answer.update(self._handOver(host, smacks, session, request["n"], request["t"]))
        cluster._write(("PUBLISH", cluster.channelOf(request["n"]), ANSWER + json.dumps(
            answer, separators=(",", ":")).encode()))

    def _handOver(self, host, smacks, session, node: str, token: str) -> dict:
        """End C{session} here for C{node}, silently; what that node needs to go on with it."""
        state = json.loads(sessionState(sessionKey(session)))
        directed = sorted(session.directed)
        inactive = HELD.get(session) is not None
        host.resources.setUnavailable(session)  # nobody is told: the session goes on elsewhere
        session.directed = NOBODY
        managed = smacks.handOver(session)
        self.cluster.directory.moved(node, session.full, state)
        log.info("{jid}: handed over to node {node} to be resumed there ({count} stanzas"
                 " unacknowledged)", jid=session.full, node=node, count=len(managed.queue))
        return {"h": host.name, "j": session.full, "st": state, "d": directed, "x": inactive,
                "t": token, "a": managed.acked, "hd": managed.handled,
                "q": [(entry.element.toXml(), entry.stamp) for entry in managed.queue]}
