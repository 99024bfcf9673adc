"""
Who is online where, and how a stanza reaches its addressee.

The router knows the virtual hosts, their components and the bound sessions.
A stanza for a local domain is handed to that host
(L{invitesrv.host.VirtualHost.receive}), which applies RFC 6121's delivery
rules, or to the component serving that subdomain (L{invitesrv.components}),
which answers for itself; a stanza for any other domain goes to
the default route: the server-to-server service (L{invitesrv.xmpp.s2s}) when
federation is on, else a C{remote-server-not-found} error to the sender.

In cluster mode (L{invitesrv.cluster}) the router's C{directory} adds the
sessions bound on the other nodes to what L{Router.resourcesOf} and
L{Router.session} answer, and may hand a stanza for an internal component
to the node that serves it; without it (one node) nothing changes.
"""

from __future__ import annotations

from functools import lru_cache

from twisted.words.protocols.jabber import error, jid
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep, resourceprep

from invitesrv.logs import logger

log = logger()


@lru_cache(maxsize=8192)
def parseJID(text: str) -> jid.JID:
    """Parse and stringprep a JID, cached (bounded, unlike Twisted's internJID)."""
    return jid.JID(text)


# Nodeprep and resourceprep, cached (bounded): a login prepares its username
# and its resource, the same ones at every reconnect of a phone, and
# Twisted's stringprep, in Python, costs 35 µs for a username of 16
# characters, 2 % of a login. A name that fails raises UnicodeError each time.
prepareUsername = lru_cache(maxsize=8192)(nodeprep.prepare)
prepareResource = lru_cache(maxsize=8192)(resourceprep.prepare)


def preparedJID(user: str, host: str, resource: str) -> jid.JID:
    """
    The full JID of parts that are prepared already (an authenticated
    username, a served host, a resource through resourceprep or made by the
    server): stringprep, which costs more than the rest of a bind, is not
    run again on them.
    """
    full = jid.JID.__new__(jid.JID)
    full.user, full.host, full.resource = user, host, resource
    return full


def bounce(stanza, condition: str, errorType: str | None = None, text: str | None = None):
    """The error reply to C{stanza}, or None where RFC 6120 forbids one."""
    if stanza.getAttribute("type") in ("error", "result") or not stanza.getAttribute("from"):
        return None
    return error.StanzaError(condition, errorType, text).toResponse(stanza)


class Router:
    """Routes stanzas between sessions, local hosts and the default route."""

    def __init__(self) -> None:
        self.hosts: dict = {}
        self.components: dict = {}  # subdomain services, routed like hosts: domain -> component
        self.sessions: dict[str, dict[str, object]] = {}  # bare JID -> resource -> session
        self.remote = None  # the default route: route(stanza, target), or None (no federation)
        # Cluster mode: the sessions of the other nodes (invitesrv.cluster.directory), or None.
        self.directory = None

    def addHost(self, host) -> None:
        self.hosts[host.name] = host

    def addComponent(self, component) -> None:
        """Route C{component.name} to C{component} (its C{receive(stanza, target)})."""
        self.components[component.name] = component

    def removeComponent(self, component) -> None:
        """Stop routing to C{component}: its domain is no longer served here."""
        if self.components.get(component.name) is component:
            del self.components[component.name]

    def local(self, domain: str):
        """The host or component serving C{domain}, or None when it is not served here."""
        return self.hosts.get(domain) or self.components.get(domain)

    def bind(self, session):
        """Register a bound session; return the session it replaces, if any."""
        resources = self.sessions.setdefault(session.bare, {})
        old = resources.get(session.resource)
        resources[session.resource] = session
        return old

    def unbind(self, session) -> None:
        resources = self.sessions.get(session.bare)
        if resources and resources.get(session.resource) is session:
            del resources[session.resource]
            if not resources:
                del self.sessions[session.bare]

    def resourcesOf(self, bare: str) -> dict:
        """The bound sessions of an account, by resource, on every node (do not modify)."""
        sessions = self.sessions.get(bare, {})
        if self.directory is None:
            return sessions
        return self.directory.resourcesOf(bare, sessions)

    def session(self, full: jid.JID):
        """The session bound to C{full}, here or (cluster mode) on another node."""
        session = self.sessions.get(full.userhost(), {}).get(full.resource)
        if session is None and self.directory is not None:
            return self.directory.session(full)
        return session

    def route(self, stanza) -> None:
        """Deliver a stanza that carries a C{to}, from a session or from the server."""
        try:
            target = self._boundJID(stanza["to"]) or parseJID(stanza["to"])
        except (KeyError, jid.InvalidFormat, UnicodeError):
            reply = bounce(stanza, "jid-malformed")
            if reply is not None:
                del reply["from"]
                self.route(reply)
            return
        local = self.local(target.host)
        if local is not None:
            if self.directory is None or not self.directory.routeElsewhere(local, stanza):
                local.receive(stanza, target)
        else:
            self.routeRemote(stanza, target)

    def _boundJID(self, to: str) -> jid.JID | None:
        """
        The JID of the session bound as C{to}, exactly as written (what the
        server sends its clients is addressed so): no parsing needed.
        """
        bare, _, resource = to.partition("/")
        session = self.sessions.get(bare, {}).get(resource) if resource else None
        return session.jid if session is not None else None

    def routeRemote(self, stanza, target: jid.JID) -> None:
        """The default route: server-to-server streams, or an error when federation is off."""
        if self.remote is not None:
            self.remote.route(stanza, target)
            return
        reply = bounce(stanza, "remote-server-not-found")
        if reply is not None:
            self.route(reply)
