"""
The server's log level (C{[server] log_level}). Every invitesrv module logs
through L{logger}, whose events below the level are dropped where they are
emitted, before an observer formats or writes them: twistd's log file takes
every event it is given. Twisted's own events are not filtered.

The level is the process's: an application that embeds several servers has
the level of the last one started or reloaded.
"""

from __future__ import annotations

import sys

from twisted.logger import FilteringLogObserver, Logger, LogLevel, LogLevelFilterPredicate, globalLogPublisher

LEVELS = ("debug", "info", "warn", "error", "critical")

_levels = LogLevelFilterPredicate(LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_levels])


def logger() -> Logger:
    """A logger for the calling module (its name is the namespace), filtered by the level."""
    return Logger(namespace=sys._getframe(1).f_globals["__name__"], observer=_observer)


def setLevel(name: str) -> None:
    """Log invitesrv's events of level C{name} (one of L{LEVELS}) and above from now on."""
    _levels.setLogLevelForNamespace("", LogLevel.levelWithName(name))
