"""
The base of every module: what a module declares, the host wires.

A L{HostModule} is a Wokkel L{XMPPHandler} on its host's stream. Instead of
attaching and detaching by hand, it declares:

  - C{name} and C{depends}: the modules it needs, found in C{host.modules}
    when the host starts (a missing one stops start-up, naming both);
  - C{features} and C{identities}: what disco#info says about the host
    while the module is loaded (the C{disco} module asks every module);
    C{accountFeatures} and C{accountIdentities} the same for an account's
    bare JID (PEP's C{pubsub/pep}, say);
  - C{hooks}: C{(hook, method)} or C{(hook, method, priority)} pairs
    (L{invitesrv.hooks});
  - C{observers}: C{(xpath, method)} observers on the host's stream, for
    stanzas the host receives;
  - C{nonzas}: C{{(namespace, name): method}}, top-level elements of a
    client stream that are not stanzas (C{<enable xmlns='urn:xmpp:sm:3'/>},
    C{<r/>}, C{<inactive/>}), called with the stream's
    L{invitesrv.xmpp.auth.C2SAuthenticator} and the element;
  - C{Options}: a frozen dataclass, the schema of its C{[modules.NAME]}
    config table (and C{[hosts."x".modules.NAME]}); the validated values
    are C{self.options}.

Everything declared is added when the host starts the module and removed
when it stops it, in the same place, so nothing is left behind.
"""

from __future__ import annotations

from typing import Any, ClassVar

from wokkel import disco
from wokkel.iwokkel import IDisco
from wokkel.subprotocols import XMPPHandler
from zope.interface import implementer


class ModuleError(Exception):
    """A module named in the config cannot be found, loaded or started."""


@implementer(IDisco)
class HostModule(XMPPHandler):
    """
    A feature of a virtual host (the C{parent}; also C{self.host}). See the
    module docstring for what a subclass declares.
    """

    name: ClassVar[str] = ""
    depends: ClassVar[tuple[str, ...]] = ()
    features: ClassVar[tuple[str, ...]] = ()
    identities: ClassVar[tuple[disco.DiscoIdentity, ...]] = ()
    accountFeatures: ClassVar[tuple[str, ...]] = ()
    accountIdentities: ClassVar[tuple[disco.DiscoIdentity, ...]] = ()
    hooks: ClassVar[tuple[tuple, ...]] = ()
    observers: ClassVar[tuple[tuple, ...]] = ()
    nonzas: ClassVar[dict[tuple[str, str], str]] = {}
    Options: ClassVar[type | None] = None

    options: Any = None  # an instance of Options, set when the host loads the module

    @property
    def host(self):
        """The virtual host this module serves."""
        return self.parent

    def connectionInitialized(self) -> None:
        """Attach every declared hook, observer and nonza handler."""
        host = self.parent
        for entry in self.hooks:
            host.hooks.add(entry[0], getattr(self, entry[1]), *entry[2:])
        for entry in self.observers:
            self.xmlstream.addObserver(entry[0], getattr(self, entry[1]), *entry[2:])
        for key, method in self.nonzas.items():
            host.addNonza(key, getattr(self, method))

    def connectionLost(self, reason) -> None:
        """Detach what L{connectionInitialized} attached."""
        host = self.parent
        for key in self.nonzas:
            host.removeNonza(key)
        for entry in self.observers:
            self.xmlstream.removeObserver(entry[0], getattr(self, entry[1]))
        for entry in self.hooks:
            host.hooks.remove(entry[0], getattr(self, entry[1]))
        XMPPHandler.connectionLost(self, reason)

    # -- IDisco: from the declarations -----------------------------------------

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        """The declared identities and features, of the host's JID or of an account's."""
        if nodeIdentifier or target.resource is not None:
            return []
        if target.user is None:
            identities, features = self.identities, self.features
        else:
            identities, features = self.accountIdentities, self.accountFeatures
        return list(identities) + [disco.DiscoFeature(feature) for feature in features]

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        return []
