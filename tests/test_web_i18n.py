"""
The pages in the visitor's language, and the HTTPS details of the site: the
choice of language (C{Accept-Language} with q-values and region fallback,
C{?lang=}, the switcher's cookie), catalogues that are complete, keep their
placeholders and match the sources; then over a real socket (an in-process
L{WebSite}): translated pages with C{lang}, C{dir} and C{Content-Language},
C{Strict-Transport-Security} only where it belongs, and the invite's QR code
as a PNG, as guarded as the invite page.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import pytest_twisted
import segno
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from test_web_tokens import GUESSER, LIMITS, get
from twisted.internet import reactor, task
from webclient import ANDROID, WebClient, WebSetup

from invitesrv.web import i18n
from invitesrv.web.i18n import LOCALE, PLACEHOLDER, catalogues, direction, languages, negotiate

pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {"de", "fr", "es", "ar"}


@pytest.fixture
def web(tmp_path):
    setup = WebSetup(tmp_path, site_name="Example Chat")
    yield setup
    setup.close()


@pytest.fixture
def proxied(tmp_path):
    """A site behind a trusted proxy (the test's own address)."""
    setup = WebSetup(tmp_path, trustedProxies=["127.0.0.1"], limits=LIMITS)
    yield setup
    setup.close()


# -- choosing the language -------------------------------------------------------


def test_negotiationByQuality():
    """The highest q-value among offered languages wins; ties go by order; q=0 is a refusal."""
    assert negotiate("fr;q=0.3, es;q=0.9, de;q=0.5") == "es"
    assert negotiate("de, fr") == "de"
    assert negotiate("fr;q=0.8, de;q=0.8") == "fr"
    assert negotiate("de;q=0, fr;q=0.1") == "fr"
    assert negotiate("en;q=0.5, ar") == "ar"


def test_negotiationFallsBackToTheLanguage():
    """A region falls back to its language (de-AT to de, es_419 to es)."""
    assert negotiate("de-AT") == "de"
    assert negotiate("es_419, en;q=0.1") == "es"
    assert negotiate("ar-EG,ar;q=0.9") == "ar"
    assert negotiate("fr-CA;q=0.9, en-GB;q=0.8") == "fr"


def test_negotiationUnknownIsEnglish():
    """Nothing offered, nothing asked, or garbage: English."""
    assert negotiate("zh-CN, ja;q=0.8") == "en"
    assert negotiate("") == "en"
    assert negotiate("*") == "en"
    assert negotiate(";;;,q=,de;q=abc") == "en"
    assert negotiate("de;q=2") == "en"


def test_shippedLanguagesAndDirection():
    """English and the four translations; Arabic is written right to left, the rest not."""
    assert set(languages()) == SHIPPED | {"en"}
    assert {language: direction(language) for language in languages()} == {
        "en": "ltr", "de": "ltr", "fr": "ltr", "es": "ltr", "ar": "rtl"}


def test_cataloguesComplete():
    """Every message of the template is translated in every language, its placeholders kept."""
    with (LOCALE / "messages.pot").open("rb") as source:
        template = [message.id for message in read_po(source) if message.id]
    assert len(template) > 90
    for language in SHIPPED:
        with (LOCALE / language / "LC_MESSAGES" / "messages.po").open("rb") as source:
            catalog = read_po(source)
        for msgid in template:
            message = catalog.get(msgid)
            assert message is not None and message.string, (language, msgid)
            assert not message.fuzzy, (language, msgid)
            assert (sorted(PLACEHOLDER.findall(message.string))
                    == sorted(PLACEHOLDER.findall(msgid))), (language, msgid)
        assert catalogues()[language].gettext(template[0]) != template[0]


def test_templateMatchesTheSources():
    """
    The message template is what pybabel extracts from the code, the page
    templates and the registrar's refusals today (as babel.cfg says): no
    text goes untranslated because the catalogues were not updated.
    """
    method_map = [("invitesrv/web/**.py", "python"), ("invitesrv/registrar.py", "python"),
                  ("invitesrv/web/templates/*.xml", "invitesrv.web.i18n:extractTemplate")]
    keywords = {"Text": None, "N_": None, "RegistrationError": (2,)}
    extracted = {message for _, _, message, _, _ in extract_from_dir(
        str(ROOT), method_map, keywords=keywords)}
    with (LOCALE / "messages.pot").open("rb") as source:
        template = {message.id for message in read_po(source) if message.id}
    assert extracted == template


def test_templateExtractor():
    """A t:render="tr" element's text, its slots as placeholders, whitespace as at run time."""
    template = io.BytesIO(
        b'<p xmlns:t="http://twistedmatrix.com/ns/twisted.web.template/0.1">\n'
        b'<span t:render="tr">Valid   until\n <t:slot name="expires" />.</span>'
        b'<b>not this</b></p>')
    assert i18n.extractTemplate(template, None, None, None) == [
        (2, None, "Valid until {expires}.", [])]


# -- translated pages over HTTP --------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_pagesInTheAskedLanguage(web):
    """
    Accept-Language picks the page's language, with lang, dir and
    Content-Language to match; the landing page's sentences, the app
    catalogue's texts and the date are translated.
    """
    created = yield web.manager.createAccount()
    client = web.client()
    german = yield client.get(f"/invite/{created.token}",
                              headers={"Accept-Language": "de-AT, en;q=0.5", "User-Agent": ANDROID})
    assert german.code == 200
    assert '<html lang="de" dir="ltr">' in german.text
    assert german.header("content-language") == "de"
    assert "Accept-Language" in german.header("vary")
    assert "<title>Du bist zu Example Chat eingeladen</title>" in german.text
    assert "Einladung in deiner App öffnen" in german.text
    assert "Ein einfacher und sicherer Messenger für Android" in german.text
    assert "Open the invite in your app" not in german.text
    assert re.search(r"Diese Einladung gilt bis \d+\. \w+ \d{4}", german.text)
    arabic = yield client.get(f"/invite/{created.token}", headers={"Accept-Language": "ar"})
    assert '<html lang="ar" dir="rtl">' in arabic.text
    assert "افتح الدعوة في تطبيقك" in arabic.text
    english = yield client.get(f"/invite/{created.token}", headers={"Accept-Language": "zh"})
    assert '<html lang="en" dir="ltr">' in english.text
    assert "Open the invite in your app" in english.text


@pytest_twisted.inlineCallbacks
def test_switcherRemembersTheChoice(web):
    """
    ?lang= beats Accept-Language and is kept in a cookie for the next pages
    (the form, its errors, the registrar's refusals); the switcher links
    keep the rest of the query.
    """
    created = yield web.manager.createAccount()
    client = web.client()
    page = yield client.get(f"/invite/{created.token}?apps=all&lang=fr",
                            headers={"Accept-Language": "de"})
    assert '<html lang="fr" dir="ltr">' in page.text
    assert "invitesrv_lang=fr" in page.header("set-cookie")
    assert 'href="?apps=all&amp;lang=ar" lang="ar" hreflang="ar" dir="rtl">العربية</a>' in page.text
    assert '<strong lang="fr" aria-current="true">Français</strong>' in page.text
    form = yield client.get(f"/register/{created.token}", headers={"Accept-Language": "de"})
    assert "Créez votre compte sur Example Chat" in form.text
    refused = yield client.request("POST", f"/register/{created.token}", form={
        "username": "zoe", "password": "a long password", "confirm": "another one",
        "csrf": re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)})
    assert refused.code == 400
    assert "Les deux mots de passe ne sont pas identiques." in refused.text
    assert 'href="?lang=de"' in refused.text  # the posted fields stay out of the links
    assert "password" not in refused.text.split("<footer>")[1]
    yield web.adduser("taken")
    taken = yield client.request("POST", f"/register/{created.token}", form={
        "username": "Taken", "password": "a long password", "confirm": "a long password",
        "csrf": re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)})
    assert taken.code == 409 and "Ce nom d’utilisateur existe déjà." in taken.text
    unknown = yield client.get("/invite/nothing-here?lang=xx", headers={"Accept-Language": "es"})
    assert unknown.code == 404 and "Este enlace de invitación no es válido" not in unknown.text
    assert "Ce lien d’invitation n’est pas valide" in unknown.text


