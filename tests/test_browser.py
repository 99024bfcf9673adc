"""
The invite pages in a real browser: Debian's headless Chromium driven by
Playwright against C{twistd -n invitesrv --http …}. A phone opens a contact
invite, sees the QR code and the Android apps, follows the link to the web
form, registers, and the new account then logs in over XMPP with slixmpp,
already a contact of the inviter. An expired invite shows the friendly
page. No page may trigger a console error (a Content-Security-Policy
violation would).

Needs C{/usr/bin/chromium} (C{apt-get install chromium}) and the
C{playwright} package; Playwright's own browser downloads are never used.
Set C{INVITESRV_SCREENSHOT=docs/landing-page.png} to refresh the
documentation's screenshot of the landing page.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import pytest
from babel.messages.pofile import read_po
from conftest import RunningServer
from slix import Client, run

from invitesrv.web.i18n import LOCALE, PLACEHOLDER, catalogues

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.async_api import async_playwright  # noqa: E402

HOST = "localhost"
PASSWORD = "a long password"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
         "has_touch": True, "user_agent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) "
                                           "AppleWebKit/537.36 (KHTML, like Gecko) "
                                           "Chrome/120.0 Mobile Safari/537.36"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = RunningServer(tmp_path_factory.mktemp("browser"),
                            f'[hosts.{HOST}]\nsite_name = "Example Chat"\n',
                            ("--http", "tcp:0:interface=127.0.0.1",
                             "--public-url", "https://chat.example.org"))
    running.start()
    yield running
    running.stop()


def createInvite(server, *args: str) -> str:
    output = server.ctl("invite", "create", *args).stdout
    return re.search(r"preauth=([\w-]+)", output).group(1)


async def browse(steps):
    """Run C{steps(page, errors)} in a fresh phone-sized Chromium page."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = await browser.new_context(**PHONE)
            page = await context.new_page()
            errors: list[str] = []
            page.on("console", lambda message: message.type == "error"
                    and errors.append(message.text))
            page.on("pageerror", lambda error: errors.append(str(error)))
            return await steps(page, errors)
        finally:
            await browser.close()


def test_inviteThenWebRegistrationThenXMPP(server, tmp_path):
    """
    Landing page with QR code and Android apps, then the web form, then an
    XMPP login with the chosen password; the inviter is on the roster.
    """
    server.adduser(f"alice@{HOST}", "alice's password")
    token = createInvite(server, "--contact", "alice", "--allow-registration", HOST)
    base = f"http://127.0.0.1:{server.ports['HTTP']}"
    screenshot = Path(os.environ.get("INVITESRV_SCREENSHOT") or tmp_path / "landing-page.png")

    async def steps(page, errors):
        response = await page.goto(f"{base}/invite/{token}")
        assert response.status == 200
        assert await page.title() == "alice@localhost invites you to chat"
        qr = page.locator("svg.qr")
        assert await qr.is_visible()
        box = await qr.bounding_box()
        assert box["width"] >= 120 and box["width"] == box["height"]
        apps = await page.locator("li.app h3").all_inner_texts()
        assert apps == ["Conversations", "yaxim"]
        button = page.get_by_role("link", name="Open the invite in your app")
        assert await button.get_attribute("href") == (
            f"xmpp:alice@{HOST}?roster;preauth={token};ibr=y")
        await page.screenshot(path=str(screenshot), full_page=True)

        await page.get_by_role("link", name="Create your account on the web").click()
        await page.wait_for_url(f"{base}/register/{token}")
        await page.fill("#username", "Newcomer")
        await page.fill("#password", PASSWORD)
        await page.fill("#confirm", PASSWORD)
        await page.get_by_role("button", name="Create my account").click()
        await page.wait_for_selector("text=Your account is ready")
        text = await page.inner_text("main")
        assert f"newcomer@{HOST}" in text and PASSWORD not in await page.content()
        assert "alice@localhost is already in your contacts" in text
        assert errors == []

    run(browse(steps), timeout=90)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    async def login():
        client = Client(f"newcomer@{HOST}", PASSWORD)
        assert await client.login(server.port, presence=False)
        await client.get_roster()
        contacts = {str(contact): client.client_roster[contact]["subscription"]
                    for contact in client.client_roster}
        await client.logout()
        return contacts

    assert run(login()) == {f"alice@{HOST}": "both"}


