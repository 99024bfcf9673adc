"""
XEP-0484 Fast Authentication Streamlining Tokens: a device that logged in
once with its password asks for a token, and reconnects with it in one
round trip (SASL2, one HMAC each way) instead of a SCRAM exchange.

Mechanisms: C{HT-SHA-256-NONE}, and, bound to the TLS channel like
SCRAM-*-PLUS, C{HT-SHA-256-EXPR} (tls-exporter, TLS 1.3) and
C{HT-SHA-256-ENDP} (tls-server-end-point), offered in SASL2's
C{<inline/>} as the stream supports them.

A token belongs to one account and one device (the SASL2 user-agent id,
required both to get and to use one). The store never holds it: only a
random salt, from which the token is derived with the installation's
secret (so a copy of the database logs nobody in) and the account's stored
SCRAM key (so a new password, however it is set, even by C{invitesrvctl}
while the server is stopped, ends every token at once). Each device has a
current token and at most one new one: a new token (asked for with
C{<request-token/>}, or sent unasked once half of the token's life is over)
does not end the current one until it is used itself, so a client that
lost the answer still gets in; once it is used, the old one fails. A use
count (C{<fast count='N'/>}) must grow, so a replayed login fails too.
Tokens expire (C{[modules.fast] token_lifetime}), and are revoked when the
password changes, when the account goes (with its devices), when the
client asks (C{invalidate}), and when the user logs the device out. A
wrong token counts as a failed login, throttled as a wrong password is.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from twisted.internet import defer

from invitesrv.config import Duration
from invitesrv.modules.base import HostModule
from invitesrv.modules.sasl2 import AGENT
from invitesrv.services.slots import Slot
from invitesrv.store.interfaces import FastToken
from invitesrv.xmpp.auth import SASLFailure, Success
from invitesrv.xmpp.channelbinding import TLS_EXPORTER, TLS_SERVER_END_POINT
from invitesrv.xmpp.router import prepareUsername

NS_FAST = "urn:xmpp:fast:0"
PASSWORD_KEY = "SCRAM-SHA-1"  # every account has keys of this mechanism (imported ones only these)
# Strongest first; the channel binding each needs (None: none).
MECHANISMS = {"HT-SHA-256-EXPR": TLS_EXPORTER, "HT-SHA-256-ENDP": TLS_SERVER_END_POINT,
              "HT-SHA-256-NONE": None}


@dataclass(frozen=True)
class FastOptions:
    """C{[modules.fast]}: how long a token is valid after it is issued."""

    token_lifetime: Duration = Duration(21 * 86400)


@dataclass(frozen=True)
class Used:
    """The token a stream logged in with, and whether the client asked to invalidate it."""

    token: FastToken
    invalidate: bool


USED = Slot("fast.used", Used)


def tokenSecret(secret: bytes, host: str, username: str, deviceId: str, salt: bytes,
                passwordKey: bytes) -> str:
    """
    The token of C{salt}: what the client holds, derived again at each
    login. C{passwordKey}: the account's stored SCRAM-SHA-1 key, which
    changes with the password.
    """
    message = "\0".join(("invitesrv FAST token", host, username, deviceId)).encode()
    digest = hmac.digest(secret, b"\0".join((message, salt, passwordKey)), "sha256")
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@defer.inlineCallbacks
def passwordKey(host, username: str):
    """The stored key that ties an account's tokens to its password (None: no such account)."""
    credentials = yield host.store.getCredentials(host.name, username, PASSWORD_KEY)
    return credentials.storedKey if credentials is not None else None


def tokenHMAC(token: str, label: bytes, binding: bytes) -> bytes:
    """XEP-0484's proofs: HMAC-SHA-256 keyed with the token, of C{Initiator} or C{Responder} + binding."""
    return hmac.digest(token.encode("utf-8"), label + binding, "sha256")


def offered(stream) -> list[str]:
    """The HT mechanisms this stream's TLS session allows."""
    bindings = stream.channelBindings()
    return [name for name, binding in MECHANISMS.items() if binding is None or binding in bindings]


