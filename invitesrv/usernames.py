"""
Which usernames a new account may take, and which names look alike.

A new name is prepared with the PRECIS UsernameCaseMapped profile (RFC 8265,
through C{precis-i18n}): width mapping (fullwidth letters become ASCII),
lower case, NFC, and no spaces, symbols, compatibility characters, joiners
or unassigned code points. The result then goes through nodeprep, the
stringprep profile that Twisted (and so every login and every routed JID
here) applies to a localpart, and must come out of both unchanged: the name
stored is the one a client's JID leads to. Accounts made before keep their
names; only new ones are held to this.

A name is refused when it is a mixed-script or whole-script confusable of an
existing account's (UTS #39, section 4): "аlice" with a Cyrillic а beside
"alice", "ѕсоре" in Cyrillic beside "scope". Skeletons and script checks are
ICU's C{SpoofChecker} (PyICU), the reference implementation of UTS #39 with
Unicode's own confusables data. Look-alikes within one script ("paul1" and
"paull") are allowed, as UTS #39's mixed-script test does.
"""

from __future__ import annotations

import icu
from precis_i18n import get_profile
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep

_PROFILE = get_profile("UsernameCaseMapped")
_ACROSS_SCRIPTS = icu.USpoofChecks.MIXED_SCRIPT_CONFUSABLE | icu.USpoofChecks.WHOLE_SCRIPT_CONFUSABLE


def precisUsername(raw: str) -> str:
    """
    The account name for a requested one, or ValueError saying why it cannot
    be one (the PRECIS rule it breaks).
    """
    try:
        name = _PROFILE.enforce(raw)
        prepared = nodeprep.prepare(name)
    except UnicodeError as e:
        reason = getattr(e, "reason", "") or str(e)
        raise ValueError(reason) from None
    if _PROFILE.enforce(prepared) != prepared:
        raise ValueError("not stable under nodeprep")
    return prepared


def skeleton(name: str) -> str:
    """The UTS #39 skeleton of C{name}: look-alike names share it."""
    return icu.SpoofChecker().getSkeleton(0, name)


def looksAlike(name: str, other: str) -> bool:
    """Is C{name} a mixed-script or whole-script confusable of the different name C{other}?"""
    return name != other and bool(icu.SpoofChecker().areConfusable(name, other) & _ACROSS_SCRIPTS)
