"""
Helpers for the web tests: an in-process site on a real port, with its own
in-memory store, and a small HTTP client on Twisted's Agent that keeps
cookies, for tests run by pytest-twisted (a blocking client would stall the
reactor the site runs on).
"""

from __future__ import annotations

import json as jsonlib
import re
from dataclasses import dataclass, field
from io import BytesIO
from urllib.parse import urlencode

import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from invitesrv.config import Config, HostOptions, Limits
from invitesrv.limits import Limiter
from invitesrv.service import InviteServer
from invitesrv.store.sqlite import SQLiteStore
from invitesrv.web.site import makeSite

HOST = "example.org"
OTHER = "other.example"
PASSWORD = "a long password"
ANDROID = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120 Mobile Safari/537.36"
LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"


@dataclass
class Response:
    """What came back: status, headers (lower-case names), body."""

    code: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self):
        assert self.header("content-type") == "application/json", self.headers
        return jsonlib.loads(self.body)


@dataclass
class WebClient:
    """An HTTP client for one site that remembers the cookies it is given."""

    port: int
    cookies: dict[str, str] = field(default_factory=dict)

    @defer.inlineCallbacks
    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                form: dict[str, str] | None = None, json=None, body: bytes | None = None,
                cookies: bool = True):
        sent = dict(headers or {})
        if form is not None:
            body = urlencode(form).encode("utf-8")
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif json is not None:
            body = jsonlib.dumps(json).encode("utf-8")
            sent.setdefault("Content-Type", "application/json")
        if cookies and self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        raw = Headers({k.encode(): [v.encode("utf-8")] for k, v in sent.items()})
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        response = yield Agent(reactor).request(method.encode(), f"http://127.0.0.1:{self.port}"
                                                .encode() + path.encode(), raw, producer)
        data = yield readBody(response)
        names = {}
        for name, values in response.headers.getAllRawHeaders():
            names[name.decode().lower()] = [v.decode("utf-8") for v in values]
        for cookie in names.get("set-cookie", []):
            name, _, rest = cookie.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return Response(response.code, names, data)

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)


def formValue(html: str, name: str) -> str:
    """The value of the named input of a page's form."""
    match = re.search(rf'name="{name}"[^>]*value="([^"]*)"', html)
    assert match, f"no input {name!r} in the page"
    return match.group(1)


class WebSetup:
    """An in-process server (no XMPP listeners) and its site on 127.0.0.1, port 0."""

    def __init__(self, tmp_path, trustedProxies=(), limits: Limits | None = None, **options):
        limits = limits or Limits()
        self.clock = task.Clock()
        self.config = Config(
            hosts={HOST: HostOptions(**options), OTHER: HostOptions()}, modules=(),
            public_url="https://chat.example", trusted_proxies=tuple(trustedProxies),
            limits=limits)
        self.store = SQLiteStore(":memory:")
        self.store.open()
        self.server = InviteServer(self.config, store=self.store, reactor=reactor,
                                   loadModules=False)
        # The limits' throttles and delays run on the test's clock too.
        self.server.limiter = Limiter(limits, self.clock, self.server.metrics, trustedProxies)
        self.host = self.server.hosts[HOST]
        self.site = makeSite(self.server, clock=self.clock)
        self.accessLog = tmp_path / "access.log"
        self.site.logPath = str(self.accessLog)
        self.listening = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.port = self.listening.getHost().port

    @property
    def manager(self):
        return self.site.resource.context.managers[HOST]

    def client(self) -> WebClient:
        return WebClient(self.port)

    def adduser(self, username: str, password: str = PASSWORD):
        return self.host.registrar.register(username, password, "cli", trusted=True)

    def close(self) -> None:
        pytest_twisted.blockon(defer.maybeDeferred(self.listening.stopListening))
        self.store.close()
