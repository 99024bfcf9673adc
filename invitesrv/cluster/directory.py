"""
The sessions bound on the other nodes of a cluster, as this node sees them.

Every node keeps its own sessions in Redis (L{invitesrv.cluster.node}) and
tells the others of each change; each node mirrors them here, so that routing
asks memory, not Redis, for every stanza (as ejabberd replicates its session
table to every node). The router consults the directory through one
extension point (L{invitesrv.xmpp.router.Router.directory}): a session of
another node appears as a L{RemoteSession}, with the priority, availability,
last presence and interest that delivery needs, and sending to it forwards
the stanza to its node.
"""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.words.protocols.jabber import jid

from invitesrv.logs import logger
from invitesrv.modules.presence import parseStored
from invitesrv.xmpp.c2s import NOBODY
from invitesrv.xmpp.router import parseJID

log = logger()


def sessionKey(session) -> tuple:
    """What other nodes need to know of a session, compared cheaply after each stanza."""
    return (session.priority, session.available, session.presence, session.interested,
            tuple(sorted(slot.name for slot, value in session.slots.items() if value is True)),
            session.address or "")


def sessionState(key: tuple) -> str:
    """The state of L{sessionKey} as published (the presence serialised)."""
    priority, available, presence, interested, flags, address = key
    return json.dumps([priority, available, presence.toXml() if presence is not None else None,
                       interested, flags, address], separators=(",", ":"))


def applyState(session, state: list, slots: dict) -> None:
    """
    Set a session's state as a node published it (see
    L{sessionState}): on a remote session, or on one
    resumed here that another node handed over (its slots not set yet).
    """
    session.priority, session.available, presence, session.interested, flags, session.address = state
    session.presence = parseStored(presence) if presence else None
    session.slots = {slots[name]: True for name in flags if name in slots}


class RemoteSession:
    """
    A session bound on another node. It answers what the modules ask of a
    session (L{invitesrv.xmpp.c2s.Session}'s attributes and C{send},
    C{close}, C{whenSent}); its boolean slots (carbons enabled, blocklist
    asked for) are those its node set.
    """

    __slots__ = ("node", "cluster", "host", "jid", "full", "bare", "bareJID", "user", "resource",
                 "priority", "available", "presence", "interested", "directed", "address",
                 "closed", "slots", "__weakref__")

    def __init__(self, node: str, cluster, host, full: jid.JID):
        self.node = node
        self.cluster = cluster
        self.host = host
        self.jid = full
        self.full = full.full()
        self.bare = full.userhost()
        self.bareJID = full.userhostJID()
        self.user = full.user
        self.resource = full.resource
        self.priority = 0
        self.available = False
        self.presence = None
        self.interested = False
        self.directed = NOBODY  # kept by its own node
        self.address = ""
        self.closed = False
        self.slots: dict = {}

    def __repr__(self) -> str:
        return f"<RemoteSession {self.full} on {self.node}>"

    def update(self, state: list, slots: dict) -> None:
        """Take the state its node published (see L{sessionState})."""
        applyState(self, state, slots)

    def send(self, element) -> None:
        """Forward a stanza to the session's node."""
        self.cluster.forward(self, element)

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        """Have its node end the session (a conflict, a deleted account)."""
        if not self.closed:
            self.closed = True
            self.cluster.closeRemote(self, condition, text)

    def whenSent(self) -> defer.Deferred:
        """Another node's session: what it was sent is that node's to keep."""
        return defer.succeed(not self.closed)


class NodeView:
    """What this node knows of another: its incarnation, last event, start and sessions."""

    def __init__(self, name: str, epoch: str, seq: int, since: float = 0.0):
        self.name = name
        self.epoch = epoch
        self.seq = seq
        self.since = since  # when it started: the oldest node serves the components
        self.sessions: dict[str, RemoteSession] = {}


