"""
Invite tokens on the web under attack, over a real socket: guessing tokens
in C{/invite/TOKEN} and C{/register/TOKEN} is throttled per client address
exactly as XMPP's token guesses are, and logged in the line the documented
fail2ban filter reads; and no spelling of a token path (percent-encoded,
doubled slashes) puts the token in the access log.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from test_throttle import failregex
from twisted.internet import reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from webclient import WebSetup

from invitesrv.config import Limits

pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")

GUESSER, OTHER = "203.0.113.5", "203.0.113.6"
LIMITS = Limits(allowlist=(), http_connection_rate=0, token_failures_free=2,
                token_failures_block=4, auth_delay_max=1)


@pytest.fixture
def web(tmp_path):
    """A site behind a trusted proxy (the test), so each request names its client address."""
    setup = WebSetup(tmp_path, trustedProxies=["127.0.0.1"], limits=LIMITS)
    yield setup
    setup.close()


@pytest.fixture
def failures():
    """The text of every "Authentication failure" line logged meanwhile."""
    lines: list[str] = []

    def observe(event):
        text = formatEvent(event)
        if text.startswith("Authentication failure"):
            lines.append(f"[{event.get('log_namespace')}#{event['log_level'].name}] {text}")

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def get(web, path: str, address: str = GUESSER):
    return web.client().get(path, headers={"X-Forwarded-For": address})


@pytest_twisted.inlineCallbacks
def waitFor(condition, timeout: float = 5.0):
    """Wait (really: the request travels over a socket) until C{condition()} holds."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        yield task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("timed out")


@pytest_twisted.inlineCallbacks
def test_tokenGuessesThrottledAndLogged(web, failures):
    """
    With token_failures_free = 2 and token_failures_block = 4: two unknown
    tokens are answered 404 at once, the next two only after the throttle's
    delay, and then the address is refused (429, Retry-After) on both token
    pages, even for a valid token, without the store being asked. Each guess
    is logged in the fail2ban line with the guesser's address; another
    address is not affected.
    """
    created = yield web.manager.createAccount()
    for n in range(2):
        assert (yield get(web, f"/invite/guess{n}")).code == 404
    for n in range(2, 4):
        pending = get(web, f"/register/guess{n}")
        yield waitFor(lambda n=n: len(failures) == n + 1)
        yield task.deferLater(reactor, 0.1, lambda: None)
        assert not pending.called, "a throttled guess is answered only after the delay"
        web.clock.advance(1)
        assert (yield pending).code == 404
    for path in (f"/invite/{created.token}", f"/register/{created.token}"):
        blocked = yield get(web, path)
        assert blocked.code == 429 and blocked.header("retry-after") == "900"
        assert "Too many invalid invite links" in blocked.text
    assert (yield get(web, f"/invite/{created.token}", OTHER)).code == 200
    assert [line.rsplit(" token", 1)[1] for line in failures] == [
        "", "", " (throttled)", " (throttled)", " (blocked)", " (blocked)"]
    pattern = failregex()
    assert all(pattern.search(line).group("host") == GUESSER for line in failures), failures
    assert web.server.metrics["tokens.refused"] == 4
    assert web.server.metrics["tokens.blocked"] == 2


@pytest_twisted.inlineCallbacks
def test_encodedTokenPathsRedactedInTheLog(web):
    """
    Twisted decodes each path segment before routing, so /%69nvite/TOKEN is
    the invite page: the access log redacts the decoded path, whatever the
    spelling of the route or of the token.
    """
    created = yield web.manager.createAccount()
    token = created.token
    encoded = "".join(f"%{byte:02X}" for byte in token.encode())
    for path in (f"/%69nvite/{token}", f"/%72egister/{token}", f"/api/v1/%74okens/{token}",
                 f"//invite/{token}", f"/invite/{encoded}", f"/%69nvite/{token}?apps=all"):
        response = yield get(web, path, OTHER)
        assert response.code == 200, path
    yield get(web, f"/invite/{token[:8]}%2F{token[8:]}", OTHER)
    log = web.accessLog.read_text()
    for secret in (token, encoded, token[:8], token[8:]):
        assert secret not in log
    assert '"GET /invite/[token] HTTP/1.1" 200' in log
    assert '"GET /register/[token] HTTP/1.1" 200' in log
    assert '"GET /api/v1/tokens/[token] HTTP/1.1" 200' in log
    assert '"GET /invite/[token]?[query] HTTP/1.1" 200' in log
