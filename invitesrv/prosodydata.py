"""
Reading a Prosody 0.12 data directory (internal storage) without Prosody.

Prosody keeps one directory per host and, inside, one directory per store
(C{accounts}, C{roster}, C{offline}, ...) with one file per user; host, user
and store names are %-encoded byte by byte (C{ex%c3%a4mple%2etest}). Files
are Lua tables (L{invitesrv.luatable}), never run. This module turns them into
the store's own values (L{NewAccount}, L{Invite}); what invitesrv cannot keep
yet (archives, private XML...) is only counted, by store.

PEP (mod_pep) keeps each account's nodes, with their configuration, in the
C{pep} store (C{pep/USER.dat}: node name to C{{name, config, ...}}), and each
node's items in an archive store of its own, C{pep_NODE} (C{pep_NODE/USER.list},
the store name %-encoded except C{_}, letters and digits), oldest first, each
item the payload with its id in C{key}. A vCard-temp kept by mod_vcard is in
C{vcard/USER.dat}; with mod_vcard_legacy it is the C{urn:xmpp:vcard4} node
and the avatar nodes, and Prosody answered vCard-temp requests with a
vCard-temp made of the vCard4, as L{vcardTemp} does.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from twisted.words.protocols.jabber import error, jid
from twisted.words.xish import domish

from invitesrv.credentials import makeCredentials
from invitesrv.host import ADMIN_ROLE
from invitesrv.luatable import LuaSyntaxError, loadList, loadRecord, sequence
from invitesrv.modules.pep import PepOptions
from invitesrv.modules.presence import parseStored
from invitesrv.modules.vcard import (
    AVATAR_NODES,
    NS_AVATAR_DATA,
    NS_AVATAR_METADATA,
    NS_VCARD,
    VcardOptions,
    photoAvatar,
)
from invitesrv.modules.vcard import (
    KEY as VCARD_KEY,
)
from invitesrv.pubsub import DEFAULTS as PEP_DEFAULTS
from invitesrv.pubsub import checkOptions, dumpOptions
from invitesrv.registrar import RegistrationError, prepareUsername
from invitesrv.store.interfaces import (
    SUBSCRIPTIONS,
    Credentials,
    Invite,
    OfflineMessage,
    PepNode,
    RosterItem,
)

MAX_FILE_SIZE = 64 * 1024 * 1024  # one user's store file; Prosody's archives hold 10000 items
IMPORTED_STORES = ("accounts", "roster", "offline", "invite_token", "pep", "vcard")
DEFAULT_PEP, DEFAULT_VCARD = PepOptions(), VcardOptions()  # the limits when none are given
NS_VCARD4 = "urn:ietf:params:xml:ns:vcard-4.0"
NS_VCARD4_NODE = "urn:xmpp:vcard4"
# vCard4 properties that are one value in vCard-temp, and the element holding it.
VCARD4_SIMPLE = {"nickname": "text", "title": "text", "role": "text", "categories": "text",
                 "note": "text", "url": "uri", "bday": "date"}
PEP_ITEMS = "pep_"  # the prefix of the stores of PEP items, one per node
# The node options mod_pep keeps (util.pubsub's names) and invitesrv's names for them.
PEP_OPTIONS = {"access_model": "access_model", "max_items": "max_items",
               "persist_items": "persist_items", "publish_model": "publish_model",
               "send_last_published_item": "send_last_published_item",
               "notify_items": "deliver_notifications", "include_payload": "deliver_payloads",
               "notify_delete": "notify_delete", "notify_retract": "notify_retract",
               "title": "title", "payload_type": "type"}
# mod_pep's node defaults: what a node has when its stored configuration says nothing.
PROSODY_PEP_DEFAULTS = {"max_items": 1, "persist_items": True, "access_model": "presence",
                        "send_last_published_item": "on_sub_and_presence"}
XML_NS = "http://www.w3.org/XML/1998/namespace"
ADMIN_ROLES = ("prosody:admin", "prosody:operator")  # what invitesrv's admin role stands for


def tokenLabel(token) -> str:
    """How reports name an invite: by its token's hash, which redeems nothing."""
    return "sha256:" + hashlib.sha256(str(token).encode("utf-8", "surrogateescape")).hexdigest()[:12]


