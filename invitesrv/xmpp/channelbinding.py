"""
TLS channel bindings of a client stream, for SCRAM-*-PLUS and FAST's
HT-*-EXPR/-ENDP: proof that the client's TLS session ends at this server,
not at a man in the middle with a certificate the client trusts.

Two types are offered (XEP-0440 says which): C{tls-exporter} (RFC 9266),
keying material exported from the TLS 1.3 session, and
C{tls-server-end-point} (RFC 5929), a hash of the server's certificate.
C{tls-exporter} is offered on TLS 1.3 only: on TLS 1.2 without the extended
master secret it does not tie the session to its endpoints.

scramp 1.5 checks channel bindings given as bytes, but refuses the name
C{tls-exporter} because Python's C{ssl} module cannot export keying
material; pyOpenSSL can, so the name is admitted here (L{admitTLSExporter})
and scramp is handed the exported bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import scramp.core
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.protocols.tls import TLSMemoryBIOProtocol

NS_SASL_CB = "urn:xmpp:sasl-cb:0"
TLS_EXPORTER = "tls-exporter"
TLS_SERVER_END_POINT = "tls-server-end-point"
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"


def admitTLSExporter() -> None:
    """Let scramp check C{tls-exporter} bindings given as bytes (see the module docstring)."""
    names = scramp.core.CbName
    names.SUPPORTED_TYPES = names.SUPPORTED_TYPES | {TLS_EXPORTER}
    names.UNSUPPORTED_TYPES = names.UNSUPPORTED_TYPES - {TLS_EXPORTER}


admitTLSExporter()


def tlsConnection(transport):
    """The pyOpenSSL C{Connection} under C{transport} (STARTTLS or direct TLS), or None."""
    for candidate in (transport, getattr(transport, "protocol", None)):
        if isinstance(candidate, TLSMemoryBIOProtocol):
            return candidate.getHandle()
    return None


def endPointHash(der: bytes, algorithm: hashes.HashAlgorithm | None) -> bytes:
    """
    RFC 5929 section 4.1: the certificate hashed with its signature's hash,
    SHA-256 when that is MD5 or SHA-1 (or there is none, as with Ed25519).
    """
    name = algorithm.name if algorithm is not None else "sha256"
    if name in ("md5", "sha1"):
        name = "sha256"
    return hashlib.new(name, der).digest()


class ChannelBindings(Mapping):
    """
    The channel-binding data of one TLS connection, by type. The types are
    known at once (every stream offers them); the data of a type is
    computed the first time a mechanism asks for it, as most logins bind
    to nothing.
    """

    __slots__ = ("_connection", "_types", "_data")

    def __init__(self, connection):
        self._connection = connection
        self._types = ((TLS_EXPORTER,) if connection.get_protocol_version_name() == "TLSv1.3"
                       else ()) + ((TLS_SERVER_END_POINT,) if connection.get_certificate() is not None
                                   else ())
        self._data: dict[str, bytes] = {}

    def __getitem__(self, name: str) -> bytes:
        if name not in self._types:
            raise KeyError(name)
        data = self._data.get(name)
        if data is None:
            data = self._data[name] = self._compute(name)
        return data

    def _compute(self, name: str) -> bytes:
        connection = self._connection
        if name == TLS_EXPORTER:
            return connection.export_keying_material(EXPORTER_LABEL, 32)
        certificate = connection.get_certificate().to_cryptography()
        return endPointHash(certificate.public_bytes(Encoding.DER),
                            certificate.signature_hash_algorithm)

    def __contains__(self, name) -> bool:
        return name in self._types

    def __iter__(self):
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)


def channelBindings(transport) -> Mapping[str, bytes]:
    """The channel-binding data of each type the connection supports (empty: not TLS)."""
    connection = tlsConnection(transport)
    return {} if connection is None else ChannelBindings(connection)
