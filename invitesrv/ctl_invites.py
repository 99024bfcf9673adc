"""
C{invitesrvctl invite …}: create, list, show and revoke invites.

The commands use the same L{InviteManager} as the server, on the same
database, so quotas, username reservations and expiry rules are the ones the
server applies. A token exists only at creation: C{create} prints its URI and
landing URL (and, with C{--qr}, a QR code in the terminal); afterwards an
invite is known by its id, which redeems nothing.
"""

from __future__ import annotations

import argparse
import sys

import segno
from twisted.internet import defer
from twisted.words.protocols.jabber import jid

from invitesrv.config import Duration
from invitesrv.ctl import CommandError
from invitesrv.host import ADMIN_ROLE
from invitesrv.invites import MAX_EXPIRY, STATUSES, InviteError, InviteManager, isoTime
from invitesrv.registrar import RegistrationError, prepareUsername


def usesAllowed(text: str) -> int | None:
    """C{--uses}: a number of 1 or more, or C{unlimited} (until it expires)."""
    if text.lower() == "unlimited":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("expected a number of 1 or more, or 'unlimited'")
    return value


def expiry(text: str) -> float:
    """C{--expires}: a duration such as C{90m}, C{1h}, C{7d} or C{4w}."""
    try:
        value = Duration.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not 0 < value <= MAX_EXPIRY:
        raise argparse.ArgumentTypeError("expected a duration between 1s and 365d")
    return float(value)


def username(text: str) -> str:
    try:
        return prepareUsername(text)
    except RegistrationError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def hostAndUser(server, address: str):
    """C{HOST_OR_JID}: the served host, and the username when a JID was given."""
    try:
        parsed = jid.JID(address)
    except (jid.InvalidFormat, UnicodeError):
        raise CommandError(f"{address!r} is not a host name or a JID") from None
    host = server.hosts.get(parsed.host)
    if host is None:
        raise CommandError(f"unknown host {parsed.host!r} (served: {', '.join(server.hosts)})")
    if parsed.resource:
        raise CommandError(f"{address!r}: give a host or user@host, without a resource")
    user = None
    if parsed.user:
        try:
            user = prepareUsername(parsed.user)
        except RegistrationError as e:
            raise CommandError(str(e)) from None
    return host, user


def describe(invite) -> str:
    """What an invite does, in a few words."""
    if invite.kind == "reset":
        return f"reset {invite.username}"
    if invite.kind == "contact":
        return f"contact of {invite.inviter}" + (" + account" if invite.allowRegistration else "")
    return f"account {invite.username}" if invite.username else "account"


def printQR(data: str) -> None:
    segno.make(data).terminal(out=sys.stdout, compact=True)


@defer.inlineCallbacks
def create(server, args):
    host, boundUser = hostAndUser(server, args.host)
    if boundUser and (args.user or args.reset or args.contact):
        raise CommandError("give the username either in the JID or with --user/--reset/--contact")
    name = args.user or boundUser
    if args.allow_registration and not args.contact:
        raise CommandError("--allow-registration goes with --contact")
    if args.admin and (args.reset or (args.contact and not args.allow_registration)):
        raise CommandError("--admin applies only to invites that create an account")
    if (name or args.reset) and args.uses != 1:
        raise CommandError("an invite for one username can be used only once")
    if args.welcome and args.reset:
        raise CommandError("--welcome goes with invites that bring someone new")
    roles = (ADMIN_ROLE,) if args.admin else ()
    circles = tuple(args.circle)
    if circles and (args.reset or args.contact):
        raise CommandError("--circle applies only to account invites")
    if args.room and not args.contact:
        raise CommandError("--room goes with --contact")
    for circle in circles:
        if (yield host.store.getCircle(host.name, circle)) is None:
            raise CommandError(f"no circle named {circle!r} on {host.name}")
    manager = InviteManager(host)
    try:
        if args.reset:
            created = yield manager.createReset(args.reset, ttl=args.expires, note=args.note,
                                                source="cli")
        elif args.contact:
            created = yield manager.createContact(args.contact, args.allow_registration,
                                                  usesAllowed=args.uses, ttl=args.expires,
                                                  roles=roles, note=args.note, source="cli",
                                                  welcome=args.welcome, room=args.room or "")
        else:
            created = yield manager.createAccount(name, usesAllowed=args.uses, ttl=args.expires,
                                                  roles=roles, groups=circles, note=args.note,
                                                  source="cli", welcome=args.welcome)
    except InviteError as e:
        raise CommandError(str(e)) from None
    invite = created.invite
    uses = "unlimited uses" if invite.usesAllowed is None else (
        "1 use" if invite.usesAllowed == 1 else f"{invite.usesAllowed} uses")
    print(f"Invite {invite.id}: {describe(invite)}, {uses}, valid until {isoTime(invite.expires)}")
    print(f"URI:  {created.uri}")
    if created.landing:
        print(f"Link: {created.landing}")
    if args.qr:
        printQR(created.landing or created.uri)


