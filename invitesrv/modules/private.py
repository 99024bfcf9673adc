"""
XEP-0049 private XML storage, and XEP-0411: old clients' bookmarks
(C{storage:bookmarks} in private storage) and XEP-0402 clients' bookmarks
(the PEP node C{urn:xmpp:bookmarks:1}) are the same bookmarks.

Each account keeps one element per (namespace, name), at most C{max_size}
bytes each; only the account itself reads and writes it. A
C{storage:bookmarks} set is stored and also published as XEP-0402 items
(one per room, id the room's JID; rooms no longer listed are retracted, so
the account's XEP-0402 clients hear of it); a C{storage:bookmarks} get is
built from the XEP-0402 node when there is one, so what XEP-0402 clients
changed is what an old client reads (the C{<url/>}s, which XEP-0402 has
no place for, come from the stored element). The node, when this creates
it, has XEP-0402's options: whitelist, persistent, as many items as allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer
from twisted.words.protocols.jabber import error, jid, xmlstream
from twisted.words.xish import domish

from invitesrv.accountiq import accountRequest, answer
from invitesrv.logs import logger
from invitesrv.modules.base import HostModule
from invitesrv.modules.presence import parseStored

log = logger()

NS_PRIVATE = "jabber:iq:private"
NS_LEGACY_BOOKMARKS = "storage:bookmarks"
NS_BOOKMARKS = "urn:xmpp:bookmarks:1"
NS_COMPAT = NS_BOOKMARKS + "#compat"
BOOKMARK_NODE = {"access_model": "whitelist", "persist_items": True, "max_items": "max",
                 "send_last_published_item": "never"}
RESERVED = ("jabber:client", "jabber:server", "jabber:iq:private")


@dataclass(frozen=True)
class PrivateOptions:
    """C{[modules.private]}."""

    max_size: int = 65_536  # bytes of one stored element (docs/limits.md)


def storageKey(element: domish.Element) -> str:
    return f"{{{element.uri}}}{element.name}"


def legacyToItems(storage: domish.Element) -> dict[str, domish.Element]:
    """XEP-0411 section 5: the XEP-0402 items (room JID: C{<conference/>}) of a C{storage:bookmarks}."""
    items = {}
    for conference in storage.elements(NS_LEGACY_BOOKMARKS, "conference"):
        room = conference.getAttribute("jid")
        if not room:
            continue
        item = domish.Element((NS_BOOKMARKS, "conference"))
        if conference.getAttribute("name"):
            item["name"] = conference["name"]
        if conference.getAttribute("autojoin") in ("1", "true"):
            item["autojoin"] = "true"
        for child in ("nick", "password"):
            for value in conference.elements(NS_LEGACY_BOOKMARKS, child):
                item.addElement(child, content=str(value))
        items[room] = item
    return items


def itemsToLegacy(items, stored: domish.Element | None) -> domish.Element:
    """A C{storage:bookmarks} of XEP-0402 items (id, payload XML), with the stored one's URLs."""
    storage = domish.Element((NS_LEGACY_BOOKMARKS, "storage"))
    for room, payload in items:
        conference = parseStored(payload)
        legacy = storage.addElement("conference")
        legacy["jid"] = room
        if conference.getAttribute("name"):
            legacy["name"] = conference["name"]
        legacy["autojoin"] = "true" if conference.getAttribute("autojoin") in ("1", "true") else "false"
        for child in ("nick", "password"):
            for value in conference.elements(NS_BOOKMARKS, child):
                legacy.addElement(child, content=str(value))
    if stored is not None:
        for url in stored.elements(NS_LEGACY_BOOKMARKS, "url"):
            storage.addChild(url)
    return storage


class PrivateModule(HostModule):
    """Private XML storage for every account, its bookmarks shared with XEP-0402."""

    name = "private"
    depends = ("pep",)
    features = (NS_PRIVATE,)
    accountFeatures = (NS_COMPAT,)
    observers = (f"/iq/query[@xmlns='{NS_PRIVATE}']", "onRequest"),
    Options = PrivateOptions

    @property
    def pep(self):
        return self.parent.modules["pep"]

    def onRequest(self, iq) -> None:
        """A private storage get or set: from the account itself, to itself."""
        request = accountRequest(iq, self.parent)
        if request is not None:
            answer(self, iq, self._answer, iq, *request, what="Private storage request")

    @defer.inlineCallbacks
    def _answer(self, iq, sender: jid.JID, username: str):
        """Check the request comes from the account itself and run it; fire with the answer."""
        if sender.userhost() != f"{username}@{self.parent.name}":
            raise error.StanzaError("forbidden", text="Private storage is the account's own")
        elements = [child for child in iq.firstChildElement().elements()]
        if len(elements) != 1 or elements[0].uri in RESERVED or not elements[0].uri:
            raise error.StanzaError("not-acceptable", text="One element, in a namespace of its own")
        element = elements[0]
        if iq["type"] == "get":
            found = yield self.get(username, element)
            reply = xmlstream.toResponse(iq, "result")
            reply.addElement((NS_PRIVATE, "query")).addChild(found)
            return reply
        xml = element.toXml()
        if len(xml.encode("utf-8")) > self.options.max_size:
            log.info("Private XML of {user} over modules.private.max_size ({size})",
                     user=sender.userhost(), size=self.options.max_size)
            raise error.StanzaError("not-acceptable", text=f"A private element is at most"
                                    f" {self.options.max_size} bytes")
        if storageKey(element) == f"{{{NS_LEGACY_BOOKMARKS}}}storage":
            yield self._syncBookmarks(username, element)
        yield self.parent.store.setAccountXML(self.parent.name, username, storageKey(element), xml)
        return xmlstream.toResponse(iq, "result")

    @defer.inlineCallbacks
    def get(self, username: str, element: domish.Element):
        """The stored element named like C{element} (empty if none); bookmarks from XEP-0402."""
        stored = yield self.parent.store.getAccountXML(self.parent.name, username, storageKey(element))
        stored = parseStored(stored) if stored else None
        if storageKey(element) == f"{{{NS_LEGACY_BOOKMARKS}}}storage":
            items = yield self.pep.items(username, NS_BOOKMARKS)
            if items is not None:
                return itemsToLegacy(items, stored)
        return stored if stored is not None else domish.Element((element.uri, element.name))

    @defer.inlineCallbacks
    def _syncBookmarks(self, username: str, storage: domish.Element):
        """XEP-0411: publish the rooms as XEP-0402 items; retract those no longer listed."""
        wanted = legacyToItems(storage)
        current = dict((yield self.pep.items(username, NS_BOOKMARKS)) or ())
        for room, conference in wanted.items():
            if current.get(room) != conference.toXml():
                yield self.pep.publish(username, NS_BOOKMARKS, room, conference, defaults=BOOKMARK_NODE)
        gone = [room for room in current if room not in wanted]
        if gone:
            yield self.pep.retract(username, NS_BOOKMARKS, gone, notify=True)
