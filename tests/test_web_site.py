"""
The invite pages and web registration over a real socket: a L{WebSite} of an
in-process server (in-memory store) listening on 127.0.0.1, fetched with
Twisted's HTTP client. Each route and status code is checked on the wire:
security headers, the landing page of every kind of invite (apps per
platform, QR code, Link header, Play Store referrer), 404 and 410 pages,
that looking never changes an invite, CSRF, the registrar's refusals, reset
through the web, client addresses behind trusted proxies, and an access log
without tokens.
"""

from __future__ import annotations

import html
import re
from urllib.parse import quote

import pytest
import pytest_twisted
from webclient import (
    ANDROID,
    HOST,
    IPHONE,
    LINUX,
    PASSWORD,
    WebClient,
    WebSetup,
    formValue,
)

from invitesrv.web.apps import BUILTIN, appId, detectPlatform, loadCatalogue, parseCatalogue
from invitesrv.web.site import CONTENT_SECURITY_POLICY

# Twisted's own client warns about its transport; not the server's business.
pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")


@pytest.fixture
def web(tmp_path):
    setup = WebSetup(tmp_path, site_name="Example <Chat>", admins=("boss@example.org",))
    yield setup
    setup.close()


@pytest.fixture
def proxied(tmp_path):
    """A site that believes forwarding headers from 127.0.0.1 (the tests' address)."""
    setup = WebSetup(tmp_path, trustedProxies=["127.0.0.1", "10.0.0.0/8"])
    yield setup
    setup.close()


def assertSecurityHeaders(response, cacheable: bool = False) -> None:
    assert response.header("server") == "invitesrv"
    assert response.header("content-security-policy") == CONTENT_SECURITY_POLICY
    assert "script-src" not in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert response.header("x-content-type-options") == "nosniff"
    assert response.header("referrer-policy") == "no-referrer"
    assert response.header("x-frame-options") == "DENY"
    if not cacheable:
        assert response.header("cache-control") == "no-store"


def appNames(page: str) -> list[str]:
    return re.findall(r'<li class="app">\s*<div class="app-head">\s*<h3>([^<]+)</h3>', page)


# -- landing page ------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_accountInvitePage(web):
    """
    An account invite: the site's name (escaped), the xmpp: URI as a button,
    a QR code, the Link header, and the web registration link.
    """
    created = yield web.manager.createAccount()
    response = yield web.client().get(f"/invite/{created.token}", headers={"User-Agent": ANDROID})
    assert response.code == 200
    assertSecurityHeaders(response)
    assert response.header("content-type") == "text/html; charset=utf-8"
    page = response.text
    assert "<title>You are invited to Example &lt;Chat&gt;</title>" in page
    assert "<Chat>" not in page
    assert f'<a class="button primary" href="{created.uri}">' in page
    assert response.header("link") == f'<{created.uri}>; rel="alternate"'
    assert f'<link rel="alternate" href="{created.uri}" />' in page
    assert re.search(r'<svg viewBox="0 0 \d+ \d+" class="qr"><title>QR code of the invite</title>'
                     r'<path[^>]*/?>(</path>)?<path class="qrline"', page)
    assert f'href="../register/{created.token}"' in page
    assert '<meta name="viewport" content="width=device-width, initial-scale=1" />' in page
    assert "<script" not in page
    assert 'href="../static/style.css"' in page


@pytest_twisted.inlineCallbacks
def test_qrCodeEncodesTheURI(web):
    """The QR code is the one segno makes of the invite's xmpp: URI."""
    import segno
    created = yield web.manager.createAccount()
    page = (yield web.client().get(f"/invite/{created.token}")).text
    drawn = re.search(r'class="qrline"[^>]* d="([^"]+)"', page).group(1)
    expected = segno.make(created.uri, error="m").svg_inline(scale=1, border=2, omitsize=True)
    assert f'd="{drawn}"' in expected


