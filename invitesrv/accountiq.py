"""
Requests the server answers for one of its accounts: a get or set addressed
to the account's bare JID (or, from the account's own client, to no one),
as PEP, vCards and private storage take them. One place says which IQs
these are, and how a failure of any request a module answers (these, the
blocklist's, upload slots) is answered.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.words.protocols.jabber import error, jid

from invitesrv.logs import logger
from invitesrv.xmpp.router import parseJID

log = logger()


def accountRequest(iq, host) -> tuple[jid.JID, str] | None:
    """The sender and the username of a get or set for an account of C{host}; None for any other IQ."""
    if iq.getAttribute("type") not in ("get", "set"):
        return None
    try:
        sender = parseJID(iq["from"])
        target = parseJID(iq["to"]) if iq.getAttribute("to") else sender.userhostJID()
    except (KeyError, jid.InvalidFormat, UnicodeError):
        return None
    if target.user is None or target.resource is not None or target.host != host.name:
        return None
    return sender, target.user


def answer(module, iq, handler, *args, what: str) -> None:
    """
    Take C{iq} (handled) and send what C{handler(*args)} fires with, if
    anything; on failure, the error: the request's own, C{wait} for a store
    fault (logged once by the store), C{internal-server-error} for anything
    else (logged, as a failure of C{what}).
    """
    iq.handled = True

    def failed(failure):
        if failure.check(error.StanzaError):
            return failure.value.toResponse(iq)
        log.failure("{what} from {sender} failed", failure, what=what, sender=iq.getAttribute("from"))
        return error.StanzaError("internal-server-error").toResponse(iq)

    d = defer.maybeDeferred(handler, *args)
    d.addErrback(failed)
    d.addCallback(lambda reply: reply is not None and module.send(reply))
