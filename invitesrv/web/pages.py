"""
HTML pages: the shared layout, the friendly error pages, and the one way a
resource answers with a page.

Every page is a L{twisted.web.template} element loaded from C{templates/},
so whatever comes from users or the database (names, JIDs, notes) is escaped
by the flattener. A page is flattened to a string before anything is sent,
so that a failure while rendering becomes a proper 500 page instead of half a
page. Links between pages are relative (C{../register/TOKEN}), so the site
also works when a reverse proxy mounts it under a sub-path.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import urlencode

import segno
from twisted.internet import defer, task
from twisted.python.filepath import FilePath
from twisted.web import resource
from twisted.web.error import FlattenerError
from twisted.web.http import RESPONSES
from twisted.web.server import NOT_DONE_YET
from twisted.web.template import (
    Element,
    XMLFile,
    XMLString,
    flattenString,
    renderer,
    tags,
)

from invitesrv.logs import logger
from invitesrv.web.i18n import (
    N_,
    Text,
    direction,
    displayName,
    languageOf,
    languages,
    query,
    remember,
    templateText,
)

log = logger()

TEMPLATES = Path(__file__).resolve().parent / "templates"
HTML = b"text/html; charset=utf-8"


@cache
def template(name: str) -> XMLFile:
    """The loader of C{templates/NAME}, parsed once."""
    return XMLFile(FilePath(str(TEMPLATES / name)))


def rootOf(request) -> str:
    """The relative path from the requested page back to the site's root (C{../} for C{/a/b})."""
    return "../" * max(request.path.count(b"/") - 1, 0)


def qrCode(data: str, label: str) -> list:
    """
    An inline SVG QR code of C{data}, as template tags. segno writes only
    numbers into the drawing and escapes the title, and the result goes
    through the XML parser and the flattener again: nothing from C{data}
    can become markup.
    """
    svg = segno.make(data, error="m").svg_inline(scale=1, border=2, omitsize=True, svgclass="qr",
                                                  title=label, dark="#111", light="#fff")
    return XMLString(svg).load()


def linkHeader(uri: str) -> str:
    """
    C{Link: <xmpp:…>; rel="alternate"}, with the URI made ASCII: a header
    cannot carry raw UTF-8 (a Unicode username), and C{<} or C{>} cannot
    occur in a valid JID.
    """
    ascii = "".join(c if 0x20 < ord(c) < 0x7f else
                    "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in uri)
    return f'<{ascii}>; rel="alternate"'


# The titles of the refusals pages show (a body too large, too many token
# guesses), in the catalogues: reason() is English.
TITLES = {413: N_("Request too large"), 429: N_("Too many requests")}


def reason(code: int) -> bytes:
    """The reason phrase of an HTTP status (Twisted's table has no 429)."""
    return RESPONSES.get(code, b"Too Many Requests" if code == 429 else b"Error")


class Refused(Exception):
    """
    An answer instead of the one asked for: an HTTP status, a message for
    the visitor and extra headers (C{Retry-After}, ...). Pages show it as a
    short message page; the API as its JSON error.
    """

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None):
        Exception.__init__(self, message)
        self.code = code
        self.message = message
        self.headers = headers or {}


class BodyPolicy:
    """
    What a resource and the tree under it accept as a request body, asked
    by the site from the request line and headers before a byte of the body
    is read: at most C{maxBody} bytes (0: none), and whatever
    L{checkBeforeBody} requires (the API's key). The deepest resource on a
    path that is a C{BodyPolicy} decides; a refusal is answered by
    L{refusal} and ends the connection, the rest of the body unread.
    """

    maxBody = 0

    def checkBeforeBody(self, request, method: bytes, segments: list[bytes]):
        """
        Before the body of C{request} is read (C{segments}: the decoded path
        under this resource): None to read it, a Deferred the site waits for
        (reading nothing meanwhile) whose result it keeps as
        C{request.checked}, or raise or fail with L{Refused}.
        """
        return None

    def refusal(self, error: Refused) -> resource.IResource:
        """The resource that answers a request refused with C{error}."""
        return RefusalPage(error)

    def bodyTimeout(self, length: int | None, limits) -> float:
        """Seconds the body of C{length} bytes (None: chunked) may take to arrive: C{http_body_timeout}."""
        return limits.http_body_timeout

    def openBody(self, request):
        """
        Where the body of an allowed request goes (after the check, with
        its result in C{request.checked}): None for memory, up to
        L{maxBody}, or a file-like object that the request writes into and
        closes when it is done with it, also when the connection is lost.
        """
        return None


