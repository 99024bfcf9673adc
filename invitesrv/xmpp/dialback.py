"""
Server dialback keys (XEP-0220, keys as XEP-0185 recommends).

A dialback key proves nothing by itself: the receiving server asks the
originating domain's authoritative server (found through DNS or the static
map) whether the key is one it made for that stream. So the key is an HMAC
that only this server can compute, bound to the stream id and both domains,
and checking it needs no state: L{dialbackKey} makes it, L{checkKey}
recomputes it. Wokkel's C{generateKey} does the XEP-0185 computation; the
domains are given to it in their ASCII (IDNA) form, which it requires. It is
imported when first needed: C{wokkel.server} imports the global reactor.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["NS_DIALBACK", "NS_DIALBACK_FEATURE", "dialbackSecret", "dialbackKey", "checkKey"]

NS_DIALBACK = "jabber:server:dialback"
NS_DIALBACK_FEATURE = "urn:xmpp:features:dialback"


def dialbackSecret(serverSecret: bytes) -> str:
    """The dialback secret, derived from the installation secret (so it outlives restarts)."""
    return hashlib.sha256(b"invitesrv dialback\0" + serverSecret).hexdigest()


def _ascii(domain: str) -> str:
    return domain.encode("idna").decode("ascii")


def dialbackKey(secret: str, receiving: str, originating: str, streamID: str) -> str:
    """The key C{originating} sends to C{receiving} on the stream with id C{streamID}."""
    from wokkel.server import generateKey
    return generateKey(secret, _ascii(receiving), _ascii(originating), streamID)


def checkKey(secret: str, receiving: str, originating: str, streamID: str, key: str) -> bool:
    """Is C{key} the one this server made for that stream? (Constant time.)"""
    try:
        expected = dialbackKey(secret, receiving, originating, streamID)
    except UnicodeError:
        return False
    return hmac.compare_digest(expected.encode("ascii"), key.strip().encode("utf-8"))
