"""
The HTTP site: its resource tree, the headers every answer carries, the
client's real address behind a reverse proxy, and an access log without
secrets.

Invite tokens travel in URL paths (C{/invite/TOKEN}, C{/register/TOKEN},
C{/api/v1/tokens/TOKEN}), so the access log writes those paths with the
token replaced, and pages ask browsers not to send them on as a referrer.
C{X-Forwarded-For} and C{X-Forwarded-Proto} are believed only from the
peers listed in C{server.trusted_proxies}: anybody else could claim any
address and so escape the per-address throttles.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from twisted.internet import defer
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web import pages, resource, server, static

from invitesrv.config import ConfigError
from invitesrv.invites import InviteManager, hashToken
from invitesrv.web.apps import CatalogueError, loadCatalogue
from invitesrv.web.pages import MessageBody, Page, rootOf, servePage

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
# Paths whose next segment is a secret: the access log shows "[token]" instead.
# Anywhere in the URI, so that a referrer (absolute, perhaps under a proxy's
# sub-path) is covered too.
SECRET_PATH = re.compile(rb"(/(?:invite|register|api/v1/tokens)/)[^/?#]+")


def redactURI(uri: bytes) -> bytes:
    """A URI fit for a log: on token paths, the token and the query replaced."""
    path, question, _ = uri.partition(b"?")
    redacted, count = SECRET_PATH.subn(rb"\1[token]", path)
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
    """

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


class WebSite(server.Site):
    """A L{server.Site} that adds the security headers to every answer."""

    requestFactory = WebRequest
    noisy = False

    def __init__(self, root, trustedProxies=(), reactor=None):
        server.Site.__init__(self, root, logFormatter=accessLogFormatter, reactor=reactor)
        self.trustedProxies = [ipaddress.ip_network(p, strict=False) for p in trustedProxies]

    def getResourceFor(self, request):
        request.setHeader(b"server", b"invitesrv")  # not Twisted's version
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
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
        return servePage(request, Page("Page not found", MessageBody(
            "There is nothing here", [("If you were sent an invite link, open the whole link "
                                      "exactly as you received it.")], "warning"),
            404, root=rootOf(request), siteName=self.context.siteName()))


class Root(resource.Resource):
    """C{/}: a short page for people who typed the address; the children do the work."""

    def __init__(self, context: WebContext):
        resource.Resource.__init__(self)
        self.context = context

    def getChild(self, name, request):
        if name == b"":
            return self
        return NotFound(self.context)

    def render_GET(self, request):
        name = self.context.siteName()
        return servePage(request, Page(name or "XMPP invites", MessageBody(
            f"Welcome to {name}" if name else "Welcome",
            [("This service is open by invitation. If somebody invited you, open the invite "
             "link they sent you: it explains everything step by step.")]),
            root="", siteName=name))


def makeSite(server, clock=None) -> WebSite:
    """
    The whole site for an L{invitesrv.service.InviteServer}: C{/invite/},
    C{/register/}, C{/api/v1/} and C{/static/}. C{clock} drives the rate
    limits (the server's reactor by default).
    """
    from invitesrv.web.api import ApiRoot
    from invitesrv.web.invite_page import InviteResource
    from invitesrv.web.register_page import RegisterResource

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
    return WebSite(root, config.trusted_proxies, server.reactor)


def httpsFactory(server, site: WebSite) -> TLSMemoryBIOFactory:
    """
    The site over TLS with the server's certificate. The XMPP context offers
    ALPN for C{xmpp-client}; browsers must get C{http/1.1} here (Twisted
    would otherwise believe HTTP/2 was chosen).
    """
    options = server.tls.derive(selectALPN=None, acceptableProtocols=[b"http/1.1"])
    return TLSMemoryBIOFactory(options, False, site)
