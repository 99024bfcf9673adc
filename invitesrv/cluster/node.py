"""
Cluster mode: this node's part in a cluster of nodes that serve the same
domains with the same config and the same store, coordinated through Redis.

Redis holds, for each node, the key C{invitesrv:node:NAME} (its incarnation)
and the hash C{invitesrv:sessions:NAME} (full JID -> the session's state, with
the node's C{~epoch}, C{~seq} and C{~since}), both with a TTL that the node refreshes
every third of it: a node that dies leaves nothing behind once the TTL
passes. So does C{invitesrv:archive-slot:N}, the slot (one of 64) that the
node's archive ids end with, so that no two nodes give one id. Each change
is also published on C{invitesrv:events:DB}, numbered, so that every node
keeps a mirror (L{invitesrv.cluster.directory}) and reads a node's hash
again when it missed a number.

Stanzas for a session of another node are published on that node's channel
C{invitesrv:to:DB:NAME} (channels, unlike keys, are not kept apart by the
database number: it is in their names, so that clusters on one Redis with
different databases do not hear each other). Redis answers a PUBLISH with
the number of subscribers that got it: none means the node is gone (its
connection to Redis went with it), and the stanza is then handled as for a
session that ended: a message goes to offline storage, a request is answered
with an error. Stanzas for an internal component (the group chats) go the
same way to the node running longest, which serves them for the cluster.

The same channel of events carries what keeps the nodes' memories right:
roster changes (the roster module's copies of online users' rosters),
blocklists, archive preferences, PEP changes (each with its notification,
for the interested resources every node holds), and the per-address
counters of L{invitesrv.cluster.limits}. A contact's presence that reaches
an account's PEP here for a session of another node goes to that node
(C{p} on its channel): each node keeps the PEP interest of its own sessions.
"""

from __future__ import annotations

import json
import secrets
import socket
from weakref import WeakKeyDictionary

from twisted.application import service
from twisted.internet import defer, task
from twisted.words.xish import domish

from invitesrv.cluster.directory import Directory, RemoteSession, sessionKey, sessionState
from invitesrv.cluster.limits import SharedLimits
from invitesrv.cluster.redis import RedisClient, RedisError, RedisUnavailable, parseURL
from invitesrv.cluster.resumption import Resumption
from invitesrv.components.base import InternalComponent
from invitesrv.logs import logger
from invitesrv.modules.mam import ARCHIVE_SLOTS
from invitesrv.services.slots import Slot
from invitesrv.store.interfaces import ArchivePrefs
from invitesrv.xmpp.router import bounce, parseJID
from invitesrv.xmpp.xmlparser import RestrictedElementStream

log = logger()

PREFIX = "invitesrv:"
# How often the command connection reads Redis's answers: the PUBLISH of each
# forwarded stanza is answered, and reading the answers in batches spares a
# wake-up per stanza (bench/cluster.py); a node found gone is found so much later.
READ_EVERY = 0.02
# How long the admin's cluster-wide views wait for Redis to say which nodes are alive.
PEERS_TIMEOUT = 2.0
# Hold an archive slot for node ARGV[1] (for ARGV[2] seconds, out of the
# ARGV[3] slots KEYS[1]0, KEYS[1]1, ...): the one it holds, else the one it
# held (ARGV[4]) if Redis forgot it and nobody took it, else the first free;
# -1 when every slot is held. One script, so that two nodes never take one.
CLAIM_SLOT = """
local held
for slot = 0, tonumber(ARGV[3]) - 1 do
  local holder = redis.call('GET', KEYS[1] .. slot)
  if holder == ARGV[1] then held = slot break end
  if not holder and (not held or slot == tonumber(ARGV[4])) then held = slot end
end
if not held then return -1 end
redis.call('SET', KEYS[1] .. held, ARGV[1], 'EX', ARGV[2])
return held
"""


def nodeKey(node: str) -> str:
    return f"{PREFIX}node:{node}"


def sessionsKey(node: str) -> str:
    return f"{PREFIX}sessions:{node}"


