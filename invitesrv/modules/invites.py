"""
The invites of a host, kept tidy: a timer deletes the invites that can no
longer be used (used up, expired, revoked), keeping the audit of their uses,
and reminds users of their invites about to expire unused
(C{invite_reminder}).

The model and its rules live in L{invitesrv.invites} (no XML there); the
protocol surfaces are separate modules: C{invites_register} (preauth tokens,
XEP-0379) and C{invites_adhoc} (XEP-0050 commands).
"""

from __future__ import annotations

from twisted.internet import defer, task

from invitesrv.invites import InviteManager
from invitesrv.logs import logger
from invitesrv.modules.base import HostModule

log = logger()


class InvitesModule(HostModule):
    """Sweeps the host's invites every L{sweepInterval} seconds, on the host's clock."""

    name = "invites"
    sweepInterval = 3600.0

    def __init__(self):
        HostModule.__init__(self)
        self.manager: InviteManager | None = None
        self._sweeper: task.LoopingCall | None = None

    def connectionInitialized(self):
        HostModule.connectionInitialized(self)
        self.manager = InviteManager(self.parent)
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = self.parent.clock
        self._sweeper.start(self.sweepInterval, now=False)

    def connectionLost(self, reason):
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None
        HostModule.connectionLost(self, reason)

    def sweep(self):
        """One sweep; a failure is logged and the next one still runs."""
        d = self._sweep()
        d.addErrback(lambda failure: log.failure("Sweeping the invites of {host} failed", failure,
                                                 host=self.parent.name))
        return d

    @defer.inlineCallbacks
    def _sweep(self):
        """Reminders first, then hook C{invite-expired} for each expired invite, then delete."""
        host = self.parent
        if host.options.invite_reminder > 0:
            reminded = yield self.manager.remind(host.options.invite_reminder)
            if reminded:
                log.info("Reminded the creators of {count} invite(s) of {host} that expire unused",
                         count=len(reminded), host=host.name)
        for invite in (yield self.manager.list("expired")):
            if not invite.reserved:
                host.hooks.run("invite-expired", invite)
        count = yield self.manager.sweep()
        if count:
            log.info("Deleted {count} used or expired invites of {host}", count=count,
                     host=host.name)
