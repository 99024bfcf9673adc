"""
XEP-0163 Personal Eventing Protocol: a pubsub service on every account's
bare JID, with the XEP-0060 subset clients use (OMEMO device lists and
bundles, avatars, nicknames, bookmarks).

The owner publishes (nodes are created on first publish, with
C{publish-options} checked as XEP-0060 section 7.1.5 says), retracts,
purges, deletes and configures; anyone the node's access model lets in
(C{open}: everyone, so a stranger can fetch OMEMO keys; C{presence}: the
contacts subscribed to the owner's presence; C{roster}: those in the
allowed roster groups; C{whitelist}: the owner alone) reads the items.

Who hears of a publication is decided by interest, as XEP-0163 section 4
says: a resource whose XEP-0115 caps list C{NODE+notify}, among the owner's
own resources and the contacts subscribed to the owner's presence whose
available presence reached the owner (local or remote: the router carries
both). The server asks such a resource for its disco#info when its caps
C{ver} is new, keeps the answer only when the hash checks out
(L{invitesrv.caps}), and sends it the last item of each node it newly cares
about, so a client that logs in, or a contact that comes online, is up to
date at once. The access model is checked again for every notification.

An account's nodes are read from the store once and kept in memory while
used (at most L{LOADED} accounts; the least recently used one goes first);
every change is written to the store before it is made in memory, and
before anyone hears of it.

In cluster mode every node keeps the interest of the resources bound on it,
and only those: a presence of another node's resource that reaches an
account here (a probe's answer) is handed to that node (hook
C{pep-presence}), where its caps query is answered. Each change is told to
the other nodes with its event (hook C{pep-changed}): they forget their
copy of the account's nodes, and tell the interested resources they hold
(L{PepModule.changedElsewhere}). A publication costs one message to Redis,
whatever the number of nodes and contacts.

The limits (items per node, nodes per account, payload bytes, bytes per
account) are C{[modules.pep]} options; what they refuse is answered
C{not-acceptable} or C{resource-constraint} with a text (docs/limits.md).
"""

from __future__ import annotations

import itertools
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.words.protocols.jabber import jid, xmlstream
from twisted.words.xish import domish
from wokkel import disco

from invitesrv.accountiq import accountRequest, answer
from invitesrv.caps import NS_DISCO_INFO, Caps, CapsCache, features, parseCaps, verified
from invitesrv.config import Duration
from invitesrv.logs import logger
from invitesrv.modules.base import HostModule
from invitesrv.modules.roster import FROM
from invitesrv.pubsub import (
    DEFAULTS,
    FEATURES,
    NS_CONFIG,
    NS_EVENT,
    NS_OWNER,
    NS_PUBLISH_OPTIONS,
    NS_PUBSUB,
    checkOptions,
    dumpOptions,
    formValues,
    loadOptions,
    optionsForm,
    pubsubError,
)
from invitesrv.store.interfaces import StoreUnavailable
from invitesrv.xmpp.router import parseJID

log = logger()

NS_CLIENT = "jabber:client"
NOTIFY = "+notify"
LOADED = 10_000  # accounts whose nodes are kept in memory
QUERY_PREFIX = "caps-"


@dataclass(frozen=True)
class PepOptions:
    """C{[modules.pep]}: the limits of every account's PEP service (docs/limits.md)."""

    max_items: int = 256  # items a node keeps at most ('max' means this many)
    max_nodes: int = 128  # nodes per account
    max_payload: int = 131_072  # bytes of one item's payload
    max_bytes: int = 2_097_152  # bytes of all the items of an account
    caps_cache: int = 10_000  # verified caps hashes kept
    caps_timeout: Duration = Duration(30)  # how long a caps disco#info query is waited for


@dataclass
class Node:
    """One node: options and items (id: payload XML), oldest first."""

    name: str
    options: dict
    items: OrderedDict = field(default_factory=OrderedDict)

    def size(self) -> int:
        return sum(len(xml.encode("utf-8")) for xml in self.items.values())


@dataclass
class Service:
    """One account's nodes, as loaded from the store."""

    username: str
    nodes: dict[str, Node] = field(default_factory=dict)

    def size(self) -> int:
        return sum(node.size() for node in self.nodes.values())


def itemElement(itemId: str, payload: str | None, uri: str = NS_EVENT) -> domish.Element:
    """An C{<item/>} with its payload (serialised XML, added as is)."""
    item = domish.Element((uri, "item"))
    item["id"] = itemId
    if payload is not None:
        item.addRawXml(payload)
    return item


