"""
The invite landing page, C{GET /invite/TOKEN}: the link people share.

It tells the visitor who invited them and to which service, recommends apps
for their platform (guessed from the User-Agent; C{?apps=all} lists every
app), and offers the invite's C{xmpp:} URI as a button and as a QR code to
scan with a phone. Apps that cannot open invite links get the web
registration form instead. The page also carries the URI in a
C{Link: <xmpp:…>; rel="alternate"} header, which apps that fetch the page
read instead of the HTML.

Looking at the page never uses or changes the invite: link previews of chat
apps and curious visitors fetch it too. An unknown token gets a 404 page; a
used, expired or revoked one a 410 page.
"""

from __future__ import annotations

from io import BytesIO
from urllib.parse import quote

import segno
from twisted.internet import defer
from twisted.web import resource
from twisted.web.template import Element, renderer, tags

from invitesrv.invites import creatorOf
from invitesrv.web.apps import PLATFORMS, App, detectPlatform, recommended
from invitesrv.web.i18n import LocalTime, Text
from invitesrv.web.pages import (
    File,
    Page,
    TokenResource,
    Translatable,
    gone,
    linkHeader,
    notFound,
    qrCode,
    rootOf,
    servePage,
    template,
)


def tokenOf(segment: bytes) -> str | None:
    """The token in a path segment, or None when it cannot be one."""
    try:
        return segment.decode("utf-8")
    except UnicodeDecodeError:
        return None


class AppCard(Element):
    """One app of the list, with its download buttons."""

    loader = template("app.xml")

    def __init__(self, app: App, uri: str, registerLink: str | None):
        Element.__init__(self)
        self.app = app
        self.uri = uri
        self.registerLink = registerLink

    @renderer
    def card(self, request, tag):
        app = self.app
        links = [(Text(download.text), download.url) for download in app.downloads]
        if app.magicLink:
            links[0] = (links[0][0], app.installLink(self.uri))
        buttons = [tags.a(text, class_="button small", href=url, rel="noopener noreferrer")
                   for text, url in links]
        if not app.supportsPreauth and self.registerLink:
            buttons.append(tags.a(Text("Create your account first"),
                                  class_="button small secondary",
                                  href=f"{self.registerLink}?app={quote(app.id)}"))
        if app.supportsPreauth:
            badge, badgeClass = Text("Opens invite links"), "badge ok"
        else:
            badge, badgeClass = Text("Register on the web first"), "badge"
        platforms = [[", " if i else "", Text(PLATFORMS.get(p, p))]
                     for i, p in enumerate(app.platforms)]
        return tag.fillSlots(name=app.name, text=Text(app.text), platforms=platforms,
                             badge=badge, badgeClass=badgeClass, downloads=buttons)


