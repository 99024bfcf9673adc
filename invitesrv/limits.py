"""
The bookkeeping behind the server's limits on hostile or faulty peers: token
buckets, failure counters per address and per account, connection counts and
the counters admins read. No XML and no sockets here: the stream layer asks
these objects what to do (admit, delay, refuse) and does it, so every rule is
tested by advancing a L{task.Clock}.

Addresses are counted by where an attacker's cost lies: an IPv4 address (an
IPv4-mapped IPv6 address counts as the IPv4 one) or an IPv6 /64, since one
host usually holds a whole /64. Every table is bounded: when full, the entry
touched longest ago is forgotten, so a flood of fresh addresses or usernames
costs memory once, not without end.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from invitesrv.logs import logger

log = logger()

# Most entries each table keeps (addresses, accounts); beyond it the oldest go.
MAX_ENTRIES = 100_000


@functools.lru_cache(maxsize=4096)
def parseAddress(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """
    The IP address C{address} names (without a scope id; an IPv4-mapped IPv6
    address as IPv4), None if it names none. Kept for the addresses seen
    last: each connection's is looked at several times.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=4096)
def addressKey(address: str) -> str:
    """The key an address is counted under: itself for IPv4, its /64 for IPv6."""
    ip = parseAddress(address)
    if ip is None:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class AddressList:
    """Addresses and networks (CIDR) from the config, e.g. the allowlist."""

    def __init__(self, entries: Iterable[str]):
        self.networks = tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)

    def __contains__(self, address: str) -> bool:
        ip = parseAddress(address)
        return ip is not None and any(ip in network for network in self.networks)


class TokenBucket:
    """
    C{burst} units at once, refilled at C{rate} per second, on an injected
    clock. L{take} always takes, going into debt if need be, and says how long
    the debt takes to repay: the reader of a stream pauses that long, so a peer
    gets C{rate} bytes per second on average however it sends them.
    """

    __slots__ = ("clock", "rate", "burst", "tokens", "stamp")

    def __init__(self, clock, rate: float, burst: float):
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = clock.seconds()

    def configure(self, rate: float, burst: float) -> None:
        """New rate and burst (after authentication): what the burst grows by is added."""
        self._refill()
        self.tokens = min(float(burst), self.tokens + max(0.0, burst - self.burst))
        self.rate = rate
        self.burst = burst

    def _refill(self) -> None:
        now = self.clock.seconds()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, amount: float) -> float:
        """Take C{amount}; return 0, or the seconds until the bucket is out of debt."""
        self._refill()
        self.tokens -= amount
        if self.tokens >= 0:
            return 0.0
        return -self.tokens / self.rate

    def tryTake(self, amount: float = 1) -> bool:
        """Take C{amount} if the bucket holds it (no debt); say whether it did."""
        self._refill()
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


class BucketTable:
    """
    A L{TokenBucket} per key (an address, a domain), made full on first use.
    Bounded: past C{maxEntries} the bucket touched longest ago is forgotten.
    """

    def __init__(self, clock, rate: float, burst: float, maxEntries: int = MAX_ENTRIES):
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.maxEntries = maxEntries
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __getitem__(self, key: str) -> TokenBucket:
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self.clock, self.rate, self.burst)
        self._buckets[key] = bucket
        while len(self._buckets) > self.maxEntries:
            self._buckets.popitem(last=False)
        return bucket

    def configure(self, rate: float, burst: float) -> None:
        """A new rate and burst, for the buckets to come and those already in use."""
        self.rate = rate
        self.burst = burst
        for bucket in self._buckets.values():
            bucket.configure(rate, burst)

    def __len__(self) -> int:
        return len(self._buckets)


