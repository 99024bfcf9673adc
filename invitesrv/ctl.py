"""
C{invitesrvctl}: accounts (and invites, API keys) from the command line.

It opens the same database as the server (SQLite in WAL mode allows both at
once) and goes through the same registrar, so every rule applies. While the
server runs, what changes live state (deleting an account, a new password)
goes through the server's control channel (L{invitesrv.control}), so the
account's sessions end at once; C{sessions}, C{kick} and C{announce} need the
running server. The hosts and public URL the server last started with come
from its record in the data dir, so no flag needs repeating. Passwords are
read from a prompt, or from standard input when it is not a terminal; never
from the command line, where other users could read them.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from twisted.internet import defer, task
from twisted.protocols import amp
from twisted.words.protocols.jabber import jid

from invitesrv import control
from invitesrv.config import ConfigError, loadConfig, withOverrides
from invitesrv.registrar import RegistrationError, prepareUsername
from invitesrv.service import PRIVATE_UMASK, InviteServer, secureDataDir
from invitesrv.store.interfaces import StoreUnavailable

DESCRIPTION = "Accounts, invites and API keys of an invitesrv server, from the command line."


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
def remote(args, command, **arguments):
    """Run a control command on the running server; fire with its answer, or None if none runs."""
    if args.control is None:
        return None
    try:
        return (yield args.control.callRemote(command, **arguments))
    except control.ControlError as e:
        raise CommandError(str(e)) from None
    except amp.RemoteAmpError as e:
        raise CommandError(f"the server failed: {e}") from None


@defer.inlineCallbacks
def passwd(server, args):
    host, username = splitJID(server, args.jid)
    if not (yield host.store.accountExists(host.name, username)):
        raise CommandError(f"no account {username}@{host.name}")
    password = readPassword("New password: ")
    answer = yield remote(args, control.ChangePassword, jid=f"{username}@{host.name}",
                          password=password)
    if answer is None:
        try:
            yield host.registrar.changePassword(username, password)
        except RegistrationError as e:
            raise CommandError(str(e)) from None
    print(f"Password of {username}@{host.name} changed")


@defer.inlineCallbacks
def deluser(server, args):
    host, username = splitJID(server, args.jid)
    answer = yield remote(args, control.DeleteUser, jid=f"{username}@{host.name}")
    deleted = answer["deleted"] if answer is not None else (
        yield host.registrar.deleteAccount(username))
    if not deleted:
        raise CommandError(f"no account {username}@{host.name}")
    print(f"Deleted {username}@{host.name}")


def requireServer(server, args) -> None:
    if args.control is None:
        raise CommandError(f"no server is running on {server.config.data_dir.resolve()}"
                           " (its control channel is not there)")


@defer.inlineCallbacks
def sessions(server, args):
    requireServer(server, args)
    if args.host and args.host not in server.hosts:
        raise CommandError(f"unknown host {args.host!r}")
    answer = yield remote(args, control.ListSessions, host=args.host)
    for entry in answer["sessions"]:
        state = f"available, priority {entry['priority']}" if entry["available"] else "not available"
        node = f"\t{entry['node']}" if entry["node"] else ""  # cluster mode: the node it is on
        print(f"{entry['jid']}\t{entry['address']}\t{state}{node}")
    clusterNotes(answer)


def clusterNotes(answer: dict) -> None:
    """Say on standard error which nodes were found gone, or that Redis could not tell."""
    for node in answer["gone"]:
        print(f"Node {node} is gone (nobody listens on its channel): its sessions are not"
              " included", file=sys.stderr)
    if answer["unsure"]:
        print("Redis did not say which nodes are alive: the other nodes' sessions are as last"
              " known", file=sys.stderr)


@defer.inlineCallbacks
def kick(server, args):
    requireServer(server, args)
    answer = yield remote(args, control.Kick, jid=args.jid, text=args.text)
    print(f"Disconnected {answer['closed']} session(s)")


@defer.inlineCallbacks
def announce(server, args):
    requireServer(server, args)
    text = args.text if args.text is not None else sys.stdin.read().strip()
    if not text:
        raise CommandError("no text to announce")
    answer = yield remote(args, control.Announce, host=args.host, text=text)
    print(f"Sent to {answer['sent']} session(s)")
    clusterNotes(answer)


@defer.inlineCallbacks
def status(server, args):
    requireServer(server, args)
    answer = yield remote(args, control.ServerInfo)
    online = yield remote(args, control.ListSessions)
    print(f"Running, pid {answer['pid']}, serving {', '.join(answer['hosts'])}")
    print(f"Public URL: {answer['publicURL'] or '(none)'}")
    print(f"Sessions: {len(online['sessions'])}")
    print(f"Counters: {answer['counters']}")


@defer.inlineCallbacks
def reload(server, args):
    requireServer(server, args)
    answer = yield remote(args, control.Reload)
    for line in answer["changes"]:
        print(line)
    if not answer["changes"]:
        print("Reloaded: no changes")


@defer.inlineCallbacks
def users(server, args):
    names = [args.host] if args.host else list(server.hosts)
    for name in names:
        if name not in server.hosts:
            raise CommandError(f"unknown host {name!r}")
        for username in (yield server.store.listAccounts(name)):
            print(f"{username}@{name}")


def buildParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invitesrvctl", description=DESCRIPTION)
    parser.add_argument("--config", "-c", help="TOML configuration file")
    parser.add_argument("--data-dir", "-d", help="data directory (overrides the config)")
    parser.add_argument("--create", action="store_true",
                        help="create a new database if the data dir has none")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    command = commands.add_parser("adduser", help="create an account (password from a prompt or stdin)")
    command.add_argument("jid", help="user@host")
    # It may create the database: a first account before the server's first start.
    command.set_defaults(run=adduser, createsDatabase=True)
    command = commands.add_parser("passwd", help="set a new password")
    command.add_argument("jid")
    command.set_defaults(run=passwd)
    command = commands.add_parser("deluser", help="delete an account and everything it owns")
    command.add_argument("jid")
    command.set_defaults(run=deluser)
    command = commands.add_parser("users", help="list accounts")
    command.add_argument("host", nargs="?", metavar="HOST", help="only this host")
    command.set_defaults(run=users)
    command = commands.add_parser("status", help="is the server running, what it serves, its counters")
    command.set_defaults(run=status)
    command = commands.add_parser("reload", help="re-read the certificates and the config's live"
                                  " parts; print the changes (running server)")
    command.set_defaults(run=reload)
    command = commands.add_parser("sessions", help="who is online, from where, on which node"
                                  " (running server; every node of a cluster)")
    command.add_argument("host", nargs="?", metavar="HOST", help="only this host")
    command.set_defaults(run=sessions)
    command = commands.add_parser("kick", help="disconnect an account's sessions (running server;"
                                  " on every node of a cluster)")
    command.add_argument("jid", metavar="JID", help="user@host (every session) or user@host/resource")
    command.add_argument("--text", default=None, help="the reason the client is shown")
    command.set_defaults(run=kick)
    command = commands.add_parser("announce", help="send a message to everyone online on a host"
                                  " (on every node of a cluster)")
    command.add_argument("host", metavar="HOST")
    command.add_argument("text", nargs="?", help="the message (default: standard input)")
    command.set_defaults(run=announce)
    from invitesrv.ctl_invites import addInviteCommands
    addInviteCommands(commands)
    from invitesrv.ctl_apikeys import addApiKeyCommands
    addApiKeyCommands(commands)
    from invitesrv.ctl_backup import addBackupCommands
    addBackupCommands(commands)
    from invitesrv.ctl_certs import addCertCommands
    addCertCommands(commands)
    from invitesrv.ctl_check import addCheckCommands
    addCheckCommands(commands)
    from invitesrv.ctl_import import addImportCommands
    addImportCommands(commands)
    from invitesrv.ctl_migrate import addMigrateCommands
    addMigrateCommands(commands)
    from invitesrv.ctl_uploads import addUploadCommands
    addUploadCommands(commands)
    from invitesrv.ctl_circles import addCircleCommands
    addCircleCommands(commands)
    parser.set_defaults(opensStore=True, createsDatabase=False, fixesDataDir=True)
    return parser


def serverConfig(args):
    """
    The config, with the hosts and public URL the server recorded at its
    last start in this data dir (they may have come from its command line).
    """
    config = withOverrides(loadConfig(args.config), dataDir=args.data_dir)
    record = control.readRecord(config.data_dir)
    if record is not None:
        config = withOverrides(config, domains=record["hosts"],
                               publicURL=record.get("public_url") or None)
    return config


def main(argv: list[str] | None = None) -> None:
    args = buildParser().parse_args(argv)
    try:
        config = serverConfig(args)
    except ConfigError as e:
        sys.exit(f"invitesrvctl: {e}")
    database = config.databasePath.resolve()
    sqlite = config.store.backend == "sqlite"  # a file in the data dir (else a database server's)
    if sqlite and args.opensStore and not database.exists() and not (args.create or args.createsDatabase):
        sys.exit(f"invitesrvctl: no database in {database.parent}: is that the server's data dir?"
                 " (give --config or --data-dir; --create starts a new one)")

    @defer.inlineCallbacks
    def run(reactor):
        if args.fixesDataDir:  # the command may be the first to create the database
            secureDataDir(config.data_dir)
        else:
            os.umask(PRIVATE_UMASK)
        server = InviteServer(config, reactor=reactor, loadModules=False)
        created = sqlite and not database.exists()
        if args.opensStore:
            try:
                server.store.open(serving=False)
            except StoreUnavailable as e:  # a database server that cannot be reached
                print(f"invitesrvctl: {e}", file=sys.stderr)
                raise SystemExit(1) from None
        args.control = yield control.connect(reactor, config.data_dir)
        state = ("a new database" if created and args.opensStore else
                 "server running" if args.control is not None else "server not running")
        print(f"invitesrvctl: data dir {database.parent} ({state})", file=sys.stderr)
        try:
            yield args.run(server, args)
            sys.stdout.flush()
        except CommandError as e:
            print(f"invitesrvctl: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        except BrokenPipeError:
            # The reader went away (| head): stop quietly, as other tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1) from None
        finally:
            if args.control is not None:
                args.control.transport.loseConnection()
            if args.opensStore:
                server.store.close()

    task.react(run)

if __name__ == "__main__":
    # Run the package's copy of this module, whose classes (CommandError) the
    # command modules import, rather than this __main__ copy.
    from invitesrv.ctl import main as packageMain
    packageMain()
