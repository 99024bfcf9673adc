"""
A virtual host: its options, its hooks, and its modules.

Modules are Wokkel L{XMPPHandler}s, one set per host shared by every session
(as in Wokkel's C{InternalComponent}): they observe the host's L{HostStream}
and answer through it. Stanzas reach the host from the router; the host offers
each one to its modules and, where none handled it, applies RFC 6121's rules.
Modules are found by name in the C{invitesrv.modules} entry-point group, so a
third-party package adds one exactly as the built-in ones are added.
"""

from __future__ import annotations

import secrets
import time
from importlib.metadata import entry_points

from twisted.internet import defer, threads
from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish, utility
from wokkel.subprotocols import XMPPHandlerCollection

from invitesrv.config import Config, ConfigError, HostOptions, buildTable
from invitesrv.credentials import MECHANISMS
from invitesrv.hooks import Hooks
from invitesrv.limits import Metrics
from invitesrv.logs import logger
from invitesrv.modules.base import ModuleError
from invitesrv.services.resources import Resources
from invitesrv.xmpp.router import Router, bounce

log = logger()

NS_CLIENT = "jabber:client"
ADMIN_ROLE = "admin"  # the role an admin invite grants
SUBSCRIPTION_TYPES = frozenset(("subscribe", "subscribed", "unsubscribe", "unsubscribed"))


def findModule(name: str):
    """The handler class registered as C{name} in the C{invitesrv.modules} group."""
    for entry in entry_points(group="invitesrv.modules"):
        if entry.name == name:
            return entry.load()
    raise ModuleError(f"no module named {name!r} (entry-point group invitesrv.modules)")


def moduleOptions(cls, name: str, config: Config, host: str):
    """
    The options of module C{name} (class C{cls}) on C{host}: its
    C{[modules.NAME]} table under its C{[hosts."x".modules.NAME]} table,
    checked against the module's C{Options} dataclass; a L{ConfigError}
    names the key and the file.
    """
    tables = (config.module_options.get(name), config.host_module_options.get(host, {}).get(name))
    schema = getattr(cls, "Options", None)
    if schema is None:
        if any(table is not None for table in tables):
            raise ConfigError(f"{config.source}: module {name!r} takes no options ([modules.{name}])")
        return None
    options = buildTable(schema, tables[0] or {}, f"modules.{name}", config.source)
    if tables[1] is not None:
        options = buildTable(schema, tables[1], f"hosts.{host}.modules.{name}", config.source, base=options)
    return options


class HostStream(utility.EventDispatcher):
    """
    The stream a host's modules are connected to: what they observe is what
    the host receives, and what they send goes to the router.
    """

    def __init__(self, host: VirtualHost):
        utility.EventDispatcher.__init__(self)
        self.host = host

    def send(self, obj) -> None:
        self.host.send(obj)


