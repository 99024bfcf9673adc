"""
An independent client side of SCRAM (RFC 5802, with channel binding),
SASL2 (XEP-0388), Bind2 (XEP-0386) and FAST (XEP-0484), written from the
specifications for the tests and the benchmark: it shares no code with the
server. TLS is pyOpenSSL's, so that the client computes its own channel
bindings: C{tls-exporter} with C{export_keying_material} (RFC 9266) and
C{tls-server-end-point} from the certificate the server presented (RFC 5929).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import select
import unicodedata
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from rawxmpp import RawClient

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_SASL2 = "urn:xmpp:sasl:2"
NS_BIND2 = "urn:xmpp:bind:0"
NS_FAST = "urn:xmpp:fast:0"
HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ScramClient:
    """
    The client side of one SCRAM exchange. C{gs2} is the GS2 header the
    client sends (C{n,,}, C{y,,}, C{p=tls-exporter,,}); C{binding} the
    channel-binding data that goes into C{c=} with a C{p} header (a test
    gives wrong data to see the server refuse it).
    """

    def __init__(self, mechanism: str, username: str, password: str, gs2: str = "n,,",
                 binding: bytes = b""):
        self.hash = HASHES[mechanism.removesuffix("-PLUS")]
        self.username = username
        self.password = password
        self.gs2 = gs2
        self.binding = binding
        self.nonce = b64(secrets.token_bytes(18))
        self.first = f"n={username.replace('=', '=3D').replace(',', '=2C')},r={self.nonce}"
        self.serverSignature = b""
        self.attributes: dict[str, str] = {}

    def clientFirst(self) -> bytes:
        return (self.gs2 + self.first).encode()

    def clientFinal(self, serverFirst: bytes) -> bytes:
        text = serverFirst.decode()
        self.attributes = dict(part.split("=", 1) for part in text.split(","))
        if not self.attributes["r"].startswith(self.nonce):
            raise ValueError("the server changed the client's nonce")
        salt = base64.b64decode(self.attributes["s"])
        salted = hashlib.pbkdf2_hmac(self.hash, unicodedata.normalize("NFKC", self.password).encode(),
                                     salt, int(self.attributes["i"]))
        clientKey = hmac.digest(salted, b"Client Key", self.hash)
        storedKey = hashlib.new(self.hash, clientKey).digest()
        cbind = self.gs2.encode() + (self.binding if self.gs2.startswith("p=") else b"")
        withoutProof = f"c={b64(cbind)},r={self.attributes['r']}"
        message = f"{self.first},{text},{withoutProof}".encode()
        signature = hmac.digest(storedKey, message, self.hash)
        proof = bytes(a ^ b for a, b in zip(clientKey, signature, strict=True))
        self.serverSignature = hmac.digest(hmac.digest(salted, b"Server Key", self.hash), message,
                                           self.hash)
        return f"{withoutProof},p={b64(proof)}".encode()

    def verify(self, serverFinal: bytes) -> bool:
        """Whether the server proved it knows the keys (the C{v=} of server-final)."""
        return serverFinal.decode() == f"v={b64(self.serverSignature)}"

    def downgradeHash(self, mechanisms, bindings) -> str:
        """What XEP-0474's C{d=} must be for the mechanisms and bindings this client saw."""
        text = ",".join(sorted(mechanisms)) + ("|" + ",".join(sorted(bindings)) if bindings else "")
        return b64(hashlib.new(self.hash, text.encode()).digest())


def htProof(token: str, label: bytes, binding: bytes) -> bytes:
    """XEP-0484: HMAC-SHA-256 keyed with the token of C{Initiator}/C{Responder} + binding."""
    return hmac.digest(token.encode(), label + binding, "sha256")


@dataclass
class Result:
    """What a SASL2 exchange ended with."""

    ok: bool
    xml: str
    additional: bytes = b""
    identifier: str = ""
    token: str | None = None
    challenges: list = field(default_factory=list)