class StanzaReader:
    """
    Parses the stanzas other nodes forward, with the restricted parser of
    client streams kept open between them (a parser made per stanza would
    cost more than the stanza), and made anew after a bad one.
    """

    maxSize = 16 * 1024 * 1024  # what a node sends is what a client or the server made

    def __init__(self):
        self.parser = None

    def parse(self, data: bytes) -> domish.Element:
        if self.parser is None:
            self.parser = RestrictedElementStream(self.maxSize)
            self.parser.DocumentStartEvent = lambda root: None
            self.parser.DocumentEndEvent = lambda: None
            self.parser.parse(b"<stream xmlns='jabber:client'>")
        elements = []
        self.parser.ElementEvent = elements.append
        try:
            self.parser.parse(data)
        except Exception:
            self.parser = None
            raise
        if len(elements) != 1:
            self.parser = None
            raise ValueError(f"expected one stanza, got {len(elements)}")
        return elements[0]


class ClusterNode(service.Service):
    """
    Joins the cluster: publishes this node's sessions, mirrors the others',
    forwards stanzas between nodes, hands component stanzas to the node
    serving them, relays roster changes and shares the per-address limits.
    """

    def __init__(self, server, options, reactor):
        self.server = server
        self.options = options
        self.reactor = reactor
        self.node = options.node or socket.gethostname()
        self.epoch = secrets.token_hex(6)  # this incarnation: a restarted node starts again
        self.seq = 0
        self.ttl = max(3, int(options.ttl))
        self.directory = Directory(self, server.router, Slot.named)
        self.published: WeakKeyDictionary = WeakKeyDictionary()  # session -> sessionKey published
        self.relaying = False  # applying another node's roster change to our store's observers
        self.db = parseURL(options.redis)[2]
        self.events = f"{PREFIX}events:{self.db}"
        self.eventsChannel = self.events.encode()
        self.commands: RedisClient | None = None  # made when the service starts
        self.subscriber: RedisClient | None = None
        self.heartbeat = task.LoopingCall(self.beat)
        self.heartbeat.clock = reactor
        self.ready = False
        self.synced: tuple = (None, None)  # the connections the last _sync used
        self.pepUntold = False  # a PEP change made while Redis was away
        self.archiveSlot: int | None = None  # what the last claim gave (-1: none free)
        self.resumption = Resumption(self)
        self.handlers = {b"d": self._deliver, b"c": self._close, b"r": self._route,
                         b"q": self.resumption.onRequest, b"a": self.resumption.onAnswer,
                         b"p": self._pepPresence}
        self.since = reactor.seconds()  # the oldest node serves the internal components
        self.reader = StanzaReader()
        self.limits = SharedLimits(self)
        self.eventHandlers = {"s": self._sessionEvent, "r": self._resetEvent,
                              "roster": self._rosterEvent, "blocklist": self._blocklistEvent,
                              "archive-prefs": self._archivePrefsEvent,
                              "pep": self._pepEvent,
                              "failures": self.limits.onFailures,
                              "connections": self.limits.onConnections,
                              "registered": self.limits.onRegistered}
        server.router.directory = self.directory

    # -- start and stop ---------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        self.attach()
        self.commands = RedisClient(self.reactor, self.options.redis, f"invitesrv-{self.node}",
                                    onConnected=self._commandsUp, readEvery=READ_EVERY)
        self.subscriber = RedisClient(self.reactor, self.options.redis,
                                      f"invitesrv-{self.node}-events",
                                      onConnected=self._subscriberUp, onMessage=self._received)
        log.info("Cluster node {node} joining through Redis at {url}", node=self.node,
                 url=self.commands.url)
        self.subscriber.start()
        self.commands.start()
        self.heartbeat.start(self.ttl / 3, now=False)

    def attach(self) -> None:
        """Hear of this node's sessions, roster changes and limits."""
        for host in self.server.hosts.values():
            host.hooks.add("session-bound", self.sessionBound, -100)
            host.hooks.add("session-closed", self.sessionClosed, -100)
            host.hooks.add("blocklist-changed", self.blocklistChanged)
            host.hooks.add("archive-prefs-changed", self.archivePrefsChanged)
            host.hooks.add("pep-changed", self.pepChanged)
            host.hooks.add("pep-presence", self.pepPresence)
            self.resumption.attach(host)
        self.server.store.rosterObservers.append(self.rosterChanging)
        self.limits.attach()

    def detach(self) -> None:
        for host in self.server.hosts.values():
            host.hooks.remove("session-bound", self.sessionBound)
            host.hooks.remove("session-closed", self.sessionClosed)
            host.hooks.remove("blocklist-changed", self.blocklistChanged)
            host.hooks.remove("archive-prefs-changed", self.archivePrefsChanged)
            host.hooks.remove("pep-changed", self.pepChanged)
            host.hooks.remove("pep-presence", self.pepPresence)
            self.resumption.detach(host)
        self.server.store.rosterObservers.remove(self.rosterChanging)
        self.limits.detach()

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        if self.heartbeat.running:
            self.heartbeat.stop()
        self.detach()
        try:  # leave at once rather than when the TTL passes
            yield self.commands.execute("DEL", nodeKey(self.node), sessionsKey(self.node),
                                        self.limits.connectionsKey(self.node))
            yield self.commands.execute("PUBLISH", self.events, json.dumps(
                {"k": "r", "n": self.node, "e": self.epoch}))  # the others read it gone
        except (RedisError, RedisUnavailable):
            pass
        yield defer.DeferredList([self.subscriber.stop(), self.commands.stop()])

    def _subscriberUp(self, connection):
        d = defer.gatherResults([connection.execute("SUBSCRIBE", channel)
                                 for channel in (self.events, self.channelOf(self.node))])
        return d.addCallback(lambda _: self._sync())

    def _commandsUp(self, connection):
        return self._sync()

    @defer.inlineCallbacks
    def _sync(self, again: bool = False):
        """
        Once both connections are up (again), or C{again} when this node's
        entries expired: write every local session under a new incarnation,
        tell the others, and read theirs.
        """
        connections = (self.subscriber.connection, self.commands.connection)
        if None in connections or (connections == self.synced and not again):
            return
        rejoined = self.synced != (None, None)
        self.synced = connections
        self.epoch = secrets.token_hex(6)
        self.seq = 0
        fields = ["~epoch", self.epoch, "~seq", "0", "~since", repr(self.since)]
        for resources in list(self.server.router.sessions.values()):
            for session in resources.values():
                key = self.published[session] = sessionKey(session)
                fields += [session.full, sessionState(key)]
        key = sessionsKey(self.node)
        execute = self.commands.execute
        execute("MULTI")
        execute("DEL", key)
        execute("HSET", key, *fields)
        execute("EXPIRE", key, self.ttl)
        execute("SET", nodeKey(self.node), self.epoch, "EX", self.ttl)
        for command in self.limits.snapshot():
            execute(*command)
        reset = {"k": "r", "n": self.node, "e": self.epoch}
        if self.pepUntold:
            reset["pep"] = True
        execute("PUBLISH", self.events, json.dumps(reset))
        yield execute("EXEC")
        self.useSlot((yield self.claimSlot()))
        self.ready = True
        self.pepUntold = False
        if rejoined:
            self._forgetPep()  # what the others changed while this node was away
        cursor = b"0"
        while True:
            cursor, keys = yield execute("SCAN", cursor, "MATCH", sessionsKey("*"), "COUNT", 1000)
            for found in keys:
                node = found.decode()[len(sessionsKey("")):]
                if node != self.node:
                    yield self._loadNode(node)
            if cursor == b"0":
                break
        log.info("Cluster node {node} joined: {nodes} other nodes, {sessions} sessions on them",
                 node=self.node, nodes=len(self.directory.nodes),
                 sessions=sum(len(v.sessions) for v in self.directory.nodes.values()))

    @defer.inlineCallbacks
    def _loadNode(self, node: str):
        """Read C{node}'s sessions and connection counts from Redis."""
        fields, connections = yield defer.gatherResults([
            self.commands.execute("HGETALL", sessionsKey(node)),
            self.commands.execute("HGETALL", self.limits.connectionsKey(node))],
            consumeErrors=True)
        if fields:
            self.directory.load(node, dict(zip(fields[::2], fields[1::2], strict=True)))
            self.limits.load(node, connections)
        else:
            self.directory.drop(node)
            self.limits.drop(node)

    @defer.inlineCallbacks
    def beat(self):
        """Refresh this node's TTL; forget the nodes whose own has passed."""
        if not self.ready:
            return
        execute = self.commands.execute
        peers = list(self.directory.nodes)
        try:
            registered, kept, _, alive, slot = yield defer.gatherResults([
                execute("SET", nodeKey(self.node), self.epoch, "EX", self.ttl),
                execute("EXPIRE", sessionsKey(self.node), self.ttl),
                execute("EXPIRE", self.limits.connectionsKey(self.node), self.ttl),
                execute("MGET", *map(nodeKey, peers)) if peers else defer.succeed([]),
                self.claimSlot()],
                consumeErrors=True)
        except defer.FirstError as e:
            log.warn("Cluster heartbeat failed: {error}", error=e.subFailure.value)
            return
        self.useSlot(slot)
        if not kept:  # our entries expired (the process was stopped longer than the TTL)
            log.warn("Cluster node {node}: its registration had expired; writing it again",
                     node=self.node)
            yield self._sync(again=True)
        for node, epoch in zip(peers, alive, strict=True):
            if epoch is None:
                self.nodeGone(node, "its registration expired")

    def claimSlot(self) -> defer.Deferred:
        """
        Hold this node's archive slot (L{invitesrv.modules.mam.ArchiveIds}),
        at each heartbeat: a node that restarts within its TTL finds its own
        again, one that was away past it keeps it if nobody took it. It is
        not given back when the node stops, only left to expire: the node
        finds it again if it comes back at once.
        """
        return self.commands.execute(
            "EVAL", CLAIM_SLOT, 1, f"{PREFIX}archive-slot:", self.node, self.ttl, ARCHIVE_SLOTS,
            -1 if self.archiveSlot is None else self.archiveSlot)

    def useSlot(self, slot: int) -> None:
        """Have every host's archive give its ids in C{slot} (-1: none, which may meet another's)."""
        if slot == self.archiveSlot:
            return
        if slot < 0:
            log.error("Cluster node {node}: all {count} archive slots are held by other nodes:"
                      " its archive ids may be another node's, and those messages then archived"
                      " again under new ids", node=self.node, count=ARCHIVE_SLOTS)
        else:
            log.info("Cluster node {node} gives archive ids in slot {slot}", node=self.node,
                     slot=slot)
        self.archiveSlot = slot
        for host in self.server.hosts.values():
            module = host.modules.get("mam")
            if module is not None:
                module.setSlot(slot if slot >= 0 else None)

    def checkPeers(self, timeout: float = PEERS_TIMEOUT) -> defer.Deferred:
        """
        Ask Redis which other nodes still listen on their channels (one
        C{PUBSUB NUMSUB}, waited for C{timeout} seconds at most), for the
        admin's views of the whole cluster: those that do not are dropped at
        once, as when a stanza forwarded to them found nobody. Fires with the
        names of the nodes found gone, or None when Redis did not answer.
        """
        peers = sorted(self.directory.nodes)
        if not peers:
            return defer.succeed([])
        if not self.ready:
            return defer.succeed(None)
        d = self.commands.execute("PUBSUB", "NUMSUB", *map(self.channelOf, peers))
        d.addTimeout(timeout, self.reactor)

        def counted(reply):
            gone = [node for node, listeners in zip(peers, reply[1::2], strict=True)
                    if not listeners]
            for node in gone:
                self.nodeGone(node, "nobody listens on its channel")
            return gone

        def unanswered(failure):
            log.warn("Cluster: Redis did not say which nodes are alive ({error})",
                     error=failure.value)
            return None
        return d.addCallbacks(counted, unanswered)

    def nodeGone(self, node: str, why: str) -> None:
        self.limits.drop(node)
        if node in self.directory.nodes:
            sessions = self.directory.drop(node)
            log.warn("Cluster node {node} is gone ({why}): {count} of its sessions dropped",
                     node=node, why=why, count=len(sessions))

    # -- this node's sessions ------------------------------------------------------

    def sessionBound(self, session) -> None:
        """Publish a new session, and watch what it sends for changes of its state."""
        session.addInput(self.watch)
        self._publish(session)

    def watch(self, session, element, forward) -> None:
        """After each stanza a session sends: publish its state again if that changed it."""
        forward(element)
        if not session.closed and self.published.get(session) != sessionKey(session):
            self._publish(session)

    def sessionClosed(self, session) -> None:
        if self.published.pop(session, None) is not None:
            self._publish(session, closed=True)

    def _publish(self, session, closed: bool = False) -> None:
        if closed:
            state = None
        else:
            key = self.published[session] = sessionKey(session)
            state = sessionState(key)
        if not self.ready:
            return  # written with the others when Redis is back (_sync)
        self.seq += 1
        key = sessionsKey(self.node)
        event = json.dumps({"k": "s", "n": self.node, "e": self.epoch, "s": self.seq,
                            "j": session.full, "st": json.loads(state) if state else None})
        if state is None:
            change = (("HDEL", key, session.full), ("HSET", key, "~seq", self.seq))
        else:
            change = (("HSET", key, session.full, state, "~seq", self.seq),)
        self._write(("MULTI",), *change, ("PUBLISH", self.events, event), ("EXEC",))

    def _write(self, *commands) -> None:
        """Send commands whose answers nobody waits for; a failure is logged."""
        for command in commands:
            self.commands.execute(*command).addErrback(self._failed)

    def _failed(self, failure) -> None:
        """
        A write failed. Without a connection, everything is written again
        when Redis is back (L{_sync}); an error from Redis is logged.
        """
        if failure.check(RedisUnavailable):
            if self.ready:
                log.warn("Cluster: Redis unavailable ({error}); this node's sessions are"
                         " written again once it is back", error=failure.value)
            self.ready = False
        elif not failure.check(defer.CancelledError):
            log.failure("Cluster: a write to Redis failed", failure)

    # -- what the other nodes say -----------------------------------------------

    def _received(self, channel: bytes, data: bytes) -> None:
        try:
            if channel == self.eventsChannel:
                event = json.loads(data)
                if event.get("n") != self.node:
                    self.eventHandlers[event["k"]](event)
            else:
                self.handlers[data[:1]](data)
        except Exception:
            log.failure("Cluster: cannot handle a message on {channel}", channel=channel)

    def _sessionEvent(self, event: dict) -> None:
        node = event["n"]
        accepted = self.directory.accepts(node, event["e"], event["s"])
        if accepted:
            self.directory.apply(node, event["s"], event["j"], event["st"])
        elif accepted is None:
            self._loadNode(node).addErrback(self._unread, node)

    def _resetEvent(self, event: dict) -> None:
        self._loadNode(event["n"]).addErrback(self._unread, event["n"])
        if event.get("pep"):
            self._forgetPep()  # that node changed PEP nodes while away from Redis

    def _unread(self, failure, node: str) -> None:
        log.failure("Cluster: cannot read the sessions of node {node}", failure, node=node)

    # -- stanzas between nodes -------------------------------------------------------

    def forward(self, remote: RemoteSession, element) -> None:
        """Send C{element} to C{remote}'s node for it; if the node is gone, as for an ended session."""
        payload = b"d" + remote.full.encode() + b"\n" + element.toXml().encode()
        d = self.commands.execute("PUBLISH", self.channelOf(remote.node), payload)
        d.addCallbacks(self._forwarded, self._notForwarded, (remote, element), None,
                       (remote, element), None)

    def _forwarded(self, receivers: int, remote: RemoteSession, element) -> None:
        if not receivers:
            self.nodeGone(remote.node, "nobody listens on its channel")
            self.undeliverable(remote.host, remote.jid, element)

    def _notForwarded(self, failure, remote: RemoteSession, element) -> None:
        if not failure.check(RedisUnavailable):
            log.failure("Cluster: cannot forward to {jid}", failure, jid=remote.full)
        self.undeliverable(remote.host, remote.jid, element)

    # -- components ----------------------------------------------------------------

    def componentNode(self) -> str:
        """
        The node that serves the internal components (group chats) for the
        cluster: the one running longest, so that rooms move only when it goes.
        """
        oldest = min(((view.since, name) for name, view in self.directory.nodes.items()),
                     default=None)
        return oldest[1] if oldest is not None and oldest < (self.since, self.node) else self.node

    def routeElsewhere(self, local, stanza) -> bool:
        """Hand a stanza for an internal component to the node serving it, if not this one."""
        if not isinstance(local, InternalComponent) or not self.ready:
            return False
        node = self.componentNode()
        if node == self.node:
            return False
        d = self.commands.execute("PUBLISH", self.channelOf(node), b"r" + stanza.toXml().encode())
        d.addCallbacks(self._routed, self._notRouted, (node, local, stanza), None,
                       (local, stanza), None)
        return True

    def _routed(self, receivers: int, node: str, local, stanza) -> None:
        if not receivers:  # gone: the next oldest serves it, perhaps this node
            self.nodeGone(node, "nobody listens on its channel")
            self.server.router.route(stanza)

    def _notRouted(self, failure, local, stanza) -> None:
        if not failure.check(RedisUnavailable):
            log.failure("Cluster: cannot hand over a stanza for {to}", failure,
                        to=stanza.getAttribute("to"))
        local.receive(stanza, parseJID(stanza["to"]))  # served here meanwhile

    def _route(self, data: bytes) -> None:
        """
        A stanza for a component this node serves for the cluster: C{r},
        stanza. Served here whatever this node thinks (two nodes that
        disagree for a moment do not hand it back and forth).
        """
        stanza = self.reader.parse(data[1:])
        target = parseJID(stanza["to"])
        local = self.server.router.local(target.host)
        if local is not None:
            local.receive(stanza, target)

    def closeRemote(self, remote: RemoteSession, condition: str | None, text: str | None) -> None:
        payload = "\n".join((remote.full, condition or "", text or "")).encode()
        self._write(("PUBLISH", self.channelOf(remote.node), b"c" + payload))

    def channelOf(self, node: str) -> str:
        """The channel of stanzas for C{node}'s sessions."""
        return f"{PREFIX}to:{self.db}:{node}"

    def _local(self, full: str):
        target = parseJID(full)
        return target, self.server.router.sessions.get(target.userhost(), {}).get(target.resource)

    def _deliver(self, data: bytes) -> None:
        """A stanza from another node for one of this node's sessions: C{d}, full JID, newline, stanza."""
        newline = data.index(b"\n")
        element = self.reader.parse(data[newline + 1:])
        target, session = self._local(data[1:newline].decode())
        if session is not None and not session.closed:
            session.send(element)
            return
        host = self.server.router.hosts.get(target.host)
        if host is not None:
            self.undeliverable(host, target, element)

    def _close(self, data: bytes) -> None:
        """Another node ends a session of this one: C{c}, full JID, condition, text."""
        full, condition, text = data[1:].decode().split("\n", 2)
        _, session = self._local(full)
        if session is not None:
            session.close(condition or None, text or None)

    def undeliverable(self, host, target, element) -> None:
        """
        A stanza for a session that is gone with its node (or ended on the
        way): a message the user should have goes to offline storage, a
        request gets an error, the rest (presence, copies) is dropped.
        """
        kind = element.getAttribute("type", "normal")
        if element.name == "iq":
            if kind in ("get", "set"):
                self._refuse(element)
            return
        if (element.name != "message" or kind not in ("normal", "chat")
                or element.getAttribute("from") == target.userhost()):  # a carbon copy
            return
        stored = host.hooks.first("offline-message", target.user, element)
        if stored is None:
            self._refuse(element)
        else:
            stored.addCallback(lambda kept: kept or self._refuse(element))

    def _refuse(self, stanza) -> None:
        reply = bounce(stanza, "service-unavailable")
        if reply is not None:
            self.server.router.route(reply)

    # -- rosters ----------------------------------------------------------------------

    def rosterChanging(self, host: str | None, username: str | None) -> None:
        """
        The store is about to change a roster here: the other nodes drop
        their copy now, and again a moment later (the write may commit after
        the first drop, and a copy read in between would be stale).
        """
        if self.relaying or not self.ready:
            return
        event = json.dumps({"k": "roster", "n": self.node, "h": host, "u": username})
        self._write(("PUBLISH", self.events, event))

    def _rosterEvent(self, event: dict) -> None:
        self._dropRoster(event["h"], event["u"])
        self.reactor.callLater(self.options.roster_settle, self._dropRoster, event["h"], event["u"])

    # -- blocklists ---------------------------------------------------------------

    def blocklistChanged(self, host, username: str) -> None:
        """Hook C{blocklist-changed}: the other nodes read the user's blocklist again."""
        if self.ready:
            self._write(("PUBLISH", self.events, json.dumps(
                {"k": "blocklist", "n": self.node, "h": host.name, "u": username})))

    def _blocklistEvent(self, event: dict) -> None:
        host = self.server.hosts.get(event["h"])
        module = host.modules.get("blocking") if host is not None else None
        if module is not None:
            module.refresh(event["u"]).addErrback(
                lambda failure: log.failure("Cluster: cannot read the blocklist of {user}",
                                            failure, user=event["u"]))

    # -- archive preferences ------------------------------------------------------

    def archivePrefsChanged(self, host, username: str, prefs) -> None:
        """Hook C{archive-prefs-changed}: the other nodes archive as the user now wants."""
        if self.ready:
            self._write(("PUBLISH", self.events, json.dumps(
                {"k": "archive-prefs", "n": self.node, "h": host.name, "u": username,
                 "p": [prefs.policy, list(prefs.always), list(prefs.never)]})))

    def _archivePrefsEvent(self, event: dict) -> None:
        host = self.server.hosts.get(event["h"])
        module = host.modules.get("mam") if host is not None else None
        if module is not None:
            policy, always, never = event["p"]
            module.learnPrefs(event["u"], ArchivePrefs(policy, tuple(always), tuple(never)))

    def _dropRoster(self, host, username) -> None:
        self.relaying = True
        try:
            self.server.store.rosterChanging(host, username)
        finally:
            self.relaying = False

    # -- PEP ------------------------------------------------------------------------

    def _pep(self, hostname: str):
        host = self.server.hosts.get(hostname)
        return host.modules.get("pep") if host is not None else None

    def pepChanged(self, host, username: str, node: str | None, options: dict | None,
                   eventXML: str | None) -> None:
        """
        Hook C{pep-changed}: one message for every other node, which forgets
        its copy of the account's nodes and tells its interested resources.
        """
        if not self.ready:
            self.pepUntold = True  # the others forget every copy when Redis is back
            return
        self._write(("PUBLISH", self.events, json.dumps(
            {"k": "pep", "n": self.node, "h": host.name, "u": username, "pn": node,
             "o": options, "x": eventXML})))

    def _pepEvent(self, event: dict) -> None:
        pep = self._pep(event["h"])
        if pep is not None:
            pep.changedElsewhere(event["u"], event["pn"], event["o"], event["x"])

    def pepPresence(self, host, sender, presence) -> bool | None:
        """
        Hook C{pep-presence}: a presence of a session of another node (a
        probe's answer made here) goes to that node's PEP, which keeps its
        sessions' interest and asks them their caps; True when not read here.
        """
        remote = self.server.router.session(sender)
        if not isinstance(remote, RemoteSession):
            return None
        if self.ready:
            self._write(("PUBLISH", self.channelOf(remote.node), b"p" + presence.toXml().encode()))
        return True

    def _pepPresence(self, data: bytes) -> None:
        """
        A presence of a session here that another node had for an account:
        C{p}, presence. Read here whatever this node thinks (not handed back);
        an available one only while the session is still bound and available.
        """
        presence = self.reader.parse(data[1:])
        target, sender = parseJID(presence["to"]), parseJID(presence["from"])
        pep = self._pep(target.host)
        if pep is None or target.user is None:
            return
        if presence.getAttribute("type") is None:
            _, session = self._local(sender.full())
            if session is None or session.closed or not session.available:
                return
        pep.contactPresence(target.user, sender.full(), presence)

    def _forgetPep(self) -> None:
        """PEP changes may have been missed: every account's nodes are read again when needed."""
        for host in self.server.hosts.values():
            pep = host.modules.get("pep")
            if pep is not None:
                pep.forgetAll()