# -- HSTS -------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_hstsOnlyWhenTheBrowserCameOverHTTPS(proxied, web):
    """
    Plain HTTP from a browser: no HSTS. From the trusted proxy saying the
    browser used HTTPS (and the public URL is https): HSTS with the
    configured max-age. The same claim from an untrusted peer: none.
    """
    client = WebClient(proxied.port)
    plain = yield client.get("/", headers={"X-Forwarded-For": GUESSER})
    assert plain.header("strict-transport-security") is None
    secure = yield client.get("/", headers={"X-Forwarded-For": GUESSER,
                                            "X-Forwarded-Proto": "https"})
    assert secure.header("strict-transport-security") == "max-age=31536000"
    claimed = yield web.client().get("/", headers={"X-Forwarded-Proto": "https"})
    assert claimed.code == 200 and claimed.header("strict-transport-security") is None


def test_hstsRules():
    """
    Over TLS: always (unless max-age is 0); plain HTTP said to be HTTPS by a
    trusted proxy: only when the public URL is https.
    """
    from invitesrv.web.site import WebSite

    class Request:
        def __init__(self, tls: bool, forwarded: bool):
            self.channel = type("Channel", (), {"isSecure": lambda _: tls})()
            self.isSecure = lambda: tls or forwarded

    def decide(maxAge, publicHTTPS, tls, forwarded):
        site = WebSite(None, None, hstsMaxAge=maxAge, publicHTTPS=publicHTTPS)
        return site.strictTransport(Request(tls, forwarded))

    assert decide(600, False, tls=True, forwarded=False)
    assert decide(600, True, tls=False, forwarded=True)
    assert not decide(600, False, tls=False, forwarded=True)
    assert not decide(600, True, tls=False, forwarded=False)
    assert not decide(0, True, tls=True, forwarded=True)