@pytest_twisted.inlineCallbacks
def test_appsForThePlatform(web):
    """
    Android sees Android apps with the Conversations Play Store link carrying
    the URI as install referrer; Linux sees Dino and Gajim with a link to
    register on the web first; ?apps=all lists every app; an unknown platform
    sees all.
    """
    created = yield web.manager.createAccount()
    path = f"/invite/{created.token}"
    client = web.client()
    android = (yield client.get(path, headers={"User-Agent": ANDROID})).text
    assert appNames(android) == ["Conversations", "yaxim"]
    referrer = ("https://play.google.com/store/apps/details?id=eu.siacs.conversations&amp;referrer="
                + quote(created.uri, safe=""))
    assert f'href="{referrer}"' in android
    assert 'href="?apps=all"' in android
    linux = (yield client.get(path, headers={"User-Agent": LINUX})).text
    assert appNames(linux) == ["Dino", "Gajim"]
    assert f'href="../register/{created.token}?app=dino"' in linux
    assert "Register on the web first" in linux
    iphone = (yield client.get(path, headers={"User-Agent": IPHONE})).text
    assert appNames(iphone) == ["Monal", "Siskin IM"]
    everything = (yield client.get(path + "?apps=all", headers={"User-Agent": ANDROID})).text
    assert appNames(everything) == [app.name for app in BUILTIN]
    unknown = (yield client.get(path, headers={"User-Agent": "curl/8.0"})).text
    assert appNames(unknown) == [app.name for app in BUILTIN]


@pytest_twisted.inlineCallbacks
def test_usernameBoundAndContactInvites(web):
    """
    A username-bound invite names the future address; a contact invite with
    registration says who invites; a contact-only invite is an "add this
    person" page without app list or web registration.
    """
    yield web.adduser("romeo")
    bound = yield web.manager.createAccount("juliet")
    page = (yield web.client().get(f"/invite/{bound.token}")).text
    assert "Your address will be <strong>juliet@example.org</strong>" in page
    both = yield web.manager.createContact("romeo", allowRegistration=True)
    page = (yield web.client().get(f"/invite/{both.token}")).text
    assert "<h1>romeo@example.org invites you to chat</h1>" in page
    assert f'href="../register/{both.token}"' in page
    assert f'href="{both.uri}"' in page and both.uri.endswith(";ibr=y")
    contactOnly = yield web.manager.createContact("romeo")
    response = yield web.client().get(f"/invite/{contactOnly.token}")
    assert response.code == 200
    assert "Add romeo@example.org" in response.text
    assert f'href="{contactOnly.uri}"' in response.text
    assert "../register/" not in response.text and appNames(response.text) == []
    assert response.header("link") == f'<{contactOnly.uri}>; rel="alternate"'


@pytest_twisted.inlineCallbacks
def test_resetInvitePage(web):
    """A reset invite's page offers to choose a new password for that account."""
    yield web.adduser("bob")
    reset = yield web.manager.createReset("bob")
    page = (yield web.client().get(f"/invite/{reset.token}")).text
    assert "bob@example.org" in page
    assert f'<a class="button primary" href="../register/{reset.token}">' in page


@pytest_twisted.inlineCallbacks
def test_unknownAndDeadInvites(web):
    """
    Unknown, junk and over-long tokens get the friendly 404 page; used,
    expired and revoked invites the friendly 410 page; never a 500.
    """
    client = web.client()
    for token in ("nope", "x" * 65, "%00%ff", "a/b"):
        response = yield client.get(f"/invite/{token}")
        assert response.code == 404, token
        assert "This invite link is not valid" in response.text
        assertSecurityHeaders(response)
    used = yield web.manager.createAccount()
    reserved = yield web.manager.reserve(used.token)
    yield web.host.registrar.register("first", PASSWORD, "web", invite=reserved)
    expired = yield web.manager.createAccount()
    yield web.store.updateInvite(expired.invite.id, expires=web.host.now() - 1)
    revoked = yield web.manager.createAccount()
    yield web.manager.revoke(revoked.invite.id)
    for created in (used, expired, revoked):
        for path in (f"/invite/{created.token}", f"/register/{created.token}"):
            response = yield client.get(path)
            assert response.code == 410, path
            assert "This invite has expired" in response.text
            assert response.header("link") is None


