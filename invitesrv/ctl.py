"""
C{invitesrvctl}: accounts (and invites, API keys) from the command line.

It opens the same database as the server (SQLite in WAL mode allows both at
once) and goes through the same registrar, so every rule applies. Passwords
are read from a prompt, or from standard input when it is not a terminal;
never from the command line, where other users could read them.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from twisted.internet import defer, task
from twisted.words.protocols.jabber import jid

from invitesrv.config import ConfigError, loadConfig, withOverrides
from invitesrv.registrar import RegistrationError, prepareUsername
from invitesrv.service import InviteServer


class CommandError(Exception):
    """Ends the command with this message and exit status 1."""


def readPassword(prompt: str = "Password: ") -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("Again: ") != first:
            raise CommandError("the passwords do not match")
        return first
    line = sys.stdin.readline()
    if not line:
        raise CommandError("no password on standard input")
    return line.rstrip("\r\n")


def splitJID(server: InviteServer, address: str):
    """The virtual host and prepared username of C{address}."""
    try:
        parsed = jid.JID(address)
    except (jid.InvalidFormat, UnicodeError):
        raise CommandError(f"{address!r} is not a valid JID") from None
    host = server.hosts.get(parsed.host)
    if host is None:
        raise CommandError(f"unknown host {parsed.host!r} (served: {', '.join(server.hosts)})")
    if not parsed.user or parsed.resource:
        raise CommandError(f"{address!r} is not an account address (user@host)")
    try:
        return host, prepareUsername(parsed.user)
    except RegistrationError as e:
        raise CommandError(str(e)) from None


@defer.inlineCallbacks
def adduser(server, args):
    host, username = splitJID(server, args.jid)
    if (yield host.store.accountExists(host.name, username)):
        raise CommandError(f"account {username}@{host.name} exists")
    password = readPassword()
    try:
        yield host.registrar.register(username, password, "cli", trusted=True)
    except RegistrationError as e:
        raise CommandError(str(e)) from None
    print(f"Created {username}@{host.name}")


@defer.inlineCallbacks
def passwd(server, args):
    host, username = splitJID(server, args.jid)
    if not (yield host.store.accountExists(host.name, username)):
        raise CommandError(f"no account {username}@{host.name}")
    password = readPassword("New password: ")
    try:
        yield host.registrar.changePassword(username, password)
    except RegistrationError as e:
        raise CommandError(str(e)) from None
    print(f"Password of {username}@{host.name} changed")


@defer.inlineCallbacks
def deluser(server, args):
    host, username = splitJID(server, args.jid)
    if not (yield host.registrar.deleteAccount(username)):
        raise CommandError(f"no account {username}@{host.name}")
    print(f"Deleted {username}@{host.name}")


@defer.inlineCallbacks
def users(server, args):
    names = [args.host] if args.host else list(server.hosts)
    for name in names:
        if name not in server.hosts:
            raise CommandError(f"unknown host {name!r}")
        for username in (yield server.store.listAccounts(name)):
            print(f"{username}@{name}")


def buildParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invitesrvctl", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config", "-c", help="TOML configuration file")
    parser.add_argument("--data-dir", "-d", help="data directory (overrides the config)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    command = commands.add_parser("adduser", help="create an account (password from a prompt or stdin)")
    command.add_argument("jid", help="user@host")
    command.set_defaults(run=adduser)
    command = commands.add_parser("passwd", help="set a new password")
    command.add_argument("jid")
    command.set_defaults(run=passwd)
    command = commands.add_parser("deluser", help="delete an account and everything it owns")
    command.add_argument("jid")
    command.set_defaults(run=deluser)
    command = commands.add_parser("users", help="list accounts")
    command.add_argument("host", nargs="?")
    command.set_defaults(run=users)
    from invitesrv.ctl_invites import addInviteCommands
    addInviteCommands(commands)
    from invitesrv.ctl_apikeys import addApiKeyCommands
    addApiKeyCommands(commands)
    from invitesrv.ctl_import import addImportCommands
    addImportCommands(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = buildParser().parse_args(argv)
    try:
        config = withOverrides(loadConfig(args.config), dataDir=args.data_dir)
    except ConfigError as e:
        sys.exit(f"invitesrvctl: {e}")

    @defer.inlineCallbacks
    def run(reactor):
        server = InviteServer(config, reactor=reactor, loadModules=False)
        server.store.open(serving=False)
        try:
            yield args.run(server, args)
        except CommandError as e:
            print(f"invitesrvctl: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        finally:
            server.store.close()

    task.react(run)

if __name__ == "__main__":
    # Run the package's copy of this module, whose classes (CommandError) the
    # command modules import, rather than this __main__ copy.
    from invitesrv.ctl import main as packageMain
    packageMain()