class FailureCounter:
    """
    Failures per key within a sliding window: a key's count starts again
    from zero when C{window} seconds pass without a failure.
    """

    def __init__(self, clock, window: float, maxEntries: int = MAX_ENTRIES):
        self.clock = clock
        self.window = window
        self.maxEntries = maxEntries
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()
        # Cluster mode: told of each failure and reset (added, reset), see invitesrv.cluster.limits.
        self.shared = None

    def count(self, key: str) -> int:
        """The failures of C{key} in the current window."""
        entry = self._entries.get(key)
        if entry is None:
            return 0
        if self.clock.seconds() - entry[1] >= self.window:
            del self._entries[key]
            return 0
        return entry[0]

    def add(self, key: str) -> int:
        """Count one more failure for C{key}; return its count."""
        count = self.learn(key, self.count(key) + 1)
        if self.shared is not None:
            self.shared.added(self, key)
        return count

    def learn(self, key: str, count: int) -> int:
        """
        Take C{count} as C{key}'s failures (the cluster's count, when
        another node counted too) if it is more than known; return the count.
        """
        count = max(count, self.count(key))
        self._entries.pop(key, None)
        self._entries[key] = (count, self.clock.seconds())
        while len(self._entries) > self.maxEntries:
            self._entries.popitem(last=False)
        return count

    def reset(self, key: str) -> None:
        """Forget the failures of C{key}."""
        self.forget(key)
        if self.shared is not None:
            self.shared.reset(self, key)

    def forget(self, key: str) -> None:
        """Forget the failures of C{key} here (another node's reset)."""
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


def failureDelay(count: int, free: int, maximum: float) -> float:
    """
    Seconds to wait before answering the C{count}th failure: nothing for the
    first C{free}, then 1, 2, 4, ... seconds, at most C{maximum}.
    """
    if count <= free:
        return 0.0
    return float(min(maximum, 2 ** min(count - free - 1, 30)))


@dataclass(frozen=True)
class Refusal:
    """Why a connection is refused: the stream error condition and its text."""

    condition: str
    text: str


class ConnectionLimiter:
    """
    Counts connections: open ones in all and per address, and new ones per
    address over time (a token bucket each). Addresses in the allowlist are
    held only to the global cap (their open connections are counted all the
    same, so the counts stay right when a reload changes the allowlist).
    """

    def __init__(self, clock, maxConnections: int, maxPerAddress: int, rate: float, burst: int,
                 allowlist: AddressList, maxEntries: int = MAX_ENTRIES):
        self.clock = clock
        self.maxEntries = maxEntries
        self.total = 0
        self.open: dict[str, int] = {}
        # Cluster mode: elsewhere(key), the connections from that address to the
        # other nodes, and told of this node's (counted), see invitesrv.cluster.limits.
        self.shared = None
        self._buckets = BucketTable(clock, rate, burst, maxEntries)
        self.configure(maxConnections, maxPerAddress, rate, burst, allowlist)

    def configure(self, maxConnections: int, maxPerAddress: int, rate: float, burst: int,
                  allowlist: AddressList) -> None:
        """New caps (a reload): the connections already open stay counted."""
        self.maxConnections = maxConnections
        self.maxPerAddress = maxPerAddress
        self.rate = rate
        self.burst = burst
        self.allowlist = allowlist
        self._buckets.configure(rate, burst)

    def admit(self, address: str) -> Refusal | None:
        """Count a new connection from C{address}, or say why it is refused."""
        if self.maxConnections and self.total >= self.maxConnections:
            return Refusal("resource-constraint", "The server is at its connection limit;"
                                                  " try again later")
        key = addressKey(address)
        if address not in self.allowlist:
            already = self.open.get(key, 0)
            if self.shared is not None:
                already += self.shared.elsewhere(key)
            if self.maxPerAddress and already >= self.maxPerAddress:
                return Refusal("policy-violation", "Too many connections from your address")
            if self.rate and not self._buckets[key].tryTake():
                return Refusal("policy-violation", "Too many new connections from your address;"
                                                   " slow down")
        self.open[key] = self.open.get(key, 0) + 1
        self.total += 1
        if self.shared is not None:
            self.shared.counted(key, self.open[key])
        return None

    def admittedElsewhere(self, key: str) -> None:
        """
        Another node of the cluster admitted a new connection from address
        C{key}: it spends this node's budget of new connections too (into
        debt if need be), so that the rate holds for the cluster.
        """
        if self.rate:
            self._buckets[key].take(1)

    def release(self, address: str) -> None:
        """An admitted connection from C{address} has ended."""
        self.total -= 1
        key = addressKey(address)
        left = self.open.get(key, 0) - 1
        if left > 0:
            self.open[key] = left
        else:
            self.open.pop(key, None)
        if self.shared is not None:
            self.shared.counted(key, max(left, 0))