@pytest_twisted.inlineCallbacks
def test_lookingNeverChangesTheInvite(web):
    """
    Fetching the landing page, the form and the token check (also HEAD)
    leaves the invite pending with no use and no reservation; its one use
    is still there for a registration afterwards.
    """
    created = yield web.manager.createAccount()
    client = web.client()
    for _ in range(2):
        for path in (f"/invite/{created.token}", f"/register/{created.token}",
                     f"/api/v1/tokens/{created.token}"):
            assert (yield client.get(path)).code == 200
        assert (yield client.request("HEAD", f"/invite/{created.token}")).code == 200
    invite = yield web.manager.get(created.invite.id)
    assert (invite.status(web.host.now()), invite.uses, invite.reserved) == ("pending", 0, 0)
    assert (yield web.manager.reserve(created.token)) is not None


@pytest_twisted.inlineCallbacks
def test_otherPaths(web):
    """The root page, unknown paths (404 page), the stylesheet (cacheable) and no listing."""
    client = web.client()
    root = yield client.get("/")
    assert root.code == 200 and "open by invitation" in root.text
    assert 'href="static/style.css"' in root.text
    for path in ("/nothing", "/invite/", "/register/", "/invite/abc/def"):
        response = yield client.get(path)
        assert response.code == 404, path
        assertSecurityHeaders(response)
    style = yield client.get("/static/style.css")
    assert style.code == 200 and b"--accent" in style.body
    assert style.header("cache-control") == "public, max-age=86400"
    assertSecurityHeaders(style, cacheable=True)
    assert (yield client.get("/static/")).code == 404


# -- web registration ----------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_registerThroughTheForm(web):
    """
    The form sets a CSRF cookie; posting it creates the account through the
    registrar (the invite is used, its audit says "web"); the success page
    names the address and the app, and never shows the password.
    """
    created = yield web.manager.createAccount()
    client = web.client()
    form = yield client.get(f"/register/{created.token}?app=dino", headers={"User-Agent": LINUX})
    assert form.code == 200
    assertSecurityHeaders(form)
    cookie = form.header("set-cookie")
    assert cookie.startswith("invitesrv_csrf=") and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie and "Secure" not in cookie
    assert '<input id="username" name="username"' in form.text
    done = yield client.request("POST", f"/register/{created.token}?app=dino", form={
        "username": "Alice", "password": PASSWORD, "confirm": PASSWORD,
        "csrf": formValue(form.text, "csrf"), "app": "dino"})
    assert done.code == 200, done.text
    assert "Your account is ready" in done.text
    assert "<strong>alice@example.org</strong>" in done.text
    assert "Open Dino and choose" in done.text
    assert PASSWORD not in done.text
    assert (yield web.store.accountExists(HOST, "alice"))
    invite = yield web.manager.get(created.invite.id)
    assert invite.status(web.host.now()) == "used" and invite.reserved == 0
    assert [(u["username"], u["path"], u["address"]) for u in invite.uses_log] == [
        ("alice", "web", "127.0.0.1")]
    again = yield client.get(f"/register/{created.token}")
    assert again.code == 410


