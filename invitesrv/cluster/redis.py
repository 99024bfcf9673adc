"""
Redis over a Twisted connection: commands are packed and replies parsed by
hiredis (the Redis project's own C protocol library), so no thread sits
between the reactor and Redis, and the replies of one connection come back
in the order its commands went out (what keeps a session's stanzas in order).

L{RedisClient} keeps one connection up with L{ClientService} (reconnecting
with back-off); L{RedisClient.execute} fails at once with L{RedisUnavailable}
while it is down, and the owner hears of every new connection (to
subscribe again, to write its state again).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import hiredis
from twisted.application.internet import ClientService
from twisted.internet import defer, endpoints, protocol

from invitesrv.logs import logger

log = logger()


class RedisUnavailable(Exception):
    """There is no connection to Redis now."""


class RedisError(Exception):
    """Redis answered a command with an error."""


def parseURL(url: str) -> tuple[str, int, int, str | None, str | None]:
    """
    Host, port, database, user and password of C{redis://[[user]:password@]host[:port][/db]}.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError(f"expected redis://host:port/db, not {url!r}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database in {url!r} must be a number")
    return (parts.hostname, parts.port or 6379, int(path or 0),
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None)


class RedisProtocol(protocol.Protocol):
    """
    One Redis connection. Each command's Deferred fires with its reply (a
    SUBSCRIBE's with its confirmation); once subscribed, each published
    message goes to C{onMessage(channel, data)}.

    With C{readEvery} (seconds, and the C{clock} to count them), the
    connection reads at most that often: the answers that came meanwhile are
    read at once. For a connection whose answers nobody waits on in a hurry
    (a node's PUBLISHes: only a "nobody received it" matters, and it is as
    good a moment later), that spares a wake-up and a read per command.
    """

    def __init__(self, onMessage: Callable[[bytes, bytes], None] | None = None,
                 readEvery: float = 0.0, clock=None):
        self.reader = hiredis.Reader(replyError=RedisError)
        self.pending: deque[defer.Deferred] = deque()
        self.onMessage = onMessage
        self.lost = defer.Deferred()
        self.readEvery = readEvery
        self.clock = clock
        self.resuming = None  # the delayed call that reads again

    def execute(self, *args) -> defer.Deferred:
        """Send one command; fire with its reply (or fail with L{RedisError})."""
        d = defer.Deferred()
        self.pending.append(d)
        self.transport.write(hiredis.pack_command(args))
        return d

    def dataReceived(self, data: bytes) -> None:
        if self.readEvery and self.resuming is None:
            self.transport.pauseProducing()
            self.resuming = self.clock.callLater(self.readEvery, self._readAgain)
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if (self.onMessage is not None and isinstance(reply, list) and len(reply) == 3
                    and reply[0] == b"message"):
                self.onMessage(reply[1], reply[2])
                continue
            d = self.pending.popleft()
            if isinstance(reply, RedisError):
                d.errback(reply)
            else:
                d.callback(reply)

    def _readAgain(self) -> None:
        self.resuming = None
        self.transport.resumeProducing()

    def connectionLost(self, reason) -> None:
        if self.resuming is not None:
            self.resuming.cancel()
            self.resuming = None
        pending, self.pending = self.pending, deque()
        for d in pending:
            d.errback(RedisUnavailable(str(reason.value)))
        self.lost.callback(None)


class RedisClient:
    """
    A connection to Redis kept up: C{onConnected(protocol)} runs for each
    new one (after AUTH and SELECT), C{onMessage} makes it a subscriber,
    C{readEvery} reads its answers in batches (L{RedisProtocol}).
    """

    def __init__(self, reactor, url: str, name: str,
                 onConnected: Callable[[RedisProtocol], object] | None = None,
                 onMessage: Callable[[bytes, bytes], None] | None = None,
                 readEvery: float = 0.0):
        host, port, self.db, self.user, self.password = parseURL(url)
        self.name = name
        self.url = f"redis://{host}:{port}/{self.db}"
        self.onConnected = onConnected
        self.connection: RedisProtocol | None = None
        factory = protocol.Factory.forProtocol(lambda: RedisProtocol(onMessage, readEvery, reactor))
        endpoint = endpoints.HostnameEndpoint(reactor, host, port)
        self.service = ClientService(endpoint, factory, clock=reactor,
                                     prepareConnection=self._prepare)

    def start(self) -> None:
        self.service.startService()

    def stop(self) -> defer.Deferred:
        self.connection = None
        return self.service.stopService()

    @defer.inlineCallbacks
    def _prepare(self, connection: RedisProtocol):
        subscriber, connection.onMessage = connection.onMessage, None
        try:
            if self.password is not None:
                yield connection.execute(*(("AUTH", self.user) if self.user else ("AUTH",)),
                                         self.password)
            if self.db:
                yield connection.execute("SELECT", self.db)
            yield connection.execute("CLIENT", "SETNAME", self.name)
        except (RedisError, RedisUnavailable) as e:
            log.error("Redis at {url} refused the connection: {error}", url=self.url, error=e)
            connection.transport.loseConnection()
            return
        connection.onMessage = subscriber
        connection.lost.addCallback(self._lost, connection)
        self.connection = connection
        log.info("Connected to Redis at {url} ({name})", url=self.url, name=self.name)
        if self.onConnected is not None:
            yield self.onConnected(connection)

    def _lost(self, _, connection: RedisProtocol) -> None:
        if self.connection is connection:
            self.connection = None
            log.warn("Lost the connection to Redis at {url} ({name}); reconnecting",
                     url=self.url, name=self.name)

    def execute(self, *args) -> defer.Deferred:
        """Run one command now, or fail with L{RedisUnavailable} while disconnected."""
        if self.connection is None:
            return defer.fail(RedisUnavailable(f"no connection to Redis at {self.url}"))
        return self.connection.execute(*args)
