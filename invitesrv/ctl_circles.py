"""
C{invitesrvctl circle create|list|add|remove|delete HOST NAME [USER]}: the
circles of a host (L{invitesrv.modules.circles}).

While the server runs, changes go through its control channel, so that the
circle's room, roster pushes and the invite into the room follow at once.
Otherwise the tool changes the database itself (memberships and roster
items, in one transaction each), and the server brings the rooms in line
at its next start.
"""

from __future__ import annotations

from twisted.internet import defer

from invitesrv import control
from invitesrv.ctl import CommandError, remote
from invitesrv.modules.circles import CircleError, CirclesModule


def circlesOf(server, name: str) -> CirclesModule:
    """The circles of host C{name}, over the tool's own store."""
    host = server.hosts.get(name)
    if host is None:
        raise CommandError(f"unknown host {name!r} (served: {', '.join(server.hosts)})")
    if "circles" not in host.modules:
        host.addModule("circles", CirclesModule())
    return host.modules["circles"]


@defer.inlineCallbacks
def change(server, args):
    circles = circlesOf(server, args.host)
    action, username = args.circleCommand, getattr(args, "user", None)
    answer = yield remote(args, control.ChangeCircle, host=args.host, action=action,
                          name=args.name, username=username)
    if answer is None:
        try:
            circle = yield (getattr(circles, action)(args.name, username) if username
                            else getattr(circles, action)(args.name))
        except CircleError as e:
            raise CommandError(str(e)) from None
        room = circle.room
    else:
        room = answer["room"]
    done = {"create": "Created circle", "delete": "Deleted circle", "add": f"Added {username} to",
            "remove": f"Removed {username} from"}[action]
    print(f"{done} {args.name!r} (room {room})")


@defer.inlineCallbacks
def listCircles(server, args):
    circles = yield circlesOf(server, args.host).list()
    if not circles:
        print("No circles")
    for circle in circles:
        print(f"{circle.name}\t{circle.room}\t{', '.join(circle.members) or '-'}")


def addCircleCommands(commands) -> None:
    """Add C{circle create|list|add|remove|delete} to C{invitesrvctl}'s sub-commands."""
    circle = commands.add_parser("circle", help="circles: groups of accounts with their own group chat")
    sub = circle.add_subparsers(dest="circleCommand", required=True, metavar="ACTION")
    for action, text in (("create", "create a circle and its room"),
                         ("delete", "delete a circle, its room and the subscriptions it gave"),
                         ("add", "add an account to a circle"),
                         ("remove", "take an account out of a circle")):
        command = sub.add_parser(action, help=text)
        command.add_argument("host", metavar="HOST")
        command.add_argument("name", metavar="NAME")
        if action in ("add", "remove"):
            command.add_argument("user", metavar="USER", help="the account's username")
        command.set_defaults(run=change)
    command = sub.add_parser("list", help="list the circles of a host with their members")
    command.add_argument("host", metavar="HOST")
    command.set_defaults(run=listCircles)