class SASLClient(RawClient):
    """A raw XMPP client with TLS by pyOpenSSL and the mechanisms above."""

    def startTLS(self, maxVersion: int = SSL.TLS1_3_VERSION,
                 resume: SSL.Connection | None = None) -> str:
        """
        STARTTLS with pyOpenSSL (TLS 1.2 with C{maxVersion=SSL.TLS1_2_VERSION}),
        resuming the session of the earlier connection C{resume} if given
        (in its context, as pyOpenSSL requires).
        """
        self.openStream()
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.recvUntil(r"<proceed[^>]*/>")
        if resume is None:
            context = SSL.Context(SSL.TLS_CLIENT_METHOD)
            context.set_max_proto_version(maxVersion)
        else:
            context = resume.get_context()
        connection = SSL.Connection(context, self.sock)
        connection.set_tlsext_host_name(self.host.encode())
        if resume is not None:
            connection.set_session(resume.get_session())
        connection.set_connect_state()
        self.sock.settimeout(None)
        connection.do_handshake()
        self.sock.settimeout(self.timeout)
        self.tls = connection
        self.sock = _Socket(connection)
        return self.openStream()

    def bindings(self) -> dict[str, bytes]:
        """The channel bindings as this client computes them."""
        result = {}
        if self.tls.get_protocol_version_name() == "TLSv1.3":
            result["tls-exporter"] = self.tls.export_keying_material(b"EXPORTER-Channel-Binding", 32)
        certificate = self.tls.get_peer_certificate(as_cryptography=True)
        algorithm = certificate.signature_hash_algorithm
        name = "sha256" if algorithm is None or algorithm.name in ("md5", "sha1") else algorithm.name
        result["tls-server-end-point"] = hashlib.new(name, certificate.public_bytes(Encoding.DER)).digest()
        return result

    # -- RFC 6120 SASL -----------------------------------------------------

    def scramPlus(self, scram: ScramClient, mechanism: str) -> str:
        """A SCRAM exchange over RFC 6120's SASL; the final element (success or failure)."""
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{b64(scram.clientFirst())}</auth>")
        reply = self.recvUntil(r"<(challenge|failure)[^>]*(/>|>.*?</\1>)")
        if "<failure" in reply:
            return reply
        serverFirst = base64.b64decode(re.search(r">([^<]*)</challenge>", reply).group(1))
        self.send(f"<response xmlns='{NS_SASL}'>{b64(scram.clientFinal(serverFirst))}</response>")
        return self.recvUntil(r"<(success|failure)[^>]*(/>|>.*?</\1>)")

    # -- SASL2 -------------------------------------------------------------

    def authenticate(self, mechanism: str, initial: bytes, inline: str = "",
                     respond=None) -> Result:
        """
        A SASL2 exchange: C{<authenticate/>} with C{initial} and C{inline}
        elements; each challenge goes to C{respond(data)}, which gives the
        response. Returns the C{<success/>} or C{<failure/>}, parsed.
        """
        self.send(f"<authenticate xmlns='{NS_SASL2}' mechanism='{mechanism}'>"
                  f"<initial-response>{b64(initial)}</initial-response>{inline}</authenticate>")
        challenges = []
        while True:
            reply = self.recvUntil(r"<(challenge|success|failure)[^>]*(/>|>.*?</\1>)")
            if "<challenge" not in reply:
                break
            data = base64.b64decode(re.search(r">([^<]*)</challenge>", reply).group(1))
            challenges.append(data)
            self.send(f"<response xmlns='{NS_SASL2}'>{b64(respond(data))}</response>")
        if "<success" not in reply:
            return Result(False, reply, challenges=challenges)
        additional = re.search(r"<additional-data>([^<]*)</additional-data>", reply)
        identifier = re.search(r"<authorization-identifier>([^<]*)</authorization-identifier>", reply)
        token = re.search(r"<token [^>]*token=['\"]([^'\"]+)['\"]", reply)
        return Result(True, reply, base64.b64decode(additional.group(1)) if additional else b"",
                      identifier.group(1) if identifier else "", token.group(1) if token else None,
                      challenges)

    def scram2(self, scram: ScramClient, mechanism: str, inline: str = "") -> Result:
        """SCRAM over SASL2; the server's signature is checked on success."""
        result = self.authenticate(mechanism, scram.clientFirst(), inline, scram.clientFinal)
        if result.ok:
            assert scram.verify(result.additional), result
        return result

    def fast(self, mechanism: str, username: str, token: str, inline: str = "") -> Result:
        """A FAST token login: one round trip; the server's proof is checked on success."""
        binding = {"HT-SHA-256-EXPR": "tls-exporter", "HT-SHA-256-ENDP": "tls-server-end-point"}
        data = self.bindings().get(binding[mechanism], b"") if mechanism in binding else b""
        initial = username.encode() + b"\0" + htProof(token, b"Initiator", data)
        result = self.authenticate(mechanism, initial, inline)
        if result.ok:
            assert result.additional == htProof(token, b"Responder", data), result
        return result


def userAgent(agentId: str, software: str = "testclient", device: str = "test device") -> str:
    return (f"<user-agent id='{agentId}'><software>{software}</software>"
            f"<device>{device}</device></user-agent>")


class _Socket:
    """
    A pyOpenSSL connection that behaves as RawClient expects of a socket:
    the socket stays blocking, and a read waits at most the timeout set.
    """

    def __init__(self, connection: SSL.Connection):
        self.connection = connection
        self.timeout: float | None = None
        connection.setblocking(True)

    def sendall(self, data: bytes) -> None:
        self.connection.sendall(data)

    def recv(self, size: int) -> bytes:
        if not self.connection.pending():
            readable, _, _ = select.select([self.connection], [], [], self.timeout)
            if not readable:
                raise TimeoutError("nothing to read")
        try:
            return self.connection.recv(size)
        except SSL.ZeroReturnError:
            return b""
        except SSL.SysCallError as e:
            if e.args and e.args[0] == -1:
                return b""
            raise ConnectionError(str(e)) from None

    def settimeout(self, value) -> None:
        self.timeout = value

    def close(self) -> None:
        try:
            self.connection.shutdown()
        except SSL.Error:
            pass
        self.connection.close()
