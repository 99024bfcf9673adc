"""
C{invitesrvctl uploads [HOST]}: what each account keeps as XEP-0363 uploads
(files, bytes) and the slots it has asked for and not used yet, read from
the database (the server need not run).
"""

from __future__ import annotations

from twisted.internet import defer

from invitesrv.ctl import CommandError


@defer.inlineCallbacks
def usage(server, args):
    """Print a table of the accounts with uploads, of one host or all."""
    names = [args.host] if args.host else list(server.hosts)
    rows = []
    for name in names:
        if name not in server.hosts:
            raise CommandError(f"unknown host {name!r} (served: {', '.join(server.hosts)})")
        rows += [(f"{u.username}@{name}", str(u.files), str(u.bytes), str(u.pending))
                 for u in (yield server.store.uploadUsage(name))]
    if not rows:
        print("No uploads")
        return
    table = [("ACCOUNT", "FILES", "BYTES", "PENDING SLOTS")] + rows
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def addUploadCommands(commands) -> None:
    """Add C{uploads} to C{invitesrvctl}'s sub-commands."""
    command = commands.add_parser("uploads", help="upload usage per account (XEP-0363 files)")
    command.add_argument("host", nargs="?", metavar="HOST", help="only this host")
    command.set_defaults(run=usage)
