"""
Who is online on a host, and which of an account's resources a message to
its bare JID goes to.

Every bound L{invitesrv.xmpp.c2s.Session} is online. Whether it is
I{available} (RFC 6121: it sent available presence), with which priority,
and whether it is I{interested} (asked for the roster) is set here by the
module that knows: a presence tracker (the C{presence} module) calls
L{setAvailable} and L{setUnavailable}, the roster module L{setInterested}.
Without a tracker there is no presence to go by, and every online session
counts as available at priority 0: a message to a bare JID still reaches
the user. Delivery (L{invitesrv.host.VirtualHost.deliverToAccount}) and any
module ask here.
"""

from __future__ import annotations

from collections.abc import Iterable


class Resources:
    """The online resources of one virtual host, read from its router."""

    def __init__(self, host):
        self.host = host
        self.tracker: object | None = None  # the module that tracks presence, if any

    def track(self, tracker: object) -> None:
        """C{tracker} sets availability from now on (until L{untrack})."""
        self.tracker = tracker

    def untrack(self, tracker: object) -> None:
        if self.tracker is tracker:
            self.tracker = None

    def online(self, bare: str) -> list:
        """The bound sessions of account C{bare} (user@host)."""
        return list(self.host.router.resourcesOf(bare).values())

    def isAvailable(self, session) -> bool:
        """May C{session} be handed what goes to its bare JID (if its priority allows)?"""
        return not session.closed and (session.available or self.tracker is None)

    def available(self, bare: str) -> list:
        """The sessions of C{bare} that are available."""
        return [s for s in self.host.router.resourcesOf(bare).values() if self.isAvailable(s)]

    def present(self, bare: str) -> list:
        """The sessions of C{bare} whose available presence was broadcast (none untracked)."""
        return [s for s in self.host.router.resourcesOf(bare).values()
                if s.available and s.presence is not None]

    def interested(self, bare: str) -> list:
        """The sessions of C{bare} that asked for the roster (they get roster pushes)."""
        return [s for s in self.host.router.resourcesOf(bare).values() if s.interested]

    def recipients(self, bare: str, highestOnly: bool = True) -> list:
        """
        RFC 6121 section 8.5.2.1: the available sessions of non-negative
        priority, and with C{highestOnly} only those of the highest one.
        """
        sessions = [s for s in self.host.router.resourcesOf(bare).values()
                    if s.priority >= 0 and (s.available or self.tracker is None)]
        if highestOnly and len(sessions) > 1:
            top = max(s.priority for s in sessions)
            sessions = [s for s in sessions if s.priority == top]
        return sessions

    def best(self, sessions: Iterable) -> object | None:
        """Of C{sessions}, an available one of non-negative priority with the highest."""
        usable = [s for s in sessions if self.isAvailable(s) and s.priority >= 0]
        return max(usable, key=lambda s: s.priority, default=None)

    # -- set by the modules that know ------------------------------------------

    def setAvailable(self, session, priority: int, presence) -> bool:
        """C{session} sent available presence; True if it was not available before."""
        initial = not session.available
        session.available = True
        session.priority = priority
        session.presence = presence
        return initial

    def setUnavailable(self, session) -> bool:
        """C{session} sent unavailable presence; True if it was available."""
        was = session.available
        session.available = False
        session.presence = None
        session.priority = 0
        return was

    def setInterested(self, session) -> None:
        """C{session} asked for the roster: it gets roster pushes from now on."""
        session.interested = True
