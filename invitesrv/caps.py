"""
XEP-0115 entity capabilities, as a server reads them: what a presence
announces, the hash of a disco#info answer, and a bounded cache of the
answers whose hash was checked.

A client's presence carries C{<c hash='sha-1' node='...' ver='...'/>}: the
hash of its disco#info (identities, features, extended forms). The server
asks one entity announcing a C{ver} it does not know for that disco#info,
computes the hash itself (XEP-0115 section 5.1) and keeps the features under
the C{ver} only when they match: a forged or broken C{ver} is never believed
for anyone else. Entries are few (one per client version in use), and the
cache keeps at most C{size} of them, the least recently used going first.
"""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from twisted.words.xish import domish

NS_CAPS = "http://jabber.org/protocol/caps"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DATA = "jabber:x:data"
XML_LANG = ("http://www.w3.org/XML/1998/namespace", "lang")


@dataclass(frozen=True)
class Caps:
    """What a presence's C{<c/>} announces."""

    node: str
    ver: str
    hash: str


def parseCaps(presence: domish.Element) -> Caps | None:
    """The capabilities C{presence} announces, or None."""
    for c in presence.elements(NS_CAPS, "c"):
        node, ver, algo = c.getAttribute("node"), c.getAttribute("ver"), c.getAttribute("hash")
        if node and ver and algo:
            return Caps(node, ver, algo)
    return None


def verificationString(query: domish.Element) -> str:
    """The string XEP-0115 section 5.1 hashes, from a disco#info C{<query/>}."""
    identities = sorted(
        (i.getAttribute("category", ""), i.getAttribute("type", ""),
         i.getAttribute(XML_LANG, ""), i.getAttribute("name", ""))
        for i in query.elements(NS_DISCO_INFO, "identity"))
    parts = ["/".join(identity) + "<" for identity in identities]
    parts += [feature + "<" for feature in sorted(
        f.getAttribute("var", "") for f in query.elements(NS_DISCO_INFO, "feature"))]
    forms = []
    for form in query.elements(NS_DATA, "x"):
        fields = {}
        for field in form.elements(NS_DATA, "field"):
            fields[field.getAttribute("var", "")] = sorted(str(v) for v in field.elements(NS_DATA, "value"))
        formType = fields.pop("FORM_TYPE", None)
        if formType:
            text = formType[0] + "<" + "".join(
                var + "<" + "".join(value + "<" for value in values)
                for var, values in sorted(fields.items()))
            forms.append((formType[0], text))
    parts += [text for _, text in sorted(forms)]
    return "".join(parts)


def capsHash(query: domish.Element) -> str:
    """The SHA-1 C{ver} of a disco#info C{<query/>} (the only hash clients use)."""
    digest = hashlib.sha1(verificationString(query).encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii")


def features(query: domish.Element) -> frozenset[str]:
    """The features a disco#info C{<query/>} lists."""
    return frozenset(f.getAttribute("var", "") for f in query.elements(NS_DISCO_INFO, "feature"))


def verified(caps: Caps, query: domish.Element) -> bool:
    """Whether C{query} is what C{caps} announced: the hash is SHA-1 and it matches."""
    return caps.hash == "sha-1" and capsHash(query) == caps.ver


class CapsCache:
    """The features of verified C{ver}s, at most C{size} of them, least recently used out first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, frozenset[str]] = OrderedDict()

    def get(self, ver: str) -> frozenset[str] | None:
        found = self._entries.get(ver)
        if found is not None:
            self._entries.move_to_end(ver)
        return found

    def put(self, ver: str, features: frozenset[str]) -> None:
        self._entries[ver] = features
        self._entries.move_to_end(ver)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
