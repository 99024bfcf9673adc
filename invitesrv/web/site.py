"""
The HTTP site: its resource tree, the headers every answer carries, the
client's real address behind a reverse proxy, an access log without
secrets, and the connection that holds HTTP clients to the server's limits.

Invite tokens travel in URL paths (C{/invite/TOKEN}, C{/register/TOKEN},
C{/api/v1/tokens/TOKEN}), so the access log writes those paths with the
token replaced (matched on the decoded path: C{/%69nvite/TOKEN} is served
as C{/invite/TOKEN}), and pages ask browsers not to send them on as a
referrer.
C{X-Forwarded-For} and C{X-Forwarded-Proto} are believed only from the
peers listed in C{server.trusted_proxies}: anybody else could claim any
address and so escape the per-address throttles.
"""

from __future__ import annotations

import ipaddress
import re
from io import BytesIO
from pathlib import Path
from urllib.parse import unquote_to_bytes

from twisted.internet import defer
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web import http, pages, resource, server, static

from invitesrv.config import ConfigError
from invitesrv.invites import InviteManager, hashToken
from invitesrv.limits import EpisodeLog
from invitesrv.logs import logger
from invitesrv.tls import CurrentOptions
from invitesrv.web.apps import CatalogueError, loadCatalogue
from invitesrv.web.i18n import N_, Text
from invitesrv.web.pages import BodyPolicy, MessageBody, Page, Refused, reason, rootOf, servePage

log = logger()

STATIC = Path(__file__).resolve().parent / "static"

CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self' data:; "
                           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    b"content-security-policy": CONTENT_SECURITY_POLICY.encode("ascii"),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
    b"cross-origin-opener-policy": b"same-origin",
    b"cache-control": b"no-store",
}
# Paths whose rest is a secret (an invite token, an upload's URL): the access
# log shows "[token]" instead.
# Anywhere in the URI, so that a referrer (absolute, perhaps under a proxy's
# sub-path) is covered too; repeated slashes count as one, as in routing.
SECRET_PATH = re.compile(rb"(/+(?:invite|register|api/+v1/+tokens|share)/+).+", re.S)
# A refused connection's answer, and how long a closed one may take to go.
REFUSED = (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Length: %d\r\nRetry-After: 10\r\nConnection: close\r\n\r\n%s")
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
CLOSE_GRACE = 5


def redactURI(uri: bytes) -> bytes:
    """
    A URI fit for a log: on token paths, everything after the prefix and
    the query replaced. The path is matched decoded, as it is served.
    """
    path, question, _ = uri.partition(b"?")
    redacted, count = SECRET_PATH.subn(rb"\1[token]", unquote_to_bytes(path))
    if not count:
        return uri
    return redacted + (b"?[query]" if question else b"")


def logQuote(value: bytes | str) -> str:
    """A value for a quoted field of a log line: printable ASCII, quotes escaped."""
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    return repr(value)[2:-1].replace('"', '\\"')


def _parseAddress(text: str):
    """An address from a forwarding header entry (C{1.2.3.4}, C{[::1]:443}, C{::1}), or None."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]  # IPv4 with a port
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return address.ipv4_mapped or address if address.version == 6 else address


class WebRequest(server.Request):
    """
    A request that knows its client's real address and scheme, believing
    forwarding headers only from the site's trusted proxies.

    Its body is held in memory up to the cap of its L{BodyPolicy} (set by
    L{WebChannel} before the body comes, with the C{checked} result of the
    policy's check), never spooled to a temporary file, and never parsed
    as a form unless a resource asks: Twisted would do both for any route.
    A body over the cap sets C{refusal} and is dropped. A policy may have
    the body written to a file of its own instead (L{BodyPolicy.openBody}:
    uploads).
    """

    policy: BodyPolicy | None = None
    refusal: Refused | None = None
    checked = None
    received = 0

    def __init__(self, *args, **kwargs):
        kwargs["parsePOSTFormSubmission"] = False
        server.Request.__init__(self, *args, **kwargs)

    def gotLength(self, length):
        """In memory: L{WebChannel} has capped the body before it comes."""
        self.content = BytesIO()

    def handleContentChunk(self, data):
        """Keep the body up to the policy's cap; past it, refuse and drop it."""
        self.received += len(data)
        if self.refusal is None and self.received > self.policy.maxBody:
            self.refusal = tooLarge(self.policy.maxBody)
            self.content.close()
            self.content = BytesIO()
        if self.refusal is None:
            self.content.write(data)

    def _trusted(self, address) -> bool:
        networks = self.channel.site.trustedProxies
        return address is not None and any(address in network for network in networks)

    def _peer(self):
        peer = self.getClientAddress()
        return _parseAddress(getattr(peer, "host", "") or "")

    def clientIP(self) -> str:
        """
        The client's address: the peer's, or, when the peer is a trusted
        proxy, the nearest untrusted hop of C{X-Forwarded-For} (read from
        the right, since a client may put anything on the left).
        """
        peer = self._peer()
        address = peer
        if self._trusted(peer):
            hops = [hop for value in self.requestHeaders.getRawHeaders(b"x-forwarded-for", [])
                    for hop in value.decode("latin-1").split(",")]
            for hop in reversed(hops):
                parsed = _parseAddress(hop)
                if parsed is None:
                    break
                address = parsed
                if not self._trusted(parsed):
                    break
        return str(address) if address is not None else ""

    def isSecure(self) -> bool:
        """HTTPS on this connection, or as a trusted proxy says with C{X-Forwarded-Proto}."""
        if self._trusted(self._peer()):
            proto = self.requestHeaders.getRawHeaders(b"x-forwarded-proto")
            if proto:
                return proto[-1].split(b",")[-1].strip().lower() == b"https"
        return server.Request.isSecure(self)


def accessLogFormatter(timestamp: str, request) -> str:
    """The combined log format, with the real client address and no tokens."""
    clientIP = request.clientIP() if isinstance(request, WebRequest) else "-"
    referrer = request.getHeader(b"referer")
    line = [
        f'"{logQuote(clientIP or "-")}" - - {timestamp}',
        f'"{logQuote(request.method)} {logQuote(redactURI(request.uri))}',
        f'{logQuote(request.clientproto)}"',
        f"{request.code} {request.sentLength or '-'}",
        f'"{logQuote(redactURI(referrer) if referrer else "-")}"',
        f'"{logQuote(request.getHeader(b"user-agent") or b"-")}"',
    ]
    return " ".join(line)


def tooLarge(limit: int) -> Refused:
    """The refusal of a body over C{limit} bytes."""
    if not limit:
        return Refused(413, N_("This address takes no request body"))
    return Refused(413, f"The request body is larger than {limit} bytes")


class WebChannel(http.HTTPChannel):
    """
    An HTTP/1.1 connection held to the server's limits before twisted.web
    sees any of it:

      - admitted by the limiter's HTTP pool (per address, in all, per
        second); a refused one is answered 429 or 503 in plain HTTP, or just
        closed before any TLS work in HTTPS;
      - the request line and headers must be complete within
        C{http_header_timeout} of the connection (or of the previous answer)
        and the body within C{http_body_timeout} of the headers: a client
        that drips a header line every few seconds keeps resetting
        twisted.web's idle timeout, never these. A late request gets 408 and
        the connection ends; an idle keep-alive connection just ends;
      - the body policy of the request's path (L{BodyPolicy}) is applied
        before the body is read (and may set a longer body deadline for a
        large upload): a C{Content-Length} over the cap, or a
        failed check (the API key), is answered at once and the connection
        ends with the body unread; a chunked body is counted as it comes and
        cut at the cap; while the check runs, the channel reads nothing.
    """

    _address: str | None = None  # admitted by the limiter, released when lost
    _ended = False  # cut at a deadline, or lost: nothing more is read or answered
    _deadline = None
    _closing = None
    _partial = False  # some of the awaited request has arrived
    _held: list[bytes] | None = None  # body bytes that came while the policy's check runs
    _inHeaders = False

    @property
    def limits(self):
        return self.site.limiter.limits

    def connectionMade(self):
        """Admit the connection (or refuse it, spending nothing on it) and start the clock."""
        address = getattr(self.transport.getPeer(), "host", "")
        refusal = self.site.limiter.admitWeb(address)
        if refusal is not None:
            if self.isSecure():
                self.transport.abortConnection()
                return
            code = 503 if refusal.condition == "resource-constraint" else 429
            text = refusal.text.encode("utf-8") + b"\n"
            self.transport.write(REFUSED % (code, reason(code), len(text), text))
            self.transport.loseConnection()
            return
        self._address = address
        http.HTTPChannel.connectionMade(self)
        self._await(self.limits.http_header_timeout, "request")

    def dataReceived(self, data):
        """Read only what an admitted, live connection sends."""
        if self._address is None or self._ended:
            return
        self._partial = True
        http.HTTPChannel.dataReceived(self, data)

    # -- deadlines -----------------------------------------------------------

    def _await(self, seconds: float, phase: str) -> None:
        """Give the C{phase} ("request": line and headers, or "body") C{seconds} to arrive."""
        self._stopDeadline()
        if seconds:
            self._deadline = self.callLater(seconds, self._tooSlow, phase)

    def _stopDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _tooSlow(self, phase: str) -> None:
        """
        A deadline passed: end the connection, quietly when it was only an
        idle keep-alive (or silent) one, else with 408, counted and logged
        once per episode.
        """
        self._deadline = None
        self._ended = True
        self._held = None
        if phase == "request" and not self._partial:
            self.loseConnection()
            return
        self.site.limiter.metrics[f"http.{phase}-timeout"] += 1
        if self.site.slowRequests.event():
            log.info("Closing HTTP connections too slow to send their request ({phase} not"
                     " complete in time; first from {address}; further ones are counted, not"
                     " logged, until a minute passes without one)",
                     phase="request line and headers" if phase == "request" else "body",
                     address=self._address)
        self.transport.write(TIMED_OUT)
        self.loseConnection()
        self._closing = self.callLater(CLOSE_GRACE, self.transport.abortConnection)

    # -- the request's head and body -------------------------------------------

    def allHeadersReceived(self):
        """
        The head is complete: apply the path's body policy before any of
        the body is read, and give the body its deadline.
        """
        request = self.requests[-1]
        request.policy, segments = self.site.policyFor(self._path)
        request.uri = self._path  # for the check (Twisted sets it once the body is in)
        if self.length == 0:
            self._stopDeadline()
            http.HTTPChannel.allHeadersReceived(self)
            return
        self._await(request.policy.bodyTimeout(self.length, self.limits), "body")
        error = check = expect = None
        if self.length is not None and self.length > request.policy.maxBody:
            error = tooLarge(request.policy.maxBody)
        else:
            try:
                check = request.policy.checkBeforeBody(request, self._command, segments)
            except Refused as e:
                error = e
        if error is not None or check is not None:
            # Twisted would ask for the body at once ("100 Continue").
            expect = request.requestHeaders.getRawHeaders(b"expect")
            request.requestHeaders.removeHeader(b"expect")
        http.HTTPChannel.allHeadersReceived(self)
        self._inHeaders = True
        if error is not None:
            self._refuseBody(request, error)
        elif check is not None:
            self._held = []
            self._networkProducer.pauseProducing()
            check.addCallbacks(self._bodyAllowed, self._bodyRefused, (request, expect), None,
                               (request,))
        self._inHeaders = False

    def _bodyAllowed(self, checked, request, expect) -> None:
        """The policy's check passed: ask for the body if asked to, and read it."""
        held, self._held = self._held, None
        request.checked = checked
        sink = request.policy.openBody(request)
        if sink is not None:
            request.content = sink
        if self._ended or held is None:
            if sink is not None:  # lost meanwhile: the request has closed its content already
                sink.close()
            return
        if expect and expect[0].lower() == b"100-continue" and self._version == b"HTTP/1.1":
            self._send100Continue()
        self._networkProducer.resumeProducing()
        for data in held:
            self.rawDataReceived(data)

    def _bodyRefused(self, failure, request) -> None:
        """The policy's check refused the request (or failed: 500, logged)."""
        self._held = None
        if self._ended:
            return
        if not failure.check(Refused):
            log.failure("Checking an HTTP request before its body failed", failure)
        error = failure.value if failure.check(Refused) else Refused(
            500, "The server could not complete this request")
        self._refuseBody(request, error)

    def _refuseBody(self, request, error: Refused) -> None:
        """
        Answer C{request} with C{error} now, the rest of its body unread,
        and end the connection after the answer.
        """
        request.refusal = error
        request.setHeader(b"connection", b"close")
        self.persistent = False
        self.length = 0
        self._transferDecoder = None
        self._held = None
        if not self._inHeaders:  # else lineReceived goes on to allContentReceived
            self.allContentReceived()

    def rawDataReceived(self, data):
        """
        Body bytes: held while the policy's check runs (one read at most:
        the transport is paused), else decoded; a chunked body that went
        over the cap (L{WebRequest.handleContentChunk}) is refused here,
        once the decoder is done with these bytes.
        """
        if self._held is not None:
            self._held.append(data)
            return
        receiving = self.requests[-1] if self.requests and not self._handlingRequest else None
        http.HTTPChannel.rawDataReceived(self, data)
        if (receiving is not None and receiving.refusal is not None
                and not self._handlingRequest and self._transferDecoder is not None):
            self._refuseBody(receiving, receiving.refusal)

    def allContentReceived(self):
        """The request is whole: no deadline while the server answers it."""
        self._stopDeadline()
        http.HTTPChannel.allContentReceived(self)

    def requestDone(self, request):
        """Answered: a keep-alive connection has the header deadline for its next request."""
        if self.persistent:
            self._partial = bool(self._dataBuffer)
            self._await(self.limits.http_header_timeout, "request")
        http.HTTPChannel.requestDone(self, request)

    def connectionLost(self, reason):
        """Stop the clocks and give the connection back to the limiter."""
        self._ended = True
        self._stopDeadline()
        if self._closing is not None and self._closing.active():
            self._closing.cancel()
        self._held = None
        if self._address is not None:
            self.site.limiter.releaseWeb(self._address)
            self._address = None
        http.HTTPChannel.connectionLost(self, reason)


class WebSite(server.Site):
    """
    A L{server.Site} of L{WebChannel}s (HTTP/1.1 only: HTTPS offers no
    other protocol) that adds the security headers to every answer.

    C{Strict-Transport-Security} (for C{hstsMaxAge} seconds; 0: never) goes
    on every answer sent over TLS. A plain HTTP answer carries it only when
    the public URL is C{https} (C{publicHTTPS}: the operator promises the
    name is served over HTTPS) and a trusted proxy says, with
    C{X-Forwarded-Proto}, that the browser came over HTTPS: a browser
    ignores the header on plain HTTP anyway, and a client that reached the
    listener directly, or through a proxy on plain HTTP, must not pin the
    name to HTTPS for a year on a port that may serve no HTTPS at all.
    """

    protocol = WebChannel
    requestFactory = WebRequest
    noisy = False

    def __init__(self, root, limiter, trustedProxies=(), reactor=None, hstsMaxAge: int = 0,
                 publicHTTPS: bool = False):
        server.Site.__init__(self, root, logFormatter=accessLogFormatter, reactor=reactor)
        self.limiter = limiter
        self.trustedProxies = [ipaddress.ip_network(p, strict=False) for p in trustedProxies]
        self.slowRequests = EpisodeLog(self.reactor, quiet=60.0)
        self.hsts = b"max-age=%d" % hstsMaxAge if hstsMaxAge else None
        self.publicHTTPS = publicHTTPS

    def strictTransport(self, request) -> bool:
        """Whether the answer to C{request} carries C{Strict-Transport-Security}."""
        if self.hsts is None:
            return False
        return request.channel.isSecure() or (self.publicHTTPS and request.isSecure())

    def policyFor(self, path: bytes) -> tuple[BodyPolicy, list[bytes]]:
        """
        The body policy of a request path, and the decoded segments under
        its resource: the deepest L{BodyPolicy} among the static children on
        the path (so before any resource runs); the root's when none.
        """
        segments = [unquote_to_bytes(s) for s in path.split(b"?", 1)[0].split(b"/")[1:]]
        node = policy = self.resource
        rest = segments
        while segments and not node.isLeaf:
            node = node.getStaticEntity(segments.pop(0))
            if node is None:
                break
            if isinstance(node, BodyPolicy):
                policy, rest = node, list(segments)
        return policy, rest

    def getResourceFor(self, request):
        request.setHeader(b"server", b"invitesrv")  # not Twisted's version
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        if self.strictTransport(request):
            request.setHeader(b"strict-transport-security", self.hsts)
        if request.refusal is not None:
            return request.policy.refusal(request.refusal)
        return server.Site.getResourceFor(self, request)


class WebContext:
    """
    What the resources share: the server (its hosts and store), one
    L{InviteManager} per host, the app catalogue, the installation secret
    (for CSRF tokens) and the clock of the rate limits.
    """

    def __init__(self, server, apps, clock=None):
        self.server = server
        self.store = server.store
        self.apps = apps
        self.secret = server.secret
        self.clock = clock if clock is not None else server.clock
        self.managers = {name: InviteManager(host) for name, host in server.hosts.items()}

    def host(self, name: str):
        """The served virtual host of that name, or None."""
        return self.server.hosts.get(name)

    def siteName(self, host=None) -> str:
        """The name pages give the service: C{site_name}, else the host's domain."""
        if host is None:
            if len(self.server.hosts) != 1:
                return ""
            host = next(iter(self.server.hosts.values()))
        return host.options.site_name or host.name

    @defer.inlineCallbacks
    def lookup(self, token: str | None):
        """
        Fire with (host, invite) for a presented token, without using it, or
        (None, None) when no served host has an invite with that token.
        """
        tokenHash = hashToken(token)
        if tokenHash is None:
            return None, None
        invite = yield self.store.findInvite(tokenHash)
        host = self.host(invite.host) if invite is not None else None
        if host is None:
            return None, None
        return host, invite


class StaticFiles(static.File):
    """The stylesheet and friends: cacheable, and no directory listings."""

    def directoryListing(self):
        return pages.notFound()

    def render_GET(self, request):
        request.setHeader(b"cache-control", b"public, max-age=86400")
        return static.File.render_GET(self, request)


class NotFound(resource.Resource):
    """A friendly 404 for any path the site does not have."""

    isLeaf = True

    def __init__(self, context: WebContext):
        resource.Resource.__init__(self)
        self.context = context

    def render(self, request):
        return servePage(request, Page(Text("Page not found"), MessageBody(
            Text("There is nothing here"), [Text("If you were sent an invite link, open the "
                                                 "whole link exactly as you received it.")],
            "warning"),
            404, root=rootOf(request), siteName=self.context.siteName()))


class Root(BodyPolicy, resource.Resource):
    """
    C{/}: a short page for people who typed the address; the children do
    the work. As a body policy, the site's default: no request body.
    """

    def __init__(self, context: WebContext):
        resource.Resource.__init__(self)
        self.context = context

    def getChild(self, name, request):
        if name == b"":
            return self
        return NotFound(self.context)

    def render_GET(self, request):
        name = self.context.siteName()
        return servePage(request, Page(name or Text("XMPP invites"), MessageBody(
            Text("Welcome to {site}", site=name) if name else Text("Welcome"),
            [Text("This service is open by invitation. If somebody invited you, open the invite "
                  "link they sent you: it explains everything step by step.")]),
            root="", siteName=name))


def makeSite(server, clock=None) -> WebSite:
    """
    The whole site for an L{invitesrv.service.InviteServer}: C{/invite/},
    C{/register/}, C{/api/v1/}, C{/static/} and C{/share/} (uploads). C{clock} drives the rate
    limits (the server's reactor by default).
    """
    from invitesrv.web.api import ApiRoot
    from invitesrv.web.invite_page import InviteResource
    from invitesrv.web.register_page import RegisterResource
    from invitesrv.web.share import ShareResource

    config = server.config
    try:
        apps = loadCatalogue(config.app_catalogue, config.hide_apps)
    except CatalogueError as e:
        raise ConfigError(f"{config.source}: server.app_catalogue: {e}") from None
    context = WebContext(server, apps, clock)
    root = Root(context)
    root.putChild(b"invite", InviteResource(context))
    root.putChild(b"register", RegisterResource(context))
    api = resource.Resource()
    api.putChild(b"v1", ApiRoot(context))
    root.putChild(b"api", api)
    root.putChild(b"static", StaticFiles(str(STATIC)))
    root.putChild(b"share", ShareResource(context))
    return WebSite(root, server.limiter, config.trusted_proxies, server.reactor,
                   hstsMaxAge=int(config.hsts_max_age),
                   publicHTTPS=config.public_url.lower().startswith("https://"))


def httpsFactory(server, site: WebSite) -> TLSMemoryBIOFactory:
    """
    The site over TLS with the server's certificates (the current ones, as
    a reload changes them). The XMPP context offers ALPN for
    C{xmpp-client}; browsers must get C{http/1.1} here (Twisted would
    otherwise believe HTTP/2 was chosen).
    """
    options = CurrentOptions(server, lambda tls: tls.derive(
        selectALPN=None, acceptableProtocols=[b"http/1.1"]))
    return TLSMemoryBIOFactory(options, False, site)