class Directory:
    """The mirror of every other node's sessions, by node and by bare JID."""

    def __init__(self, cluster, router, slots: dict):
        self.cluster = cluster
        self.router = router
        self.slots = slots  # boolean slots that travel with a session, by name
        self.nodes: dict[str, NodeView] = {}
        self.byBare: dict[str, dict[str, RemoteSession]] = {}

    # -- what the router asks ------------------------------------------------

    def resourcesOf(self, bare: str, local: dict) -> dict:
        """The sessions of C{bare} on every node (a local one wins over a remote one of the same name)."""
        remote = self.byBare.get(bare)
        if not remote:
            return local
        merged = dict(remote)
        merged.update(local)
        return merged

    def session(self, full: jid.JID) -> RemoteSession | None:
        return self.byBare.get(full.userhost(), {}).get(full.resource)

    def nodesOf(self, bare: str) -> set[str]:
        """The other nodes with a session of C{bare}."""
        return {session.node for session in self.byBare.get(bare, {}).values()}

    def moved(self, node: str, full: str, state: list) -> None:
        """
        A session of this node was handed to C{node}: stanzas for it go
        there from now on, before that node tells of it.
        """
        view = self.nodes.get(node)
        if view is not None:
            self._set(view, full, state)

    def routeElsewhere(self, local, stanza) -> bool:
        """
        Whether C{stanza}, for the host or component C{local}, was handed
        to the node that serves that component for the cluster (group chat
        rooms live in one node's memory): True if it went there.
        """
        return self.cluster.routeElsewhere(local, stanza)

    # -- what the other nodes say ----------------------------------------------

    def accepts(self, node: str, epoch: str, seq: int) -> bool | None:
        """
        Whether an event (C{seq} of C{node}'s incarnation C{epoch}) is the
        next one: True to apply it, False to ignore it (already seen), None
        when something was missed and the node's sessions must be read again.
        """
        view = self.nodes.get(node)
        if view is None or view.epoch != epoch or seq > view.seq + 1:
            return None
        return seq == view.seq + 1

    def apply(self, node: str, seq: int, full: str, state: list | None) -> None:
        """One session of C{node} was bound or changed (C{state}), or ended (None)."""
        view = self.nodes[node]
        view.seq = seq
        self._set(view, full, state)

    def load(self, node: str, fields: dict[bytes, bytes]) -> None:
        """
        All of C{node}'s sessions as read from Redis (its hash, with its
        C{~epoch}, C{~seq} and C{~since}); ignored if events already went further.
        """
        epoch = fields.pop(b"~epoch", b"").decode()
        seq = int(fields.pop(b"~seq", b"0"))
        since = float(fields.pop(b"~since", b"0"))
        view = self.nodes.get(node)
        if view is not None and view.epoch == epoch and view.seq >= seq:
            return
        self.drop(node)
        view = self.nodes[node] = NodeView(node, epoch, seq, since)
        for full, state in fields.items():
            self._set(view, full.decode(), json.loads(state))

    def drop(self, node: str) -> list[RemoteSession]:
        """Forget C{node} and its sessions (it is gone, or restarted); return them."""
        view = self.nodes.pop(node, None)
        if view is None:
            return []
        sessions = list(view.sessions.values())
        for session in sessions:
            self._set(view, session.full, None)
        return sessions

    def _set(self, view: NodeView, full: str, state: list | None) -> None:
        old = view.sessions.pop(full, None)
        if old is not None:
            resources = self.byBare.get(old.bare, {})
            if resources.get(old.resource) is old:
                del resources[old.resource]
                if not resources:
                    del self.byBare[old.bare]
            if state is None:
                old.closed = True
        if state is None:
            return
        address = parseJID(full)
        host = self.router.hosts.get(address.host)
        if host is None or address.user is None or address.resource is None:
            log.warn("Cluster node {node} has a session of {jid}, a domain not served here",
                     node=view.name, jid=full)
            return
        session = old if old is not None else RemoteSession(view.name, self.cluster, host, address)
        session.update(state, self.slots)
        view.sessions[full] = session
        self.byBare.setdefault(session.bare, {})[session.resource] = session
