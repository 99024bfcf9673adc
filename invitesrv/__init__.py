"""invitesrv: an invite-based XMPP server built on Twisted and Wokkel."""

# Wokkel 18 needs its shim before any Wokkel import; importing it here makes
# that true for every module of the package.
from invitesrv import _wokkel  # noqa: F401

__version__ = "0.1.0"
