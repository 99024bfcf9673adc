"""
The admin JSON API, C{/api/v1/}: invites and accounts of one host, for
portals and scripts.

Requests carry C{Authorization: Bearer KEYID.SECRET}; keys are made with
C{invitesrvctl apikey create HOST}, belong to one host, and only the
SHA-256 of their secret is stored. Routes (see C{/api/v1/openapi.json}):

    GET    invites[?status=&inviter=]   list
    POST   invites                      create: the only answer that shows the token
    GET    invites/ID                   one invite, with its uses
    GET    invites/ID/joined            who joined through it, and when
    PATCH  invites/ID                   expires, uses, note
    DELETE invites/ID                   revoke
    GET    users                        list accounts
    DELETE users/NAME                   delete an account
    POST   users/NAME/reset             a password-reset invite
    GET    uploads                      XEP-0363 upload usage per account
    GET    circles                      list circles with their members
    POST   circles                      create a circle (and its room)
    DELETE circles/NAME                 delete a circle
    PUT    circles/NAME/members/USER    add an account to a circle
    DELETE circles/NAME/members/USER    take it out
    GET    tokens/TOKEN                 public: is this token valid? (rate-limited)

Errors are C{{"error": CODE, "message": TEXT}} with status 400, 401, 403,
404, 405, 409, 410, 413, 415 or 429. Invites are created and changed through
the same L{InviteManager} and store calls as everywhere else, so the same
rules apply.

A request body is read only after its route and key have been checked, and
only up to L{MAX_BODY} bytes (the site refuses a longer one with 413 before
reading it, see L{invitesrv.web.site.WebChannel}); a JSON body may nest at
most L{MAX_DEPTH} levels and numbers stay in ranges the store can hold.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import re
import secrets
import time
from collections import OrderedDict

from twisted.internet import defer
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from invitesrv.invites import (
    MAX_EXPIRY,
    MAX_USES,
    ROLE,
    STATUSES,
    WELCOME_MAX_LENGTH,
    InviteError,
    creatorOf,
    isoTime,
    welcomeText,
)
from invitesrv.logs import logger
from invitesrv.registrar import RegistrationError, prepareUsername
from invitesrv.web.openapi import openAPIDocument
from invitesrv.web.pages import BodyPolicy, Refused, finishWith, watchConnection

log = logger()

JSON = b"application/json"
MAX_BODY = 64 * 1024
MAX_DEPTH = 16
MAX_NOTE = 1000
# Backslash escapes, and every byte but brackets: what nestingDepth skips.
ESCAPE = re.compile(rb"\\.", re.S)
NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
ERRORS = {400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found",
          405: "method-not-allowed", 409: "conflict", 410: "gone", 413: "too-large",
          415: "unsupported-media-type", 429: "too-many-requests", 500: "internal-error"}


class ApiError(Refused):
    """An answer other than success: status, message and extra headers."""


# -- keys -----------------------------------------------------------------------


def hashSecret(secret: str) -> bytes:
    """The stored form of an API key's secret."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


def newApiKey() -> tuple[str, str]:
    """A fresh (key id, secret); the key is written C{KEYID.SECRET}."""
    return secrets.token_hex(8), secrets.token_urlsafe(32)


def parseBearer(header: bytes | None) -> tuple[str, str] | None:
    """(key id, secret) from an C{Authorization: Bearer KEYID.SECRET} header, or None."""
    if not header:
        return None
    scheme, _, credentials = header.decode("latin-1").strip().partition(" ")
    keyId, dot, secret = credentials.strip().partition(".")
    if scheme.lower() != "bearer" or not dot or not keyId or not secret or len(credentials) > 200:
        return None
    return keyId, secret


# -- rate limit -----------------------------------------------------------------