class PepModule(HostModule):
    """The PEP service of every account of a host, and who hears of what is published."""

    name = "pep"
    depends = ("roster", "presence")
    accountIdentities = (disco.DiscoIdentity("pubsub", "pep"),)
    accountFeatures = FEATURES
    hooks = (("client-presence", "onOwnPresence", 10),
             ("session-bound", "onSessionBound"),
             ("session-closed", "onSessionClosed"),
             ("user-deleted", "onUserDeleted"))
    observers = ((f"/iq/pubsub[@xmlns='{NS_PUBSUB}']", "onRequest"),
                 (f"/iq/pubsub[@xmlns='{NS_OWNER}']", "onRequest"),
                 ("/presence", "onInboundPresence"),
                 ("/iq[@type='result']", "onQueryAnswer"),
                 ("/iq[@type='error']", "onQueryAnswer"))
    Options = PepOptions

    def __init__(self) -> None:
        HostModule.__init__(self)
        self.services: OrderedDict[str, Service] = OrderedDict()
        self._loading: dict[str, list[defer.Deferred]] = {}  # username: who waits for its nodes
        self._locks: dict[str, defer.DeferredLock] = {}  # username: its changes, one at a time
        # username: {full JID of an interested resource: the nodes it wants}
        self.interest: dict[str, dict[str, frozenset[str]]] = {}
        self.caps: CapsCache | None = None
        # caps query id: (the caps asked about, [(username, full JID, roster item)] waiting, timeout)
        self._queries: dict[str, tuple[Caps, list[tuple], object]] = {}
        self._ids = itertools.count(1)

    def connectionInitialized(self) -> None:
        HostModule.connectionInitialized(self)
        self.caps = CapsCache(self.options.caps_cache)

    def connectionLost(self, reason) -> None:
        for _, _, timeout in self._queries.values():
            if timeout.active():
                timeout.cancel()
        self._queries.clear()
        HostModule.connectionLost(self, reason)

    def _bare(self, username: str) -> str:
        return f"{username}@{self.parent.name}"

    # -- the accounts' nodes ---------------------------------------------------

    def service(self, username: str) -> defer.Deferred:
        """Fire with the L{Service} of C{username}, read from the store the first time."""
        found = self.services.get(username)
        if found is not None:
            self.services.move_to_end(username)
            return defer.succeed(found)
        d = defer.Deferred()
        waiting = self._loading.get(username)
        if waiting is not None:
            waiting.append(d)
        else:
            waiting = self._loading[username] = [d]
            self.parent.store.getPep(self.parent.name, username).addBoth(self._loaded, username, waiting)
        return d

    def _loaded(self, result, username: str, waiting: list) -> None:
        """
        Keep what the store gave and hand it out (a failure is not kept: the
        next request reads again; nor is a read begun before another node
        changed the account's nodes, L{forgetService}).
        """
        current = self._loading.get(username) is waiting
        if current:
            del self._loading[username]
        if isinstance(result, list):
            service = Service(username)
            for stored in result:
                node = Node(stored.node, loadOptions(stored.config))
                node.items.update(stored.items)
                service.nodes[stored.node] = node
            result = service
            if current:
                self.services[username] = service
            while len(self.services) > LOADED:
                oldest = next((name for name in self.services if name not in self._locks), None)
                if oldest is None:
                    break
                del self.services[oldest]
        for d in waiting:
            if isinstance(result, Service):
                d.callback(result)
            else:
                d.errback(result)

    def forgetService(self, username: str) -> None:
        """Another node changed the account's nodes: read them again when next needed."""
        self.services.pop(username, None)
        self._loading.pop(username, None)  # a read under way may be older than the change

    def forgetAll(self) -> None:
        """Changes of other nodes may have been missed (Redis was away): read every account again."""
        self.services.clear()
        self._loading.clear()

    def maxItems(self, node: Node) -> int:
        """How many items C{node} keeps."""
        value = node.options["max_items"]
        return self.options.max_items if value == "max" else min(value, self.options.max_items)

    def _locked(self, username: str, fn, *args) -> defer.Deferred:
        """Run C{fn(*args)} after the account's earlier changes (its nodes stay in memory meanwhile)."""
        lock = self._locks.get(username)
        if lock is None:
            lock = self._locks[username] = defer.DeferredLock()
        d = lock.run(fn, *args)
        d.addBoth(self._unlocked, username, lock)
        return d

    def _unlocked(self, result, username: str, lock: defer.DeferredLock):
        if not lock.locked and not lock.waiting and self._locks.get(username) is lock:
            del self._locks[username]
        return result

    def _refused(self, username: str, limit: str, node: str) -> None:
        """Log a request a limit refused (docs/limits.md)."""
        log.info("PEP: {user} over {limit} ({value}) publishing to {node}",
                 user=self._bare(username), limit=f"modules.pep.{limit}",
                 value=getattr(self.options, limit), node=node)

    # -- access ----------------------------------------------------------------

    def allowed(self, username: str, node: Node, bare: str, item) -> bool:
        """Whether C{bare}, whose item in the owner's roster is C{item} (or None), may read C{node}."""
        if bare == self._bare(username):
            return True
        model = node.options["access_model"]
        if model == "open":
            return True
        if item is None or model not in ("presence", "roster"):
            return False
        if model == "presence":
            return item.subscription in FROM
        return bool(set(item.groups) & set(node.options["roster_groups_allowed"]))

    @defer.inlineCallbacks
    def mayRead(self, username: str, node: Node, requestor: jid.JID):
        """Whether C{requestor} may read C{node} of C{username}, by its access model."""
        bare = requestor.userhost()
        item = None
        if bare != self._bare(username) and node.options["access_model"] in ("presence", "roster"):
            item = yield self.parent.modules["roster"].getItem(username, bare)
        return self.allowed(username, node, bare, item)

    # -- requests --------------------------------------------------------------

    def onRequest(self, iq) -> None:
        """A pubsub request addressed to an account's bare JID."""
        request = accountRequest(iq, self.parent)
        if request is not None:
            answer(self, iq, self._answer, iq, *request, what="PEP request")

    @defer.inlineCallbacks
    def _answer(self, iq, sender: jid.JID, username: str):
        """Check the request and run it; fire with the answer."""
        request = iq.firstChildElement()
        verbs = [child for child in request.elements() if request.uri == NS_OWNER
                 or child.name not in ("publish-options", "configure")]
        if len(verbs) != 1:
            raise pubsubError("bad-request", text="One pubsub request per iq")
        verb = verbs[0]
        owner = sender.userhost() == self._bare(username)
        kind = iq["type"]
        service = yield self.service(username)
        key = (request.uri, kind, verb.name)
        if key == (NS_PUBSUB, "get", "items"):
            return (yield self._items(iq, service, verb, sender))
        if verb.name in ("subscribe", "unsubscribe", "options") and request.uri == NS_PUBSUB:
            # Interest comes from caps (XEP-0163 section 4): no explicit subscriptions.
            raise pubsubError("feature-not-implemented", "unsupported", feature="subscribe",
                              text="PEP notifications follow your caps (+notify); no subscriptions")
        if not owner:
            if key in ((NS_PUBSUB, "get", "subscriptions"), (NS_PUBSUB, "get", "affiliations")):
                return self._listing(iq, verb.name, ())
            raise pubsubError("forbidden", text="Only the account itself may change its PEP nodes")
        if key == (NS_PUBSUB, "set", "publish"):
            return (yield self._publish(iq, service, verb, request))
        if key == (NS_PUBSUB, "set", "retract"):
            return (yield self._retract(iq, service, verb))
        if key == (NS_PUBSUB, "set", "create"):
            return (yield self._locked(username, self._create, iq, service, verb, request))
        if key == (NS_OWNER, "set", "delete"):
            return (yield self._locked(username, self._delete, iq, service, verb))
        if key == (NS_OWNER, "set", "purge"):
            return (yield self._locked(username, self._purge, iq, service, verb))
        if key == (NS_OWNER, "get", "configure"):
            node = self._node(service, verb)
            reply = xmlstream.toResponse(iq, "result")
            configure = reply.addElement((NS_OWNER, "pubsub")).addElement("configure")
            configure["node"] = node.name
            configure.addChild(optionsForm(node.options))
            return reply
        if key == (NS_OWNER, "set", "configure"):
            return (yield self._locked(username, self._configure, iq, service, verb))
        if key == (NS_OWNER, "get", "default"):
            reply = xmlstream.toResponse(iq, "result")
            reply.addElement((NS_OWNER, "pubsub")).addElement("default").addChild(optionsForm(DEFAULTS))
            return reply
        if key == (NS_PUBSUB, "get", "subscriptions"):
            return self._listing(iq, "subscriptions", ())
        if key == (NS_PUBSUB, "get", "affiliations"):
            return self._listing(iq, "affiliations", [(name, "owner") for name in sorted(service.nodes)])
        raise pubsubError("feature-not-implemented", "unsupported",
                          feature=verb.name, text=f"PEP does not do {verb.name}")

    @staticmethod
    def _nodeName(verb) -> str:
        name = verb.getAttribute("node")
        if not name:
            raise pubsubError("bad-request", "nodeid-required")
        return name

    def _node(self, service: Service, verb) -> Node:
        node = service.nodes.get(self._nodeName(verb))
        if node is None:
            raise pubsubError("item-not-found", text="No such node")
        return node

    @staticmethod
    def _listing(iq, name: str, rows):
        """The answer to a subscriptions or affiliations request."""
        reply = xmlstream.toResponse(iq, "result")
        listing = reply.addElement((NS_PUBSUB, "pubsub")).addElement(name)
        for node, affiliation in rows:
            entry = listing.addElement("affiliation")
            entry["node"], entry["affiliation"] = node, affiliation
        return reply

    @defer.inlineCallbacks
    def _items(self, iq, service: Service, verb, sender: jid.JID):
        """Items of a node (all, the last C{max_items}, or those asked by id), if its access model allows."""
        node = service.nodes.get(self._nodeName(verb))
        if node is None or not (yield self.mayRead(service.username, node, sender)):
            # The same answer for a node one may not see as for no node: nothing leaks.
            raise pubsubError("item-not-found", text="No such node")
        wanted = [item.getAttribute("id") for item in verb.elements(NS_PUBSUB, "item")]
        if wanted:
            found = [(i, node.items[i]) for i in wanted if i in node.items]
        else:
            found = list(node.items.items())
            limit = verb.getAttribute("max_items")
            if limit is not None:
                try:
                    count = int(limit)
                except ValueError:
                    raise pubsubError("bad-request", text="max_items is a number") from None
                found = found[-count:] if count > 0 else []
        reply = xmlstream.toResponse(iq, "result")
        items = reply.addElement((NS_PUBSUB, "pubsub")).addElement("items")
        items["node"] = node.name
        for itemId, payload in reversed(found):  # newest first, as XEP-0060 section 6.5.7
            items.addChild(itemElement(itemId, payload, NS_PUBSUB))
        return reply

    def _newNode(self, service: Service, name: str, options: dict) -> Node:
        """A node to create, if the account may have one more."""
        if len(service.nodes) >= self.options.max_nodes:
            self._refused(service.username, "max_nodes", name)
            raise pubsubError("resource-constraint", text=f"An account has at most"
                              f" {self.options.max_nodes} PEP nodes; delete one first")
        return Node(name, {**DEFAULTS, **options})

    @defer.inlineCallbacks
    def _publish(self, iq, service: Service, verb, request):
        """A publish request: one item, with publish-options if any."""
        items = list(verb.elements(NS_PUBSUB, "item"))
        if len(items) != 1:
            raise pubsubError("bad-request", "item-required" if not items else "invalid-payload",
                              text="Publish one item")
        payloads = [child for child in items[0].elements()]
        if len(payloads) != 1:
            raise pubsubError("bad-request", "payload-required" if not payloads else "invalid-payload",
                              text="An item holds one payload element")
        wanted = {}
        for child in request.elements(NS_PUBSUB, "publish-options"):
            fields = formValues(child, NS_PUBLISH_OPTIONS)
            if fields is not None:
                wanted = checkOptions(fields, self.options.max_items)
        itemId = yield self.publish(service.username, self._nodeName(verb), items[0].getAttribute("id"),
                                    payloads[0], wanted)
        reply = xmlstream.toResponse(iq, "result")
        publish = reply.addElement((NS_PUBSUB, "pubsub")).addElement("publish")
        publish["node"] = verb["node"]
        publish.addElement("item")["id"] = itemId
        return reply

    def publish(self, username: str, name: str, itemId: str | None, payload: domish.Element,
                wanted: dict | None = None, defaults: dict | None = None) -> defer.Deferred:
        """
        Publish C{payload} as item C{itemId} (None: a new id) of the node
        C{name} of C{username} (created with the options C{wanted} and
        C{defaults} if missing; if it exists, C{wanted} is a precondition),
        store it and tell those interested; fire with the item id. For other
        modules too (the vCard's avatar, the bookmarks of private storage).
        """
        return self._locked(username, self._publishLocked, username, name, itemId or uuid.uuid4().hex,
                            payload.toXml(), wanted or {}, defaults or {})

    @defer.inlineCallbacks
    def _publishLocked(self, username: str, name: str, itemId: str, payload: str, wanted: dict,
                       defaults: dict):
        service = yield self.service(username)
        size = len(payload.encode("utf-8"))
        if size > self.options.max_payload:
            self._refused(username, "max_payload", name)
            raise pubsubError("not-acceptable", "payload-too-big",
                              text=f"An item's payload is at most {self.options.max_payload} bytes")
        node = service.nodes.get(name)
        if node is None:
            node = self._newNode(service, name, {**defaults, **wanted})
        elif any(node.options.get(option) != value for option, value in wanted.items()):
            raise pubsubError("conflict", "precondition-not-met",
                              text="The node's configuration is not what publish-options asks")
        old = node.items.get(itemId)
        grown = size - (len(old.encode("utf-8")) if old is not None else 0)
        if node.options["persist_items"] and grown > 0 and service.size() + grown > self.options.max_bytes:
            self._refused(username, "max_bytes", name)
            raise pubsubError("resource-constraint", text=f"An account's PEP items take at most"
                              f" {self.options.max_bytes} bytes; retract or delete some first")
        keep = self.maxItems(node) if node.options["persist_items"] else 0
        yield self.parent.store.publishPepItem(self.parent.name, username, name, dumpOptions(node.options),
                                               itemId, payload, keep)
        service.nodes[name] = node
        node.items.pop(itemId, None)
        node.items[itemId] = payload
        while len(node.items) > max(keep, 1):  # an item not kept is still the last one
            node.items.popitem(last=False)
        self.changed(username, node,
                     itemElement(itemId, payload if node.options["deliver_payloads"] else None))
        return itemId

    @defer.inlineCallbacks
    def _retract(self, iq, service: Service, verb):
        """A retract request; notify if asked (or if the node says so)."""
        ids = [item.getAttribute("id") for item in verb.elements(NS_PUBSUB, "item")]
        if not ids or None in ids:
            raise pubsubError("bad-request", "item-required", text="Name the items to retract")
        notify = verb.getAttribute("notify")
        yield self.retract(service.username, self._nodeName(verb), ids,
                           None if notify is None else notify in ("1", "true"))
        return xmlstream.toResponse(iq, "result")

    def retract(self, username: str, name: str, ids, notify: bool | None = None) -> defer.Deferred:
        """
        Retract the items C{ids} of node C{name} (C{item-not-found} if one is
        missing) and, if C{notify} (None: as the node says), tell those interested.
        """
        return self._locked(username, self._retractLocked, username, name, ids, notify)

    @defer.inlineCallbacks
    def _retractLocked(self, username: str, name: str, ids, notify: bool | None):
        service = yield self.service(username)
        node = service.nodes.get(name)
        if node is None or any(i not in node.items for i in ids):
            raise pubsubError("item-not-found", text="No such item")
        try:
            for itemId in ids:
                yield self.parent.store.retractPepItem(self.parent.name, username, name, itemId)
                node.items.pop(itemId, None)
        except Exception:
            self.changed(username)  # some went from the store: the other nodes read again
            raise
        if notify or (notify is None and node.options["notify_retract"]):
            for itemId in ids:
                retract = domish.Element((NS_EVENT, "retract"))
                retract["id"] = itemId
                self.changed(username, node, retract)
        else:
            self.changed(username)

    @defer.inlineCallbacks
    def sharedItems(self, username: str, name: str):
        """
        Fire with the items of node C{name} if its owner shares it beyond a
        whitelist (access model C{open} or C{presence}), else None: what the
        invite page may show of an inviter.
        """
        service = yield self.service(username)
        node = service.nodes.get(name)
        if node is None or node.options["access_model"] not in ("open", "presence"):
            return None
        return list(node.items.items())

    @defer.inlineCallbacks
    def items(self, username: str, name: str, requestor: jid.JID | None = None):
        """
        Fire with the items of node C{name} of C{username} as (id, payload
        XML), oldest first; None if there is no such node or C{requestor}
        (None: the owner) may not read it.
        """
        service = yield self.service(username)
        node = service.nodes.get(name)
        if node is None or (requestor is not None and not (yield self.mayRead(username, node, requestor))):
            return None
        return list(node.items.items())

    @defer.inlineCallbacks
    def _create(self, iq, service: Service, verb, request):
        """Create a node, with the options of a C{<configure/>} form if one comes with it."""
        name = self._nodeName(verb)
        if name in service.nodes:
            raise pubsubError("conflict", text="The node exists")
        options = {}
        for configure in request.elements(NS_PUBSUB, "configure"):
            fields = formValues(configure, NS_CONFIG)
            if fields is not None:
                options = checkOptions(fields, self.options.max_items)
        node = self._newNode(service, name, options)
        yield self.parent.store.setPepNode(self.parent.name, service.username, name,
                                           dumpOptions(node.options))
        service.nodes[name] = node
        self.changed(service.username)
        return xmlstream.toResponse(iq, "result")

    @defer.inlineCallbacks
    def _configure(self, iq, service: Service, verb):
        """Change a node's options; items beyond a lower C{max_items} go."""
        node = self._node(service, verb)
        fields = formValues(verb, NS_CONFIG)
        if fields is None:
            raise pubsubError("bad-request", text="A configure request carries a node_config form")
        options = {**node.options, **checkOptions(fields, self.options.max_items)}
        yield self.parent.store.setPepNode(self.parent.name, service.username, node.name,
                                           dumpOptions(options))
        node.options = options
        keep = self.maxItems(node) if options["persist_items"] else 0
        try:
            while len(node.items) > keep:
                itemId, _ = node.items.popitem(last=False)
                yield self.parent.store.retractPepItem(self.parent.name, service.username, node.name,
                                                       itemId)
        finally:
            self.changed(service.username)
        return xmlstream.toResponse(iq, "result")

    @defer.inlineCallbacks
    def _delete(self, iq, service: Service, verb):
        """Delete a node and its items; tell those interested."""
        node = self._node(service, verb)
        yield self.parent.store.deletePepNode(self.parent.name, service.username, node.name)
        service.nodes.pop(node.name, None)
        self.send(xmlstream.toResponse(iq, "result"))
        self.changed(service.username, node, None, "delete" if node.options["notify_delete"] else None)
        return None

    @defer.inlineCallbacks
    def _purge(self, iq, service: Service, verb):
        """Delete every item of a node; tell those interested."""
        node = self._node(service, verb)
        yield self.parent.store.purgePepNode(self.parent.name, service.username, node.name)
        node.items.clear()
        self.send(xmlstream.toResponse(iq, "result"))
        self.changed(service.username, node, None, "purge")
        return None

    # -- notifications ---------------------------------------------------------

    @staticmethod
    def _background(d: defer.Deferred) -> None:
        """Log the failure of work nobody waits for (store faults are logged by the store)."""
        d.addErrback(lambda failure: failure.check(StoreUnavailable) or log.failure(
            "PEP notification failed", failure))

    @staticmethod
    def eventXML(node: str, child, wrapper: str = "items") -> str:
        """
        A pubsub C{<event/>} serialised once, to go as it is into the
        message to each recipient (a fan-out serialises only the envelopes).
        """
        event = domish.Element((NS_EVENT, "event"))
        inner = event.addElement(wrapper)
        inner["node"] = node
        if child is not None:
            inner.addChild(child)
        return event.toXml()

    def event(self, username: str, to: str, eventXML: str) -> domish.Element:
        """A headline message from the account to C{to}, carrying a serialised event."""
        message = domish.Element((NS_CLIENT, "message"))
        message["from"], message["to"], message["type"] = self._bare(username), to, "headline"
        message["id"] = f"pep{next(self._ids)}"
        message.addRawXml(eventXML)
        return message

    def changed(self, username: str, node: Node | None = None, child=None,
                wrapper: str | None = "items") -> None:
        """
        The account's nodes changed in the store. Tell the resources here
        that are interested in C{node} and may read it, with an event
        C{wrapper} (C{items}, C{purge}, C{delete}; None: nothing to tell)
        holding C{child}; and tell the other nodes of a cluster (hook
        C{pep-changed}), which forget their copy and tell their own. The
        event is made only if someone may hear it.
        """
        tell = node is not None and wrapper is not None and node.options["deliver_notifications"]
        here = self.interested(username, node.name) if tell else []
        eventXML = None
        if here or (tell and self.parent.hooks.callbacks("pep-changed")):
            eventXML = self.eventXML(node.name, child, wrapper)
        self.parent.hooks.run("pep-changed", self.parent, username, node and node.name,
                              node and node.options, eventXML)
        if here:
            self._background(self.deliver(username, node, here, eventXML))

    def changedElsewhere(self, username: str, name: str | None, options: dict | None,
                         eventXML: str | None) -> None:
        """
        Another node of the cluster changed the account's nodes: forget this
        node's copy (read again at once if the account is online here), and
        tell the resources here interested in node C{name} (with C{options})
        of C{eventXML}, if any.
        """
        self.forgetService(username)
        if self.parent.router.sessions.get(self._bare(username)):
            self._background(self.service(username))
        here = self.interested(username, name) if eventXML is not None else []
        if here:  # (options a node of another version left out: their defaults)
            self._background(self.deliver(username, Node(name, {**DEFAULTS, **options}), here, eventXML))

    def interested(self, username: str, name: str) -> list[str]:
        """The full JIDs here interested in node C{name} of C{username}."""
        return [full for full, nodes in self.interest.get(username, {}).items() if name in nodes]

    @defer.inlineCallbacks
    def deliver(self, username: str, node: Node, interested: list[str], eventXML: str):
        """
        Send an event of C{node} to those of C{interested} that may read it
        and are still bound here (or belong to another server). The interest
        of a session that left without its unavailable presence passing here
        (resumed on another node of a cluster) is forgotten: its new node
        tells it, once its next presence says what it wants.
        """
        allowed = yield self._readers(username, node, interested)
        for full in interested:
            if not self.boundHere(full):
                self.forget(username, full)
            elif bareOf(full) in allowed:
                self.send(self.event(username, full, eventXML))

    def boundHere(self, full: str) -> bool:
        """Whether C{full} is a session bound on this node, or an address of another server."""
        bare, _, resource = full.partition("/")
        if bare.rpartition("@")[2] not in self.parent.router.hosts:
            return True
        return resource in self.parent.router.sessions.get(bare, ())

    @defer.inlineCallbacks
    def _readers(self, username: str, node: Node, fulls) -> set[str]:
        """The bare JIDs, among those of C{fulls}, that may read C{node} (one roster read)."""
        bares = {bareOf(full) for full in fulls}
        items = {}
        if node.options["access_model"] in ("presence", "roster") and bares - {self._bare(username)}:
            roster = yield self.parent.modules["roster"].getRoster(username)
            items = {item.contact: item for item in roster.items if item.contact in bares}
        return {bare for bare in bares if self.allowed(username, node, bare, items.get(bare))}

    @defer.inlineCallbacks
    def sendLastItems(self, username: str, full: str, nodes, item) -> None:
        """
        Send C{full} the last item of each of C{nodes} it may read (XEP-0163
        section 4.3.2); C{item} is its bare JID's item in the owner's roster.
        """
        service = yield self.service(username)
        bare = bareOf(full)
        for name in sorted(nodes):
            node = service.nodes.get(name)
            if (node is None or not node.items
                    or node.options["send_last_published_item"] != "on_sub_and_presence"):
                continue
            if self.allowed(username, node, bare, item):
                itemId, payload = next(reversed(node.items.items()))
                self.send(self.event(username, full, self.eventXML(name, itemElement(itemId, payload))))

    def setInterest(self, username: str, full: str, notify: frozenset[str], item=None) -> None:
        """
        C{full} now wants the nodes C{notify}: remember, and send the last
        items of new ones (C{item}: its bare JID's item in the owner's roster).
        """
        known = self.interest.setdefault(username, {})
        new = notify - known.get(full, frozenset())
        if notify:
            known[full] = notify
        else:
            known.pop(full, None)
            if not known:
                del self.interest[username]
        if new:
            self._background(self.sendLastItems(username, full, new, item))

    def forget(self, username: str, full: str) -> None:
        """C{full} went away: it hears nothing more from C{username}'s nodes."""
        known = self.interest.get(username)
        if known is not None:
            known.pop(full, None)
            if not known:
                del self.interest[username]

    # -- what resources want: caps in presence --------------------------------

    def onOwnPresence(self, session, presence) -> None:
        """Hook C{client-presence}: the owner's own broadcast presence says what its resource wants."""
        if presence.getAttribute("to") is None:
            self._presence(session.user, session.full, presence)

    def onInboundPresence(self, presence) -> None:
        """A contact's presence to an account: what it wants, if it is subscribed to the account."""
        try:
            target = parseJID(presence["to"])
            sender = parseJID(presence["from"])
        except (KeyError, jid.InvalidFormat, UnicodeError):
            return
        if (target.user is None or target.resource is not None or target.host != self.parent.name
                or presence.getAttribute("type") not in (None, "unavailable")):
            return
        if self.parent.hooks.first("pep-presence", self.parent, sender, presence):
            return  # a resource of another node: that node reads it
        self.contactPresence(target.user, sender.full(), presence)

    def contactPresence(self, username: str, full: str, presence) -> None:
        """
        The presence of C{full} reached C{username}: what it wants, if it is
        subscribed to the account (from this node's stream, or handed over
        by another node for a resource bound here).
        """
        if presence.getAttribute("type") is None:
            if self._unchanged(username, full, presence):
                return  # a presence again (a probe's answer, say): nothing to read or send
            d = self.parent.modules["roster"].getItem(username, bareOf(full))
            d.addCallback(lambda item: item is not None and item.subscription in FROM
                          and self._presence(username, full, presence, item))
            self._background(d)
        elif presence.getAttribute("type") == "unavailable":
            self.forget(username, full)

    def _unchanged(self, username: str, full: str, presence) -> bool:
        """Whether C{full} already has the interest its presence's caps say."""
        known = self.interest.get(username, {}).get(full)
        caps = parseCaps(presence) if known is not None else None
        features = self.caps.get(caps.ver) if caps is not None else None
        return features is not None and notifyNodes(features) == known

    def _presence(self, username: str, full: str, presence, item=None) -> None:
        """
        Available (or unavailable) presence of C{full}, seen by C{username}
        (C{item}: its bare JID's item in the roster of C{username}).
        """
        if presence.getAttribute("type") == "unavailable":
            self.forget(username, full)
            return
        if presence.getAttribute("type") is not None:
            return
        caps = parseCaps(presence)
        if caps is None:
            self.forget(username, full)
            return
        known = self.caps.get(caps.ver)
        if known is not None:
            self.setInterest(username, full, notifyNodes(known), item)
        else:
            self._ask(caps, username, full, item)

    def _ask(self, caps: Caps, username: str, full: str, item) -> None:
        """Ask C{full} for the disco#info behind C{caps} (once per C{ver} at a time)."""
        for pending, waiting, _ in self._queries.values():
            if pending.ver == caps.ver:
                if len(waiting) < self.options.caps_cache and (username, full, item) not in waiting:
                    waiting.append((username, full, item))
                return
        if len(self._queries) >= self.options.caps_cache:
            return
        queryId = f"{QUERY_PREFIX}{next(self._ids)}"
        iq = domish.Element((NS_CLIENT, "iq"))
        iq["type"], iq["id"], iq["from"], iq["to"] = "get", queryId, self._bare(username), full
        iq.addElement((NS_DISCO_INFO, "query"))["node"] = f"{caps.node}#{caps.ver}"
        timeout = self.parent.clock.callLater(self.options.caps_timeout,
                                              self._queries.pop, queryId, None)
        self._queries[queryId] = (caps, [(username, full, item)], timeout)
        self.send(iq)

    def onQueryAnswer(self, iq) -> None:
        """The answer to a caps query: believe it for its C{ver} only if the hash matches."""
        entry = self._queries.get(iq.getAttribute("id", ""))
        if entry is None:
            return
        caps, waiting, timeout = entry
        asker, asked, _ = waiting[0]
        try:
            if parseJID(iq["from"]).full() != asked or parseJID(iq["to"]).full() != self._bare(asker):
                return
        except (KeyError, jid.InvalidFormat, UnicodeError):
            return
        iq.handled = True
        del self._queries[iq["id"]]
        if timeout.active():
            timeout.cancel()
        query = next(iq.elements(NS_DISCO_INFO, "query"), None) if iq["type"] == "result" else None
        if query is None:
            return
        notify = notifyNodes(features(query))
        if verified(caps, query):
            self.caps.size = self.options.caps_cache  # as the config says now (a reload may change it)
            self.caps.put(caps.ver, features(query))
        else:
            log.info("Caps of {full} do not match their hash {ver}; not kept", full=asked, ver=caps.ver)
            waiting = waiting[:1]
        for username, full, item in waiting:
            self.setInterest(username, full, notify, item)

    # -- life cycle ------------------------------------------------------------

    def onSessionBound(self, session) -> None:
        """Hook C{session-bound}: read the account's nodes now, before its presence needs them."""
        self._background(self.service(session.user))

    def loaded(self, username: str) -> Service | None:
        """The account's nodes if they are in memory (for synchronous hooks), else None."""
        return self.services.get(username)

    def onSessionClosed(self, session) -> None:
        """Hook C{session-closed}: a gone resource of the owner hears nothing more."""
        self.forget(session.user, session.full)

    def onUserDeleted(self, host: str, username: str) -> None:
        """Hook C{user-deleted}: the store deleted the nodes with the account; forget them here."""
        self.services.pop(username, None)
        self.interest.pop(username, None)
        self.changed(username)

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        """The owner's nodes, listed to the owner on its bare JID."""
        if nodeIdentifier or target.user is None or requestor.userhost() != target.userhost():
            return []
        d = self.service(target.user)
        return d.addCallback(lambda service: [disco.DiscoItem(target.userhostJID(), name)
                                              for name in sorted(service.nodes)])


def bareOf(full: str) -> str:
    """The bare JID of a full JID this module keeps (already parsed and normalised)."""
    return full.split("/", 1)[0]


def notifyNodes(featureSet) -> frozenset[str]:
    """The nodes a client wants notifications of: its C{NODE+notify} features."""
    return frozenset(f[:-len(NOTIFY)] for f in featureSet if f.endswith(NOTIFY))