class RefusalPage(resource.Resource):
    """A L{Refused} answered with a message page."""

    isLeaf = True

    def __init__(self, error: Refused):
        resource.Resource.__init__(self)
        self.error = error

    def render(self, request):
        return servePage(request, defer.fail(self.error))


@dataclass
class Page:
    """
    What a resource answers: a body element inside the layout, its title
    (a L{Text}), the HTTP status, the C{xmpp:} URI of the invite it shows
    (for the C{Link} header), and C{root}, the relative path back to the
    site's root.
    """

    title: object
    body: object
    code: int = 200
    alternate: str | None = None
    root: str = "../"
    siteName: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class Translatable(Element):
    """An element whose template marks sentences to translate with C{t:render="tr"}."""

    @renderer
    def tr(self, request, tag):
        """The element's text (slots as placeholders) in the visitor's language."""
        message, slots = templateText(tag.children)
        tag.children = [Text(message, **slots)]
        return tag


@dataclass
class File:
    """An answer that is not a page (an image): its bytes, content type and headers."""

    body: bytes
    contentType: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Layout(Translatable):
    """
    The frame of every page: head, viewport, stylesheet, header, footer,
    the page's C{lang} and C{dir}, and the language switcher.
    """

    loader = template("layout.xml")

    def __init__(self, page: Page):
        Element.__init__(self)
        self.page = page

    @renderer
    def frame(self, request, tag):
        page = self.page
        language = languageOf(request)
        return tag(lang=language, dir=direction(language)).fillSlots(
            title=page.title, root=page.root, body=page.body,
            siteName=page.siteName or Text("XMPP invites"))

    @renderer
    def languages(self, request, tag):
        """
        A link per language to this page in it (C{?lang=xx}, the rest of the
        query kept); the current one is marked, not linked.
        """
        current = languageOf(request)
        keep = [(key, value) for key, value in query(request) if key != b"lang"]
        links = []
        for language in languages():
            name = displayName(language)
            if language == current:
                links.append(tags.li(tags.strong(name, lang=language, **{"aria-current": "true"})))
                continue
            target = urlencode(keep + [(b"lang", language.encode("ascii"))])
            links.append(tags.li(tags.a(name, href=f"?{target}", lang=language,
                                        hreflang=language, dir=direction(language))))
        return tag(tags.ul(links), **{"aria-label": Text("Language")})

    @renderer
    def alternate(self, request, tag):
        if not self.page.alternate:
            return ""
        return tag(href=self.page.alternate)


class MessageBody(Element):
    """A short page that says what happened and what to do next."""

    loader = template("message.xml")

    def __init__(self, heading: object, lines: list, kind: str = "info"):
        Element.__init__(self)
        self.heading = heading
        self.lines = lines
        self.kind = kind

    @renderer
    def message(self, request, tag):
        return tag.fillSlots(heading=self.heading, kind=f"card message {self.kind}",
                             lines=[tags.p(line) for line in self.lines])


def notFound(siteName: str = "", root: str = "../") -> Page:
    """The page for an invite link that is not (or never was) valid: 404."""
    return Page(Text("Invite not found"), MessageBody(
        Text("This invite link is not valid"),
        [Text("Check that you opened the whole link you were sent: it is easy to miss a few "
              "characters when copying it."),
         Text("If it still does not work, ask the person who invited you for a new invite.")],
        "warning"), 404, root=root, siteName=siteName)


def gone(siteName: str = "", root: str = "../") -> Page:
    """The page for an invite that was used up, expired or revoked: 410."""
    return Page(Text("Invite expired"), MessageBody(
        Text("This invite has expired"),
        [Text("The invite was already used, has expired, or was withdrawn by the person who "
              "sent it."),
         Text("Ask them for a new invite. If you already created your account with it, just "
              "open your app and log in.")], "warning"),
        410, root=root, siteName=siteName)


def watchConnection(request) -> list[bool]:
    """A flag that turns True when the client goes away before the answer is sent."""
    lost = [False]
    request.notifyFinish().addErrback(lambda _: lost.__setitem__(0, True))
    return lost


