"""
The control channel: how C{invitesrvctl} reaches a running server.

The server listens on a Unix socket in its data directory (C{control.sock},
mode 0600, so only the account that runs the server can use it) and answers
a few AMP commands. Whatever changes live state goes through here while the
server runs, so that deleting an account or changing its password runs the
server's own registrar and hooks: the user's live sessions end at once. What
only reads the database (listing users, invites) needs no channel: the
command-line tool opens the database itself, as it does when no server runs.

The channel also records, at start, what the server serves (its hosts and
public URL) in C{server.json} beside the database, so the command-line tool
knows them without the C{--domain} and C{--public-url} flags repeated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.internet import defer, endpoints, error, protocol
from twisted.protocols import amp
from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish

from invitesrv.logs import logger
from invitesrv.registrar import RegistrationError, prepareUsername
from invitesrv.reload import ReloadError

log = logger()

SOCKET_NAME = "control.sock"
RECORD_NAME = "server.json"
CONNECT_TIMEOUT = 5  # seconds for the command-line tool to reach the socket


class ControlError(Exception):
    """A control command was refused; the text says why."""


_ERRORS = {ControlError: b"CONTROL_ERROR"}


class ServerInfo(amp.Command):
    """What the running server serves, and its counters."""

    response = [(b"hosts", amp.ListOf(amp.Unicode())), (b"publicURL", amp.Unicode()),
                (b"pid", amp.Integer()), (b"counters", amp.Unicode())]


class ChangePassword(amp.Command):
    """Set an account's password through the server's registrar (its sessions end)."""

    arguments = [(b"jid", amp.Unicode()), (b"password", amp.Unicode())]
    response = [(b"changed", amp.Boolean())]
    errors = _ERRORS


class DeleteUser(amp.Command):
    """Delete an account through the server's registrar (its sessions end)."""

    arguments = [(b"jid", amp.Unicode())]
    response = [(b"deleted", amp.Boolean())]
    errors = _ERRORS


class ListSessions(amp.Command):
    """
    The bound sessions, optionally of one host; in cluster mode those of
    every node, each with its node, and the nodes found gone meanwhile.
    """

    arguments = [(b"host", amp.Unicode(optional=True))]
    response = [(b"sessions", amp.AmpList([(b"jid", amp.Unicode()), (b"address", amp.Unicode()),
                                            (b"available", amp.Boolean()),
                                            (b"priority", amp.Integer()),
                                            (b"node", amp.Unicode())])),
                (b"gone", amp.ListOf(amp.Unicode())), (b"unsure", amp.Boolean())]
    errors = _ERRORS


class Kick(amp.Command):
    """End the sessions of an account (bare JID) or of one resource (full JID)."""

    arguments = [(b"jid", amp.Unicode()), (b"text", amp.Unicode(optional=True))]
    response = [(b"closed", amp.Integer())]
    errors = _ERRORS


class Announce(amp.Command):
    """Send a headline message from a host to everyone online there (on every node)."""

    arguments = [(b"host", amp.Unicode()), (b"text", amp.Unicode())]
    response = [(b"sent", amp.Integer()), (b"gone", amp.ListOf(amp.Unicode())),
                (b"unsure", amp.Boolean())]
    errors = _ERRORS


class Reload(amp.Command):
    """
    Re-read the certificates and the config's live parts (as SIGHUP does);
    answer the changes, with those that need a restart.
    """

    response = [(b"changes", amp.ListOf(amp.Unicode()))]
    errors = _ERRORS


class ChangeCircle(amp.Command):
    """
    Create or delete a circle, or add or remove a member, through the host's
    circles module (rooms, roster pushes and invites follow at once).
    """

    arguments = [(b"host", amp.Unicode()), (b"action", amp.Unicode()), (b"name", amp.Unicode()),
                 (b"username", amp.Unicode(optional=True))]
    response = [(b"room", amp.Unicode())]
    errors = _ERRORS


