"""
C{invitesrvctl import prosody DATA_DIR}: move accounts from Prosody 0.12.

It reads Prosody's internal storage (L{invitesrv.prosodydata}) and writes
through the store interface, so it works on any backend. For each host of the
Prosody data directory that this invitesrv serves it imports every account
with its password keys, roster, pending subscription requests, offline
messages, PEP nodes (with their access models and items: avatars, OMEMO
keys, bookmarks, nick...) and vCard, each account in one transaction, then
the pending invites of mod_invites (their tokens are hashed: the links
already sent keep working).

An account that already exists in invitesrv is never overwritten: it is
skipped and said so, with everything it owns in Prosody. So the command can be
run again after a failure, or after Prosody ran a little longer: it adds what
is new and changes nothing else. Stores invitesrv has no place for yet
(archives, private XML...) are counted and reported as skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import sys

from twisted.internet import defer

from invitesrv.ctl import CommandError
from invitesrv.host import moduleOptions
from invitesrv.invites import hashToken
from invitesrv.modules.pep import PepModule
from invitesrv.modules.vcard import VcardModule
from invitesrv.prosodydata import ProsodyDataDir, ProsodyDataError, tokenLabel
from invitesrv.store.interfaces import AccountExists, NewAccount, UsernameReserved

DESCRIPTION = """\
Reads Prosody's internal storage (the data_path directory) and imports, for
each of its hosts that this invitesrv serves, every account with its
password, roster, pending subscription requests, offline messages, PEP nodes
and items (avatars, OMEMO keys, bookmarks, nick, with their access models)
and vCard (each account in one transaction), then the pending invites of
mod_invites, whose links keep working. An account that exists in invitesrv
already is never overwritten: it is skipped and reported, so the command can
be run again. Stores invitesrv cannot keep yet (archives, private XML...)
are counted and reported as skipped.
"""

EPILOG = """\
Stop Prosody first (its files must not change while they are read), and
import into hosts nobody uses yet, before invitesrv serves them (or restart
invitesrv afterwards). Passwords: Prosody 0.12 keeps SCRAM-SHA-1 keys only,
and SCRAM-SHA-256 keys cannot be made from them, so while any account of a
host has SHA-1 keys only, that host offers SCRAM-SHA-1 (and PLAIN over TLS),
as Prosody did. An account gets SHA-256 keys at its first PLAIN login or new
password; when all have them, SCRAM-SHA-256 is offered again. Exit status 1
when some data could not be read or written (the lines starting 'error:').
"""

# Prosody stores invitesrv has no storage for yet, and what they hold.
KNOWN_STORES = {"vcard_muc": "group chat vCards", "archive": "message archives", "private": "private XML",
                "blocklist": "block lists", "muc_log": "group chat logs"}


class ImportReport:
    """What an import did, and did not do, per host; printed at the end."""

    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}
        self.skipped: list[str] = []
        self.errors: list[str] = []

    def add(self, host: str, what: str, count: int = 1) -> None:
        counts = self.counts.setdefault(host, {})
        counts[what] = counts.get(what, 0) + count

    def print(self, dryRun: bool) -> None:
        verb = "would be imported" if dryRun else "imported"
        for host, counts in self.counts.items():
            print(f"{host}: {counts.get('accounts', 0)} accounts, {counts.get('roster', 0)} roster"
                  f" items, {counts.get('pending', 0)} pending subscription requests,"
                  f" {counts.get('offline', 0)} offline messages, {counts.get('vcards', 0)} vCards,"
                  f" {counts.get('pep', 0)} PEP nodes with {counts.get('items', 0)} items,"
                  f" {counts.get('invites', 0)} invites {verb}")
        for line in self.skipped:
            print(f"skipped: {line}")
        for line in self.errors:
            print(f"error: {line}", file=sys.stderr)


def describeStore(name: str) -> str:
    kind = KNOWN_STORES.get(name) or next(
        (what for prefix, what in KNOWN_STORES.items() if name.startswith(prefix + "_")), None)
    return f"{kind} (store {name})" if kind else f"store {name}"


@defer.inlineCallbacks
def importAccount(host, source: ProsodyDataDir, username: str, path, report: ImportReport,
                  dryRun: bool):
    """Read one account and write it, with all it owns, in one transaction."""
    where = f"{username}@{host.name}"
    store = host.store
    if (yield store.accountExists(host.name, username)):
        report.skipped.append(f"{where}: the account exists in invitesrv (left unchanged)")
        return
    try:
        account = source.account(
            host.name, username, path, host.config.scram_iterations,
            moduleOptions(PepModule, "pep", host.config, host.name),
            moduleOptions(VcardModule, "vcard", host.config, host.name))
    except ProsodyDataError as e:
        report.errors.append(f"{where}: {e}")
        return
    report.skipped.extend(f"{where}: {line}" for line in account.skipped)
    if not dryRun:
        try:
            yield store.createAccount(NewAccount(
                host.name, account.username, account.credentials,
                rosterItems=tuple((account.username, item) for item in account.rosterItems),
                now=host.now(), pendingIn=tuple(account.pendingIn), offline=tuple(account.offline),
                pep=tuple(account.pep), accountXML=tuple(account.accountXML)))
        except AccountExists:
            report.skipped.append(f"{where}: the account exists in invitesrv (left unchanged)")
            return
        except UsernameReserved:
            report.errors.append(f"{where}: a pending invitesrv invite holds this username")
            return
    report.add(host.name, "accounts")
    report.add(host.name, "roster", len(account.rosterItems))
    report.add(host.name, "pending", len(account.pendingIn))
    report.add(host.name, "offline", len(account.offline))
    report.add(host.name, "vcards", len(account.accountXML))
    report.add(host.name, "pep", len(account.pep))
    report.add(host.name, "items", sum(len(node.items) for node in account.pep))


@defer.inlineCallbacks
def importInvites(host, source: ProsodyDataDir, report: ImportReport, dryRun: bool):
    """The host's pending mod_invites invites, under the SHA-256 of their tokens."""
    store = host.store
    try:
        invites, skipped = source.invites(host.name, host.now())
    except ProsodyDataError as e:
        report.errors.append(f"invites of {host.name}: {e}")
        return
    report.skipped.extend(f"{host.name}: {line}" for line in skipped)
    for invite, token in invites:
        label = f"{host.name}: invite {tokenLabel(token)}"
        tokenHash = hashToken(token)
        if (yield store.findInvite(tokenHash)) is not None:
            report.skipped.append(f"{label}: already imported")
            continue
        needed = invite.inviter if invite.kind == "contact" else (
            invite.username if invite.kind == "reset" else None)
        if needed and not (yield store.accountExists(host.name, needed)) and not dryRun:
            report.skipped.append(f"{label}: no account {needed}@{host.name}")
            continue
        if invite.kind == "account" and invite.username and not dryRun and (
                yield store.accountExists(host.name, invite.username)):
            report.skipped.append(f"{label}: the account {invite.username} exists")
            continue
        if not dryRun:
            invite = dataclasses.replace(invite, id=secrets.token_hex(6), note="from Prosody")
            yield store.createInvite(invite, tokenHash)
        report.add(host.name, "invites")


