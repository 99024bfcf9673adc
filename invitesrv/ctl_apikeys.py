"""
C{invitesrvctl apikey …}: create, list and revoke keys of the admin HTTP API.

A key belongs to one virtual host and acts only on it. C{create} prints the
key (C{KEYID.SECRET}) once: only a SHA-256 of the secret is stored, so a
lost key cannot be shown again, only revoked and replaced.
"""

from __future__ import annotations

from twisted.internet import defer

from invitesrv.ctl import CommandError
from invitesrv.invites import isoTime
from invitesrv.web.api import hashSecret, newApiKey


@defer.inlineCallbacks
def create(server, args):
    host = server.hosts.get(args.host)
    if host is None:
        raise CommandError(f"unknown host {args.host!r} (served: {', '.join(server.hosts)})")
    keyId, secret = newApiKey()
    yield server.store.createApiKey(keyId, hashSecret(secret), host.name, args.name, host.now())
    print(f"API key {keyId} for {host.name}" + (f" ({args.name})" if args.name else ""))
    print("Send it as: Authorization: Bearer <key>. It is shown only now; keep it safe.")
    print(f"{keyId}.{secret}")


@defer.inlineCallbacks
def listKeys(server, args):
    if args.hostname and args.hostname not in server.hosts:
        raise CommandError(f"unknown host {args.hostname!r}")
    rows = [row for row in (yield server.store.listApiKeys())
            if args.hostname is None or row[1] == args.hostname]
    if not rows:
        print("No API keys")
        return
    header = ("KEY ID", "HOST", "CREATED", "NAME")
    table = [header] + [(keyId, host, isoTime(created), name) for keyId, host, name, created in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@defer.inlineCallbacks
def revoke(server, args):
    keyId = args.keyid.split(".", 1)[0]  # a whole key pasted by mistake: use only its id
    if not (yield server.store.deleteApiKey(keyId)):
        raise CommandError(f"no API key {keyId!r}")
    print(f"Revoked API key {keyId}")


def addApiKeyCommands(commands) -> None:
    """Add C{apikey create|list|revoke} to C{invitesrvctl}'s sub-commands."""
    apikey = commands.add_parser("apikey", help="create, list and revoke admin API keys")
    sub = apikey.add_subparsers(dest="apikeyCommand", required=True, metavar="ACTION")

    command = sub.add_parser("create", help="create a key for a host and print it once")
    command.add_argument("--name", default="", help="what the key is for, e.g. the portal")
    command.add_argument("host", metavar="HOST")
    command.set_defaults(run=create)

    command = sub.add_parser("list", help="list keys (never their secrets)")
    command.add_argument("hostname", nargs="?", metavar="HOST", help="only this host")
    command.set_defaults(run=listKeys)

    command = sub.add_parser("revoke", help="delete a key: requests with it fail at once")
    command.add_argument("keyid", metavar="KEYID")
    command.set_defaults(run=revoke)
