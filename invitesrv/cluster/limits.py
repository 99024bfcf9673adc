"""
Per-address limits across the nodes of a cluster, counted in Redis.

The limits themselves stay where they are (L{invitesrv.limits.Limiter}, the
C{register_limits} module) and answer from memory, as every connection and
every login asks them; what changes is what they count:

- failed logins (per address and per account) and refused invite tokens:
  each failure is an C{INCR} of C{invitesrv:failures:WHAT:KEY} (expiring
  after the failure window, as the counters' own entries do), and the count
  Redis answers is told to every node, which takes it if it is more than it
  knew; a successful login's reset is a C{DEL}, told the same way;
- open connections per address: each node keeps its own in the hash
  C{invitesrv:connections:NODE} (with the node's TTL, so a dead node's
  connections stop counting) and tells the others, who add them up; a
  count that grew is a new connection, which spends the others' budget of
  new connections from that address (C{connection_rate}) too;
- registrations per address (C{register_limits}): each one is told to the
  other nodes, which count it as their own (a node started later does not
  know of the earlier ones).
"""

from __future__ import annotations

import json

from invitesrv.limits import FailureCounter

PREFIX = "invitesrv:"


class SharedLimits:
    """This node's part in the cluster-wide limits (owned by L{invitesrv.cluster.node.ClusterNode})."""

    def __init__(self, node):
        self.node = node
        limiter = node.server.limiter
        self.counters: dict[str, FailureCounter] = {
            "auth-address": limiter.authByAddress, "auth-account": limiter.authByAccount,
            "tokens": limiter.tokensByAddress}
        self.names = {counter: name for name, counter in self.counters.items()}
        self.connections = limiter.connections
        self.remote: dict[str, dict[str, int]] = {}  # node -> address key -> its open connections

    def connectionsKey(self, node: str) -> str:
        return f"{PREFIX}connections:{node}"

    def attach(self) -> None:
        for counter in self.counters.values():
            counter.shared = self
        self.connections.shared = self
        for host in self.node.server.hosts.values():
            host.hooks.add("user-registered", self.registered)

    def detach(self) -> None:
        for counter in self.counters.values():
            counter.shared = None
        self.connections.shared = None
        for host in self.node.server.hosts.values():
            host.hooks.remove("user-registered", self.registered)

    def _tell(self, event: dict) -> None:
        event["n"] = self.node.node
        self.node._write(("PUBLISH", self.node.events, json.dumps(event)))

    # -- failures ------------------------------------------------------------------

    def added(self, counter: FailureCounter, key: str) -> None:
        """A failure counted here: count it in Redis; the cluster's count comes back."""
        if not self.node.ready:
            return
        name = self.names[counter]
        redisKey = f"{PREFIX}failures:{name}:{key}"
        d = self.node.commands.execute("INCR", redisKey)
        self.node._write(("EXPIRE", redisKey, max(1, int(counter.window))))
        d.addCallback(self._counted, counter, name, key)
        d.addErrback(self.node._failed)

    def _counted(self, count: int, counter: FailureCounter, name: str, key: str) -> None:
        counter.learn(key, count)
        self._tell({"k": "failures", "c": name, "key": key, "v": count})

    def reset(self, counter: FailureCounter, key: str) -> None:
        if not self.node.ready:
            return
        name = self.names[counter]
        self.node._write(("DEL", f"{PREFIX}failures:{name}:{key}"))
        self._tell({"k": "failures", "c": name, "key": key, "v": 0})

    def onFailures(self, event: dict) -> None:
        counter = self.counters[event["c"]]
        if event["v"]:
            counter.learn(event["key"], event["v"])
        else:
            counter.forget(event["key"])

    # -- connections -----------------------------------------------------------------

    def elsewhere(self, key: str) -> int:
        """The connections from address C{key} open on the other nodes."""
        return sum(counts.get(key, 0) for counts in self.remote.values())

    def counted(self, key: str, count: int) -> None:
        """This node now has C{count} connections from address C{key}."""
        if not self.node.ready:
            return
        redisKey = self.connectionsKey(self.node.node)
        self.node._write(("HSET", redisKey, key, count) if count else ("HDEL", redisKey, key))
        self._tell({"k": "connections", "a": key, "v": count})

    def onConnections(self, event: dict) -> None:
        counts = self.remote.setdefault(event["n"], {})
        for _ in range(event["v"] - counts.get(event["a"], 0)):
            self.connections.admittedElsewhere(event["a"])
        if event["v"]:
            counts[event["a"]] = event["v"]
        else:
            counts.pop(event["a"], None)

    def snapshot(self) -> list:
        """The commands that write this node's connection counts afresh (on joining)."""
        key = self.connectionsKey(self.node.node)
        fields = [item for pair in self.connections.open.items() for item in pair]
        commands = [("DEL", key)]
        if fields:
            commands += [("HSET", key, *fields), ("EXPIRE", key, self.node.ttl)]
        return commands

    def load(self, node: str, fields: list) -> None:
        """C{node}'s connection counts as read from Redis."""
        self.remote[node] = {key.decode(): int(count)
                             for key, count in zip(fields[::2], fields[1::2], strict=True)}

    def drop(self, node: str) -> None:
        self.remote.pop(node, None)

    # -- registrations --------------------------------------------------------------

    def registered(self, registration) -> None:
        """Hook C{user-registered}: the other nodes' C{register_limits} count it too."""
        if registration.trusted or not registration.address or not self.node.ready:
            return
        self._tell({"k": "registered", "h": registration.host, "a": registration.address,
                    "t": self.node.reactor.seconds()})

    def onRegistered(self, event: dict) -> None:
        host = self.node.server.hosts.get(event["h"])
        module = host.modules.get("register_limits") if host is not None else None
        if module is not None:
            module.remember(event["a"], event["t"])