def test_expiredInvitePage(server):
    """An expired invite shows the friendly page, with status 410 and no console error."""
    token = createInvite(server, "--expires", "1s", HOST)
    time.sleep(1.2)
    base = f"http://127.0.0.1:{server.ports['HTTP']}"

    async def steps(page, errors):
        response = await page.goto(f"{base}/invite/{token}")
        assert response.status == 410
        assert await page.inner_text("h1") == "This invite has expired"
        assert "Ask them for a new invite" in await page.inner_text("main")
        assert await page.locator("svg.qr").count() == 0
        # Chromium reports the page's own 410 as a failed load; nothing else may fail.
        assert [e for e in errors if "status of 410" not in e] == []

    run(browse(steps), timeout=60)


def translatedMessages(language: str) -> list[str]:
    """The English sources that the catalogue of C{language} translates differently."""
    catalogue = catalogues()[language]
    with (LOCALE / "messages.pot").open("rb") as source:
        messages = [message.id for message in read_po(source) if message.id]
    return [m for m in messages if catalogue.gettext(m) != m]


def fragments(message: str) -> list[str]:
    """The literal parts of a message between its placeholders, long enough to be telling."""
    return [part.strip() for part in PLACEHOLDER.split(message)[::2] if len(part.strip()) > 3]


@pytest.mark.parametrize("language", ["en", "de", "fr", "es", "ar"])
def test_pagesInEachLanguage(server, language, tmp_path):
    """
    A phone whose browser asks for C{language}: the landing page, the
    registration form, its success page, and the 404 and 410 pages come in
    it, with its C{lang} and C{dir} (Arabic laid out right to left); no
    English source text shows where the catalogue has a translation; every
    request the pages make goes to the server's own origin (the app-store
    links are links, not requests); the QR code downloads as a PNG; and a
    screenshot of each page can be taken.
    """
    expiring = createInvite(server, "--expires", "1s", HOST)
    expires = time.monotonic() + 1.2
    token = createInvite(server, HOST)
    base = f"http://127.0.0.1:{server.ports['HTTP']}"
    untranslated = [] if language == "en" else translatedMessages(language)
    rtl = language == "ar"

    async def steps(playwright):
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = await browser.new_context(**PHONE, locale=language)
            requests: list[str] = []
            context.on("request", lambda request: requests.append(request.url))
            page = await context.new_page()
            errors: list[str] = []
            page.on("console", lambda message: message.type == "error"
                    and errors.append(message.text))

            async def check(name: str) -> None:
                assert await page.get_attribute("html", "lang") == language
                assert await page.get_attribute("html", "dir") == ("rtl" if rtl else "ltr")
                assert await page.evaluate("getComputedStyle(document.body).direction") == (
                    "rtl" if rtl else "ltr")
                text = await page.title() + "\n" + await page.inner_text("body")
                shown = [m for m in untranslated if any(f in text for f in fragments(m))]
                assert shown == [], (name, shown)
                await page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)

            assert (await page.goto(f"{base}/invite/{token}")).status == 200
            await check("landing")
            async with page.expect_download() as downloading:
                await page.locator('a[href$="/qr.png"]').click()
            download = await downloading.value
            assert download.suggested_filename == "invite-qr.png"
            await download.save_as(tmp_path / "qr.download")
            assert (await page.goto(f"{base}/register/{token}")).status == 200
            await check("form")
            await page.fill("#username", f"reader-{language}")
            await page.fill("#password", PASSWORD)
            await page.fill("#confirm", PASSWORD)
            await page.locator("button[type=submit]").click()
            await page.wait_for_selector(f"text=reader-{language}@{HOST}")
            await check("registered")
            assert (await page.goto(f"{base}/invite/no-such-token")).status == 404
            await check("not-found")
            await asyncio.sleep(max(0, expires - time.monotonic()))
            assert (await page.goto(f"{base}/invite/{expiring}")).status == 410
            await check("expired")
            assert requests and all(url.startswith(base + "/") for url in requests), requests
            assert [e for e in errors if not re.search("status of (404|410)", e)] == []
        finally:
            await browser.close()

    async def drive():
        async with async_playwright() as playwright:
            await steps(playwright)

    run(drive(), timeout=90)
    shots = sorted(tmp_path.glob("*.png")) + [tmp_path / "qr.download"]
    assert len(shots) == 6 and all(s.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for s in shots)