class FastExchange:
    """One token login: C{username NUL HMAC(token, 'Initiator' + binding)}, checked and counted."""

    def __init__(self, module: FastModule, stream, mechanism: str, request):
        self.module = module
        self.stream = stream
        self.mechanism = mechanism
        self.request = request

    @defer.inlineCallbacks
    def step(self, data: bytes | None):
        stream = self.stream
        host = self.module.host
        if not data or b"\0" not in data:
            raise SASLFailure("malformed-request", "A token login is one initial response")
        name, proof = data.split(b"\0", 1)
        try:
            username = prepareUsername(name.decode("utf-8"))
        except UnicodeError:
            raise SASLFailure("not-authorized") from None
        stream.attempted = username
        count, invalidate = self.fastAttributes()
        agent = AGENT.get(stream)
        if agent is None:
            raise SASLFailure("not-authorized", "A token is used with the user-agent id it was issued to")
        device, credentials = yield host.store.getTokenLogin(host.name, username, agent.id,
                                                            PASSWORD_KEY)
        key = credentials.storedKey if credentials is not None else None
        binding = MECHANISMS[self.mechanism]
        data = stream.channelBindings()[binding] if binding else b""
        now = host.now()
        for token in (device.pending, device.current) if device and key else ():
            if token is None or token.mechanism != self.mechanism or token.expires <= now:
                continue
            secret = tokenSecret(stream.server.secret, host.name, username, agent.id, token.salt, key)
            if hmac.compare_digest(tokenHMAC(secret, b"Initiator", data), proof):
                break
        else:
            raise SASLFailure("not-authorized")
        # The current token without a count changes nothing: no write on the way.
        if (token is not device.current or count is not None) and not (
                yield host.store.useToken(host.name, username, agent.id, token.salt, count)):
            raise SASLFailure("not-authorized", "This token was replaced or replayed")
        USED.set(stream, Used(token, invalidate))
        return Success(username, tokenHMAC(secret, b"Responder", data))

    def fastAttributes(self) -> tuple[int | None, bool]:
        """The C{count} and C{invalidate} of the request's C{<fast/>}."""
        fast = next(self.request.elements(NS_FAST, "fast"), None)
        if fast is None:
            return None, False
        count = fast.getAttribute("count")
        if count is not None and not (count.isdigit() and len(count) < 10):
            raise SASLFailure("malformed-request", "The count is a number")
        invalidate = fast.getAttribute("invalidate") in ("true", "1")
        return (int(count) if count is not None else None), invalidate


class FastModule(HostModule):
    """Issues, checks, rotates and revokes FAST tokens."""

    name = "fast"
    depends = ("sasl2",)
    Options = FastOptions
    hooks = (("sasl2-features", "onFeatures"), ("sasl2-mechanism", "onMechanism"),
             ("sasl2-inline", "onInline"), ("password-changed", "onPasswordChanged"))

    def onFeatures(self, stream, inline) -> None:
        fast = inline.addElement((NS_FAST, "fast"))
        for mechanism in offered(stream):
            fast.addElement("mechanism", content=mechanism)

    def onMechanism(self, stream, mechanism, request):
        if mechanism not in MECHANISMS:
            return None
        if not stream.encrypted:  # a token in the clear could be replayed by whoever saw it
            raise SASLFailure("encryption-required")
        if mechanism not in offered(stream):
            raise SASLFailure("invalid-mechanism")
        return FastExchange(self, stream, mechanism, request)

    @defer.inlineCallbacks
    def onInline(self, stream, request, success):
        """After a login: revoke the token if asked, and issue one if asked or due."""
        host = self.host
        used = USED.pop(stream)
        agent = AGENT.get(stream)
        if used is not None and used.invalidate:
            yield host.store.revokeTokens(host.name, stream.username, agent.id)
            return
        ask = next(request.elements(NS_FAST, "request-token"), None)
        mechanism = ask.getAttribute("mechanism") if ask is not None else None
        lifetime = self.options.token_lifetime
        if mechanism is None and used is not None and host.now() > used.token.issued + lifetime / 2:
            mechanism = used.token.mechanism  # rotation, unasked
        if mechanism is None or agent is None or mechanism not in offered(stream):
            return
        key = yield passwordKey(host, stream.username)
        now = host.now()
        token = FastToken(mechanism, secrets.token_bytes(16), now, now + lifetime)
        if key is None:
            return
        yield host.store.issueToken(host.name, stream.username, agent.id, token)
        element = success.addElement((NS_FAST, "token"))
        element["expiry"] = datetime.fromtimestamp(token.expires, timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        element["token"] = tokenSecret(stream.server.secret, host.name, stream.username, agent.id,
                                       token.salt, key)

    def onPasswordChanged(self, hostName: str, username: str):
        """
        A new password ends every device's tokens (they no longer match the
        stored key): forget them too.
        """
        return self.host.store.revokeTokens(self.host.name, username)