@defer.inlineCallbacks
def listInvites(server, args):
    names = [args.hostname] if args.hostname else list(server.hosts)
    rows = []
    for name in names:
        host = server.hosts.get(name)
        if host is None:
            raise CommandError(f"unknown host {name!r}")
        now = host.now()
        for invite in (yield InviteManager(host).list(args.status)):
            used = f"{invite.uses}/{'∞' if invite.usesAllowed is None else invite.usesAllowed}"
            rows.append((invite.id, name, describe(invite), used, isoTime(invite.expires),
                         invite.status(now), invite.note))
    if not rows:
        print("No invites")
        return
    header = ("ID", "HOST", "WHAT", "USES", "EXPIRES", "STATUS", "NOTE")
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@defer.inlineCallbacks
def findInvite(server, inviteId: str):
    for host in server.hosts.values():
        invite = yield InviteManager(host).get(inviteId)
        if invite is not None:
            return host, invite
    raise CommandError(f"no invite {inviteId!r}")


@defer.inlineCallbacks
def show(server, args):
    host, invite = yield findInvite(server, args.id)
    uses = "unlimited" if invite.usesAllowed is None else str(invite.usesAllowed)
    lines = [
        ("Invite", invite.id), ("Host", invite.host), ("What", describe(invite)),
        ("Status", invite.status(host.now())), ("Created", isoTime(invite.created)),
        ("Expires", isoTime(invite.expires)), ("Uses", f"{invite.uses} of {uses}"),
        ("Reserved", str(invite.reserved)), ("Roles", ", ".join(invite.roles) or "-"),
        ("Groups", ", ".join(invite.groups) or "-"), ("Room", invite.room or "-"),
        ("Source", invite.source or "-"),
        ("Note", invite.note or "-"), ("Welcome", invite.welcome or "-"),
    ]
    if invite.revoked is not None:
        lines.append(("Revoked", isoTime(invite.revoked)))
    for label, value in lines:
        print(f"{label + ':':<10}{value}")
    for use in invite.uses_log:
        where = f" from {use['address']}" if use["address"] else ""
        print(f"Used:     {isoTime(use['used_at'])} by {use['username'] or '?'}"
              f" via {use['path']}{where}")


@defer.inlineCallbacks
def revoke(server, args):
    host, invite = yield findInvite(server, args.id)
    if not (yield InviteManager(host).revoke(invite.id)):
        raise CommandError(f"invite {invite.id} is not pending ({invite.status(host.now())})")
    print(f"Revoked invite {invite.id}")


def addInviteCommands(commands) -> None:
    """Add C{invite create|list|show|revoke} to C{invitesrvctl}'s sub-commands."""
    invite = commands.add_parser("invite", help="create, list, show and revoke invites")
    sub = invite.add_subparsers(dest="inviteCommand", required=True, metavar="ACTION")

    command = sub.add_parser("create", help="create an invite and print its URI and link")
    kind = command.add_mutually_exclusive_group()
    kind.add_argument("--user", type=username, metavar="NAME",
                      help="only this username may be registered (and it is held for it)")
    kind.add_argument("--reset", type=username, metavar="NAME",
                      help="a password reset for this existing account")
    kind.add_argument("--contact", type=username, metavar="USER",
                      help="a contact invite (XEP-0379) from this user")
    command.add_argument("--allow-registration", action="store_true",
                         help="with --contact: the invite also creates an account")
    command.add_argument("--uses", type=usesAllowed, default=1, metavar="N|unlimited",
                         help="how many times it may be used (default 1)")
    command.add_argument("--expires", type=expiry, default=None, metavar="DURATION",
                         help="valid for this long, e.g. 1h, 7d, 4w (default: invite_expiry)")
    command.add_argument("--admin", action="store_true", help="the new account is an admin")
    command.add_argument("--room", metavar="JID",
                         help="with --contact: a room the inviter owns, into which the redeemer"
                              " is invited")
    command.add_argument("--circle", action="append", default=[], metavar="NAME",
                         help="the new account joins this circle (may be repeated)")
    command.add_argument("--note", default="", metavar="TEXT", help="a note for admins")
    command.add_argument("--welcome", default="", metavar="TEXT",
                         help="a welcome text for whoever accepts it (shown on the landing page"
                              " and sent to the new account)")
    command.add_argument("--qr", action="store_true", help="also print a QR code of the link")
    command.add_argument("host", metavar="HOST_OR_JID",
                         help="the host, or user@host for an invite bound to that username")
    command.set_defaults(run=create)

    command = sub.add_parser("list", help="list invites")
    command.add_argument("--status", choices=STATUSES, help="only invites in this state")
    command.add_argument("hostname", nargs="?", metavar="HOST", help="only this host")
    command.set_defaults(run=listInvites)

    command = sub.add_parser("show", help="show one invite and its uses")
    command.add_argument("id", metavar="ID", help="the invite's id, as 'invite list' prints it")
    command.set_defaults(run=show)

    command = sub.add_parser("revoke", help="revoke a pending invite")
    command.add_argument("id", metavar="ID", help="the invite's id, as 'invite list' prints it")
    command.set_defaults(run=revoke)
