"""
SCRAM credentials derived with cryptography's PBKDF2: the same secrets a
SCRAM implementation (scramp) derives from the same password, salt and
iteration count, so that every client's SCRAM and every stored account
keep working.
"""

from __future__ import annotations

import pytest
import scramp

from invitesrv.credentials import MECHANISMS, checkPassword, makeCredentials, saltedPassword

# "I" SOFT HYPHEN "X" NO-BREAK SPACE "y": SASLprep makes it "IX y".
UNPREPARED = "I\u00adX\u00a0y"


@pytest.mark.parametrize("password", ["pencil", UNPREPARED, "pässwörd"])
def test_keysAsScramDerivesThem(password):
    """Each mechanism's salt, StoredKey and ServerKey are those scramp makes with that salt."""
    credentials = makeCredentials(password, 4096)
    assert [c.mechanism for c in credentials] == list(MECHANISMS)
    for c in credentials:
        assert len(c.salt) == 32 and c.iterations == 4096
        expected = scramp.ScramMechanism(c.mechanism).make_auth_info(
            password, iteration_count=4096, salt=c.salt)
        assert (c.salt, c.storedKey, c.serverKey, c.iterations) == expected
    assert len({c.salt for c in credentials}) == len(credentials)  # a salt per mechanism


def test_pbkdf2Vector():
    """RFC 6070's PBKDF2-HMAC-SHA1 vector for 4096 iterations."""
    assert saltedPassword("sha1", "password", b"salt", 4096).hex() == \
        "4b007901b765489abead49d926f721d065a429c1"


def test_checkPassword():
    """PLAIN: the password, or one SASLprep makes the same, matches; any other does not."""
    for c in makeCredentials(UNPREPARED, 4096):
        assert checkPassword(UNPREPARED, c)
        assert checkPassword("IX y", c)
        assert not checkPassword("IX  y", c)
        assert not checkPassword("bad\u0007", c)  # SASLprep refuses control characters


def test_fewIterationsRefused():
    """Fewer iterations than RFC 7677's minimum are refused, as the configuration refuses them."""
    with pytest.raises(ValueError):
        makeCredentials("pencil", 1000)
