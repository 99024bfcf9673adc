"""
vCard-temp (XEP-0054) with its photo kept as the PEP avatar: XEP-0153
photo hashes in presence and XEP-0398 conversion, as Prosody's
mod_vcard_legacy does.

One avatar, two ways to reach it. A vCard's C{<PHOTO/>} is not stored with
the vCard: a vCard set publishes it as the account's XEP-0084 avatar (data
and metadata, id the SHA-1 of the image; nodes it creates are C{open}, as a
vCard always was), and a vCard get puts the current avatar back as
C{<PHOTO/>} when the requester may read the avatar's data node. So an avatar
set by a PEP client shows in a vCard client and the other way round.
The rest of the vCard is stored with the account (at most C{max_size}
bytes) and given to whoever asks, as vCard-temp always was.

XEP-0153: an available presence from a client that says nothing of its photo
gets C{<x xmlns='vcard-temp:x:update'><photo>ID</photo></x>} with the
current avatar's id (empty when there is none), so contacts on old clients
see avatar changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from twisted.internet import defer
from twisted.words.protocols.jabber import error, jid, xmlstream
from twisted.words.xish import domish

from invitesrv.accountiq import accountRequest, answer
from invitesrv.logs import logger
from invitesrv.modules.base import HostModule
from invitesrv.modules.presence import parseStored

log = logger()

NS_VCARD = "vcard-temp"
NS_VCARD_UPDATE = "vcard-temp:x:update"
NS_AVATAR_DATA = "urn:xmpp:avatar:data"
NS_AVATAR_METADATA = "urn:xmpp:avatar:metadata"
NS_CONVERSION = "urn:xmpp:pep-vcard-conversion:0"
KEY = "vcard-temp"
AVATAR_NODES = {"access_model": "open"}  # the options of avatar nodes a vCard creates


@dataclass(frozen=True)
class VcardOptions:
    """C{[modules.vcard]}."""

    max_size: int = 65_536  # bytes of a stored vCard, its photo not counted (docs/limits.md)


class VcardModule(HostModule):
    """vCard-temp for every account, its photo kept as the PEP avatar."""

    name = "vcard"
    depends = ("pep",)
    features = (NS_VCARD,)
    accountFeatures = (NS_VCARD, NS_CONVERSION)
    hooks = (("client-presence", "onOwnPresence", 20),)
    observers = (f"/iq/vCard[@xmlns='{NS_VCARD}']", "onRequest"),
    Options = VcardOptions

    @property
    def pep(self):
        return self.parent.modules["pep"]

    def onRequest(self, iq) -> None:
        """A vCard get or set for an account's bare JID."""
        request = accountRequest(iq, self.parent)
        if request is not None:
            answer(self, iq, self._get if iq["type"] == "get" else self._set, iq, *request,
                   what="vCard request")

    @defer.inlineCallbacks
    def _get(self, iq, sender: jid.JID, username: str):
        """The stored vCard, with the avatar as C{<PHOTO/>} if the requester may see it."""
        stored = yield self.parent.store.getAccountXML(self.parent.name, username, KEY)
        vcard = parseStored(stored) if stored else domish.Element((NS_VCARD, "vCard"))
        photo = yield self.photo(username, sender)
        if photo is not None:
            mimeType, data = photo
            element = vcard.addElement("PHOTO")
            element.addElement("TYPE", content=mimeType)
            element.addElement("BINVAL", content=data)
        reply = xmlstream.toResponse(iq, "result")
        reply.addChild(vcard)
        return reply

    @defer.inlineCallbacks
    def photo(self, username: str, requestor: jid.JID | None = None):
        """Fire with the current avatar as (type, base64), or None (none, or not for C{requestor})."""
        metadata = yield self.pep.items(username, NS_AVATAR_METADATA, requestor)
        info = avatarInfo(metadata)
        if info is None:
            return None
        data = yield self.pep.items(username, NS_AVATAR_DATA, requestor)
        for itemId, payload in data or ():
            if itemId == info[0]:
                return info[1], str(parseStored(payload)).strip()
        return None

    @defer.inlineCallbacks
    def _set(self, iq, sender: jid.JID, username: str):
        """Store the vCard; its photo becomes the account's avatar."""
        if sender.userhost() != f"{username}@{self.parent.name}":
            raise error.StanzaError("forbidden", text="Only the account itself may set its vCard")
        vcard = iq.firstChildElement()
        photos = [child for child in vcard.elements(NS_VCARD, "PHOTO")]
        vcard.children = [child for child in vcard.children
                          if not (isinstance(child, domish.Element) and child.name == "PHOTO")]
        xml = vcard.toXml()
        if len(xml.encode("utf-8")) > self.options.max_size:
            log.info("vCard of {user} over modules.vcard.max_size ({size})", user=sender.userhost(),
                     size=self.options.max_size)
            raise error.StanzaError("not-acceptable", text=f"A vCard is at most {self.options.max_size}"
                                    " bytes, its photo not counted")
        if photos:
            yield self._publishPhoto(username, photos[0])
        yield self.parent.store.setAccountXML(self.parent.name, username, KEY, xml)
        return xmlstream.toResponse(iq, "result")

    @defer.inlineCallbacks
    def _publishPhoto(self, username: str, photo: domish.Element):
        """XEP-0398: a vCard's photo published as the avatar (an empty one: no avatar)."""
        try:
            avatarId, data, metadata = photoAvatar(photo)
        except ValueError:
            raise error.StanzaError("bad-request", text="The PHOTO's BINVAL is not base64") from None
        if data is not None:
            yield self.pep.publish(username, NS_AVATAR_DATA, avatarId, data, defaults=AVATAR_NODES)
        yield self.pep.publish(username, NS_AVATAR_METADATA, avatarId, metadata, defaults=AVATAR_NODES)

    def onOwnPresence(self, session, presence) -> None:
        """Hook C{client-presence}: XEP-0153, the avatar's id in an available presence that has none."""
        if presence.getAttribute("type") is not None or presence.getAttribute("to") is not None:
            return
        if any(True for _ in presence.elements(NS_VCARD_UPDATE, "x")):
            return
        service = self.pep.loaded(session.user)
        if service is None:
            return  # not read yet: the client's next presence will say
        node = service.nodes.get(NS_AVATAR_METADATA)
        info = avatarInfo(list(node.items.items())) if node is not None else None
        update = presence.addElement((NS_VCARD_UPDATE, "x"))
        update.addElement("photo", content=info[0] if info is not None else "")


