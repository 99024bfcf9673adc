"""
Reading a Prosody 0.12 data directory (internal storage) without Prosody.

Prosody keeps one directory per host and, inside, one directory per store
(C{accounts}, C{roster}, C{offline}, ...) with one file per user; host, user
and store names are %-encoded byte by byte (C{ex%c3%a4mple%2etest}). Files
are Lua tables (L{invitesrv.luatable}), never run. This module turns them into
the store's own values (L{NewAccount}, L{Invite}); what invitesrv cannot keep
yet (vCards, PEP, archives, private XML...) is only counted, by store.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish

from invitesrv.credentials import makeCredentials
from invitesrv.host import ADMIN_ROLE
from invitesrv.luatable import LuaSyntaxError, loadList, loadRecord, sequence
from invitesrv.registrar import RegistrationError, prepareUsername
from invitesrv.store.interfaces import SUBSCRIPTIONS, Credentials, Invite, OfflineMessage, RosterItem

MAX_FILE_SIZE = 64 * 1024 * 1024  # one user's store file; Prosody's archives hold 10000 items
IMPORTED_STORES = ("accounts", "roster", "offline", "invite_token")
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


def encodeName(name: str) -> str:
    """Prosody's file name for a host or user: every byte but ASCII letters and digits as %xx."""
    return "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else f"%{b:02x}"
                   for b in name.encode("utf-8"))


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


def offlineMessages(items, what: str) -> list[OfflineMessage]:
    """The items of an C{offline/USER.list} archive, oldest first."""
    messages = []
    for item in items:
        if not isinstance(item, dict):
            raise ProsodyDataError(f"{what}: an item is not a table")
        item = dict(item)
        when = item.pop("when", None)
        for key in ("key", "with"):
            item.pop(key, None)
        attrs = dict(item.get("attr") or {})
        stamp = attrs.pop("stamp", None)
        attrs.pop("stamp_legacy", None)
        item["attr"] = attrs
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
            if name in IMPORTED_STORES:
                continue
            counts[name] = counts.get(name, 0) + (
                sum(1 for f in entry.iterdir() if f.is_file()) if entry.is_dir() else 1)
        return counts

    def account(self, host: str, username: str, path: Path, iterations: int) -> ProsodyAccount:
        """Everything one account owns: credentials, roster, requests, offline messages."""
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
        return account

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
