"""
The invite reservation a client stream holds before it registers.

A preauth token (XEP-0401) reserves one use of its invite in the store for
the stream that presented it; a registration on that stream spends it; the
stream logging in, ending, or presenting another token gives it back. The
registrar owns this (C{host.registrar.reservations}), so modules do not
handle invites held by streams: the token module calls L{hold}, the
registration module L{take} and L{putBack}, and the stream's end L{release}.
The reservation lives in a L{Slot} of the stream's authenticator.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer

from invitesrv.logs import logger
from invitesrv.services.slots import Slot
from invitesrv.store.interfaces import Invite

log = logger()


@dataclass
class Reservation:
    """What one stream holds: the invite and the hash of the token that reserved it."""

    invite: Invite | None = None
    tokenHash: bytes | None = None
    closed: bool = False  # the stream ended: nothing more may be held


RESERVATION: Slot[Reservation] = Slot("registrar.reservation", Reservation)


class Reservations:
    """The reservations of one host's streams, given back through its store."""

    def __init__(self, host):
        self.host = host

    def _of(self, stream) -> Reservation:
        reservation = RESERVATION.get(stream)
        if reservation is None:
            reservation = Reservation()
            RESERVATION.set(stream, reservation)
        return reservation

    def held(self, stream, tokenHash: bytes | None = None) -> Invite | None:
        """The invite C{stream} holds (only if reserved by C{tokenHash}, when given)."""
        reservation = RESERVATION.get(stream)
        if reservation is None or (tokenHash is not None and reservation.tokenHash != tokenHash):
            return None
        return reservation.invite

    def isClosed(self, stream) -> bool:
        reservation = RESERVATION.get(stream)
        return reservation is not None and reservation.closed

    @defer.inlineCallbacks
    def hold(self, stream, invite: Invite, tokenHash: bytes):
        """
        C{stream} now holds C{invite}, reserved with C{tokenHash}; an earlier
        reservation is given back. Fire False (and give C{invite} back) when
        the stream has ended meanwhile.
        """
        reservation = self._of(stream)
        if reservation.closed:
            yield self._give(invite)
            return False
        earlier, reservation.invite, reservation.tokenHash = reservation.invite, invite, tokenHash
        if earlier is not None:
            yield self._give(earlier)
        return True

    def take(self, stream) -> Invite | None:
        """Take the invite off C{stream} for a registration under way."""
        reservation = RESERVATION.get(stream)
        if reservation is None:
            return None
        invite, reservation.invite = reservation.invite, None
        return invite

    def putBack(self, stream, invite: Invite):
        """
        A registration with C{invite} failed: back on C{stream} for a retry,
        unless the stream ended, logged in or holds a newer invite; then the
        use is given back. Fires when done.
        """
        reservation = self._of(stream)
        if reservation.closed or stream.authenticated or reservation.invite is not None:
            return self._give(invite)
        reservation.invite = invite
        return defer.succeed(None)

    def release(self, stream, closed: bool = False) -> None:
        """Give back what C{stream} holds (it logged in, or with C{closed} ended)."""
        reservation = self._of(stream) if closed else RESERVATION.get(stream)
        if reservation is None:
            return
        reservation.closed = reservation.closed or closed
        invite = self.take(stream)
        if invite is not None:
            self._give(invite).addErrback(
                lambda failure: log.failure("Releasing invite {id} failed", failure, id=invite.id))

    def _give(self, invite: Invite):
        return self.host.store.releaseInvite(invite.id)
