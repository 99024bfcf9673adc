"""
C{invitesrvctl migrate-store --to-dsn DSN}: an installation's SQLite data,
every table of it, copied into an empty PostgreSQL database.

The SQLite side is read under one read transaction, so the copy is one
consistent snapshot even while the server runs (what changes after it is
not copied: stop the server first to move over). The PostgreSQL side is
written in one transaction, with the schema at its latest version: the copy
is there whole or not at all, and a database holding any row is refused.
Then set C{[store] backend = "postgresql"} and C{dsn}, and start the server.
"""

from __future__ import annotations

import argparse
import sys

from invitesrv.ctl import CommandError
from invitesrv.store.sqlite import openDatabase

SCHEMA_TABLE = "invitesrv_schema"


def sqliteTables(conn) -> list[tuple[str, list[str]]]:
    """The tables of an SQLite database and their columns, in the order they were created."""
    names = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY rowid")]
    return [(name, [row[1] for row in conn.execute(f'PRAGMA table_info("{name}")')])
            for name in names]


def copyStore(source, target) -> dict[str, int]:
    """
    Copy every table of the SQLite connection C{source} into the PostgreSQL
    connection C{target} (at the latest schema, empty) in one transaction
    of each; return how many rows each table had. Raise ValueError, having
    written nothing, when the target is not empty or its tables differ.
    """
    counts = {}
    source.execute("BEGIN")  # one snapshot of every table
    try:
        tables = sqliteTables(source)
        with target.transaction():
            columns: dict[str, set[str]] = {}
            for table, column in target.execute(
                    "SELECT table_name, column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name != %s", (SCHEMA_TABLE,)):
                columns.setdefault(table, set()).add(column)
            for table, names in tables:
                if columns.get(table) != set(names):
                    raise ValueError(f"the PostgreSQL table {table} does not match SQLite's"
                                     " (is one of the two from another invitesrv version?)")
            for table in columns:
                if target.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
                    raise ValueError(f"the PostgreSQL database is not empty (table {table} has"
                                     " rows): migrate-store only fills a new database")
            # Created in dependency order, so every row's foreign key is there before it.
            for table, names in tables:
                listed = ", ".join(names)
                counts[table] = 0
                with target.cursor().copy(f"COPY {table} ({listed}) FROM STDIN") as copy:
                    for row in source.execute(f"SELECT {listed} FROM {table}"):
                        copy.write_row(row)
                        counts[table] += 1
            # Identity columns go on from the highest copied id.
            for table, column in target.execute(
                    "SELECT table_name, column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND is_identity = 'YES'").fetchall():
                target.execute(f"SELECT setval(pg_get_serial_sequence(%s, %s), MAX({column}))"
                               f" FROM {table} HAVING COUNT(*) > 0", (table, column))
    finally:
        source.execute("ROLLBACK")
    return counts


def migrateStore(server, args):
    if server.config.store.backend != "sqlite":
        raise CommandError("the configured store is not SQLite: migrate-store copies an SQLite"
                           " installation (run it with the config the SQLite server uses)")
    try:
        import psycopg

        from invitesrv.store.postgresql import upgradeSchema
    except ImportError as e:
        raise CommandError(f"PostgreSQL needs psycopg ({e}): pip install 'invitesrv[postgresql]'"
                           ) from None
    path = server.config.databasePath
    if not path.exists():
        raise CommandError(f"no database in {path.parent}")
    if args.control is not None:
        print("invitesrvctl: the server is running: changes made after this copy are not in it",
              file=sys.stderr)
    source = openDatabase(str(path))  # upgraded to this invitesrv's schema, as the server does
    try:
        with psycopg.connect(args.to_dsn, application_name="invitesrvctl") as target:
            upgradeSchema(target)
            counts = copyStore(source, target)
    except psycopg.Error as e:
        raise CommandError(f"PostgreSQL: {str(e).strip()}") from None
    except ValueError as e:
        raise CommandError(str(e)) from None
    finally:
        source.close()
    for table, count in counts.items():
        print(f"{table}\t{count}")
    print(f"Copied {sum(counts.values())} rows of {len(counts)} tables from {path}; now set"
          " [store] backend = \"postgresql\" and dsn, and start the server")


def addMigrateCommands(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "migrate-store", help="copy the SQLite database, every table, into an empty PostgreSQL one")
    command.add_argument("--to-dsn", required=True, metavar="DSN",
                         help="the PostgreSQL database (libpq connection string or URI)")
    command.set_defaults(run=migrateStore, opensStore=False)