class VirtualHost(XMPPHandlerCollection):
    """
    One served domain. Modules reach what they share through it: C{options},
    C{store}, C{hooks}, C{router}, C{registrar}, C{clock}, C{config} and
    C{metrics} (event counters, L{invitesrv.limits.Metrics}).
    """

    # Runs CPU-bound work (password hashing) off the reactor thread, like
    # the store's queries; a unit test on a Clock sets one that runs it inline.
    deferToThread = staticmethod(threads.deferToThread)

    def __init__(self, name: str, options: HostOptions, config: Config, store, router: Router,
                 clock=None):
        XMPPHandlerCollection.__init__(self)
        if clock is None:
            from twisted.internet import reactor as clock
        self.name = name
        self.jid = jid.JID(name)
        self.options = options
        self.config = config
        self.store = store
        self.router = router
        self.clock = clock
        self.hooks = Hooks()
        self.stream = HostStream(self)
        self.modules: dict[str, object] = {}
        self.nonzas: dict[tuple[str, str], object] = {}  # see addNonza
        self.resources = Resources(self)
        self.metrics = Metrics()  # the server's, when it runs in an InviteServer
        self.started = False
        # The SCRAM mechanisms offered: SCRAM-SHA-1 alone while some account
        # has no SCRAM-SHA-256 keys (imported from Prosody), see refreshMechanisms.
        self.scramMechanisms: tuple[str, ...] = MECHANISMS
        self._features: dict[tuple, bytes] = {}  # see streamFeatures
        self._featuresBasis: tuple = (None, None, -1)
        self.hooks.add("password-changed", lambda host, username: self.refreshMechanisms())
        self.hooks.add("user-deleted", lambda host, username: self.refreshMechanisms())
        from invitesrv.registrar import Registrar
        self.registrar = Registrar(self)
        router.addHost(self)

    def streamFeatures(self, stage: tuple, build) -> bytes:
        """
        The stream features offered at C{stage} (what tells streams apart:
        authenticated or not, encrypted or not, the channel-binding types...),
        serialised by C{build()} the first time for this configuration and
        these hook callbacks. The C{stream-features} hooks answer for a stage,
        not a stream, and building and serialising features cost more than
        0.1 ms per stream.
        """
        basis = self._featuresBasis
        if (basis[0] is not self.config or basis[1] is not self.options
                or basis[2] != self.hooks.version):
            self._featuresBasis = (self.config, self.options, self.hooks.version)
            self._features = {}
        features = self._features.get(stage)
        if features is None:
            features = self._features[stage] = build()
        return features

    def now(self) -> float:
        """Wall-clock seconds from the injected clock (a L{Clock} in tests)."""
        return self.clock.seconds() if hasattr(self.clock, "seconds") else time.time()

    def isAdmin(self, who: jid.JID | str):
        """
        Fire with whether C{who} is an admin of this host: named in the
        config (a name nobody but C{invitesrvctl adduser} can register), or
        an account holding the admin role (from an admin invite). The role
        is read from the store at every check, not remembered: the role
        goes with its account, also when C{invitesrvctl} deletes it while
        the server runs, and a stranger who takes the name later has none.
        """
        who = who if isinstance(who, jid.JID) else jid.JID(who)
        if who.userhost() in self.options.admins:
            return defer.succeed(True)
        if who.host != self.name or who.user is None:
            return defer.succeed(False)
        d = self.store.getRoles(self.name, who.user)
        return d.addCallback(lambda roles: ADMIN_ROLE in roles)

    def refreshMechanisms(self):
        """
        Offer SCRAM-SHA-256 only while every account can use it. An account
        imported from Prosody 0.12 has SCRAM-SHA-1 keys only, and SHA-256 keys
        cannot be derived from them; a client offered both picks SHA-256, and
        one that does not fall back after a failure would be locked out. Until
        such accounts get SHA-256 keys (a PLAIN login or a new password), the
        host offers SCRAM-SHA-1, as Prosody 0.12 did.
        """
        d = self.store.countAccountsWithout(self.name, MECHANISMS[0])

        def counted(legacy: int):
            mechanisms = MECHANISMS[1:] if legacy else MECHANISMS
            if mechanisms != self.scramMechanisms:
                log.info("{host}: {count} accounts have SCRAM-SHA-1 keys only; offering {mechanisms}",
                         host=self.name, count=legacy, mechanisms=", ".join(mechanisms))
            self.scramMechanisms = mechanisms
        d.addCallback(counted)
        d.addErrback(lambda failure: log.failure("Cannot count the legacy accounts of {host}",
                                                 failure, host=self.name))
        return d

    def endSessions(self, username: str, text: str, keep: str | None = None) -> None:
        """
        End the sessions of an account whose password changed or that was
        deleted, with C{<not-authorized/>} and C{text} (all but the full
        JID C{keep}, the session that changed its own password).
        """
        for session in list(self.router.resourcesOf(f"{username}@{self.name}").values()):
            if session.full != keep:
                session.close("not-authorized", text)

    # -- modules ------------------------------------------------------------

    def loadModules(self, names) -> None:
        """Load the modules C{names} from the entry-point group, with their options."""
        for name in names:
            cls = findModule(name)
            module = cls()
            module.options = moduleOptions(cls, name, self.config, self.name)
            self.addModule(name, module)

    def reloadModuleOptions(self) -> None:
        """Give each module with C{Options} its table from the config as it is now (a reload)."""
        for name, module in self.modules.items():
            if getattr(module, "Options", None) is not None:
                module.options = moduleOptions(type(module), name, self.config, self.name)

    def addModule(self, name: str, module) -> None:
        """Add a module under C{name}; where it declares options and has none, the defaults."""
        schema = getattr(module, "Options", None)
        if schema is not None and module.options is None:
            module.options = schema()
        self.modules[name] = module
        module.setHandlerParent(self)

    def checkDepends(self) -> None:
        """Every module's C{depends} is loaded, or a L{ModuleError} names both."""
        for name, module in self.modules.items():
            for needed in getattr(module, "depends", ()):
                if needed not in self.modules:
                    raise ModuleError(f"module {name!r} needs module {needed!r}, which is not"
                                      f" loaded on {self.name} (server.modules)")

    def addNonza(self, key: tuple[str, str], handler) -> None:
        """
        Have C{handler(authenticator, element)} take the client-stream
        top-level elements named C{key} (namespace, name) that are not
        stanzas; one handler per name.
        """
        if key in self.nonzas:
            raise ModuleError(f"two modules handle the nonza {{{key[0]}}}{key[1]} on {self.name}")
        self.nonzas[key] = handler

    def removeNonza(self, key: tuple[str, str]) -> None:
        self.nonzas.pop(key, None)

    def addHandler(self, handler) -> None:
        XMPPHandlerCollection.addHandler(self, handler)
        if self.started:
            handler.makeConnection(self.stream)
            handler.connectionInitialized()

    def start(self) -> None:
        self.checkDepends()
        self.started = True
        self.refreshMechanisms()
        for handler in list(self):
            handler.makeConnection(self.stream)
            handler.connectionInitialized()

    def stop(self) -> defer.Deferred:
        """
        Stop the modules, once what the C{host-stopping} hook started
        (writes to the store) is done; fire then.
        """
        self.started = False
        pending = [d for d in self.hooks.run("host-stopping", self) if d is not None]
        d = defer.DeferredList(pending, consumeErrors=True)
        d.addCallback(self._stopped)
        return d

    def _stopped(self, results) -> None:
        for ok, result in results:
            if not ok:
                log.failure("A module of {host} failed while stopping", result, host=self.name)
        for handler in list(self):
            handler.connectionLost(None)

    def send(self, obj) -> None:
        """Stanzas from the host's modules go out through the router (unless C{host-send} drops them)."""
        if not self.hooks.first("host-send", obj):
            self.router.route(obj)

    def sendChat(self, to: str, text: str, sender: str | None = None) -> None:
        """
        A chat message from the host (or C{sender}, one of its accounts) to
        C{to}: what the server tells users. It is delivered like any other,
        kept offline when nobody is online.
        """
        message = domish.Element(("jabber:client", "message"))
        message["from"] = sender or self.name
        message["to"] = to
        message["type"] = "chat"
        message["id"] = secrets.token_hex(8)
        message.addElement("body", content=text)
        self.send(message)

    # -- delivery -----------------------------------------------------------

    def dispatch(self, stanza) -> bool:
        """Offer a stanza to the modules; True if one handled it."""
        stanza.handled = False
        self.stream.dispatch(stanza)
        return stanza.handled

    def receive(self, stanza, target: jid.JID) -> None:
        """Deliver a stanza addressed to this host, one of its accounts or sessions."""
        name = stanza.name
        if target.user is None:
            if not self.dispatch(stanza) and name == "iq":
                self._refuse(stanza, "service-unavailable")
            return
        if self.hooks.first("inbound-stanza", stanza, target):
            return
        if target.resource is not None:
            session = self.router.session(target)
            if session is not None and not (
                    name == "presence" and stanza.getAttribute("type") in SUBSCRIPTION_TYPES):
                session.send(stanza)
                if name == "message":
                    self.hooks.run("message-delivered", stanza, [session])
                return
            if name == "iq":
                self._refuse(stanza, "service-unavailable")
                return
            if name == "presence" and stanza.getAttribute("type") not in SUBSCRIPTION_TYPES:
                return  # directed presence to a resource that is gone
            if name == "message" and stanza.getAttribute("type") in ("groupchat", "headline", "error"):
                if stanza.getAttribute("type") == "groupchat":
                    self._refuse(stanza, "service-unavailable")
                return
        if self.dispatch(stanza):
            return
        if name == "message":
            self.deliverToAccount(stanza, target)
        elif name == "iq":
            self._refuse(stanza, "service-unavailable")

    def deliverToAccount(self, message, target: jid.JID) -> None:
        """RFC 6121 section 8.5.2: a message to a bare JID (or a gone resource)."""
        kind = message.getAttribute("type", "normal")
        if kind == "error":
            return
        if kind == "groupchat":
            self._refuse(message, "service-unavailable")
            return
        sessions = self.resources.recipients(target.userhost(), kind != "headline")
        if sessions:
            for session in sessions:
                session.send(message)
            self.hooks.run("message-delivered", message, sessions)
            return
        if kind == "headline":
            return
        stored = self.hooks.first("offline-message", target.user, message)
        if stored is None:
            self._refuse(message, "service-unavailable")
        else:
            stored.addCallback(lambda kept: kept or self._refuse(message, "service-unavailable"))

    def _refuse(self, stanza, condition: str, text: str | None = None) -> None:
        reply = bounce(stanza, condition, text=text)
        if reply is not None:
            self.router.route(reply)
