"""
SCRAM credentials: derived once from a password, then all that is stored.

The server keeps, per mechanism, a salt, an iteration count, StoredKey and
ServerKey (RFC 5802). That is enough to check a SCRAM login and, after one
PBKDF2, a PLAIN password; the password itself is never stored or logged.

PBKDF2 (SCRAM's Hi) runs in cryptography's OpenSSL, which on the reference
machine derives 4096 iterations two to three times faster than C{hashlib}'s
(Python's OpenSSL 3.0 pays a fixed cost per HMAC iteration): registration and
PLAIN logins are dominated by it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import scramp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from invitesrv.store.interfaces import Credentials

MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1")
_HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}
_ALGORITHMS = {"sha1": hashes.SHA1, "sha256": hashes.SHA256}
SALT_SIZE = 32  # bytes, as scramp makes them
MIN_ITERATIONS = 4096  # RFC 7677's minimum


def saltedPassword(name: str, prepared: str, salt: bytes, iterations: int) -> bytes:
    """RFC 5802's C{SaltedPassword}: PBKDF2 of the SASLprepared password with hash C{name}."""
    algorithm = _ALGORITHMS[name]()
    return PBKDF2HMAC(algorithm, algorithm.digest_size, salt, iterations).derive(
        prepared.encode("utf-8"))


def keysOf(name: str, salted: bytes) -> tuple[bytes, bytes]:
    """The C{StoredKey} and C{ServerKey} of a salted password (RFC 5802 section 3)."""
    clientKey = hmac.digest(salted, b"Client Key", name)
    return hashlib.new(name, clientKey).digest(), hmac.digest(salted, b"Server Key", name)


def makeCredentials(password: str, iterations: int) -> tuple[Credentials, ...]:
    """
    Derive the stored secrets of every mechanism, each with a new random
    salt (slow: PBKDF2 per mechanism). A password SASLprep refuses raises
    C{scramp.ScramException}.
    """
    if iterations < MIN_ITERATIONS:
        raise ValueError(f"SCRAM needs at least {MIN_ITERATIONS} iterations")
    prepared = saslprep(password)
    result = []
    for mechanism in MECHANISMS:
        name = _HASHES[mechanism]
        salt = secrets.token_bytes(SALT_SIZE)
        storedKey, serverKey = keysOf(name, saltedPassword(name, prepared, salt, iterations))
        result.append(Credentials(mechanism, salt, iterations, storedKey, serverKey))
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
    storedKey, _ = keysOf(name, saltedPassword(name, prepared, credentials.salt,
                                                 credentials.iterations))
    return hmac.compare_digest(storedKey, credentials.storedKey)


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