class InviteBody(Translatable):
    """The landing page of one valid invite, for each kind of invite."""

    loader = template("invite.xml")

    def __init__(self, context, host, invite, token: str, uri: str, platform: str | None,
                 showAll: bool):
        Element.__init__(self)
        self.context = context
        self.host = host
        self.invite = invite
        self.token = token
        self.uri = uri
        self.platform = platform
        self.showAll = showAll
        self.siteName = context.siteName(host)
        self.inviter = creatorOf(invite)
        self.contactOnly = invite.kind == "contact" and not invite.allowRegistration
        self.registers = invite.kind != "reset" and invite.allowRegistration

    def texts(self) -> dict[str, object]:
        """The words of the page, which depend on the kind of invite."""
        site, inviter, invite = self.siteName, self.inviter, self.invite
        otherDevice = Text("Or scan this code with your app on another device.")
        if invite.kind == "reset":
            account = f"{invite.username}@{self.host.name}"
            return {
                "eyebrow": site,
                "heading": Text("Choose a new password"),
                "intro": Text("This link sets a new password for the account {address}. "
                              "It works once.", address=account),
                "actionHeading": Text("Set your new password"),
                "actionText": Text("Choose it on the web, or open the link in an app that "
                                   "supports invites and pick it there."),
                "primaryText": Text("Choose a new password"),
                "qrText": otherDevice,
            }
        if self.contactOnly:
            return {
                "eyebrow": site,
                "heading": Text("{inviter} invites you to chat", inviter=inviter),
                "intro": Text("Open this invite in your XMPP app to add {inviter} to your "
                              "contacts: you will see each other online right away, without "
                              "asking again.", inviter=inviter),
                "actionHeading": Text("Add them in your app"),
                "actionText": Text("Tap the button on the device where your XMPP app is "
                                   "installed."),
                "primaryText": Text("Add {inviter}", inviter=inviter),
                "qrText": otherDevice,
            }
        if invite.kind == "contact":
            heading = Text("{inviter} invites you to chat", inviter=inviter)
            intro = Text("Create your free account on {site} and {inviter} is in your contacts "
                         "right away.", site=site, inviter=inviter)
        else:
            heading = Text("You are invited to {site}", site=site)
            intro = (Text("{inviter} has invited you to join {site}, a private and secure chat "
                          "service that works with many apps.", inviter=inviter, site=site)
                     if inviter else
                     Text("You have been invited to join {site}, a private and secure chat "
                          "service that works with many apps.", site=site))
        return {
            "eyebrow": Text("Invitation"),
            "heading": heading,
            "intro": intro,
            "actionHeading": Text("Accept the invite"),
            "actionText": Text("If your app opens invite links, tap the button on the device "
                               "where it is installed: the app creates your account and you "
                               "are done."),
            "primaryText": Text("Open the invite in your app"),
            "qrText": Text("Setting up an app on another device? Scan this code with it."),
        }

    @renderer
    def page(self, request, tag):
        apps = self.context.apps
        shown = apps if self.showAll else recommended(apps, self.platform)
        registerLink = f"../register/{quote(self.token, safe='')}"
        if self.showAll or len(shown) == len(apps):
            platformNote = Text("Apps for every platform:")
            otherLink, otherText = "?", Text("Show the apps for this device only")
        else:
            platformNote = Text("Recommended for {platform}:",
                                platform=Text(PLATFORMS[self.platform]))
            otherLink, otherText = "?apps=all", Text("See apps for all platforms")
        webApps = [app.name for app in apps if not app.supportsPreauth]
        webAppsText = (Text("{apps} and other apps cannot open invite links: create your account "
                            "here first, then log in with the app.", apps=", ".join(webApps))
                       if webApps else
                       Text("Some apps cannot open invite links: create your account here "
                            "first, then log in with the app."))
        return tag.fillSlots(
            **self.texts(),
            address=(tags.strong(f"{self.invite.username}@{self.host.name}")
                     if self.invite.username else ""),
            apps=[AppCard(app, self.uri, registerLink if self.registers else None)
                  for app in shown],
            platformNote=platformNote, otherAppsLink=otherLink, otherAppsText=otherText,
            qr=qrCode(self.uri, "QR code of the invite"), webAppsText=webAppsText,
            registerLink=registerLink, inviter=self.inviter or "",
            qrDownload=f"{quote(self.token, safe='')}/qr.png",
            expires=LocalTime(self.invite.expires))

    @renderer
    def welcome(self, request, tag):
        """The creator's welcome text, one paragraph a line (escaped by the template)."""
        text = self.invite.welcome
        if not text:
            return ""
        paragraphs = [tags.p(line) for line in text.split("\n") if line.strip()]
        return tag.fillSlots(welcomeText=paragraphs,
                             welcomeFrom=["— ", self.inviter or self.siteName])

    @renderer
    def address(self, request, tag):
        return tag if self.invite.username and self.invite.kind == "account" else ""

    @renderer
    def ifApps(self, request, tag):
        return tag if self.registers else ""

    @renderer
    def ifWebRegister(self, request, tag):
        return tag if self.registers else ""

    @renderer
    def ifAlreadyHaveAccount(self, request, tag):
        return tag if self.invite.kind == "contact" and self.registers else ""

    @renderer
    def primaryAction(self, request, tag):
        if self.invite.kind == "reset":
            return tag(href=f"../register/{quote(self.token, safe='')}")
        return tag(href=self.uri)


class InvitePage(TokenResource):
    """
    C{/invite/TOKEN}: one invite's landing page; C{/invite/TOKEN/qr.png}:
    its QR code as an image to download, found (and throttled, and kept out
    of the access log) as the page is.
    """

    def render_GET(self, request):
        return servePage(request, self.page(request))

    @defer.inlineCallbacks
    def page(self, request):
        context = self.context
        root = rootOf(request)
        image = request.postpath == [b"qr.png"]
        if request.postpath and not image:
            return notFound(context.siteName(), root)
        host, invite = yield self.find(request)
        if invite is None:
            return notFound(context.siteName(), root)
        siteName = context.siteName(host)
        now = host.now()
        if invite.status(now) != "pending":
            return gone(siteName, root)
        uri = context.managers[host.name].uri(invite, self.token)
        if image:
            return qrImage(uri, invite.expires - now)
        agent = (request.getHeader(b"user-agent") or b"").decode("latin-1")
        showAll = request.args.get(b"apps") == [b"all"]
        body = InviteBody(context, host, invite, self.token, uri, detectPlatform(agent), showAll)
        title = body.texts()["heading"]
        return Page(title, body, alternate=uri, root=root, siteName=siteName, headers={
            "link": linkHeader(uri),
            "access-control-allow-origin": "*",
            "access-control-expose-headers": "Link",
        })


def qrImage(uri: str, valid: float) -> File:
    """
    The PNG of an invite's QR code: kept by the browser while the invite is
    valid (an hour at most), by no shared cache (it is the invite).
    """
    png = BytesIO()
    segno.make(uri, error="m").save(png, kind="png", scale=8, border=4)
    return File(png.getvalue(), b"image/png", {
        "cache-control": f"private, max-age={max(0, min(3600, int(valid)))}",
        "content-disposition": 'attachment; filename="invite-qr.png"',
    })


class InviteResource(resource.Resource):
    """C{/invite/}: hands each token to an L{InvitePage}."""

    def __init__(self, context):
        resource.Resource.__init__(self)
        self.context = context

    def getChild(self, name, request):
        return InvitePage(self.context, tokenOf(name) if name else None)
