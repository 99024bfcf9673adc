"""twistd plugin: C{twistd -n invitesrv}."""

from twisted.application.service import ServiceMaker

invitesrv = ServiceMaker(
    "invitesrv",
    "invitesrv.tap",
    "An invite-based XMPP server",
    "invitesrv",
)