@pytest_twisted.inlineCallbacks
def test_csrfRefused(web):
    """
    A post without the cookie, with another visitor's cookie, or with a
    wrong token is refused with 403 and a fresh form; nothing is created
    and the invite keeps its use.
    """
    created = yield web.manager.createAccount()
    path = f"/register/{created.token}"
    visitor = web.client()
    csrf = formValue((yield visitor.get(path)).text, "csrf")
    fields = {"username": "mallory", "password": PASSWORD, "confirm": PASSWORD}
    noCookie = yield visitor.request("POST", path, form={**fields, "csrf": csrf}, cookies=False)
    other = web.client()
    yield other.get(path)
    stolenCookie = yield other.request("POST", path, form={**fields, "csrf": csrf})
    wrong = yield visitor.request("POST", path, form={**fields, "csrf": csrf[:-2] + "xx"})
    missing = yield visitor.request("POST", path, form=fields)
    for response in (noCookie, stolenCookie, wrong, missing):
        assert response.code == 403
        assert "This form has expired" in response.text
        assert '<form method="post"' in response.text
    assert not (yield web.store.accountExists(HOST, "mallory"))
    invite = yield web.manager.get(created.invite.id)
    assert (invite.uses, invite.reserved) == (0, 0)


@pytest_twisted.inlineCallbacks
def test_registrationErrorsRerenderTheForm(web):
    """
    The registrar's refusals come back in the form: 400 for mismatched
    passwords, a bad username or a short password, 409 for a taken name;
    each time the invite's reservation is given back, so it still works.
    """
    yield web.adduser("taken")
    created = yield web.manager.createAccount()
    path = f"/register/{created.token}"
    client = web.client()
    csrf = formValue((yield client.get(path)).text, "csrf")

    def post(username, password=PASSWORD, confirm=None):
        return client.request("POST", path, form={
            "username": username, "password": password,
            "confirm": password if confirm is None else confirm, "csrf": csrf})

    cases = [
        (("bob", PASSWORD, "something else"), 400, "The two passwords are not the same."),
        (("bad name",), 400, "The requested username is invalid."),
        (("bob", "short", "short"), 400, "Password is too short (minimum 8 characters)"),
        (("",), 400, "Please fill in all the fields."),
        (("Taken",), 409, "The requested username already exists."),
    ]
    for arguments, code, message in cases:
        response = yield post(*arguments)
        assert response.code == code, response.text
        assert f'<p class="error" role="alert">{html.escape(message, quote=False)}</p>' in response.text
        assert PASSWORD not in response.text
    german = yield client.request("POST", path, headers={"Accept-Language": "de"}, form={
        "username": "bob", "password": "short", "confirm": "short", "csrf": csrf})
    assert "Das Passwort ist zu kurz (mindestens 8 Zeichen)" in german.text, german.text
    invite = yield web.manager.get(created.invite.id)
    assert (invite.uses, invite.reserved) == (0, 0)
    ok = yield post("bob")
    assert ok.code == 200 and "bob@example.org" in ok.text


@pytest_twisted.inlineCallbacks
def test_boundUsernameIsFixed(web):
    """A username-bound invite's form has no username field; a posted name is ignored."""
    created = yield web.manager.createAccount("juliet")
    client = web.client()
    form = yield client.get(f"/register/{created.token}")
    assert 'name="username"' not in form.text
    assert "<strong>juliet@example.org</strong>" in form.text
    done = yield client.request("POST", f"/register/{created.token}", form={
        "username": "someoneelse", "password": PASSWORD, "confirm": PASSWORD,
        "csrf": formValue(form.text, "csrf")})
    assert done.code == 200
    assert (yield web.store.accountExists(HOST, "juliet"))
    assert not (yield web.store.accountExists(HOST, "someoneelse"))


@pytest_twisted.inlineCallbacks
def test_resetThroughTheForm(web):
    """A reset invite's form sets a new password for its account, and only once."""
    from invitesrv.credentials import checkPassword
    yield web.adduser("bob", "the old password")
    reset = yield web.manager.createReset("bob")
    client = web.client()
    form = yield client.get(f"/register/{reset.token}")
    assert "Choose a new password" in form.text and 'name="username"' not in form.text
    done = yield client.request("POST", f"/register/{reset.token}", form={
        "password": "the new password", "confirm": "the new password",
        "csrf": formValue(form.text, "csrf")})
    assert done.code == 200 and "Your new password is set" in done.text
    stored = yield web.store.getCredentials(HOST, "bob", "SCRAM-SHA-256")
    assert checkPassword("the new password", stored)
    assert not checkPassword("the old password", stored)
    assert (yield client.get(f"/register/{reset.token}")).code == 410


