"""
SCRAM credentials: derived once from a password, then all that is stored.

The server keeps, per mechanism, a salt, an iteration count, StoredKey and
ServerKey (RFC 5802). That is enough to check a SCRAM login and, after one
PBKDF2, a PLAIN password; the password itself is never stored or logged.
"""

from __future__ import annotations

import hashlib
import hmac

import scramp

from invitesrv.store.interfaces import Credentials

MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1")
_HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}


def makeCredentials(password: str, iterations: int) -> tuple[Credentials, ...]:
    """Derive the stored secrets of every mechanism (slow: PBKDF2 per mechanism)."""
    result = []
    for mechanism in MECHANISMS:
        salt, storedKey, serverKey, i = scramp.ScramMechanism(mechanism).make_auth_info(
            password, iteration_count=iterations)
        result.append(Credentials(mechanism, salt, i, storedKey, serverKey))
    return tuple(result)


def checkPassword(password: str, credentials: Credentials) -> bool:
    """
    Check a plaintext password (SASL PLAIN) against stored SCRAM secrets. A
    password SASLprep refuses (a control character, say) is no account's
    password: it is simply wrong.
    """
    try:
        prepared = saslprep(password)
    except scramp.ScramException:
        return False
    name = _HASHES[credentials.mechanism]
    salted = hashlib.pbkdf2_hmac(name, prepared.encode("utf-8"), credentials.salt,
                                 credentials.iterations)
    clientKey = hmac.digest(salted, b"Client Key", name)
    return hmac.compare_digest(hashlib.new(name, clientKey).digest(), credentials.storedKey)


def fakeCredentials(secret: bytes, username: str, mechanism: str, iterations: int) -> Credentials:
    """
    Stable, plausible secrets for an account that does not exist, so that a
    SCRAM exchange for an unknown user looks the same as one with a wrong
    password: no username-existence oracle.
    """
    name = _HASHES[mechanism]
    seed = hmac.digest(secret, f"{mechanism}\0{username}".encode(), "sha256")
    size = hashlib.new(name).digest_size
    return Credentials(mechanism, seed[:16], iterations, seed[:size].ljust(size, b"\0"),
                       hmac.digest(seed, b"server", name))


def saslprep(text: str) -> str:
    """SASLprep (RFC 4013), as scramp applies it to passwords."""
    from scramp.utils import saslprep as prep
    return prep(text)