class ProsodyDataError(Exception):
    """A file that cannot be read or understood; the message names it."""


def decodeName(name: str) -> str:
    """A host, user or store name from Prosody's %-encoding of file names."""
    return urllib.parse.unquote(name, encoding="utf-8", errors="strict")


def encodeName(name: str, keep: str = "") -> str:
    """
    Prosody's file name for a host or user: every byte but ASCII letters and
    digits (and those in C{keep}) as %xx; store names keep C{_}.
    """
    return "".join(chr(b) if chr(b).isascii() and (chr(b).isalnum() or chr(b) in keep)
                   else f"%{b:02x}" for b in name.encode("utf-8"))


def readFile(path: Path, loader=loadRecord):
    """The value of one storage file, bounded in size and never executed."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_SIZE:
            raise ProsodyDataError(f"{path}: {size} bytes, more than the {MAX_FILE_SIZE} read")
        return loader(path.read_bytes(), str(path))
    except LuaSyntaxError as e:
        raise ProsodyDataError(f"not Prosody data: {e}") from None
    except OSError as e:
        raise ProsodyDataError(f"{path}: {e.strerror}") from None


def text(value, what: str) -> str:
    """A Lua string that must be valid UTF-8 text."""
    if not isinstance(value, str):
        raise ProsodyDataError(f"{what}: expected a string, found {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeError:
        raise ProsodyDataError(f"{what}: not UTF-8 text") from None
    return value


def credentialsOf(record, username: str, iterations: int) -> tuple[Credentials, ...]:
    """
    The SCRAM credentials of an account file: the stored keys as they are
    (SCRAM-SHA-1, or SCRAM-SHA-256 with C{password_hash = "SHA-256"}; told
    apart by their length), or, for a plaintext password (internal_plain),
    the keys of every mechanism derived from it; the password is not kept.
    """
    if not isinstance(record, dict):
        raise ProsodyDataError("the account file holds no table")
    password = record.get("password")
    if isinstance(password, str) and password:
        return makeCredentials(text(password, "password"), iterations)
    try:
        salt = record["salt"].encode("utf-8", "surrogateescape")
        count = record["iteration_count"]
        storedKey = bytes.fromhex(record["stored_key"])
        serverKey = bytes.fromhex(record["server_key"])
    except (KeyError, AttributeError, TypeError, ValueError):
        raise ProsodyDataError("no usable password: neither SCRAM keys nor a plaintext password"
                               ) from None
    mechanism = {20: "SCRAM-SHA-1", 32: "SCRAM-SHA-256"}.get(len(storedKey))
    if (mechanism is None or len(serverKey) != len(storedKey) or not salt
            or not isinstance(count, int) or not 1 <= count <= 10_000_000):
        raise ProsodyDataError("SCRAM keys of an unknown kind")
    return (Credentials(mechanism, salt, count, storedKey, serverKey),)


def bareJID(value, what: str) -> str:
    try:
        parsed = jid.JID(text(value, what))
    except (jid.InvalidFormat, UnicodeError):
        raise ProsodyDataError(f"{what}: {value!r} is not a valid JID") from None
    if parsed.resource:
        raise ProsodyDataError(f"{what}: {value!r} is not a bare JID")
    return parsed.userhost()


def toElement(table, what: str, uri: str | None = None) -> domish.Element:
    """
    A stanza from Prosody's C{st.preserialize} form: C{name}, C{attr} (a
    namespaced attribute is C{"ns\\1name"}, or C{"ns|name"} in older data)
    and the children, elements and text, in the positional part.
    """
    if not isinstance(table, dict) or not isinstance(table.get("name"), str):
        raise ProsodyDataError(f"{what}: not a stored stanza")
    attrs = table.get("attr", {})
    if not isinstance(attrs, dict):
        raise ProsodyDataError(f"{what}: bad attributes")
    attrs = dict(attrs)
    uri = attrs.pop("xmlns", uri)
    element = domish.Element((text(uri, what) if uri is not None else None,
                              text(table["name"], what)))
    for key, value in attrs.items():
        key, value = text(key, what), text(value, what)
        for separator in ("\1", "|"):
            if separator in key:
                namespace, _, local = key.partition(separator)
                element[(namespace, local)] = value
                break
        else:
            element[key] = value
    for child in sequence(table):
        if isinstance(child, str):
            element.addContent(text(child, what))
        else:
            element.addChild(toElement(child, what, element.uri))
    return element


def archived(item, what: str) -> tuple[dict, dict]:
    """
    An item of an archive store (C{.list}) split into what the store added
    (C{key}, C{when}, C{with}, the C{stamp} attribute) and the stanza itself.
    """
    if not isinstance(item, dict):
        raise ProsodyDataError(f"{what}: an item is not a table")
    item = dict(item)
    added = {name: item.pop(name, None) for name in ("key", "when", "with")}
    attrs = dict(item.get("attr") or {})
    added["stamp"] = attrs.pop("stamp", None)
    attrs.pop("stamp_legacy", None)
    item["attr"] = attrs
    return added, item


def offlineMessages(items, what: str) -> list[OfflineMessage]:
    """The items of an C{offline/USER.list} archive, oldest first."""
    messages = []
    for item in items:
        added, item = archived(item, what)
        when, stamp = added["when"], added["stamp"]
        element = toElement(item, what, "jabber:client")
        if when is None and isinstance(stamp, str):  # items older than the 'when' field
            try:
                when = datetime.datetime.fromisoformat(stamp).timestamp()
            except ValueError:
                pass
        if not isinstance(when, (int, float)) or not math.isfinite(when):
            raise ProsodyDataError(f"{what}: an item has no time")
        messages.append(OfflineMessage(float(when), element.toXml()))
    return messages


@dataclass
class ProsodyAccount:
    """One account's data, ready for L{NewAccount}."""

    username: str
    credentials: tuple[Credentials, ...]
    rosterItems: list[RosterItem] = field(default_factory=list)
    pendingIn: list[tuple[str, str]] = field(default_factory=list)
    offline: list[OfflineMessage] = field(default_factory=list)
    pep: list[PepNode] = field(default_factory=list)
    accountXML: list[tuple[str, str]] = field(default_factory=list)  # (key, XML): the vCard
    skipped: list[str] = field(default_factory=list)  # what was left out, and why