def finishWith(request, lost: list[bool], code: int, body: bytes, contentType: bytes,
               headers: dict) -> None:
    """Send a whole answer, unless the client is already gone."""
    if lost[0] or request.finished:
        return
    request.setResponseCode(code)
    request.setHeader(b"content-type", contentType)
    for name, value in headers.items():
        request.setHeader(name.encode("ascii"), value.encode("ascii"))
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


@defer.inlineCallbacks
def _flatten(request, page: Page):
    html = yield flattenString(request, Layout(page))
    return b"<!DOCTYPE html>\n" + html


def logFailure(failure, request) -> None:
    """
    Log why a page failed. A flattener error describes the whole tree being
    rendered, tokens included, so only the exception inside it and where it
    was raised are logged.
    """
    method = request.method.decode("ascii", "replace")
    if failure.check(FlattenerError):
        error = failure.value
        where = "".join(traceback.format_list(getattr(error, "_traceback", [])))
        log.error("Rendering a {method} page failed: {error!r}\n{where}", method=method,
                  error=getattr(error, "_exception", None), where=where)
    else:
        log.failure("Rendering a {method} page failed", failure, method=method)


def servePage(request, pending) -> object:
    """
    Answer C{request} with the L{Page} (or L{File}) that Deferred C{pending} fires with;
    a failure is logged (without the request's path, which may hold a
    token) and answered with a plain 500 page. Returns C{NOT_DONE_YET}.
    """
    lost = watchConnection(request)
    remember(request)

    def render(page: Page | File):
        if isinstance(page, File):
            return finishWith(request, lost, 200, page.body, page.contentType, page.headers)
        d = _flatten(request, page)
        d.addCallback(lambda html: finishWith(request, lost, page.code, html, HTML, {
            "content-language": languageOf(request), "vary": "Accept-Language, Cookie",
            **page.headers}))
        return d

    def failed(failure):
        if failure.check(Refused):
            error = failure.value
            title = Text(TITLES.get(error.code) or reason(error.code).decode("ascii"))
            return render(Page(title, MessageBody(title, [Text(error.message)], "warning"),
                               error.code, root=rootOf(request), headers=error.headers))
        logFailure(failure, request)
        sorry = MessageBody(Text("Something went wrong"), [
            Text("The server could not complete this request. Please try again in a moment.")],
            "warning")
        d = _flatten(request, Page(Text("Something went wrong"), sorry, 500, root=rootOf(request)))
        d.addCallback(lambda html: finishWith(request, lost, 500, html, HTML, {}))
        d.addErrback(lambda f: log.failure("Rendering the error page failed", f))

    d = defer.maybeDeferred(lambda: pending)
    d.addCallback(render)
    d.addErrback(failed)
    return NOT_DONE_YET


class TokenResource(resource.Resource):
    """A leaf resource for one invite token: C{/invite/TOKEN}, C{/register/TOKEN}."""

    isLeaf = True

    def __init__(self, context, token: str | None):
        resource.Resource.__init__(self)
        self.context = context
        self.token = token

    @defer.inlineCallbacks
    def find(self, request):
        """
        Fire with (host, invite) for this page's token, (None, None) when no
        served host has it. A token nobody has is a guess, throttled per
        address as XMPP's invite tokens are (L{Limiter.tokenFailed}) and
        logged in the same line for fail2ban: the first few are answered at
        once, then later and later, and an address that kept guessing is
        refused (429) without a look.
        """
        limiter = self.context.server.limiter
        address = request.clientIP()
        if limiter.tokenBlocked(address):
            limiter.metrics["tokens.blocked"] += 1
            log.info("Authentication failure from {address} for an invite token (blocked)",
                     address=address)
            raise Refused(429, N_("Too many invalid invite links were opened from your address."
                                  " Please try again later."),
                          {"retry-after": str(int(limiter.limits.auth_failure_window))})
        host, invite = yield self.context.lookup(self.token)
        if invite is None:
            delay = limiter.tokenFailed(address)
            log.info("Authentication failure from {address} for an invite token{throttled}",
                     address=address, throttled=" (throttled)" if delay else "")
            if delay:
                yield task.deferLater(limiter.clock, delay)
        return host, invite