class TokenBuckets:
    """
    A token bucket per client address: C{burst} requests at once, then one
    every C{1/rate} seconds, on an injected clock. Only the most recent
    C{maxAddresses} addresses are remembered.
    """

    def __init__(self, clock, burst: int = 10, rate: float = 0.2, maxAddresses: int = 10_000):
        self.clock = clock
        self.burst = burst
        self.rate = rate
        self.maxAddresses = maxAddresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, address: str) -> float:
        """Take one token for C{address}: 0 if allowed, else seconds until the next one."""
        now = self.clock.seconds()
        tokens, then = self._buckets.pop(address, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1:
            tokens -= 1
            wait = 0.0
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[address] = (tokens, now)
        while len(self._buckets) > self.maxAddresses:
            self._buckets.popitem(last=False)
        return wait


# -- JSON shapes and input checks -----------------------------------------------


def inviteJSON(invite, now: float, withUses: bool = False) -> dict:
    """An invite as the API shows it (never its token, which is not stored)."""
    body = {
        "id": invite.id, "host": invite.host, "type": invite.kind,
        "status": invite.status(now), "username": invite.username, "inviter": invite.inviter,
        "allow_registration": invite.allowRegistration,
        "uses_allowed": "unlimited" if invite.usesAllowed is None else invite.usesAllowed,
        "uses": invite.uses, "reserved": invite.reserved,
        "created": isoTime(invite.created), "expires": isoTime(invite.expires),
        "revoked": isoTime(invite.revoked) if invite.revoked is not None else None,
        "roles": list(invite.roles), "groups": list(invite.groups), "note": invite.note,
        "room": invite.room or None,
        "source": invite.source, "welcome": invite.welcome,
    }
    if withUses:
        body["used_by"] = [{"username": use["username"], "at": isoTime(use["used_at"]),
                            "path": use["path"], "address": use["address"]}
                           for use in invite.uses_log]
    return body


def createdJSON(created, now: float) -> dict:
    """A new invite: the one answer that carries its token and links."""
    body = inviteJSON(created.invite, now)
    body.update(token=created.token, uri=created.uri, landing_url=created.landing)
    return body


def nestingDepth(data: bytes) -> int:
    """How deeply arrays and objects nest in JSON text (brackets inside strings do not count)."""
    outside = b"".join(ESCAPE.sub(b"", data).split(b'"')[::2])
    depth = deepest = 0
    for bracket in outside.translate(None, NOT_BRACKETS):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def readJSON(request, required: bool = True) -> dict:
    """
    The request's JSON object body; an empty body is {} when not
    C{required}. Nesting is measured before parsing, which would otherwise
    recurse once per level.
    """
    data = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(data) > MAX_BODY:
        raise ApiError(413, f"The body is larger than {MAX_BODY} bytes")
    if not data.strip() and not required:
        return {}
    contentType = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if contentType != JSON:
        raise ApiError(415, "Send the body as application/json")
    if nestingDepth(data) > MAX_DEPTH:
        raise ApiError(400, f"The body nests arrays and objects more than {MAX_DEPTH} levels deep")
    try:
        body = json.loads(data)
    except ValueError as e:
        raise ApiError(400, f"The body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object")
    return body


def checkKeys(body: dict, allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"Unknown field(s): {', '.join(unknown)}")


def usesValue(value, minimum: int = 1) -> int | None:
    """C{uses}: a whole number from C{minimum} to L{MAX_USES}, or C{"unlimited"} (None)."""
    if value == "unlimited":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_USES:
        raise ApiError(400, f"uses must be a whole number from {minimum} to {MAX_USES},"
                            ' or "unlimited"')
    return value


def secondsValue(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_EXPIRY:
        raise ApiError(400, f"{name} must be a number of seconds between 1 and {MAX_EXPIRY}")
    return float(value)


def momentValue(value, now: float) -> float:
    """C{expires}: a Unix time or an ISO 8601 UTC time (C{2030-01-31T12:00:00Z}), in the future."""
    if isinstance(value, str):
        try:
            moment = float(calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")))
        except ValueError:
            raise ApiError(400, "expires must look like 2030-01-31T12:00:00Z") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            moment = float(value)
        except OverflowError:  # an integer beyond any float: far from "within a year"
            moment = float("inf")
    else:
        raise ApiError(400, "expires must be a Unix time or an ISO 8601 UTC time")
    if not now < moment <= now + MAX_EXPIRY:
        raise ApiError(400, "expires must be in the future, within a year")
    return moment


def textValue(value, name: str, limit: int = MAX_NOTE) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ApiError(400, f"{name} must be a string of at most {limit} characters")
    return value


def usernameValue(value, name: str) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a username")
    try:
        return prepareUsername(value)
    except RegistrationError as e:
        raise ApiError(400, f"{name}: {e}") from None


def rolesValue(value) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(r, str) and ROLE.fullmatch(r)
                                              for r in value):
        raise ApiError(400, "roles must be a list of names (letters, digits, : . - _)")
    return tuple(value)


# -- the resource ---------------------------------------------------------------


class ApiRoot(BodyPolicy, resource.Resource):
    """
    C{/api/v1/}: routes by path and method, authenticates, answers JSON. As
    the body policy of the API, it takes bodies up to L{MAX_BODY} bytes, and
    only once the route is known and, for a private route, the key valid.
    """

    isLeaf = True
    maxBody = MAX_BODY

    def __init__(self, context, tokenChecks: TokenBuckets | None = None):
        resource.Resource.__init__(self)
        self.context = context
        self.tokenChecks = tokenChecks or TokenBuckets(context.clock)
        # (path pattern, {method: handler}, needs a key); None matches one segment.
        self.routes = [
            (("openapi.json",), {"GET": self.getOpenAPI}, False),
            (("tokens", None), {"GET": self.checkToken}, False),
            (("invites",), {"GET": self.listInvites, "POST": self.createInvite}, True),
            (("invites", None), {"GET": self.getInvite, "PATCH": self.patchInvite,
                                 "DELETE": self.revokeInvite}, True),
            (("invites", None, "joined"), {"GET": self.joinedInvite}, True),
            (("users",), {"GET": self.listUsers}, True),
            (("users", None), {"DELETE": self.deleteUser}, True),
            (("users", None, "reset"), {"POST": self.resetUser}, True),
            (("uploads",), {"GET": self.listUploads}, True),
            (("circles",), {"GET": self.listCircles, "POST": self.createCircle}, True),
            (("circles", None), {"DELETE": self.deleteCircle}, True),
            (("circles", None, "members", None), {"PUT": self.addMember,
                                                  "DELETE": self.removeMember}, True),
        ]

    def render(self, request):
        lost = watchConnection(request)
        d = defer.maybeDeferred(self.dispatch, request)
        d.addCallbacks(lambda answer: self.send(request, lost, *answer),
                       lambda failure: self.fail(request, lost, failure))
        return NOT_DONE_YET

    def send(self, request, lost, code: int, body, headers: dict | None = None) -> None:
        data = b"" if body is None else json.dumps(body, indent=1).encode("utf-8") + b"\n"
        finishWith(request, lost, code, data, JSON, headers or {})

    def fail(self, request, lost, failure) -> None:
        if failure.check(Refused):
            error = failure.value
        else:
            log.failure("API request {method} failed", failure,
                        method=request.method.decode("ascii", "replace"))
            error = ApiError(500, "The server could not complete this request")
        self.send(request, lost, error.code, {"error": ERRORS[error.code],
                                               "message": error.message}, error.headers)

    def refusal(self, error: Refused) -> resource.IResource:
        """A request refused before its body was read is answered here too, in JSON."""
        return self

    def checkBeforeBody(self, request, method: bytes, segments: list[bytes]):
        """A body is read for a known route only, and for a private one with a valid key."""
        handler, arguments, private = self.route(method, segments)
        return self.authenticate(request) if private else None

    def route(self, method: bytes, segments: list[bytes]):
        """(handler, path arguments, needs a key) for a request; ApiError 404/405 otherwise."""
        segments = [s.decode("utf-8", "replace") for s in segments]
        if segments and segments[-1] == "" and len(segments) > 1:
            segments.pop()
        method = method.decode("ascii", "replace").upper()
        for pattern, handlers, private in self.routes:
            if len(pattern) == len(segments) and all(p is None or p == s
                                                     for p, s in zip(pattern, segments, strict=True)):
                if method == "HEAD" and "GET" in handlers:
                    method = "GET"
                if method not in handlers:
                    raise ApiError(405, f"{method} is not allowed here",
                                   {"allow": ", ".join(sorted(handlers))})
                arguments = [s for p, s in zip(pattern, segments, strict=True) if p is None]
                return handlers[method], arguments, private
        raise ApiError(404, "There is no such API path")

    @defer.inlineCallbacks
    def dispatch(self, request):
        if request.refusal is not None:
            raise request.refusal
        handler, arguments, private = self.route(request.method, request.postpath)
        if not private:
            return (yield handler(request, *arguments))
        host, keyId = request.checked or (yield self.authenticate(request))
        return (yield handler(request, host, keyId, *arguments))

    @defer.inlineCallbacks
    def authenticate(self, request):
        """Fire with (host, key id) for a valid key; fail with ApiError 401 or 403."""
        challenge = {"www-authenticate": 'Bearer realm="invitesrv"'}
        parsed = parseBearer(request.getHeader(b"authorization"))
        if parsed is None:
            raise ApiError(401, "Send an API key: Authorization: Bearer KEYID.SECRET", challenge)
        keyId, secret = parsed
        row = yield self.context.store.getApiKey(keyId)
        if row is None or not hmac.compare_digest(row[0], hashSecret(secret)):
            log.warn("API request from {address} with a wrong key {keyId}",  # noqa: G010
                     address=request.clientIP(), keyId=keyId[:32])
            raise ApiError(401, "The API key is not valid", challenge)
        host = self.context.host(row[1])
        if host is None:
            raise ApiError(403, f"The API key belongs to {row[1]}, which this server does not serve")
        return host, keyId

    # -- public -------------------------------------------------------------

    def getOpenAPI(self, request):
        return 200, openAPIDocument()

    @defer.inlineCallbacks
    def checkToken(self, request, token: str):
        wait = self.tokenChecks.take(request.clientIP())
        if wait:
            raise ApiError(429, "Too many token checks; try again later",
                           {"retry-after": str(max(1, round(wait)))})
        host, invite = yield self.context.lookup(token)
        if invite is None or invite.status(host.now()) != "pending":
            return 200, {"valid": False}
        return 200, {"valid": True, "type": invite.kind, "host": invite.host,
                     "allow_registration": invite.allowRegistration,
                     "expires": isoTime(invite.expires)}

    # -- invites ------------------------------------------------------------

    def _owner(self, host, value: str) -> str:
        """C{inviter=}: a username or a bare JID of this host, as the bare JID."""
        name, at, domain = value.partition("@")
        if at and domain != host.name:
            raise ApiError(400, f"inviter must be a user of {host.name}")
        return f"{usernameValue(name, 'inviter')}@{host.name}"

    @defer.inlineCallbacks
    def listInvites(self, request, host, keyId):
        args = {key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
                for key, values in request.args.items()}
        checkKeys(args, {"status", "inviter"})
        status = args.get("status")
        if status is not None and status not in STATUSES:
            raise ApiError(400, f"status must be one of {', '.join(STATUSES)}")
        owner = self._owner(host, args["inviter"]) if "inviter" in args else None
        invites = yield self.context.managers[host.name].list(status, owner)
        now = host.now()
        return 200, {"invites": [inviteJSON(invite, now) for invite in invites]}

    @defer.inlineCallbacks
    def _find(self, host, inviteId: str):
        invite = yield self.context.managers[host.name].get(inviteId)
        if invite is None:
            raise ApiError(404, f"There is no invite {inviteId!r}")
        return invite

    @defer.inlineCallbacks
    def getInvite(self, request, host, keyId, inviteId: str):
        invite = yield self._find(host, inviteId)
        return 200, inviteJSON(invite, host.now(), withUses=True)

    @defer.inlineCallbacks
    def joinedInvite(self, request, host, keyId, inviteId: str):
        """
        What the inviter sees: each account made with the invite, oldest
        first (a reset invite made none).
        """
        invite = yield self._find(host, inviteId)
        return 200, {"invite": invite.id, "inviter": creatorOf(invite), "joined": [
            {"username": use["username"], "jid": f"{use['username']}@{host.name}",
             "at": isoTime(use["used_at"]), "path": use["path"]}
            for use in invite.uses_log if invite.kind != "reset"]}

    @defer.inlineCallbacks
    def createInvite(self, request, host, keyId):
        body = readJSON(request)
        checkKeys(body, {"type", "username", "inviter", "uses", "expires_in", "roles", "note",
                         "allow_registration", "welcome", "circles", "room"})
        kind = body.get("type", "account")
        if kind not in ("account", "contact", "reset"):
            raise ApiError(400, "type must be account, contact or reset")
        wrong = {"account": {"inviter", "allow_registration", "room"},
                 "contact": {"username", "circles"},
                 "reset": {"inviter", "allow_registration", "roles", "uses", "welcome",
                           "circles", "room"}}[kind] & set(body)
        if wrong:
            raise ApiError(400, f"{', '.join(sorted(wrong))} cannot be given for a {kind} invite")
        uses = usesValue(body.get("uses", 1))
        ttl = secondsValue(body["expires_in"], "expires_in") if "expires_in" in body else None
        roles = rolesValue(body.get("roles", []))
        note = textValue(body.get("note", ""), "note")
        try:
            welcome = welcomeText(textValue(body.get("welcome", ""), "welcome", WELCOME_MAX_LENGTH))
        except InviteError as e:
            raise ApiError(400, str(e)) from None
        allowRegistration = body.get("allow_registration", False)
        if not isinstance(allowRegistration, bool):
            raise ApiError(400, "allow_registration must be true or false")
        circles = yield self._circleNames(host, body.get("circles", []))
        manager = self.context.managers[host.name]
        source = f"api:{keyId}"
        try:
            if kind == "reset":
                if "username" not in body:
                    raise ApiError(400, "A reset invite needs the username of the account")
                created = yield manager.createReset(usernameValue(body["username"], "username"),
                                                    ttl=ttl, note=note, source=source)
            elif kind == "contact":
                if "inviter" not in body:
                    raise ApiError(400, "A contact invite needs an inviter (a local username)")
                if roles and not allowRegistration:
                    raise ApiError(400, "roles need allow_registration: true")
                created = yield manager.createContact(
                    usernameValue(body["inviter"], "inviter"), allowRegistration,
                    usesAllowed=uses, ttl=ttl, roles=roles, note=note, source=source,
                    welcome=welcome, room=textValue(body.get("room", ""), "room", 3071))
            else:
                username = (usernameValue(body["username"], "username")
                            if body.get("username") is not None else None)
                if username and uses != 1:
                    raise ApiError(400, "An invite for one username can be used only once")
                created = yield manager.createAccount(username, usesAllowed=uses, ttl=ttl,
                                                      roles=roles, groups=circles, note=note,
                                                      source=source, welcome=welcome)
        except InviteError as e:
            raise ApiError(409, str(e)) from None
        return 201, createdJSON(created, host.now()), {"location": f"invites/{created.invite.id}"}

    @defer.inlineCallbacks
    def patchInvite(self, request, host, keyId, inviteId: str):
        body = readJSON(request)
        checkKeys(body, {"expires", "expires_in", "uses", "note"})
        if not body:
            raise ApiError(400, "Give at least one of expires, expires_in, uses, note")
        if "expires" in body and "expires_in" in body:
            raise ApiError(400, "Give expires or expires_in, not both")
        invite = yield self._find(host, inviteId)
        if invite.revoked is not None:
            raise ApiError(410, f"Invite {invite.id} was revoked")
        now = host.now()
        changes = {}
        if "expires" in body:
            changes["expires"] = momentValue(body["expires"], now)
        if "expires_in" in body:
            changes["expires"] = now + secondsValue(body["expires_in"], "expires_in")
        if "uses" in body:
            uses = usesValue(body["uses"], max(1, invite.uses))
            if invite.username and uses != 1:
                raise ApiError(400, "An invite for one username can be used only once")
            changes["usesAllowed"] = uses
        if "note" in body:
            changes["note"] = textValue(body["note"], "note")
        updated = yield self.context.store.updateInvite(invite.id, **changes)
        log.info("Invite {id} on {host} changed through the API by key {keyId}: {fields}",
                 id=invite.id, host=host.name, keyId=keyId, fields=", ".join(sorted(body)))
        return 200, inviteJSON(updated, now, withUses=True)

    @defer.inlineCallbacks
    def revokeInvite(self, request, host, keyId, inviteId: str):
        invite = yield self._find(host, inviteId)
        if not (yield self.context.managers[host.name].revoke(invite.id)):
            raise ApiError(410, f"Invite {invite.id} is not pending ({invite.status(host.now())})")
        return 204, None

    # -- users --------------------------------------------------------------

    @defer.inlineCallbacks
    def listUsers(self, request, host, keyId):
        names = yield self.context.store.listAccounts(host.name)
        return 200, {"users": [{"username": name, "jid": f"{name}@{host.name}"}
                               for name in names]}

    def _account(self, name: str) -> str:
        try:
            return prepareUsername(name)
        except RegistrationError:
            raise ApiError(404, f"There is no account {name!r}") from None

    @defer.inlineCallbacks
    def deleteUser(self, request, host, keyId, name: str):
        username = self._account(name)
        if not (yield host.registrar.deleteAccount(username)):
            raise ApiError(404, f"There is no account {username}@{host.name}")
        log.info("Account {user}@{host} deleted through the API by key {keyId}", user=username,
                 host=host.name, keyId=keyId)
        return 204, None

    @defer.inlineCallbacks
    def resetUser(self, request, host, keyId, name: str):
        body = readJSON(request, required=False)
        checkKeys(body, {"expires_in", "note"})
        ttl = secondsValue(body["expires_in"], "expires_in") if "expires_in" in body else None
        note = textValue(body.get("note", ""), "note")
        username = self._account(name)
        if not (yield host.store.accountExists(host.name, username)):
            raise ApiError(404, f"There is no account {username}@{host.name}")
        try:
            created = yield self.context.managers[host.name].createReset(
                username, ttl=ttl, note=note, source=f"api:{keyId}")
        except InviteError as e:
            raise ApiError(409, str(e)) from None
        return 201, createdJSON(created, host.now()), {
            "location": f"../../invites/{created.invite.id}"}

    # -- uploads ------------------------------------------------------------

    @defer.inlineCallbacks
    def listUploads(self, request, host, keyId):
        """What each account keeps as XEP-0363 uploads, and the slots it has not used yet."""
        usage = yield self.context.store.uploadUsage(host.name)
        return 200, {"uploads": [{"username": u.username, "jid": f"{u.username}@{host.name}",
                                  "files": u.files, "bytes": u.bytes, "pending_slots": u.pending}
                                 for u in usage]}

    # -- circles ------------------------------------------------------------

    @defer.inlineCallbacks
    def _circleNames(self, host, value):
        """C{circles} of a new invite: names of existing circles of the host."""
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            raise ApiError(400, "circles must be a list of circle names")
        for name in value:
            if (yield host.store.getCircle(host.name, name)) is None:
                raise ApiError(400, f"There is no circle {name!r}")
        return tuple(value)

    @staticmethod
    def _circles(host):
        circles = host.modules.get("circles")
        if circles is None:
            raise ApiError(404, f"Circles are not on for {host.name} (server.modules)")
        return circles

    @defer.inlineCallbacks
    def _change(self, host, keyId, action: str, *args):
        from invitesrv.modules.circles import CircleError
        try:
            circle = yield getattr(self._circles(host), action)(*args)
        except CircleError as e:
            raise ApiError(404 if "no circle" in str(e) or "not in" in str(e) else 409,
                           str(e)) from None
        log.info("Circle {name!r} on {host}: {action} through the API by key {keyId}",
                 name=circle.name, host=host.name, action=action, keyId=keyId)
        return circle

    @defer.inlineCallbacks
    def listCircles(self, request, host, keyId):
        circles = yield self._circles(host).list()
        return 200, {"circles": [circleJSON(circle) for circle in circles]}

    @defer.inlineCallbacks
    def createCircle(self, request, host, keyId):
        from invitesrv.modules.circles import CircleError
        body = readJSON(request)
        checkKeys(body, {"name"})
        try:
            circle = yield self._circles(host).create(textValue(body.get("name"), "name", 64))
        except CircleError as e:
            raise ApiError(409 if "exists" in str(e) else 400, str(e)) from None
        return 201, circleJSON(circle), {"location": f"circles/{circle.name}"}

    @defer.inlineCallbacks
    def deleteCircle(self, request, host, keyId, name: str):
        yield self._change(host, keyId, "delete", name)
        return 204, None

    @defer.inlineCallbacks
    def addMember(self, request, host, keyId, name: str, user: str):
        circle = yield self._change(host, keyId, "add", name, self._account(user))
        return 200, circleJSON(circle)

    @defer.inlineCallbacks
    def removeMember(self, request, host, keyId, name: str, user: str):
        yield self._change(host, keyId, "remove", name, self._account(user))
        return 204, None


def circleJSON(circle) -> dict:
    return {"name": circle.name, "room": circle.room, "members": list(circle.members),
            "created": isoTime(circle.created)}