def rosterOf(record, owner: str, account: ProsodyAccount) -> None:
    """Roster items and pending inbound requests from C{roster/USER.dat}."""
    if not isinstance(record, dict):
        raise ProsodyDataError("the roster file holds no table")
    metadata = record.get(False) or {}
    pending = metadata.get("pending") if isinstance(metadata, dict) else None
    legacy = record.get("pending")  # where Prosody before 0.9 kept the requests
    if not pending and isinstance(legacy, dict) and not isinstance(legacy.get("subscription"), str):
        pending = legacy
    for contact, stanza in (pending or {}).items():
        try:
            contact = bareJID(contact, "pending request")
            if isinstance(stanza, dict):
                element = toElement(stanza, f"pending request from {contact}", "jabber:client")
            else:
                element = domish.Element(("jabber:client", "presence"))
                element["type"] = "subscribe"
            element["from"], element["to"] = contact, owner
            account.pendingIn.append((contact, element.toXml()))
        except ProsodyDataError as e:
            account.skipped.append(f"a pending subscription request: {e}")
    for contact, item in record.items():
        if contact is False or (contact == "pending" and pending is legacy):
            continue
        try:
            contact = bareJID(contact, "roster item")
            if contact == owner or not isinstance(item, dict):
                continue
            subscription = item.get("subscription", "none")
            if subscription not in SUBSCRIPTIONS:
                raise ProsodyDataError(f"roster item {contact}: subscription {subscription!r}")
            name = item.get("name")
            groups = item.get("groups") or {}
            account.rosterItems.append(RosterItem(
                contact, text(name, "roster name") if name else None, subscription,
                ask=item.get("ask") == "subscribe",
                groups=tuple(sorted(text(g, "roster group") for g in groups if isinstance(g, str)))))
        except ProsodyDataError as e:
            account.skipped.append(f"a roster item: {e}")


