"""
The web side of the real server: C{twistd -n invitesrv --http …} in a
subprocess, driven over HTTP with the standard library and over XMPP with
slixmpp and raw XML. An API key made by C{invitesrvctl apikey} works until
it is revoked; looking at an invite twice leaves it usable over XMPP; an
account registered on the web logs in over XMPP; a reset on the web
replaces the password; HTTPS answers HTTP/1.1 even to browsers offering
HTTP/2; and the server's log holds none of the tokens used.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
from urllib.parse import urlencode

import pytest
from conftest import RunningServer
from rawxmpp import RawClient
from slix import Client, run

HOST = "localhost"
PASSWORD = "a long password"
PUBLIC = "http://invites.example"
CONFIG = f"""
https = ["tcp:0:interface=127.0.0.1"]
[hosts.{HOST}]
site_name = "Test Chat"
"""
TOKENS: list[str] = []  # every token this module handled: none may reach the log


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = RunningServer(tmp_path_factory.mktemp("web"), CONFIG,
                            ("--http", "tcp:0:interface=127.0.0.1", "--public-url", PUBLIC))
    running.start()
    deadline = time.monotonic() + 10
    while "HTTPS listening" not in running.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    running.ports["HTTPS"] = int(re.search(r"HTTPS listening on [\d.]+:(\d+)",
                                           running.log()).group(1))
    key = running.ctl("apikey", "create", HOST, "--name", "tests").stdout.strip().splitlines()[-1]
    running.key = key
    yield running
    running.stop()


class Response:
    def __init__(self, raw: http.client.HTTPResponse):
        self.code = raw.status
        self.headers = raw.headers
        self.body = raw.read()

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def request(server, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> Response:
    connection = http.client.HTTPConnection("127.0.0.1", server.ports["HTTP"], timeout=15)
    try:
        connection.request(method, path, body, headers or {})
        return Response(connection.getresponse())
    finally:
        connection.close()


def api(server, method: str, path: str, body=None, key: str | None = None) -> Response:
    headers = {"Authorization": f"Bearer {key or server.key}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    return request(server, method, "/api/v1/" + path, data, headers)


def registerOnTheWeb(server, path: str, password: str, username: str | None = None) -> Response:
    """Fetch the form (and its CSRF cookie), then post it like a browser."""
    form = request(server, "GET", path)
    assert form.code == 200, form.text
    cookie = form.headers["Set-Cookie"].split(";", 1)[0]
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    fields = {"password": password, "confirm": password, "csrf": csrf}
    if username is not None:
        fields["username"] = username
    return request(server, "POST", path, urlencode(fields).encode(), {
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie})


def canLogIn(server, address: str, password: str) -> bool:
    async def attempt():
        client = Client(address, password)
        ok = await client.login(server.port, presence=False)
        await client.logout()
        return ok
    return run(attempt())


def test_apiKeysFromTheCommandLine(server):
    """
    C{apikey create} prints a key that the API accepts; C{list} shows it
    without its secret; after C{revoke} the same key gets 401.
    """
    output = server.ctl("apikey", "create", HOST, "--name", "portal").stdout
    key = output.strip().splitlines()[-1]
    keyId, _, secret = key.partition(".")
    assert re.fullmatch(r"[0-9a-f]{16}", keyId) and len(secret) >= 40
    listed = server.ctl("apikey", "list").stdout
    assert re.search(rf"^{keyId}\s+{HOST}\s+\S+\s+portal$", listed, re.MULTILINE)
    assert secret not in listed
    assert api(server, "GET", "users", key=key).code == 200
    assert server.ctl("apikey", "revoke", keyId).stdout.strip() == f"Revoked API key {keyId}"
    assert api(server, "GET", "users", key=key).code == 401
    failed = server.ctl("apikey", "revoke", keyId, check=False)
    assert failed.returncode == 1 and "no API key" in failed.stderr
    failed = server.ctl("apikey", "create", "nowhere.example", check=False)
    assert failed.returncode == 1 and "unknown host" in failed.stderr


def test_lookingLeavesTheInviteUsableOverXMPP(server):
    """
    The landing page, the form and the token check, each fetched twice,
    change nothing: the invite is still pending with no use, and then a
    client redeems it with XEP-0445 preauth and XEP-0077 registration.
    """
    output = server.ctl("invite", "create", HOST).stdout
    inviteId = re.search(r"^Invite (\w+):", output, re.MULTILINE).group(1)
    token = re.search(r"preauth=([\w-]+)", output).group(1)
    TOKENS.append(token)
    for _ in range(2):
        page = request(server, "GET", f"/invite/{token}")
        assert page.code == 200 and "Test Chat" in page.text
        assert page.headers["Link"] == f'<xmpp:{HOST}?register;preauth={token}>; rel="alternate"'
        assert request(server, "GET", f"/register/{token}").code == 200
        assert json.loads(request(server, "GET", f"/api/v1/tokens/{token}").body)["valid"]
    shown = server.ctl("invite", "show", inviteId).stdout
    assert re.search(r"^Status:\s+pending$", shown, re.MULTILINE)
    assert re.search(r"^Uses:\s+0 of 1$", shown, re.MULTILINE)
    assert re.search(r"^Reserved:\s+0$", shown, re.MULTILINE)
    with RawClient(server.port, HOST) as client:
        client.startTLS()
        client.send(f"<iq type='set' id='pa'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>")
        assert "type='result'" in client.recvUntil(r"<iq [^>]*id='pa'[^>]*(/>|>.*?</iq>)")
        client.send("<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>viaxmpp"
                    f"</username><password>{PASSWORD}</password></query></iq>")
        assert "type='result'" in client.recvUntil(r"<iq [^>]*id='reg'[^>]*(/>|>.*?</iq>)")
    assert request(server, "GET", f"/invite/{token}").code == 410


def test_webRegistrationThenXMPPLogin(server):
    """
    An invite made through the API, its landing URL opened, the form posted:
    the new account logs in over XMPP with slixmpp (and not with another
    password).
    """
    created = api(server, "POST", "invites", {"note": "web test"})
    assert created.code == 201
    body = json.loads(created.body)
    TOKENS.append(body["token"])
    assert body["landing_url"] == f"{PUBLIC}/invite/{body['token']}"
    landing = body["landing_url"][len(PUBLIC):]
    assert request(server, "GET", landing).code == 200
    done = registerOnTheWeb(server, f"/register/{body['token']}", PASSWORD, "webuser")
    assert done.code == 200 and f"webuser@{HOST}" in done.text
    assert PASSWORD not in done.text
    assert canLogIn(server, f"webuser@{HOST}", PASSWORD)
    assert not canLogIn(server, f"webuser@{HOST}", "not the password")
    used = json.loads(api(server, "GET", f"invites/{body['id']}").body)
    assert used["status"] == "used" and used["used_by"][0]["path"] == "web"


def test_resetOnTheWeb(server):
    """A reset invite from the API, redeemed on the web: the old password fails, the new works."""
    server.adduser(f"bob@{HOST}", "the old password")
    reset = json.loads(api(server, "POST", "users/bob/reset").body)
    TOKENS.append(reset["token"])
    done = registerOnTheWeb(server, f"/register/{reset['token']}", "the new password")
    assert done.code == 200 and "Your new password is set" in done.text
    assert canLogIn(server, f"bob@{HOST}", "the new password")
    assert not canLogIn(server, f"bob@{HOST}", "the old password")


def test_httpsSpeaksHTTP1(server):
    """
    The HTTPS listener uses the server's certificate and picks http/1.1 by
    ALPN even when the client prefers h2; the security headers are there.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    connection = http.client.HTTPSConnection("127.0.0.1", server.ports["HTTPS"], timeout=15,
                                             context=context)
    try:
        connection.request("GET", "/invite/unknown")
        response = connection.getresponse()
        assert connection.sock.selected_alpn_protocol() == "http/1.1"
        assert response.status == 404
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
        assert b"This invite link is not valid" in response.read()
    finally:
        connection.close()


def test_noHSTSOnPlainHTTP(server):
    """
    The plain HTTP listener (public URL http://, no trusted proxy) sends no
    Strict-Transport-Security: only the HTTPS one does (above).
    """
    connection = http.client.HTTPConnection("127.0.0.1", server.ports["HTTP"], timeout=15)
    try:
        connection.request("GET", "/", headers={"X-Forwarded-Proto": "https"})
        response = connection.getresponse()
        assert response.status == 200 and response.headers["X-Frame-Options"] == "DENY"
        assert "Strict-Transport-Security" not in response.headers
    finally:
        connection.close()


def test_logHasNoTokens(server):
    """The server's log (access log included) never holds a token this module used."""
    assert len(TOKENS) == 3
    log = server.log()
    assert "GET /invite/[token]" in log
    for token in TOKENS:
        assert token not in log
