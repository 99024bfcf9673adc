"""
The watchdog: notices clients that are gone, and shows admins the counters
of what the server refused.

A bound client that has sent nothing for C{limits.idle_timeout} seconds is
pinged (XEP-0199, an iq from the server); if nothing at all arrives within
C{limits.ping_timeout} after that, its stream is closed with
C{connection-timeout}. Such a client is gone (a phone out of coverage, a NAT
that forgot the connection, a half-open TCP connection): its session should
not linger as "available", swallowing the messages that offline storage
would keep for it. Clients learn the idle time from XEP-0478's
C{<idle-seconds/>} in the stream features and may send whitespace keepalives
instead of waiting for pings. One timer per session, rescheduled only when it
fires: a busy session costs nothing per stanza but a timestamp in its stream
(C{C2SStream.lastReceived}).

The admins of a host read the server's counters (L{invitesrv.limits.Metrics}:
refused connections, timeouts, failed logins, throttled reads...) with the
ad-hoc command C{urn:x-invitesrv:admin#counters}; the server also logs them
every C{limits.metrics_interval}.
"""

from __future__ import annotations

import secrets

from twisted.logger import Logger
from twisted.words.xish import domish
from wokkel import data_form

from invitesrv.modules.adhoc import AdHocCommand, CommandProvider, CommandResult
from invitesrv.xmpp.auth import NS_LIMITS
from invitesrv.xmpp.c2s import NS_CLIENT

log = Logger()

NS_PING = "urn:xmpp:ping"
NODE_COUNTERS = "urn:x-invitesrv:admin#counters"


class CountersCommand(AdHocCommand):
    """The server's event counters and how many sessions are bound, for admins."""

    node = NODE_COUNTERS
    name = "Show server counters"
    adminOnly = True

    def execute(self, requester, action, form, session):
        host = session.host
        result = data_form.Form("result", title="Server counters")
        bound = sum(len(resources) for resources in host.router.sessions.values())
        result.addField(data_form.Field("text-single", "sessions.bound", value=str(bound),
                                        label="sessions.bound"))
        for name, value in sorted(host.metrics.items()):
            result.addField(data_form.Field("text-single", name, value=str(value), label=name))
        return CommandResult.completed(result)


class WatchdogModule(CommandProvider):
    """Pings silent sessions, closes dead ones, and offers the counters command."""

    name = "watchdog"
    hooks = CommandProvider.hooks + (("stream-features", "onStreamFeatures"),
                                     ("session-bound", "onSessionBound"),
                                     ("session-closed", "onSessionClosed"))

    def __init__(self) -> None:
        CommandProvider.__init__(self)
        self.commands = (CountersCommand(),)
        # session -> [its timer, stream.lastReceived when pinged (None: not pinged)]
        self.watched: dict[object, list] = {}

    def adhocCommands(self):
        return self.commands

    @property
    def limits(self):
        return self.parent.config.limits

    def connectionLost(self, reason):
        for timer, _ in self.watched.values():
            if timer.active():
                timer.cancel()
        self.watched.clear()
        CommandProvider.connectionLost(self, reason)

    def onStreamFeatures(self, session, features) -> None:
        """XEP-0478: after authentication, say how long silence may last before a ping."""
        idle = int(self.limits.idle_timeout)
        if not session.authenticated or not idle:
            return
        limits = next(features.elements(NS_LIMITS, "limits"), None)
        if limits is None:
            limits = features.addElement((NS_LIMITS, "limits"))
        limits.addElement("idle-seconds", content=str(idle))

    def onSessionBound(self, session) -> None:
        idle = self.limits.idle_timeout
        if idle and getattr(session.stream, "lastReceived", None) is not None:
            self.watched[session] = [self.parent.clock.callLater(idle, self.check, session), None]

    def onSessionClosed(self, session) -> None:
        watch = self.watched.pop(session, None)
        if watch is not None and watch[0].active():
            watch[0].cancel()

    def check(self, session) -> None:
        """The session's timer: ping it, close it, or look again later."""
        watch = self.watched.get(session)
        if watch is None:
            return
        clock = self.parent.clock
        stream = session.stream
        idle = self.limits.idle_timeout
        if stream.ended:  # a session kept for resumption (XEP-0198): its next stream is watched
            watch[:] = [clock.callLater(idle, self.check, session), None]
            return
        received = stream.lastReceived
        if watch[1] is not None and watch[1] == received:
            self.parent.metrics["sessions.ping-timeout"] += 1
            log.info("Closing the session of {jid} from {address}: no answer to a ping in"
                     " {seconds:.0f} s", jid=session.full, address=session.address,
                     seconds=self.limits.ping_timeout)
            watch[:] = [clock.callLater(idle, self.check, session), None]
            stream.authenticator.connectionDead("connection-timeout", "No answer to a ping")
            return
        silent = clock.seconds() - received
        if silent < idle:
            watch[:] = [clock.callLater(idle - silent, self.check, session), None]
            return
        self.parent.metrics["sessions.pinged"] += 1
        session.send(self.ping(session.full))
        watch[:] = [clock.callLater(self.limits.ping_timeout, self.check, session), received]

    def ping(self, to: str) -> domish.Element:
        iq = domish.Element((NS_CLIENT, "iq"))
        iq["type"] = "get"
        iq["id"] = "ping-" + secrets.token_hex(6)
        iq["from"] = self.parent.name
        iq["to"] = to
        iq.addElement((NS_PING, "ping"))
        return iq