def pepOptions(config, limits: PepOptions) -> tuple[dict, list[str]]:
    """
    The options of a node as invitesrv keeps them, from the configuration
    mod_pep stored (over mod_pep's defaults), each value checked as a
    configure request's would be; and what could not be kept as it was.
    """
    options, notes = {**PEP_DEFAULTS, **PROSODY_PEP_DEFAULTS}, []
    for name, value in (config if isinstance(config, dict) else {}).items():
        option = PEP_OPTIONS.get(name)
        if option is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        try:
            options.update(checkOptions({f"pubsub#{option}": [str(value)]}, limits.max_items))
        except error.StanzaError:
            if option == "max_items" and isinstance(value, int) and value > limits.max_items:
                options[option] = "max"  # the most this server keeps
            elif option == "access_model":
                options[option] = "whitelist"  # nobody gets to read what was not meant for them
                notes.append(f"access model {value!r} unknown here: the owner only")
            else:
                notes.append(f"option {name} = {value!r} left at its default")
    return options, notes


def pepItems(items, what: str) -> list[tuple[str, str]]:
    """The (id, payload XML) of a node's items from its C{pep_NODE/USER.list}, oldest first."""
    found: dict[str, str] = {}
    for item in items:
        added, item = archived(item, what)
        itemId = added["key"]
        if not isinstance(itemId, str) or not itemId:
            raise ProsodyDataError(f"{what}: an item has no id")
        found.pop(itemId, None)  # a newer item with the same id replaces it
        found[itemId] = toElement(item, what).toXml()
    return list(found.items())


def keepVcard(vcard: domish.Element, limits: VcardOptions, account: ProsodyAccount) -> None:
    """Keep a vCard (without photo) for the account, if within C{max_size}."""
    xml = vcard.toXml()
    if len(xml.encode("utf-8")) > limits.max_size:
        account.skipped.append(f"the vCard: over modules.vcard.max_size ({limits.max_size})")
    else:
        account.accountXML.append((VCARD_KEY, xml))


def vcardTemp(vcard4: domish.Element) -> domish.Element:
    """
    The vCard-temp for an XEP-0292 vCard4, field by field as Prosody's
    mod_vcard_legacy answers a vCard-temp request (empty fields left out).
    """
    def child(parent, name):
        return next(parent.elements(NS_VCARD4, name), None) if parent is not None else None

    def value(parent, name):
        found = child(parent, name)
        return str(found).strip() if found is not None else ""

    def add(parent, name, content):
        if content:
            parent.addElement(name, content=content)

    def where(parent, tag) -> None:  # parameters/type/text: home or work
        kind = value(child(child(tag, "parameters"), "type"), "text")
        if kind in ("home", "work"):
            parent.addElement(kind.upper())

    temp = domish.Element((NS_VCARD, "vCard"))
    add(temp, "FN", value(child(vcard4, "fn"), "text"))
    names = child(vcard4, "n")
    if names is not None:
        n = temp.addElement("N")
        for name, part in (("FAMILY", "surname"), ("GIVEN", "given"), ("MIDDLE", "additional"),
                           ("PREFIX", "prefix"), ("SUFFIX", "suffix")):
            add(n, name, value(names, part))
    for tag in vcard4.elements(NS_VCARD4):
        if tag.name in VCARD4_SIMPLE:
            add(temp, tag.name.upper(), value(tag, VCARD4_SIMPLE[tag.name]))
        elif tag.name == "email" and value(tag, "text"):
            email = temp.addElement("EMAIL")
            add(email, "USERID", value(tag, "text"))
            email.addElement("INTERNET")
            where(email, tag)
        elif tag.name == "tel" and value(tag, "uri"):
            tel = temp.addElement("TEL")
            add(tel, "NUMBER", value(tag, "uri").removeprefix("tel:"))
            where(tel, tag)
        elif tag.name == "adr":
            adr = temp.addElement("ADR")
            for name, part in (("POBOX", "pobox"), ("EXTADD", "ext"), ("STREET", "street"),
                               ("LOCALITY", "locality"), ("REGION", "region"), ("PCODE", "code"),
                               ("CTRY", "country")):
                add(adr, name, value(tag, part))
            where(adr, tag)
        elif tag.name == "impp" and value(tag, "uri").startswith("xmpp:"):
            add(temp, "JABBERID", value(tag, "uri")[len("xmpp:"):])
        elif tag.name == "org" and value(tag, "text"):
            temp.addElement("ORG").addElement("ORGNAME", content=value(tag, "text"))
    return temp


