"""
The admin JSON API over a real socket, verb by verb as Synapse tests its
registration-token API: no key, a wrong key, a key of a host this server
does not serve, a missing object, bad input, and success, each checked by
status code and JSON body; then that what the API did is really so (the
invite redeems, the revocation holds, the account is gone). Plus the
OpenAPI document and the public, rate-limited token check on a Clock.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from webclient import HOST, OTHER, PASSWORD, WebClient, WebSetup

from invitesrv.invites import InviteManager
from invitesrv.modules.circles import CirclesModule
from invitesrv.store.interfaces import StoredRoom, Upload
from invitesrv.web.api import (
    MAX_DEPTH,
    MAX_USES,
    TokenBuckets,
    hashSecret,
    nestingDepth,
    newApiKey,
    parseBearer,
)

pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")


class Api:
    """A client that sends a key (or not) with each request."""

    def __init__(self, setup: WebSetup, key: str | None):
        self.client = WebClient(setup.port)
        self.key = key

    def __call__(self, method: str, path: str, key: str | None = "default", **kwargs):
        key = self.key if key == "default" else key
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.client.request(method, "/api/v1/" + path, headers=headers, **kwargs)


@pytest.fixture
def api(tmp_path):
    setup = WebSetup(tmp_path, admins=("boss@example.org",))
    keyId, secret = newApiKey()
    pytest_twisted.blockon(setup.store.createApiKey(keyId, hashSecret(secret), HOST, "tests", 0))
    strayId, straySecret = newApiKey()
    pytest_twisted.blockon(setup.store.createApiKey(strayId, hashSecret(straySecret),
                                                    "gone.example", "old host", 0))
    setup.key = f"{keyId}.{secret}"
    setup.strayKey = f"{strayId}.{straySecret}"
    setup.call = Api(setup, setup.key)
    yield setup
    setup.close()


def assertError(response, code: int, error: str) -> dict:
    assert response.code == code, response.text
    body = response.json()
    assert body["error"] == error and isinstance(body["message"], str) and body["message"]
    return body


ROUTES = [("GET", "invites"), ("POST", "invites"), ("GET", "invites/x"), ("PATCH", "invites/x"),
          ("DELETE", "invites/x"), ("GET", "users"), ("DELETE", "users/x"),
          ("POST", "users/x/reset"), ("GET", "invites/x/joined"), ("GET", "uploads"),
          ("GET", "circles"), ("POST", "circles"), ("DELETE", "circles/x"),
          ("PUT", "circles/x/members/y"), ("DELETE", "circles/x/members/y")]


@pytest_twisted.inlineCallbacks
def test_everyRouteNeedsAValidKey(api):
    """
    Each private route: no key or a malformed one → 401 with a Bearer
    challenge; a wrong secret or unknown id → 401; a key of a host no longer
    served → 403. Nothing reveals whether the object exists.
    """
    keyId = api.key.split(".")[0]
    for method, path in ROUTES:
        for key in (None, "nodot", "Basic abc", f"{keyId}.wrongsecret", "unknown.secret"):
            response = yield api.call(method, path, key=key, json={})
            assertError(response, 401, "unauthorized")
            assert response.header("www-authenticate") == 'Bearer realm="invitesrv"'
        response = yield api.call(method, path, key=api.strayKey, json={})
        assertError(response, 403, "forbidden")


@pytest_twisted.inlineCallbacks
def test_unknownPathsAndMethods(api):
    """Unknown paths are 404, wrong methods 405 with Allow, in JSON; no key needed to learn that."""
    assertError((yield api.call("GET", "nothing")), 404, "not-found")
    assertError((yield api.call("GET", "invites/a/b")), 404, "not-found")
    response = yield api.call("PUT", "invites", key=None)
    assertError(response, 405, "method-not-allowed")
    assert response.header("allow") == "GET, POST"


@pytest_twisted.inlineCallbacks
def test_createAccountInvite(api):
    """
    POST invites → 201 with the token, URI and landing URL (the only time
    they are shown) and a Location; the invite works for a registration.
    """
    response = yield api.call("POST", "invites", json={
        "uses": 2, "expires_in": 3600, "roles": ["tester"], "note": "for the team"})
    assert response.code == 201, response.text
    body = response.json()
    assert response.header("location") == f"invites/{body['id']}"
    assert body["uri"] == f"xmpp:{HOST}?register;preauth={body['token']}"
    assert body["landing_url"] == f"https://chat.example/invite/{body['token']}"
    assert (body["type"], body["status"], body["uses_allowed"], body["roles"], body["note"],
            body["source"]) == ("account", "pending", 2, ["tester"], "for the team",
                                f"api:{api.key.split('.')[0]}")
    reserved = yield api.manager.reserve(body["token"])
    registration = yield api.host.registrar.register("newbie", PASSWORD, "web", invite=reserved)
    assert registration.roles == ["tester"]
    shown = (yield api.call("GET", f"invites/{body['id']}")).json()
    assert "token" not in shown and shown["uses"] == 1
    assert [u["username"] for u in shown["used_by"]] == ["newbie"]


@pytest_twisted.inlineCallbacks
def test_createOtherKinds(api):
    """Username-bound, unlimited, contact (with registration) and reset invites."""
    yield api.adduser("romeo")
    bound = (yield api.call("POST", "invites", json={"username": "Juliet"})).json()
    assert bound["username"] == "juliet" and bound["uri"].startswith(f"xmpp:juliet@{HOST}?register")
    unlimited = (yield api.call("POST", "invites", json={"uses": "unlimited"})).json()
    assert unlimited["uses_allowed"] == "unlimited"
    contact = yield api.call("POST", "invites", json={
        "type": "contact", "inviter": "romeo", "allow_registration": True,
        "welcome": "Welcome, from Romeo"})
    assert contact.code == 201
    assert contact.json()["uri"].endswith(";ibr=y") and contact.json()["inviter"] == "romeo"
    assert contact.json()["welcome"] == "Welcome, from Romeo"
    reset = (yield api.call("POST", "invites", json={"type": "reset", "username": "romeo"})).json()
    assert (reset["type"], reset["username"]) == ("reset", "romeo")


@pytest_twisted.inlineCallbacks
def test_createBadInput(api):
    """Bad bodies are 400 (or 413/415); rule violations of the invite model are 409."""
    yield api.adduser("romeo")
    for body in [{"type": "group"}, {"uses": 0}, {"uses": "many"}, {"uses": True},
                 {"expires_in": 0}, {"expires_in": 10 ** 9}, {"roles": "admin"},
                 {"roles": ["bad role"]}, {"note": 5}, {"color": "red"},
                 {"username": "bad name"}, {"username": "juliet", "uses": 2},
                 {"type": "contact"}, {"type": "contact", "inviter": "romeo", "roles": ["x"]},
                 {"type": "contact", "inviter": "romeo", "username": "x"},
                 {"type": "reset"}, {"type": "reset", "username": "romeo", "uses": 1},
                 {"inviter": "romeo"}, {"type": "contact", "inviter": "romeo",
                                        "allow_registration": "yes"},
                 {"welcome": 7}, {"welcome": "x" * 1001}, {"welcome": "bell \x07"},
                 {"type": "reset", "username": "romeo", "welcome": "hi"}]:
        assertError((yield api.call("POST", "invites", json=body)), 400, "bad-request")
    for raw in (b"[1, 2]", b"{nope"):
        response = yield api.call("POST", "invites", body=raw,
                                  headers={"Content-Type": "application/json"})
        assertError(response, 400, "bad-request")
    assertError((yield api.call("POST", "invites", body=b"{}", headers={
        "Content-Type": "text/plain"})), 415, "unsupported-media-type")
    assertError((yield api.call("POST", "invites", json={"note": "x" * 70000})), 413, "too-large")
    assertError((yield api.call("POST", "invites", json={"username": "romeo"})), 409, "conflict")
    assertError((yield api.call("POST", "invites", json={"type": "reset", "username": "nobody"})),
                409, "conflict")
    yield api.call("POST", "invites", json={"username": "held"})
    assertError((yield api.call("POST", "invites", json={"username": "held"})), 409, "conflict")


@pytest_twisted.inlineCallbacks
def test_numbersAndNestingBounded(api):
    """
    Numbers beyond what the store holds, and JSON nested deeper than any
    request needs, are 400 with a message naming the problem, not 500: an
    integer C{uses} of 10**23 (SQLite's INTEGER overflows), a 30,000-deep
    array (the parser would recurse past Python's limit), and their
    neighbours (negative, fractional, huge and infinite expiries). Brackets
    inside strings are not nesting.
    """
    created = (yield api.call("POST", "invites", json={})).json()
    path = f"invites/{created['id']}"
    for method, target, body, field in [
            ("POST", "invites", {"uses": 10 ** 23}, "uses"),
            ("POST", "invites", {"uses": 1e23}, "uses"),
            ("POST", "invites", {"uses": MAX_USES + 1}, "uses"),
            ("POST", "invites", {"uses": -1}, "uses"),
            ("POST", "invites", {"uses": 1.5}, "uses"),
            ("POST", "invites", {"expires_in": 10 ** 400}, "expires_in"),
            ("POST", "invites", {"expires_in": 1e308}, "expires_in"),
            ("POST", "invites", {"expires_in": -3600}, "expires_in"),
            ("PATCH", path, {"uses": 10 ** 23}, "uses"),
            ("PATCH", path, {"expires": 10 ** 400}, "expires"),
            ("PATCH", path, {"expires": -(10 ** 400)}, "expires"),
            ("PATCH", path, {"expires": 1e308}, "expires"),
            ("PATCH", path, {"expires": "9999-12-31T23:59:59Z"}, "expires"),
            ("PATCH", path, {"expires_in": 10 ** 23}, "expires_in")]:
        response = yield api.call(method, target, json=body)
        assert assertError(response, 400, "bad-request")["message"].startswith(field), body
    assert (yield api.call("POST", "invites", json={"uses": MAX_USES})).code == 201
    for deep in (b"[" * 30000 + b"]" * 30000, b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1)):
        response = yield api.call("POST", "invites", body=deep,
                                  headers={"Content-Type": "application/json"})
        assert "levels deep" in assertError(response, 400, "bad-request")["message"]
    note = '[{"\\"' * 100
    response = yield api.call("POST", "invites", json={"note": note, "roles": ["a"]})
    assert response.code == 201 and response.json()["note"] == note


def test_nestingDepth():
    """Depth counts arrays and objects, not brackets or escaped quotes inside strings."""
    assert nestingDepth(b'{"a": [1, {"b": []}]}') == 4
    assert nestingDepth(b'{"a": "[[[{{{", "b": "\\"[[["}') == 1
    assert nestingDepth(b"1") == 0


@pytest_twisted.inlineCallbacks
def test_listInvites(api):
    """GET invites filters by status and by creator; bad filters are 400."""
    yield api.adduser("romeo")
    pending = (yield api.call("POST", "invites", json={})).json()
    revoked = (yield api.call("POST", "invites", json={})).json()
    yield api.call("DELETE", f"invites/{revoked['id']}")
    mine = yield api.manager.createContact("romeo", creator="romeo@example.org")
    listed = (yield api.call("GET", "invites")).json()["invites"]
    assert {i["id"] for i in listed} == {pending["id"], revoked["id"], mine.invite.id}
    assert all("token" not in i for i in listed)
    byStatus = (yield api.call("GET", "invites?status=revoked")).json()["invites"]
    assert [i["id"] for i in byStatus] == [revoked["id"]]
    for inviter in ("romeo", "romeo@example.org"):
        byInviter = (yield api.call("GET", f"invites?inviter={inviter}")).json()["invites"]
        assert [i["id"] for i in byInviter] == [mine.invite.id]
    for query in ("status=old", "inviter=romeo@other.example", "sort=id"):
        assertError((yield api.call("GET", f"invites?{query}")), 400, "bad-request")


@pytest_twisted.inlineCallbacks
def test_getInvite(api):
    """GET invites/ID: the invite, or 404 for an unknown id or one of another host."""
    created = (yield api.call("POST", "invites", json={"note": "hello"})).json()
    shown = yield api.call("GET", f"invites/{created['id']}")
    assert shown.code == 200 and shown.json()["note"] == "hello" and shown.json()["used_by"] == []
    assertError((yield api.call("GET", "invites/unknown")), 404, "not-found")
    other = yield InviteManager(api.server.hosts["other.example"]).createAccount()
    assertError((yield api.call("GET", f"invites/{other.invite.id}")), 404, "not-found")


@pytest_twisted.inlineCallbacks
def test_whoJoined(api):
    """
    GET invites/ID/joined: what the inviter sees, each account made with the
    invite (username, JID, time, how), oldest first; [] before any; 404 for
    an unknown id or one of another host; no other verb.
    """
    yield api.adduser("alice")
    created = yield api.manager.createContact("alice", allowRegistration=True, usesAllowed=3)
    empty = yield api.call("GET", f"invites/{created.invite.id}/joined")
    assert empty.code == 200
    assert empty.json() == {"invite": created.invite.id, "inviter": "alice@example.org",
                            "joined": []}
    for name in ("carol", "dave"):
        reserved = yield api.manager.reserve(created.token)
        yield api.host.registrar.register(name, PASSWORD, "ibr", "192.0.2.9", invite=reserved)
    joined = (yield api.call("GET", f"invites/{created.invite.id}/joined")).json()
    assert [(j["username"], j["jid"], j["path"]) for j in joined["joined"]] == [
        ("carol", "carol@example.org", "ibr"), ("dave", "dave@example.org", "ibr")]
    assert all(j["at"].endswith("Z") for j in joined["joined"])
    assert "address" not in joined["joined"][0]
    assertError((yield api.call("GET", "invites/unknown/joined")), 404, "not-found")
    other = yield InviteManager(api.server.hosts["other.example"]).createAccount()
    assertError((yield api.call("GET", f"invites/{other.invite.id}/joined")), 404, "not-found")
    response = yield api.call("DELETE", f"invites/{created.invite.id}/joined")
    assertError(response, 405, "method-not-allowed")
    assert response.header("allow") == "GET"


@pytest_twisted.inlineCallbacks
def test_patchInvite(api):
    """
    PATCH changes expiry, uses and note through the store; bad values are
    400, an unknown invite 404, a revoked one 410.
    """
    created = (yield api.call("POST", "invites", json={})).json()
    path = f"invites/{created['id']}"
    now = api.host.now()
    response = yield api.call("PATCH", path, json={"uses": 3, "note": "changed",
                                                   "expires_in": 60})
    assert response.code == 200, response.text
    body = response.json()
    assert (body["uses_allowed"], body["note"]) == (3, "changed")
    invite = yield api.manager.get(created["id"])
    assert invite.usesAllowed == 3 and now + 59 <= invite.expires <= now + 62
    response = yield api.call("PATCH", path, json={"expires": "2099-01-01T00:00:00Z"})
    assert response.code == 400  # more than a year away
    target = int(now) + 7200
    assert (yield api.call("PATCH", path, json={"expires": target})).json()["expires"]
    assert (yield api.manager.get(created["id"])).expires == target
    for body in [{}, {"uses": 0}, {"expires": "tomorrow"}, {"expires": 5}, {"expires_in": -1},
                 {"expires": target, "expires_in": 60}, {"username": "x"}, {"note": None}]:
        assertError((yield api.call("PATCH", path, json=body)), 400, "bad-request")
    bound = (yield api.call("POST", "invites", json={"username": "solo"})).json()
    assertError((yield api.call("PATCH", f"invites/{bound['id']}", json={"uses": 2})),
                400, "bad-request")
    assertError((yield api.call("PATCH", "invites/unknown", json={"note": "x"})), 404, "not-found")
    yield api.call("DELETE", path)
    assertError((yield api.call("PATCH", path, json={"note": "x"})), 410, "gone")


@pytest_twisted.inlineCallbacks
def test_revokeInvite(api):
    """DELETE revokes: 204, the token no longer reserves; again → 410; unknown → 404."""
    created = (yield api.call("POST", "invites", json={})).json()
    response = yield api.call("DELETE", f"invites/{created['id']}")
    assert response.code == 204 and response.body == b""
    assert (yield api.manager.reserve(created["token"])) is None
    assertError((yield api.call("DELETE", f"invites/{created['id']}")), 410, "gone")
    assertError((yield api.call("DELETE", "invites/unknown")), 404, "not-found")


@pytest_twisted.inlineCallbacks
def test_users(api):
    """GET users lists accounts; DELETE removes one (then 404); POST …/reset makes a reset invite."""
    yield api.adduser("alice")
    yield api.adduser("bob")
    users = (yield api.call("GET", "users")).json()["users"]
    assert users == [{"username": "alice", "jid": f"alice@{HOST}"},
                     {"username": "bob", "jid": f"bob@{HOST}"}]
    response = yield api.call("POST", "users/bob/reset", json={"expires_in": 600, "note": "lost"})
    assert response.code == 201
    reset = response.json()
    assert (reset["type"], reset["username"], reset["note"]) == ("reset", "bob", "lost")
    assert reset["uri"] == f"xmpp:bob@{HOST}?register;preauth={reset['token']}"
    assert (yield api.call("POST", "users/alice/reset")).code == 201  # an empty body is fine
    assertError((yield api.call("POST", "users/nobody/reset")), 404, "not-found")
    assertError((yield api.call("POST", "users/bob/reset", json={"ttl": 5})), 400, "bad-request")
    response = yield api.call("DELETE", "users/bob")
    assert response.code == 204
    assert not (yield api.store.accountExists(HOST, "bob"))
    assertError((yield api.call("DELETE", "users/bob")), 404, "not-found")
    assertError((yield api.call("DELETE", "users/bad%20name")), 404, "not-found")


@pytest_twisted.inlineCallbacks
def test_uploadUsage(api):
    """GET uploads: per account of the key's host, files kept, their bytes, and unused slots."""
    assert (yield api.call("GET", "uploads")).json() == {"uploads": []}
    for uploadId, username, size, host in (("a1", "alice", 10, HOST), ("a2", "alice", 20, HOST),
                                           ("b1", "bob", 5, HOST), ("o1", "olga", 7, OTHER)):
        yield api.store.createUpload(Upload(uploadId, host, username, "f", size, "text/plain",
                                            0, 600), 0, 0)
    for uploadId in ("a1", "a2", "o1"):
        yield api.store.beginUpload(uploadId, 0)
        yield api.store.finishUpload(uploadId, 86400)
    assert (yield api.call("GET", "uploads")).json()["uploads"] == [
        {"username": "alice", "jid": f"alice@{HOST}", "files": 2, "bytes": 30, "pending_slots": 0},
        {"username": "bob", "jid": f"bob@{HOST}", "files": 0, "bytes": 0, "pending_slots": 1}]


@pytest_twisted.inlineCallbacks
def test_circles(api):
    """
    Circles verb by verb: 404 while the module is off, then create (409 for
    a second of the same name), add and remove members (their subscriptions
    follow), an invite naming a circle, and delete. A contact invite names
    a room only its inviter owns.
    """
    assertError((yield api.call("GET", "circles")), 404, "not-found")
    api.host.addModule("circles", CirclesModule())  # store only: no group chat service here
    yield api.adduser("alice")
    yield api.adduser("bob")
    response = yield api.call("POST", "circles", json={"name": "Family"})
    assert response.code == 201 and response.json()["room"].endswith("@groups.example.org")
    assertError((yield api.call("POST", "circles", json={"name": "Family"})), 409, "conflict")
    assertError((yield api.call("POST", "circles", json={"name": ""})), 400, "bad-request")
    assertError((yield api.call("POST", "circles", json={"title": "x"})), 400, "bad-request")
    assert (yield api.call("PUT", "circles/Family/members/alice")).code == 200
    response = yield api.call("PUT", "circles/Family/members/bob")
    assert response.json()["members"] == ["alice", "bob"]
    assertError((yield api.call("PUT", "circles/Family/members/nobody")), 404, "not-found")
    assertError((yield api.call("PUT", "circles/Nope/members/bob")), 404, "not-found")
    item = yield api.store.getRosterItem(HOST, "alice", f"bob@{HOST}")
    assert (item.subscription, item.groups) == ("both", ("Family",))
    circles = (yield api.call("GET", "circles")).json()["circles"]
    assert [(c["name"], c["members"]) for c in circles] == [("Family", ["alice", "bob"])]
    response = yield api.call("POST", "invites", json={"circles": ["Family"]})
    assert response.code == 201 and response.json()["groups"] == ["Family"]
    assertError((yield api.call("POST", "invites", json={"circles": ["Nope"]})), 400, "bad-request")
    assertError((yield api.call("POST", "invites", json={"type": "contact", "inviter": "alice",
                                                          "circles": ["Family"]})), 400, "bad-request")
    yield api.store.saveRoom(StoredRoom("groups.example.org", "tea", {"persistent": True},
                                        affiliations={f"alice@{HOST}": ("owner", "")}))
    response = yield api.call("POST", "invites", json={"type": "contact", "inviter": "alice",
                                                       "room": "tea@groups.example.org"})
    assert response.code == 201 and response.json()["room"] == "tea@groups.example.org"
    assertError((yield api.call("POST", "invites", json={
        "type": "contact", "inviter": "bob", "room": "tea@groups.example.org"})), 409, "conflict")
    assertError((yield api.call("POST", "invites", json={"room": "tea@groups.example.org"})),
                400, "bad-request")
    assert (yield api.call("DELETE", "circles/Family/members/bob")).code == 204
    assert (yield api.store.getRosterItem(HOST, "alice", f"bob@{HOST}")) is None
    assertError((yield api.call("DELETE", "circles/Family/members/bob")), 404, "not-found")
    assert (yield api.call("DELETE", "circles/Family")).code == 204
    assertError((yield api.call("DELETE", "circles/Family")), 404, "not-found")


@pytest_twisted.inlineCallbacks
def test_openAPIDocument(api):
    """The OpenAPI 3 document is public and describes every route and verb served."""
    response = yield api.call("GET", "openapi.json", key=None)
    assert response.code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    served = {("GET", "/invites"), ("POST", "/invites"), ("GET", "/invites/{id}"),
              ("PATCH", "/invites/{id}"), ("DELETE", "/invites/{id}"), ("GET", "/users"),
              ("DELETE", "/users/{username}"), ("POST", "/users/{username}/reset"),
              ("GET", "/tokens/{token}"), ("GET", "/openapi.json"), ("GET", "/invites/{id}/joined"),
              ("GET", "/uploads"), ("GET", "/circles"), ("POST", "/circles"),
              ("DELETE", "/circles/{name}"), ("PUT", "/circles/{name}/members/{username}"),
              ("DELETE", "/circles/{name}/members/{username}")}
    described = {(verb.upper(), path) for path, item in paths.items() for verb in item
                 if verb != "parameters"}
    assert described == served
    for path, item in paths.items():
        for verb, operation in item.items():
            if verb != "parameters":
                for ref in _refs(operation):
                    assert ref.split("/")[-1] in document["components"]["schemas"], (path, ref)


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


@pytest_twisted.inlineCallbacks
def test_tokenCheck(api):
    """
    The public check says valid (with the type) or not, for every dead or
    unknown token alike, and never uses the invite.
    """
    yield api.adduser("romeo")
    account = yield api.manager.createAccount()
    contact = yield api.manager.createContact("romeo")
    revoked = yield api.manager.createAccount()
    yield api.manager.revoke(revoked.invite.id)
    check = Api(api, None)
    body = (yield check("GET", f"tokens/{account.token}")).json()
    assert (body["valid"], body["type"], body["allow_registration"]) == (True, "account", True)
    body = (yield check("GET", f"tokens/{contact.token}")).json()
    assert (body["valid"], body["type"], body["allow_registration"]) == (True, "contact", False)
    for token in (revoked.token, "unknown", "x" * 100):
        assert (yield check("GET", f"tokens/{token}")).json() == {"valid": False}
    invite = yield api.manager.get(account.invite.id)
    assert (invite.uses, invite.reserved) == (0, 0)


@pytest_twisted.inlineCallbacks
def test_tokenCheckIsRateLimited(api):
    """
    Ten checks at once per address, then 429 with Retry-After until the
    bucket refills on the clock (one every five seconds).
    """
    check = Api(api, None)
    for _ in range(10):
        assert (yield check("GET", "tokens/whatever")).code == 200
    refused = yield check("GET", "tokens/whatever")
    assertError(refused, 429, "too-many-requests")
    assert refused.header("retry-after") == "5"
    api.clock.advance(5)
    assert (yield check("GET", "tokens/whatever")).code == 200
    assert (yield check("GET", "tokens/whatever")).code == 429


def test_tokenBucketsForgetOldAddresses():
    """Buckets are per address, refill over time, and only the latest addresses are kept."""
    from twisted.internet import task
    clock = task.Clock()
    buckets = TokenBuckets(clock, burst=2, rate=0.5, maxAddresses=2)
    assert [buckets.take("a") for _ in range(3)] == [0, 0, 2.0]
    assert buckets.take("b") == 0
    clock.advance(1)
    assert buckets.take("a") == 1.0  # half a token back: one more second to go
    buckets.take("c")
    assert "b" not in buckets._buckets and len(buckets._buckets) == 2


def test_parseBearer():
    """Only C{Bearer KEYID.SECRET} is a key."""
    assert parseBearer(b"Bearer abc.def") == ("abc", "def")
    assert parseBearer(b"bearer  abc.d.ef") == ("abc", "d.ef")
    for header in (None, b"", b"Bearer", b"Bearer abc", b"Basic abc.def", b"Bearer .def",
                   b"Bearer abc.", b"Bearer " + b"a." + b"x" * 300):
        assert parseBearer(header) is None, header