class ControlProtocol(amp.AMP):
    """The server's side of one control connection."""

    def __init__(self, server):
        amp.AMP.__init__(self)
        self.server = server

    def _account(self, address: str):
        """The host and prepared username of C{user@host}, refused with a reason."""
        try:
            parsed = jid.JID(address)
        except (jid.InvalidFormat, UnicodeError):
            raise ControlError(f"{address!r} is not a valid JID") from None
        host = self.server.hosts.get(parsed.host)
        if host is None:
            raise ControlError(f"unknown host {parsed.host!r} (served: {', '.join(self.server.hosts)})")
        if not parsed.user:
            raise ControlError(f"{address!r} is not an account address (user@host)")
        try:
            return host, prepareUsername(parsed.user), parsed.resource
        except RegistrationError as e:
            raise ControlError(str(e)) from None

    @ServerInfo.responder
    def serverInfo(self):
        return {"hosts": list(self.server.hosts), "publicURL": self.server.config.public_url,
                "pid": os.getpid(), "counters": self.server.metrics.summary()}

    @Reload.responder
    def reload(self):
        try:
            return {"changes": self.server.reload()}
        except ReloadError as e:
            raise ControlError(f"reload refused, nothing changed: {e}") from None

    @ChangePassword.responder
    @defer.inlineCallbacks
    def changePassword(self, jid, password):
        host, username, _ = self._account(jid)
        try:
            changed = yield host.registrar.changePassword(username, password)
        except RegistrationError as e:
            raise ControlError(str(e)) from None
        return {"changed": bool(changed)}

    @DeleteUser.responder
    @defer.inlineCallbacks
    def deleteUser(self, jid):
        host, username, _ = self._account(jid)
        deleted = yield host.registrar.deleteAccount(username)
        return {"deleted": bool(deleted)}

    @defer.inlineCallbacks
    def _everySession(self):
        """
        (node, session) for every bound session: this node's, and in cluster
        mode the other nodes' as this node's copy of the directory has them,
        once Redis said which nodes are gone (a bounded wait); with the names
        of those, and whether Redis did not answer (the copy is then as last
        known).
        """
        router = self.server.router
        here, gone, unsure = "", [], False
        if router.directory is not None:
            cluster = router.directory.cluster
            here = cluster.node
            gone = yield cluster.checkPeers()
            unsure, gone = gone is None, gone or []
        found = [(here, session) for resources in list(router.sessions.values())
                 for session in list(resources.values())]
        if router.directory is not None:
            found += [(name, session) for name, view in sorted(router.directory.nodes.items())
                      for session in list(view.sessions.values())]
        return found, gone, unsure

    @ListSessions.responder
    @defer.inlineCallbacks
    def listSessions(self, host=None):
        if host is not None and host not in self.server.hosts:
            raise ControlError(f"unknown host {host!r}")
        found, gone, unsure = yield self._everySession()
        sessions = [{"jid": session.full, "address": session.address or "",
                     "available": session.available, "priority": session.priority, "node": node}
                    for node, session in found
                    if host is None or session.host.name == host]
        sessions.sort(key=lambda entry: entry["jid"])
        return {"sessions": sessions, "gone": gone, "unsure": unsure}

    @Kick.responder
    def kick(self, jid, text=None):
        host, username, resource = self._account(jid)
        resources = self.server.router.resourcesOf(f"{username}@{host.name}")
        chosen = [session for name, session in list(resources.items())
                  if resource is None or name == resource]
        for session in chosen:
            session.close("policy-violation", text or "Disconnected by an administrator")
        if chosen:
            log.info("Disconnected {count} session(s) of {jid} from the command line",
                     count=len(chosen), jid=jid)
        return {"closed": len(chosen)}

    @Announce.responder
    @defer.inlineCallbacks
    def announce(self, host, text):
        served = self.server.hosts.get(host)
        if served is None:
            raise ControlError(f"unknown host {host!r}")
        found, gone, unsure = yield self._everySession()
        sent = 0
        for _, session in found:
            if session.host is served and not session.closed:
                message = domish.Element(("jabber:client", "message"))
                message["type"] = "headline"
                message["from"] = host
                message["to"] = session.full
                message.addElement("body", content=text)
                session.send(message)
                sent += 1
        log.info("Announcement sent to {count} session(s) on {host}", count=sent, host=host)
        return {"sent": sent, "gone": gone, "unsure": unsure}


    @ChangeCircle.responder
    @defer.inlineCallbacks
    def changeCircle(self, host, action, name, username=None):
        from invitesrv.modules.circles import CircleError
        served = self.server.hosts.get(host)
        if served is None:
            raise ControlError(f"unknown host {host!r}")
        circles = served.modules.get("circles")
        if circles is None or action not in ("create", "delete", "add", "remove"):
            raise ControlError("circles are not on (server.modules) or the action is unknown")
        try:
            if action in ("add", "remove"):
                circle = yield getattr(circles, action)(name, username or "")
            else:
                circle = yield getattr(circles, action)(name)
        except CircleError as e:
            raise ControlError(str(e)) from None
        return {"room": circle.room}


class ControlFactory(protocol.ServerFactory):
    """Builds a L{ControlProtocol} per connection of the command-line tool."""

    noisy = False

    def __init__(self, server):
        self.server = server

    def buildProtocol(self, addr):
        return ControlProtocol(self.server)


def writeRecord(server) -> Path:
    """Record in the data dir what the server serves, for the command-line tool (mode 0600)."""
    path = server.config.data_dir / RECORD_NAME
    text = json.dumps({"hosts": list(server.hosts), "public_url": server.config.public_url},
                      indent=1)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(temporary, path)
    return path


def readRecord(dataDir: Path) -> dict | None:
    """What the server recorded at its last start in C{dataDir}, or None."""
    try:
        record = json.loads((dataDir / RECORD_NAME).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("hosts"), list):
        return None
    return record


@defer.inlineCallbacks
def connect(reactor, dataDir: Path):
    """
    Fire with an AMP connection to the server running on C{dataDir}, or
    with None when none runs there (no socket, or a stale one).
    """
    path = dataDir / SOCKET_NAME
    if not path.exists():
        return None
    endpoint = endpoints.UNIXClientEndpoint(reactor, str(path), timeout=CONNECT_TIMEOUT)
    try:
        connection = yield endpoints.connectProtocol(endpoint, amp.AMP())
    except (error.ConnectError, error.ConnectionRefusedError, FileNotFoundError, OSError):
        return None
    return connection