class Metrics(Counter):
    """
    Event counters an admin reads (the log, an ad-hoc command): refused
    connections, timeouts, authentication failures, store faults. Names are
    dotted, e.g. C{auth.failed}.
    """

    def __init__(self, *args, **kwargs) -> None:
        Counter.__init__(self, *args, **kwargs)
        self._logged = "none"

    def summary(self) -> str:
        """One line, e.g. C{auth.failed=3, connections.refused=1}, sorted by name."""
        return ", ".join(f"{name}={value}" for name, value in sorted(self.items())) or "none"

    def logSummary(self) -> None:
        """Log the counters (periodically, from the server's C{metrics} service) if they moved."""
        summary = self.summary()
        if summary != self._logged:
            self._logged = summary
            log.info("Counters since start: {summary}", summary=summary)


class EpisodeLog:
    """
    Logs the start of a bad episode once, not once per event (a locked
    database refusing every stanza, a flood refused connection by
    connection), and its end with how many events it spanned. An episode
    ends when L{ended} is called, or for a C{quiet}-second gap when that is set.
    """

    def __init__(self, clock, quiet: float | None = None):
        self.clock = clock
        self.quiet = quiet
        self.since: float | None = None
        self.last = 0.0
        self.events = 0

    @property
    def active(self) -> bool:
        if self.since is None:
            return False
        if self.quiet is not None and self.clock.seconds() - self.last >= self.quiet:
            self.since = None
            return False
        return True

    def event(self) -> bool:
        """Count one event; True when it starts an episode (log it then)."""
        starting = not self.active
        now = self.clock.seconds()
        if starting:
            self.since = now
            self.events = 0
        self.last = now
        self.events += 1
        return starting

    def ended(self) -> tuple[float, int] | None:
        """End the episode; return its length in seconds and its events, if one was on."""
        if self.since is None:
            return None
        span = (self.clock.seconds() - self.since, self.events)
        self.since = None
        return span


