"""
Message archive queries (XEP-0313, urn:xmpp:mam:2) with result set
management (XEP-0059): parsing a query, and the messages and C{<fin/>}
that answer it.

Nothing here knows about rooms: L{parseQuery} turns a C{<query/>} into a
L{RoomArchiveQuery} for the store, L{resultMessage} wraps one archived
stanza for the requester, L{fin} closes the answer. The room archive of
L{invitesrv.components.muc.service} uses them; an account archive can too.
"""

from __future__ import annotations

from twisted.words.xish import domish

from invitesrv.components.muc.room import NS_CLIENT, parseStamp, stanzaError
from invitesrv.modules.offline import NS_DELAY, delayStamp, parseStanza
from invitesrv.store.interfaces import ArchivedRoomMessage, RoomArchiveQuery

NS_MAM = "urn:xmpp:mam:2"
NS_MAM_EXTENDED = "urn:xmpp:mam:2#extended"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
NS_X_DATA = "jabber:x:data"
DEFAULT_PAGE = 50


def parseQuery(query: domish.Element, maxPage: int) -> RoomArchiveQuery:
    """
    The filters of a MAM query (C{with}, C{start}, C{end}, C{before-id},
    C{after-id}, C{ids} form fields) and its RSM paging (C{max}, C{after},
    C{before}); a C{bad-request} stanza error names what is wrong. Pages
    hold at most C{maxPage} messages.
    """
    values: dict[str, list[str]] = {}
    form = next(query.elements(NS_X_DATA, "x"), None)
    if form is not None:
        for field in form.elements(NS_X_DATA, "field"):
            values[field.getAttribute("var", "")] = [str(v) for v in field.elements(NS_X_DATA, "value")]
    formType = values.pop("FORM_TYPE", [NS_MAM])
    if formType != [NS_MAM]:
        raise stanzaError("bad-request", f"The form's FORM_TYPE must be {NS_MAM}")
    unknown = set(values) - {"with", "start", "end", "before-id", "after-id", "ids"}
    if unknown:
        raise stanzaError("bad-request", f"Unknown field {sorted(unknown)[0]!r}")

    def one(var):
        given = values.get(var)
        return given[0].strip() if given else None
    changes: dict = {}
    try:
        for var in ("start", "end"):
            if one(var):
                changes[var] = parseStamp(one(var))
    except ValueError:
        raise stanzaError("bad-request", "start and end are XEP-0082 date-times") from None
    if one("with"):
        changes["with_"] = one("with")
    changes["afterId"], changes["beforeId"] = one("after-id"), one("before-id")
    changes["ids"] = tuple(values.get("ids", ()))
    size = maxPage if maxPage else DEFAULT_PAGE
    rsm = next(query.elements(NS_RSM, "set"), None)
    if rsm is not None:
        for child in rsm.elements(NS_RSM):
            text = str(child).strip()
            if child.name == "max":
                if not text.isdigit():
                    raise stanzaError("bad-request", "RSM max is a whole number")
                size = min(int(text), size)
            elif child.name == "after":
                if not text:
                    raise stanzaError("bad-request", "RSM after names a message")
                changes["afterId"] = text
            elif child.name == "before":
                changes["last"] = True
                if text:
                    changes["beforeId"] = text
    return RoomArchiveQuery(max=size, **changes)


def resultMessage(message: ArchivedRoomMessage, to: str, archive: str,
                  queryId: str | None) -> domish.Element:
    """One archived stanza, forwarded to the requester (XEP-0313 section 4.2)."""
    out = domish.Element((NS_CLIENT, "message"))
    out["to"], out["from"] = to, archive
    result = out.addElement((NS_MAM, "result"))
    result["id"] = message.id
    if queryId:
        result["queryid"] = queryId
    forwarded = result.addElement((NS_FORWARD, "forwarded"))
    forwarded.addElement((NS_DELAY, "delay"))["stamp"] = delayStamp(message.stamp)
    forwarded.addChild(parseStanza(message.stanza))
    return out


def fin(page: list[ArchivedRoomMessage], complete: bool) -> domish.Element:
    """The C{<fin/>} of an answer: whether it is complete, and the RSM bounds of the page."""
    element = domish.Element((NS_MAM, "fin"))
    if complete:
        element["complete"] = "true"
    rsm = element.addElement((NS_RSM, "set"))
    if page:
        rsm.addElement("first", content=page[0].id)
        rsm.addElement("last", content=page[-1].id)
    return element