@defer.inlineCallbacks
def importProsody(server, args):
    try:
        source = ProsodyDataDir(args.datadir)
    except ProsodyDataError as e:
        raise CommandError(str(e)) from None
    report = ImportReport()
    what = "Checking" if args.dry_run else "Importing"
    print(f"{what} Prosody data in {source.path.resolve()} into {server.config.databasePath}")
    for name in source.hostDirs:
        host = server.hosts.get(name)
        if host is None:
            report.skipped.append(f"host {name}: not served by this invitesrv (add it to the"
                                  " config's hosts to import it)")
            continue
        report.add(name, "accounts", 0)
        for username, path in source.users(name).items():
            yield importAccount(host, source, username, path, report, args.dry_run)
        yield importInvites(host, source, report, args.dry_run)
        for store, count in source.otherStores(name).items():
            report.skipped.append(f"{name}: {describeStore(store)}: {count} file(s); invitesrv"
                                  " has no storage for them yet")
    report.print(args.dry_run)
    if report.errors:
        raise CommandError(f"{len(report.errors)} item(s) could not be imported (see above)")


def addImportCommands(commands) -> None:
    """Add C{import prosody DATA_DIR} to C{invitesrvctl}'s sub-commands."""
    command = commands.add_parser("import", help="import accounts from another server")
    sub = command.add_subparsers(dest="importFrom", required=True, metavar="SERVER")
    command = sub.add_parser(
        "prosody", help="a Prosody 0.12 data directory (internal storage)",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_argument("datadir", metavar="DATA_DIR",
                         help="Prosody's data_path, e.g. /var/lib/prosody")
    command.add_argument("--dry-run", action="store_true",
                         help="read everything and report what would be imported; write nothing")
    command.set_defaults(run=importProsody, createsDatabase=True)