def photoAvatar(photo: domish.Element) -> tuple[str, domish.Element | None, domish.Element]:
    """
    XEP-0398: the avatar a vCard's C{<PHOTO/>} stands for, as (item id, data
    payload, metadata payload); without an image, ("current", None, an empty
    metadata: no avatar). ValueError when the BINVAL is not base64.
    """
    binval = "".join(str(child) for child in photo.elements(NS_VCARD, "BINVAL")).strip()
    mimeType = "".join(str(child) for child in photo.elements(NS_VCARD, "TYPE")).strip() or "image/png"
    metadata = domish.Element((NS_AVATAR_METADATA, "metadata"))
    if not binval:
        return "current", None, metadata
    try:
        image = base64.b64decode("".join(binval.split()), validate=True)
    except binascii.Error:
        raise ValueError("the PHOTO's BINVAL is not base64") from None
    avatarId = hashlib.sha1(image).hexdigest()
    data = domish.Element((NS_AVATAR_DATA, "data"))
    data.addContent(base64.b64encode(image).decode("ascii"))
    info = metadata.addElement("info")
    info["id"], info["bytes"], info["type"] = avatarId, str(len(image)), mimeType
    return avatarId, data, metadata


def avatarInfo(metadata) -> tuple[str, str] | None:
    """The (id, type) of the avatar the last metadata item names, or None."""
    if not metadata:
        return None
    element = parseStored(metadata[-1][1])
    for info in element.elements(NS_AVATAR_METADATA, "info"):
        if info.getAttribute("id"):
            return info["id"], info.getAttribute("type", "image/png")
    return None