class Limiter:
    """
    All the per-address and per-account limits of one server, from
    C{[limits]} in the config: connection admission, the read rate of each
    stream, and the throttles of failed authentications and invite tokens.

    HTTP connections are admitted from a pool of their own (the C{http_*}
    caps), so a flood of them cannot take the XMPP listeners' share. The
    reverse proxies in C{webExempt} (C{server.trusted_proxies}) bring many
    clients' connections from one address: in that pool they are held only
    to the total, like the allowlist.
    """

    def __init__(self, limits, clock, metrics: Metrics | None = None,
                 webExempt: Iterable[str] = ()):
        self.limits = limits
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self.webExempt = tuple(webExempt)
        self.allowlist = AddressList(limits.allowlist)
        self.connections = ConnectionLimiter(
            clock, limits.max_connections, limits.max_connections_per_address,
            limits.connection_rate, limits.connection_burst, self.allowlist)
        self.webConnections = ConnectionLimiter(
            clock, limits.http_max_connections, limits.http_max_connections_per_address,
            limits.http_connection_rate, limits.http_connection_burst,
            AddressList((*limits.allowlist, *self.webExempt)))
        self.webRefusals = EpisodeLog(clock, quiet=60.0)
        window = limits.auth_failure_window
        self.authByAddress = FailureCounter(clock, window)
        self.authByAccount = FailureCounter(clock, window)
        self.tokensByAddress = FailureCounter(clock, window)
        self.refusals = EpisodeLog(clock, quiet=60.0)

    def reconfigure(self, limits) -> None:
        """
        New C{[limits]} (a reload): the caps, rates, allowlist and windows
        change; the open connections, the buckets and the failures counted
        so far are kept, so a reload neither frees nor forgives anybody.
        """
        self.limits = limits
        self.allowlist = AddressList(limits.allowlist)
        self.connections.configure(
            limits.max_connections, limits.max_connections_per_address,
            limits.connection_rate, limits.connection_burst, self.allowlist)
        self.webConnections.configure(
            limits.http_max_connections, limits.http_max_connections_per_address,
            limits.http_connection_rate, limits.http_connection_burst,
            AddressList((*limits.allowlist, *self.webExempt)))
        for counter in (self.authByAddress, self.authByAccount, self.tokensByAddress):
            counter.window = limits.auth_failure_window

    def exempt(self, address: str) -> bool:
        """Is C{address} in the allowlist (no per-address limits)?"""
        return address in self.allowlist

    # -- connections ------------------------------------------------------------

    def admit(self, address: str) -> Refusal | None:
        """Admit a new XMPP connection, or say why not (and count and log the refusal)."""
        return self._admit(self.connections, self.refusals, address, "connections", "connections")

    def release(self, address: str) -> None:
        self.connections.release(address)

    def admitWeb(self, address: str) -> Refusal | None:
        """Admit a new HTTP connection, or say why not (counted as C{http.*})."""
        return self._admit(self.webConnections, self.webRefusals, address, "http",
                           "HTTP connections")

    def releaseWeb(self, address: str) -> None:
        self.webConnections.release(address)

    def _admit(self, pool: ConnectionLimiter, refusals: EpisodeLog, address: str,
               counter: str, what: str) -> Refusal | None:
        """Admit from C{pool}; a refusal is counted, and logged once per episode."""
        refusal = pool.admit(address)
        if refusal is not None:
            self.metrics[f"{counter}.refused"] += 1
            if refusals.event():
                log.warn("Refusing {what}: {text} (first from {address}; further"
                         " refusals are counted, not logged, until a minute passes without one)",
                         what=what, text=refusal.text, address=address)
        else:
            self.metrics[f"{counter}.accepted"] += 1
        return refusal

    def readBucket(self, address: str) -> TokenBucket | None:
        """The read-rate bucket of a new stream from C{address}; None if unlimited."""
        limits = self.limits
        if not limits.read_rate_preauth or self.exempt(address):
            return None
        return TokenBucket(self.clock, limits.read_rate_preauth, limits.read_burst_preauth)

    def authenticatedRate(self) -> tuple[int, int]:
        """Read rate and burst once a stream is authenticated."""
        return self.limits.read_rate, self.limits.read_burst

    # -- authentication ---------------------------------------------------------

    def authBlocked(self, address: str) -> bool:
        """Has C{address} failed to authenticate so often that it is refused for now?"""
        blocking = self.limits.auth_failures_block
        return (bool(blocking) and not self.exempt(address)
                and self.authByAddress.count(addressKey(address)) >= blocking)

    def authFailed(self, address: str, account: str) -> float:
        """
        Count a failed authentication from C{address} for C{account} (whether
        or not it exists, so the delay tells nothing); return how long to wait
        before saying so. The account's count only delays: it never blocks,
        so the real user still logs in from elsewhere.
        """
        limits = self.limits
        self.metrics["auth.failed"] += 1
        count = self.authByAccount.add(account)
        if not self.exempt(address):
            count = max(count, self.authByAddress.add(addressKey(address)))
        delay = failureDelay(count, limits.auth_failures_free, limits.auth_delay_max)
        if delay:
            self.metrics["auth.throttled"] += 1
        return delay

    def tokenBlocked(self, address: str) -> bool:
        """Has C{address} presented so many bad invite tokens that it is refused for now?"""
        blocking = self.limits.token_failures_block
        return (bool(blocking) and not self.exempt(address)
                and self.tokensByAddress.count(addressKey(address)) >= blocking)

    def tokenFailed(self, address: str) -> float:
        """Count a refused invite token from C{address}; return how long to wait."""
        self.metrics["tokens.refused"] += 1
        if self.exempt(address):
            return 0.0
        count = self.tokensByAddress.add(addressKey(address))
        delay = failureDelay(count, self.limits.token_failures_free, self.limits.auth_delay_max)
        if delay:
            self.metrics["tokens.throttled"] += 1
        return delay
