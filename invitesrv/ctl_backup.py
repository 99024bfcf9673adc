"""
C{invitesrvctl backup FILE} and C{restore FILE}: the whole database, copied.

A backup is taken while the server runs (SQLite's online backup, one
consistent snapshot, mode 0600). A restore replaces the database with a
checked copy, and only while no server runs on the data dir: a server holds
its database open, and sessions, reservations and caches would not match.
The database it replaces is kept beside it as C{invitesrv.sqlite3.before-restore}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from invitesrv.ctl import CommandError
from invitesrv.store.sqlite import backupDatabase, checkBackup, restoreDatabase


def requireSQLite(server) -> None:
    """These commands copy the SQLite file; a PostgreSQL database has its own tools."""
    if server.config.store.backend != "sqlite":
        raise CommandError("the store is PostgreSQL: back it up and restore it with pg_dump and"
                           " pg_restore (docs/postgresql.md)")


def backup(server, args):
    requireSQLite(server)
    target = Path(args.file)
    if target.exists() and not args.force:
        raise CommandError(f"{target} exists (--force replaces it)")
    backupDatabase(str(server.config.databasePath), str(target))
    print(f"Backed up {server.config.databasePath} to {target} (schema {checkBackup(str(target))})")


def restore(server, args):
    requireSQLite(server)
    if args.control is not None:
        raise CommandError("the server is running on this data dir: stop it first")
    try:
        kept = restoreDatabase(args.file, str(server.config.databasePath))
    except (ValueError, OSError) as e:
        raise CommandError(str(e)) from None
    print(f"Restored {server.config.databasePath} from {args.file}")
    if kept:
        print(f"The database it replaced is kept in {kept}")


def addBackupCommands(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser("backup", help="copy the database, consistent while the server runs")
    command.add_argument("file", metavar="FILE", help="where the copy goes (mode 0600)")
    command.add_argument("--force", action="store_true", help="replace FILE if it exists")
    command.set_defaults(run=backup)
    command = commands.add_parser("restore", help="replace the database with a backup (server stopped)")
    command.add_argument("file", metavar="FILE", help="a file made by 'invitesrvctl backup'")
    command.set_defaults(run=restore, opensStore=False, createsDatabase=True)
