"""
Web registration, C{GET/POST /register/TOKEN}: an account for people whose
app cannot redeem an invite itself (Dino, Gajim, Beagle IM), and a new
password through a reset invite.

The form goes through the one registrar, so the rules are those of in-band
registration: the invite is reserved atomically, spent only when the account
exists, and given back when the attempt fails. A username-bound invite or a
reset invite fixes the username. The form carries a CSRF token: an HMAC,
under the installation secret, of a random cookie and the invite, so another
site cannot post it for a visitor. The password never appears in a URL, a
page or a log line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import parse_qs, quote

from twisted.internet import defer
from twisted.web import resource
from twisted.web.template import Element, renderer, tags

from invitesrv.invites import creatorOf, hashToken
from invitesrv.logs import logger
from invitesrv.registrar import RegistrationError
from invitesrv.web.apps import detectPlatform, recommended
from invitesrv.web.i18n import Text
from invitesrv.web.invite_page import tokenOf
from invitesrv.web.pages import (
    BodyPolicy,
    MessageBody,
    Page,
    TokenResource,
    Translatable,
    gone,
    notFound,
    rootOf,
    servePage,
    template,
)

log = logger()

CSRF_COOKIE = b"invitesrv_csrf"
# The largest form body: a username and two passwords of password_max_length
# (1024) characters, percent-encoded, fit several times over.
MAX_FORM = 64 * 1024
FORM = b"application/x-www-form-urlencoded"
# HTTP status for the registrar's refusals; anything else is a 400.
STATUS = {"conflict": 409, "policy-violation": 429, "resource-constraint": 503,
          "item-not-found": 410, "not-allowed": 403}


def csrfToken(secret: bytes, cookie: str, token: str) -> str:
    """The form's CSRF value for this cookie and this invite."""
    message = b"register\0" + cookie.encode("ascii") + b"\0" + (hashToken(token) or b"")
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def validCookie(value: bytes | None) -> str | None:
    """The CSRF cookie's value if it looks like one we set, else None."""
    if not value or len(value) > 64:
        return None
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if text.replace("-", "").replace("_", "").isalnum() else None


def readForm(request) -> None:
    """
    Add the fields of a URL-encoded form body to C{request.args}: the site
    parses no body by itself, so only this form's route ever does.
    """
    contentType = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if contentType == FORM and request.content is not None:
        request.args.update(parse_qs(request.content.read(), keep_blank_values=True))


def field(request, name: bytes) -> str:
    """A submitted form field as text (empty when absent); undecodable input is refused."""
    values = request.args.get(name) or [b""]
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(name) from None


class RegisterForm(Translatable):
    """The form: a username (unless the invite fixes it) and the password twice."""

    loader = template("register.xml")

    def __init__(self, host, invite, siteName: str, csrf: str, app: str, username: str = "",
                 error: Text | None = None):
        Element.__init__(self)
        self.host = host
        self.invite = invite
        self.siteName = siteName
        self.csrf = csrf
        self.app = app
        self.username = invite.username if invite.username else username
        self.error = error

    @renderer
    def form(self, request, tag):
        invite, options = self.invite, self.host.options
        if invite.kind == "reset":
            texts = {
                "heading": Text("Choose a new password"),
                "intro": Text("Pick a new password for your account. Your apps will ask for it "
                              "the next time they connect."),
                "passwordLabel": Text("New password"),
                "submit": Text("Set the new password"),
            }
        else:
            inviter = creatorOf(invite)
            choose = Text("Choose your username and a password; then log in with your app.")
            texts = {
                "heading": Text("Create your account on {site}", site=self.siteName),
                "intro": [Text("You were invited by {inviter}.", inviter=inviter), " ", choose]
                if inviter else choose,
                "passwordLabel": Text("Choose a password"),
                "submit": Text("Create my account"),
            }
        return tag.fillSlots(siteName=self.siteName, csrf=self.csrf, app=self.app,
                             username=self.username or "", domain=self.host.name,
                             minLength=str(options.password_min_length),
                             maxLength=str(options.password_max_length),
                             error=self.error or "",
                             **texts)

    @renderer
    def ifError(self, request, tag):
        return tag if self.error else ""

    @renderer
    def freeUsername(self, request, tag):
        return "" if self.invite.username else tag

    @renderer
    def fixedUsername(self, request, tag):
        return tag if self.invite.username else ""


class Registered(Translatable):
    """After success: the address, and exactly how to log in with the chosen app."""

    loader = template("registered.xml")

    def __init__(self, context, host, invite, username: str, app, platform: str | None):
        Element.__init__(self)
        self.context = context
        self.host = host
        self.invite = invite
        self.username = username
        self.app = app
        self.platform = platform

    @renderer
    def done(self, request, tag):
        jid = f"{self.username}@{self.host.name}"
        siteName = self.context.siteName(self.host)
        if self.invite.kind == "reset":
            heading = Text("Your new password is set")
            intro = Text("Use it from now on for your account:")
        else:
            heading = Text("Your account is ready")
            intro = Text("Welcome! This is your address; share it with people so they can add "
                         "you:")
        apps = recommended(self.context.apps, self.platform)
        links = [tags.li(tags.a(app.name, href=app.downloads[0].url, rel="noopener noreferrer"),
                         " — ", Text(app.text)) for app in apps if app.downloads]
        return tag.fillSlots(siteName=siteName, heading=heading, intro=intro, jid=jid,
                             domain=self.host.name, jidStrong=tags.strong(jid),
                             domainStrong=tags.strong(self.host.name),
                             appName=self.app.name if self.app else Text("your XMPP app"),
                             inviter=creatorOf(self.invite) or "", appLinks=links)

    @renderer
    def ifInviter(self, request, tag):
        return tag if self.invite.kind == "contact" and self.invite.inviter else ""

    @renderer
    def ifNoApp(self, request, tag):
        return "" if self.app or self.invite.kind == "reset" else tag