@pytest_twisted.inlineCallbacks
def test_contactOnlyInviteRedirectsToItsPage(web):
    """A contact-only invite creates no account: the form redirects to its landing page."""
    yield web.adduser("romeo")
    created = yield web.manager.createContact("romeo")
    response = yield web.client().get(f"/register/{created.token}")
    assert response.code == 303
    assert response.header("location") == f"../invite/{created.token}"


@pytest_twisted.inlineCallbacks
def test_reservationLostToARace(web):
    """
    When the last use is taken between showing the form and posting it, the
    post gets the 410 page and creates nothing.
    """
    created = yield web.manager.createAccount()
    client = web.client()
    csrf = formValue((yield client.get(f"/register/{created.token}")).text, "csrf")
    yield web.manager.reserve(created.token)
    response = yield client.request("POST", f"/register/{created.token}", form={
        "username": "late", "password": PASSWORD, "confirm": PASSWORD, "csrf": csrf})
    assert response.code == 410
    assert not (yield web.store.accountExists(HOST, "late"))


# -- proxies, logs -------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_forwardedHeadersFromTrustedProxies(proxied):
    """
    From a trusted proxy, the client address is the nearest untrusted hop of
    X-Forwarded-For (recorded in the invite's audit) and X-Forwarded-Proto
    https makes the CSRF cookie Secure.
    """
    created = yield proxied.manager.createAccount()
    client = WebClient(proxied.port)
    headers = {"X-Forwarded-For": "203.0.113.66, 198.51.100.7, 10.1.2.3",
               "X-Forwarded-Proto": "https"}
    form = yield client.get(f"/register/{created.token}", headers=headers)
    assert "Secure" in form.header("set-cookie")
    done = yield client.request("POST", f"/register/{created.token}", headers=headers, form={
        "username": "carol", "password": PASSWORD, "confirm": PASSWORD,
        "csrf": formValue(form.text, "csrf")})
    assert done.code == 200
    invite = yield proxied.manager.get(created.invite.id)
    assert invite.uses_log[0]["address"] == "198.51.100.7"
    assert '"198.51.100.7" - -' in proxied.accessLog.read_text()


@pytest_twisted.inlineCallbacks
def test_forwardedHeadersIgnoredFromOthers(web):
    """Without trusted proxies, forwarding headers change neither the address nor the scheme."""
    created = yield web.manager.createAccount()
    client = web.client()
    headers = {"X-Forwarded-For": "203.0.113.66", "X-Forwarded-Proto": "https"}
    form = yield client.get(f"/register/{created.token}", headers=headers)
    assert "Secure" not in form.header("set-cookie")
    yield client.request("POST", f"/register/{created.token}", headers=headers, form={
        "username": "dave", "password": PASSWORD, "confirm": PASSWORD,
        "csrf": formValue(form.text, "csrf")})
    invite = yield web.manager.get(created.invite.id)
    assert invite.uses_log[0]["address"] == "127.0.0.1"
    assert "203.0.113.66" not in web.accessLog.read_text()


@pytest_twisted.inlineCallbacks
def test_accessLogHasNoTokens(web):
    """Every request is logged with its path, but invite paths show [token], not the token."""
    created = yield web.manager.createAccount()
    client = web.client()
    yield client.get(f"/invite/{created.token}?apps=all",
                     headers={"Referer": f"https://chat.example/invite/{created.token}"})
    yield client.get(f"/register/{created.token}")
    yield client.get(f"/api/v1/tokens/{created.token}")
    yield client.get("/static/style.css")
    log = web.accessLog.read_text()
    assert created.token not in log
    assert '"GET /invite/[token]?[query] HTTP/1.1" 200' in log
    assert '"GET /register/[token] HTTP/1.1" 200' in log
    assert '"GET /api/v1/tokens/[token] HTTP/1.1" 200' in log
    assert '"https://chat.example/invite/[token]"' in log
    assert '"GET /static/style.css HTTP/1.1" 200' in log