# -- the QR code as a PNG ---------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_qrCodePNG(web):
    """
    /invite/TOKEN/qr.png: the PNG of the invite's xmpp: URI, kept privately
    by the browser (no shared cache) no longer than the invite lives, and
    the path in the access log without the token; linked from the page.
    """
    created = yield web.manager.createAccount()
    client = web.client()
    page = yield client.get(f"/invite/{created.token}")
    assert f'href="{created.token}/qr.png"' in page.text
    image = yield client.get(f"/invite/{created.token}/qr.png")
    assert image.code == 200
    assert image.header("content-type") == "image/png"
    assert image.header("cache-control") == "private, max-age=3600"
    assert image.header("content-disposition") == 'attachment; filename="invite-qr.png"'
    assert image.header("x-content-type-options") == "nosniff"
    expected = io.BytesIO()
    segno.make(created.uri, error="m").save(expected, kind="png", scale=8, border=4)
    assert image.body == expected.getvalue()
    log = web.accessLog.read_text()
    assert created.token not in log
    assert '"GET /invite/[token] HTTP/1.1" 200' in log


@pytest_twisted.inlineCallbacks
def test_qrCodeOfDeadInvites(web):
    """An unknown token's image is the 404 page, a revoked invite's the 410 page: no image."""
    created = yield web.manager.createAccount()
    yield web.manager.revoke(created.invite.id)
    for path, code in ((f"/invite/{created.token}/qr.png", 410), ("/invite/nope/qr.png", 404),
                       (f"/invite/{created.token}/other.png", 404)):
        response = yield web.client().get(path)
        assert response.code == code and response.header("content-type").startswith("text/html")


@pytest_twisted.inlineCallbacks
def test_qrCodeGuessesThrottled(proxied):
    """
    Guessing tokens through qr.png counts as on the page: blocked after
    token_failures_block, with the refusal page in the visitor's language.
    """
    created = yield proxied.manager.createAccount()
    for n in range(LIMITS.token_failures_block):
        pending = get(proxied, f"/invite/guess{n}/qr.png")
        for _ in range(500):  # the socket's round trip, and the throttle's delay on the Clock
            if pending.called:
                break
            proxied.clock.advance(1)
            yield task.deferLater(reactor, 0.01, lambda: None)
        assert (yield pending).code == 404
    blocked = yield proxied.client().get(f"/invite/{created.token}/qr.png", headers={
        "X-Forwarded-For": GUESSER, "Accept-Language": "de"})
    assert blocked.code == 429
    assert blocked.header("content-type").startswith("text/html")
    assert "<title>Zu viele Anfragen</title>" in blocked.text
    assert "zu viele ungültige Einladungslinks" in blocked.text


@pytest_twisted.inlineCallbacks
def test_englishByDefault(web):
    """Without Accept-Language the pages are in English, the source language."""
    response = yield web.client().get("/")
    assert '<html lang="en" dir="ltr">' in response.text
    assert response.header("content-language") == "en"