class RegisterPage(TokenResource):
    """C{/register/TOKEN}: the form of one invite, and its submission."""

    def render_GET(self, request):
        return servePage(request, self.show(request))

    def render_POST(self, request):
        readForm(request)
        return servePage(request, self.submit(request))

    # -- helpers ------------------------------------------------------------

    def _cookie(self, request) -> str:
        """The visitor's CSRF cookie, set now if they have none."""
        cookie = validCookie(request.getCookie(CSRF_COOKIE))
        if cookie is None:
            cookie = secrets.token_urlsafe(18)
            request.addCookie(CSRF_COOKIE, cookie.encode("ascii"), path=b"/", httpOnly=True,
                              secure=request.isSecure(), sameSite="strict")
        return cookie

    def _app(self, request):
        wanted = (request.args.get(b"app") or [b""])[0].decode("utf-8", "replace")
        return next((app for app in self.context.apps if app.id == wanted), None)

    def _form(self, request, host, invite, code: int = 200, username: str = "",
              error: Text | None = None) -> Page:
        csrf = csrfToken(self.context.secret, self._cookie(request), self.token)
        app = self._app(request)
        siteName = self.context.siteName(host)
        form = RegisterForm(host, invite, siteName, csrf, app.id if app else "", username, error)
        title = (Text("Choose a new password") if invite.kind == "reset"
                 else Text("Join {site}", site=siteName))
        return Page(title, form, code, root=rootOf(request), siteName=siteName)

    @defer.inlineCallbacks
    def _invite(self, request):
        """
        Fire with (host, invite, None) for a pending invite that creates an
        account or resets a password, else (None, None, page to answer).
        """
        context, root = self.context, rootOf(request)
        if request.postpath:
            return None, None, notFound(context.siteName(), root)
        host, invite = yield self.find(request)
        if invite is None:
            return None, None, notFound(context.siteName(), root)
        if invite.status(host.now()) != "pending":
            return None, None, gone(context.siteName(host), root)
        if not invite.allowRegistration:
            landing = f"../invite/{quote(self.token, safe='')}"
            return None, None, Page(Text("Contact invite"), MessageBody(
                Text("This invite adds a contact"), [Text("It does not create an account: open "
                                                          "it in your XMPP app instead.")]),
                303, root=root, siteName=context.siteName(host), headers={"location": landing})
        return host, invite, None

    # -- the two verbs ------------------------------------------------------

    @defer.inlineCallbacks
    def show(self, request):
        host, invite, answer = yield self._invite(request)
        return answer or self._form(request, host, invite)

    @defer.inlineCallbacks
    def submit(self, request):
        host, invite, answer = yield self._invite(request)
        if answer is not None:
            return answer
        try:
            username, password, confirm, csrf = (field(request, name) for name in (
                b"username", b"password", b"confirm", b"csrf"))
        except ValueError:
            return self._form(request, host, invite, 400, error=Text("The form could not be read."))
        cookie = validCookie(request.getCookie(CSRF_COOKIE))
        expected = csrfToken(self.context.secret, cookie, self.token) if cookie else ""
        if not cookie or not hmac.compare_digest(csrf.encode("utf-8"), expected.encode("ascii")):
            return self._form(request, host, invite, 403, username, error=Text(
                "This form has expired or your browser did not send it back with its cookie. "
                "Please fill it in again (cookies must be allowed for this site)."))
        if invite.username:
            username = invite.username
        if not username or not password:
            return self._form(request, host, invite, 400, username,
                              Text("Please fill in all the fields."))
        if password != confirm:
            return self._form(request, host, invite, 400, username,
                              Text("The two passwords are not the same."))
        return (yield self._register(request, host, username, password))

    @defer.inlineCallbacks
    def _register(self, request, host, username: str, password: str):
        manager = self.context.managers[host.name]
        reserved = yield manager.reserve(self.token)
        if reserved is None:
            return gone(self.context.siteName(host), rootOf(request))
        try:
            registration = yield host.registrar.register(username, password, "web",
                                                         request.clientIP(), invite=reserved)
        except RegistrationError as e:
            yield manager.release(reserved)
            refusal = Text(e.message or e.condition,
                           **{name: str(value) for name, value in e.params.items()})
            return self._form(request, host, reserved, STATUS.get(e.condition, 400), username,
                              refusal)
        except Exception:
            yield manager.release(reserved)
            raise
        agent = (request.getHeader(b"user-agent") or b"").decode("latin-1")
        siteName = self.context.siteName(host)
        body = Registered(self.context, host, reserved, registration.username, self._app(request),
                          detectPlatform(agent))
        title = Text("Password changed") if reserved.kind == "reset" else Text("Account created")
        return Page(title, body, root=rootOf(request), siteName=siteName)


class RegisterResource(BodyPolicy, resource.Resource):
    """C{/register/}: hands each token to a L{RegisterPage}; takes form bodies up to L{MAX_FORM}."""

    maxBody = MAX_FORM

    def __init__(self, context):
        resource.Resource.__init__(self)
        self.context = context

    def getChild(self, name, request):
        return RegisterPage(self.context, tokenOf(name) if name else None)