# -- app catalogue -------------------------------------------------------------


def test_platformDetection():
    """User-Agents of each platform map to the catalogue's platform names."""
    assert detectPlatform(ANDROID) == "android"
    assert detectPlatform(IPHONE) == "ios"
    assert detectPlatform(LINUX) == "linux"
    assert detectPlatform("Mozilla/5.0 (Windows NT 10.0; Win64; x64)") == "windows"
    assert detectPlatform("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4)") == "macos"
    assert detectPlatform(None) is None and detectPlatform("curl/8.0") is None


def test_catalogueFile(tmp_path):
    """An admin's JSON catalogue replaces the built-in list; mistakes are named; ids hide apps."""
    from invitesrv.web.apps import CatalogueError
    path = tmp_path / "apps.json"
    path.write_text('[{"name": "Cheogram!", "platforms": ["android"], "supports_preauth": true,'
                    ' "downloads": [{"text": "Store", "url": "https://example.com/c"}],'
                    ' "magic_link": "https://example.com/c?ref={uri}"}]')
    (app,) = loadCatalogue(str(path))
    assert (app.id, app.supportsPreauth) == ("cheogram", True)
    assert app.installLink("xmpp:a?b;c=d") == "https://example.com/c?ref=xmpp%3Aa%3Fb%3Bc%3Dd"
    assert appId("Siskin IM") == "siskin-im"
    assert [a.id for a in loadCatalogue("", ("yaxim", "gajim"))] == [
        a.id for a in BUILTIN if a.id not in ("yaxim", "gajim")]
    for bad, message in [({"name": "X"}, "downloads"),
                         ({"name": "X", "platforms": ["amiga"]}, "platforms"),
                         ({"name": "X", "downloads": [{"text": "a", "url": "ftp://x"}]}, "URL")]:
        with pytest.raises(CatalogueError, match=message):
            parseCatalogue([bad], "apps.json")


def test_webOptionsAreChecked(tmp_path):
    """A bad trusted proxy or app catalogue stops start-up with a message naming the option."""
    from invitesrv.config import ConfigError, parseConfig
    from invitesrv.service import InviteServer
    from invitesrv.store.sqlite import SQLiteStore
    from invitesrv.web.site import makeSite
    with pytest.raises(ConfigError, match=r"server.trusted_proxies: 'proxy.example' is not"):
        parseConfig({"server": {"trusted_proxies": ["10.0.0.0/8", "proxy.example"]}}, "x.toml")
    config = parseConfig({"server": {"app_catalogue": str(tmp_path / "missing.json")}}, "x.toml")
    store = SQLiteStore(":memory:")
    store.open()
    try:
        with pytest.raises(ConfigError, match=r"x.toml: server.app_catalogue: .*missing.json"):
            makeSite(InviteServer(config, store=store, loadModules=False))
    finally:
        store.close()


@pytest_twisted.inlineCallbacks
def test_welcomeTextOnThePage(web):
    """
    The inviter's welcome text shows on the landing page, one paragraph a
    line, signed by the inviter, and escaped: markup in it stays text.
    """
    yield web.adduser("romeo")
    created = yield web.manager.createContact(
        "romeo", allowRegistration=True, welcome="Come <b>join</b> us!\nThe band plays at 8.")
    page = (yield web.client().get(f"/invite/{created.token}")).text
    assert ('<figure class="welcome"><blockquote><p>Come &lt;b&gt;join&lt;/b&gt; us!</p>'
            "<p>The band plays at 8.</p></blockquote><figcaption>— romeo@example.org</figcaption>"
            "</figure>") in page
    plain = yield web.manager.createAccount()
    assert 'class="welcome"' not in (yield web.client().get(f"/invite/{plain.token}")).text
