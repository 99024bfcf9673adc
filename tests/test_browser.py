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

import os
import re
import time
from pathlib import Path

import pytest
from conftest import RunningServer
from slix import Client, run

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
