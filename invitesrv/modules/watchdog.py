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
instead of waiting for pings. One timer looks at every session, four times
per the shorter timeout: a session costs a dict entry, and a busy one
nothing per stanza but a timestamp in its stream (C{C2SStream.lastReceived}).

The admins of a host read the server's counters (L{invitesrv.limits.Metrics}:
refused connections, timeouts, failed logins, throttled reads...) with the
ad-hoc command C{urn:x-invitesrv:admin#counters}; the server also logs them
every C{limits.metrics_interval}.
"""

from __future__ import annotations

import secrets

from twisted.internet import task
from twisted.words.xish import domish
from wokkel import data_form

from invitesrv.logs import logger
from invitesrv.modules.adhoc import AdHocCommand, CommandProvider, CommandResult
from invitesrv.xmpp.auth import NS_LIMITS
from invitesrv.xmpp.c2s import NS_CLIENT

log = logger()

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
        # session -> None, or (stream.lastReceived, clock time) when it was pinged
        self.watched: dict[object, tuple | None] = {}
        self._sweeper: task.LoopingCall | None = None

    def adhocCommands(self):
        return self.commands

    @property
    def limits(self):
        return self.parent.config.limits

    def connectionInitialized(self):
        CommandProvider.connectionInitialized(self)
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = self.parent.clock
        self._sweeper.start(self._interval(), now=False)

    def connectionLost(self, reason):
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None
        self.watched.clear()
        CommandProvider.connectionLost(self, reason)

    def _interval(self) -> float:
        """A quarter of the shorter timeout: a ping or a close comes at most that late."""
        limits = self.limits
        timeouts = [float(t) for t in (limits.idle_timeout, limits.ping_timeout) if t > 0]
        return min(timeouts) / 4 if timeouts else 60.0

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
        if getattr(session.stream, "lastReceived", None) is not None:
            self.watched[session] = None

    def onSessionClosed(self, session) -> None:
        self.watched.pop(session, None)

    def sweep(self) -> None:
        """
        Look at every session: ping those silent for C{idle_timeout}, close
        those that did not answer within C{ping_timeout}. One timer for all
        rather than one per session: a watched session costs a dict entry.
        """
        limits = self.limits
        idle = limits.idle_timeout
        if self._sweeper is not None:
            self._sweeper.interval = self._interval()
        if not idle:
            return
        now = self.parent.clock.seconds()
        for session, pinged in list(self.watched.items()):
            stream = session.stream
            if stream.ended:  # a session kept for resumption (XEP-0198): its next stream is watched
                self.watched[session] = None
                continue
            received = stream.lastReceived
            if pinged is not None and pinged[0] == received:
                if now - pinged[1] >= limits.ping_timeout:
                    self.timedOut(session)
            elif now - received >= idle:
                self.parent.metrics["sessions.pinged"] += 1
                self.watched[session] = (received, now)
                session.send(self.ping(session.full))
            elif pinged is not None:
                self.watched[session] = None

    def timedOut(self, session) -> None:
        """No answer to a ping: the connection is dead (a kept session waits for its next)."""
        self.parent.metrics["sessions.ping-timeout"] += 1
        log.info("Closing the session of {jid} from {address}: no answer to a ping in"
                 " {seconds:.0f} s", jid=session.full, address=session.address,
                 seconds=self.limits.ping_timeout)
        self.watched[session] = None
        session.stream.authenticator.connectionDead("connection-timeout", "No answer to a ping")

    def ping(self, to: str) -> domish.Element:
        iq = domish.Element((NS_CLIENT, "iq"))
        iq["type"] = "get"
        iq["id"] = "ping-" + secrets.token_hex(6)
        iq["from"] = self.parent.name
        iq["to"] = to
        iq.addElement((NS_PING, "ping"))
        return iq
