"""
Components served by this server, and what every component is to the router.

As in Wokkel's C{wokkel.component}, a component is a route of its own in the
router: whatever is addressed to its domain or to a JID at it
(C{room@groups.example.org/nick}) reaches the component, which answers for
itself, and what it sends goes out through the router to local users, other
components or remote servers. Each belongs to a virtual host, which lists it
in its disco#items (through the host's C{disco-items} hook) under the name of
the identity the component gives in its own disco#info.

L{InternalComponent} serves its domain with its own modules, found by name in
the C{invitesrv.modules} entry-point group and given their options like a
host's; the external
XEP-0114 kind is in L{invitesrv.components.external}.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.words.protocols.jabber import jid
from wokkel import disco
from wokkel.subprotocols import XMPPHandlerCollection

from invitesrv.hooks import Hooks
from invitesrv.host import HostStream, VirtualHost
from invitesrv.logs import logger
from invitesrv.modules.disco import DiscoModule
from invitesrv.xmpp.router import bounce

log = logger()


class Component:
    """
    A domain routed to a component of C{host} while started. The component
    is listed in the host's disco#items while it can answer (L{list}).
    """

    def __init__(self, name: str, host):
        self.name = name
        self.jid = jid.JID(name)
        self.host = host
        self.router = host.router
        self.discoItem = disco.DiscoItem(self.jid)
        self.listed = False
        self.started = False

    def start(self) -> None:
        self.started = True
        self.router.addComponent(self)

    def stop(self) -> None:
        """Stop routing to this domain: stanzas for it take the default route."""
        self.started = False
        self.router.removeComponent(self)
        self.unlist()

    def list(self) -> None:
        """Appear in the host's disco#items."""
        if not self.listed:
            self.listed = True
            self.host.hooks.add("disco-items", self.discoItems)

    def unlist(self) -> None:
        if self.listed:
            self.listed = False
            self.host.hooks.remove("disco-items", self.discoItems)

    def discoItems(self, requestor, node: str) -> list:
        """The C{disco-items} hook of the host: this component, at the top level."""
        return [] if node else [self.discoItem]

    def named(self, identities) -> None:
        """Take the list name from the first named identity of the component's disco#info."""
        for name in identities:
            if name:
                self.discoItem.name = name
                return

    def send(self, obj) -> None:
        """What the component sends goes out through the router."""
        self.router.route(obj)

    def refuse(self, stanza, condition: str, text: str | None = None) -> None:
        reply = bounce(stanza, condition, text=text)
        if reply is not None:
            self.router.route(reply)


class ComponentDisco(DiscoModule):
    """
    disco#info and #items of a component's domain: the component's modules
    declare its identity and features, as a host's do, and its items come
    from its own C{disco-items} hook; anyone may ask, and the component's
    modules decide about JIDs at its domain.
    """

    identities = ()
    accountIdentities = ()
    accountFeatures = ()

    def _checkAccess(self, requestor: jid.JID, target: jid.JID):
        return defer.succeed(None)


class InternalComponent(Component, XMPPHandlerCollection):
    """
    A component served in this process by its own modules (Wokkel handlers,
    one set for the whole domain, as Wokkel's C{InternalComponent} and
    L{invitesrv.host.VirtualHost} have). Its modules reach C{host} (the
    virtual host it belongs to), C{router}, C{store}, C{config}, C{clock}
    and C{hooks} (the component's own) through their C{parent}; every
    component answers disco (L{ComponentDisco}). Modules are loaded, given
    their options (C{[modules.NAME]}) and their dependencies checked as a
    host's are.
    """

    loadModules = VirtualHost.loadModules
    addModule = VirtualHost.addModule
    checkDepends = VirtualHost.checkDepends

    def __init__(self, name: str, host):
        XMPPHandlerCollection.__init__(self)
        Component.__init__(self, name, host)
        self.store = host.store
        self.config = host.config
        self.clock = host.clock
        self.hooks = Hooks()
        self.stream = HostStream(self)
        self.modules: dict[str, object] = {}
        self.disco = ComponentDisco()
        self.addModule("disco", self.disco)

    def start(self) -> None:
        """Connect the modules, then route the domain and list it under its disco#info name."""
        self.checkDepends()
        for handler in list(self):
            handler.makeConnection(self.stream)
            handler.connectionInitialized()
        Component.start(self)
        d = self.disco.info(self.host.jid, self.jid, "")
        d.addCallback(lambda info: self.named(
            [item.name for item in info if isinstance(item, disco.DiscoIdentity)]))
        d.addErrback(lambda failure: log.failure("disco#info of {domain} failed", failure,
                                                 domain=self.name))
        self.list()

    def stop(self) -> None:
        if not self.started:
            return
        Component.stop(self)
        for handler in list(self):
            handler.connectionLost(None)

    def receive(self, stanza, target: jid.JID) -> None:
        """
        Offer a stanza for the domain (or a JID at it) to the modules; an iq
        or message none of them handled is answered with
        C{service-unavailable} (RFC 6120 section 8.3.3.19).
        """
        stanza.handled = False
        self.stream.dispatch(stanza)
        if not stanza.handled and stanza.name in ("iq", "message"):
            self.refuse(stanza, "service-unavailable")
