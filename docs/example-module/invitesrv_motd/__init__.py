"""
An example invitesrv module: a message of the day, sent to every session
right after it binds (or C{delay} seconds later), from the host's JID.

It shows what a module declares: its name, a disco feature, a hook, and an
options schema for its C{[modules.motd]} table.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.words.xish import domish

from invitesrv.config import Duration
from invitesrv.modules.base import HostModule

NS_MOTD = "urn:example:motd"


@dataclass(frozen=True)
class MotdOptions:
    """The C{[modules.motd]} table: the text (empty: none) and how long to wait."""

    text: str = ""
    delay: Duration = Duration(0)


class MotdModule(HostModule):
    """Sends the message of the day to each new session."""

    name = "motd"
    features = (NS_MOTD,)
    hooks = (("session-bound", "onSessionBound"),)
    Options = MotdOptions

    def onSessionBound(self, session) -> None:
        """Send the text now, or after the delay on the host's clock."""
        if not self.options.text:
            return
        if self.options.delay:
            self.host.clock.callLater(self.options.delay, self.greet, session)
        else:
            self.greet(session)

    def greet(self, session) -> None:
        """A headline from the host, unless the session has ended meanwhile."""
        if session.closed:
            return
        message = domish.Element(("jabber:client", "message"))
        message["from"] = self.host.name
        message["to"] = session.full
        message["type"] = "headline"
        message.addElement("body", content=self.options.text)
        message.addElement((NS_MOTD, "motd"))
        session.send(message)