class ProsodyDataDir:
    """A Prosody data directory (C{data_path}), read-only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ProsodyDataError(f"{self.path}: not a directory")
        self.hostDirs = {}
        for entry in sorted(self.path.iterdir()):
            if entry.is_dir() and entry.name != "_global":
                try:
                    self.hostDirs[decodeName(entry.name)] = entry
                except UnicodeError:
                    continue
        if not (self.path / "_global").is_dir() and not self.hostDirs:
            raise ProsodyDataError(f"{self.path}: no Prosody data (no host directories)")

    def users(self, host: str, store: str = "accounts", ext: str = ".dat") -> dict[str, Path]:
        """The files of one store of one host, by decoded user name."""
        folder = self.hostDirs[host] / store
        if not folder.is_dir():
            return {}
        found = {}
        for entry in sorted(folder.iterdir()):
            if entry.name.endswith(ext) and entry.is_file():
                try:
                    found[decodeName(entry.name[:-len(ext)])] = entry
                except UnicodeError:
                    found[entry.name] = entry
        return found

    def otherStores(self, host: str) -> dict[str, int]:
        """Stores invitesrv does not import, with how many files each holds."""
        counts = {}
        for entry in sorted(self.hostDirs[host].iterdir()):
            name = entry.stem if entry.is_file() else entry.name
            try:
                name = decodeName(name)
            except UnicodeError:
                pass
            if name in IMPORTED_STORES or name.startswith(PEP_ITEMS):
                continue
            counts[name] = counts.get(name, 0) + (
                sum(1 for f in entry.iterdir() if f.is_file()) if entry.is_dir() else 1)
        return counts

    def account(self, host: str, username: str, path: Path, iterations: int,
                pepLimits: PepOptions = DEFAULT_PEP, vcardLimits: VcardOptions = DEFAULT_VCARD
                ) -> ProsodyAccount:
        """
        Everything one account owns: credentials, roster, requests, offline
        messages, PEP nodes and items and the vCard (within the limits given).
        """
        try:
            name = prepareUsername(username)
        except RegistrationError:
            raise ProsodyDataError(f"{username!r} is not a valid username") from None
        if name != username:
            raise ProsodyDataError(f"{username!r} is not in its prepared form ({name!r})")
        account = ProsodyAccount(name, credentialsOf(readFile(path), name, iterations))
        owner = f"{name}@{host}"
        folder = self.hostDirs[host]
        roster = folder / "roster" / f"{encodeName(username)}.dat"
        if roster.is_file():
            rosterOf(readFile(roster), owner, account)
        offline = folder / "offline" / f"{encodeName(username)}.list"
        if offline.is_file():
            account.offline = offlineMessages(readFile(offline, loadList), f"{offline}")
        nodes = folder / "pep" / f"{encodeName(username)}.dat"
        if nodes.is_file():
            self._pep(host, username, readFile(nodes), pepLimits, account)
        vcard = folder / "vcard" / f"{encodeName(username)}.dat"
        if vcard.is_file():
            self._vcard(readFile(vcard), f"{vcard}", vcardLimits, pepLimits, account)
        else:
            self._vcardFromVcard4(vcardLimits, account)
        return account

    def _pep(self, host: str, username: str, record, limits: PepOptions,
             account: ProsodyAccount) -> None:
        """Each node mod_pep knows, with its items, within this server's PEP limits."""
        if not isinstance(record, dict):
            raise ProsodyDataError("the PEP file holds no table")
        size = 0
        for name, data in sorted(record.items(), key=lambda entry: str(entry[0])):
            if not isinstance(name, str) or not name:
                continue
            where = f"PEP node {name}"
            if len(account.pep) >= limits.max_nodes:
                account.skipped.append(f"{where}: over modules.pep.max_nodes ({limits.max_nodes})")
                continue
            config = data.get("config") if isinstance(data, dict) else None  # true: no config
            options, notes = pepOptions(config, limits)
            account.skipped.extend(f"{where}: {note}" for note in notes)
            items = []
            path = (self.hostDirs[host] / encodeName(PEP_ITEMS + name, "_")
                    / f"{encodeName(username)}.list")
            if options["persist_items"] and path.is_file():
                items = pepItems(readFile(path, loadList), f"{path}")
            keep = limits.max_items if options["max_items"] == "max" else min(
                options["max_items"], limits.max_items)
            if len(items) > keep:
                account.skipped.append(f"{where}: {len(items) - keep} item(s) beyond its max_items")
                items = items[-keep:]
            for itemId, payload in list(items):
                if len(payload.encode("utf-8")) > limits.max_payload:
                    items.remove((itemId, payload))
                    account.skipped.append(f"{where}: item {itemId} over modules.pep.max_payload"
                                           f" ({limits.max_payload})")
            grown = sum(len(payload.encode("utf-8")) for _, payload in items)
            if size + grown > limits.max_bytes:
                account.skipped.append(f"{where}: its items would pass modules.pep.max_bytes"
                                       f" ({limits.max_bytes})")
                continue
            size += grown
            account.pep.append(PepNode(name, dumpOptions(options), tuple(items)))

    @staticmethod
    def _vcard(record, what: str, limits: VcardOptions, pepLimits: PepOptions,
               account: ProsodyAccount) -> None:
        """
        The vCard kept as invitesrv's vcard module keeps it: without its
        photo, which becomes the avatar unless PEP has one (as Prosody's
        mod_vcard_legacy moves it at the user's next login).
        """
        try:
            vcard = toElement(record, what, NS_VCARD)
            if (vcard.uri, vcard.name) != (NS_VCARD, "vCard"):
                raise ProsodyDataError(f"{what}: not a vCard")
        except ProsodyDataError as e:
            account.skipped.append(f"the vCard: {e}")
            return
        photos = list(vcard.elements(NS_VCARD, "PHOTO"))
        vcard.children = [child for child in vcard.children if child not in photos]
        keepVcard(vcard, limits, account)
        if not photos or any(node.node in (NS_AVATAR_DATA, NS_AVATAR_METADATA) for node in account.pep):
            return
        try:
            avatarId, data, metadata = photoAvatar(photos[0])
        except ValueError as e:
            account.skipped.append(f"the vCard's photo: {e}")
            return
        if data is None:
            return
        if len(data.toXml().encode("utf-8")) > pepLimits.max_payload:
            account.skipped.append(f"the vCard's photo: over modules.pep.max_payload"
                                   f" ({pepLimits.max_payload})")
            return
        config = dumpOptions({**PEP_DEFAULTS, **AVATAR_NODES})
        account.pep.extend(PepNode(node, config, ((avatarId, payload.toXml()),))
                           for node, payload in ((NS_AVATAR_DATA, data), (NS_AVATAR_METADATA, metadata)))

    @staticmethod
    def _vcardFromVcard4(limits: VcardOptions, account: ProsodyAccount) -> None:
        """
        Without a C{vcard} store (mod_vcard_legacy, Prosody 0.12's default,
        keeps the vCard as the vCard4 node), the vCard-temp that Prosody
        answered with, made from the vCard4 item, if the node was open to
        all, as vCard-temp is here (a node for contacts only stays a node).
        """
        node = next((n for n in account.pep if n.node == NS_VCARD4_NODE and n.items), None)
        if node is None:
            return
        if json.loads(node.config).get("access_model") != "open":
            account.skipped.append("the vCard4 node is not open to all: no vCard-temp made of it"
                                   " (vCard-temp is)")
            return
        keepVcard(vcardTemp(parseStored(node.items[-1][1])), limits, account)

    def invites(self, host: str, now: float) -> tuple[list[tuple[Invite, str]], list[str]]:
        """
        The pending invites of mod_invites (store C{invite_token}) as
        (L{Invite}, token) pairs, and what was skipped with why. Prosody
        keeps account invites (and contact invites that allow registration)
        in the host's file, contact-only invites in the inviter's.
        """
        found, skipped = [], []
        folder = self.hostDirs[host]
        hostFile = folder / "invite_token.dat"
        tokens = {}
        if hostFile.is_file():
            record = readFile(hostFile)
            tokens.update(record if isinstance(record, dict) else {})
        for inviter, path in self.users(host, "invite_token").items():
            try:
                record = readFile(path)
            except ProsodyDataError as e:
                skipped.append(f"contact invites of {inviter}: {e}")
                continue
            for token, expires in (record if isinstance(record, dict) else {}).items():
                if token not in tokens:
                    tokens[token] = {"type": "roster", "jid": f"{inviter}@{host}",
                                     "expires": expires, "allow_registration": False}
        for token, data in tokens.items():
            try:
                invite = self._invite(host, token, data, now)
            except ProsodyDataError as e:
                skipped.append(f"invite {tokenLabel(token)}: {e}")
                continue
            if invite is None:
                skipped.append(f"invite {tokenLabel(token)}: expired")
            else:
                found.append((invite, token))
        return found, skipped

    def _invite(self, host: str, token, data, now: float) -> Invite | None:
        if not isinstance(token, str) or not 8 <= len(token) <= 64 or not isinstance(data, dict):
            raise ProsodyDataError("not an invite")
        expires, created = data.get("expires"), data.get("created_at", now)
        if not isinstance(expires, (int, float)) or not isinstance(created, (int, float)):
            raise ProsodyDataError("no expiry")
        if expires <= now:
            return None
        target = jid.JID(text(data.get("jid", host), "invite address"))
        if target.host != host:
            raise ProsodyDataError(f"for another host ({target.host})")
        extra = data.get("additional_data") or {}
        extra = extra if isinstance(extra, dict) else {}
        roles = extra.get("roles") or {}
        groups = tuple(text(g, "group") for g in sequence(extra.get("groups") or {}))
        common = dict(id=None, host=host, created=float(created), expires=float(expires),
                      groups=groups, source="prosody")
        registration = bool(data.get("allow_registration"))
        if data.get("type") == "roster":
            if not target.user:
                raise ProsodyDataError("a contact invite without inviter")
            return Invite(kind="contact", inviter=target.user, allowRegistration=registration,
                          usesAllowed=None if data.get("reusable") else 1, **common)
        if data.get("type") != "register":
            raise ProsodyDataError(f"of unknown type {data.get('type')!r}")
        reset = extra.get("allow_reset")
        if reset:
            return Invite(kind="reset", username=text(reset, "reset username"), **common)
        return Invite(kind="account", username=target.user,
                      roles=(ADMIN_ROLE,) if any(r in roles for r in ADMIN_ROLES) else (),
                      usesAllowed=None if data.get("reusable") and not target.user else 1,
                      **common)
