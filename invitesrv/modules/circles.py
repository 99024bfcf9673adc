"""
Circles (as Snikket has them): a named group of a host's accounts with its
own members-only group chat. Members have mutual subscriptions with each
other (roster group: the circle's name) and are members of its room;
leaving, or deleting the circle, takes both away.

An admin manages circles with C{invitesrvctl circle}, the ad-hoc command
of L{CircleCommand} and the admin API. An account invite names circles in
its C{groups} (C{invitesrvctl invite create --circle NAME}): whoever
registers with it joins them in the transaction that creates the account
(L{onRegistering} puts them in the L{Registration}), and is then invited
into the room: the invite waits in offline storage, and the room is in
the account's bookmarks to join automatically (XEP-0402), so the group
shows at the first login, next to the circle's contacts on the roster; the
other members get roster pushes. Leaving takes the bookmark away too.

The rooms live in the group chat service (the C{muc} module): created when
a circle is, and brought in line with the circles' members when the host
starts, so that changes made with C{invitesrvctl} while no server ran, or
a crash between the two writes, leave no room out of step.
"""

from __future__ import annotations

import re
import secrets
import unicodedata

from twisted.internet import defer
from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish
from wokkel import data_form

from invitesrv.components.muc.room import RoomConfig
from invitesrv.components.muc.service import GroupsModule
from invitesrv.host import moduleOptions
from invitesrv.logs import logger
from invitesrv.modules.adhoc import CommandError, CommandResult, FormCommand
from invitesrv.modules.base import HostModule
from invitesrv.modules.private import BOOKMARK_NODE, NS_BOOKMARKS
from invitesrv.store.interfaces import Circle, CircleExists

log = logger()

MAX_NAME = 64
NODE = "urn:invitesrv:circles#manage"
ACTIONS = ("list", "create", "add", "remove", "delete")


class CircleError(Exception):
    """A circle request that cannot be done; the text says why."""


def checkName(name: str) -> str:
    """A circle's name, stripped: 1 to 64 printable characters."""
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME or any(
            unicodedata.category(c).startswith("C") for c in name):
        raise CircleError(f"a circle's name has 1 to {MAX_NAME} printable characters")
    return name


def roomName(name: str) -> str:
    """The local part of a new circle's room: its name in lower-case ASCII, and a random tail."""
    ascii = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii.lower()).strip("-")[:32] or "circle"
    return f"{slug}-{secrets.token_hex(3)}"


def circleRoomConfig(name: str) -> RoomConfig:
    """A circle's room: persistent, unlisted, members only, members see each other's addresses."""
    return RoomConfig(name=name, persistent=True, public=False, membersOnly=True, whois="anyone")


class CirclesModule(HostModule):
    """The circles of one host; see the module docstring."""

    name = "circles"
    depends = ("muc", "roster", "presence")
    hooks = (("user-registering", "onRegistering"), ("user-registered", "onRegistered"),
             ("user-deleting", "onDeleting"), ("adhoc-commands", "offeredCommands"))

    def __init__(self) -> None:
        self.synced: defer.Deferred | None = None
        self.command = CircleCommand()

    @property
    def service(self):
        """
        The host's group chat service; None when it serves no domain, or in
        C{invitesrvctl} with no server running (rooms follow at its start).
        """
        module = self.parent.modules.get("muc")
        return module.service if module is not None else None

    def connectionInitialized(self) -> None:
        HostModule.connectionInitialized(self)
        self.synced = self.syncAll()

    def offeredCommands(self, host) -> list:
        return [self.command]

    # -- rooms in step with members ------------------------------------------------

    @defer.inlineCallbacks
    def syncAll(self):
        """Bring every circle's room in line with its members (at start)."""
        service = self.service
        if service is None:
            return
        yield service.loaded
        try:
            for circle in (yield self.parent.store.listCircles(self.parent.name)):
                yield self.syncRoom(circle)
        except Exception:
            log.failure("Cannot bring the rooms of the circles of {host} up to date",
                        host=self.parent.name)

    @defer.inlineCallbacks
    def syncRoom(self, circle: Circle):
        """Create the circle's room if it is missing; members, and only they, are its members."""
        service = self.service
        if service is None:
            return None
        local = jid.JID(circle.room).user
        room = service.room(local)
        if room is None:
            room = yield service.createRoom(local, None, circleRoomConfig(circle.name))
        members = {f"{member}@{self.parent.name}" for member in circle.members}
        for who in members:
            if room.affiliation(who) == "none":
                room.setAffiliation(who, "member")
        for who, affiliation in list(room.affiliations.items()):
            if affiliation == "member" and who not in members:
                room.setAffiliation(who, "none")
        yield service.saveRoom(room)
        return room

    # -- what admins do ------------------------------------------------------------

    def roomDomain(self) -> str:
        host = self.parent
        options = moduleOptions(GroupsModule, "muc", host.config, host.name)
        return f"{options.subdomain or 'groups'}.{host.name}"

    @defer.inlineCallbacks
    def create(self, name: str):
        """Create a circle (and its room); fire with the L{Circle}."""
        name = checkName(name)
        circle = Circle(self.parent.name, name, f"{roomName(name)}@{self.roomDomain()}",
                        self.parent.now())
        try:
            yield self.parent.store.createCircle(circle)
        except CircleExists:
            raise CircleError(f"a circle named {name!r} exists") from None
        yield self.syncRoom(circle)
        log.info("Circle {name!r} of {host} created, room {room}", name=name,
                 host=self.parent.name, room=circle.room)
        return circle

    @defer.inlineCallbacks
    def delete(self, name: str):
        """Delete a circle, the roster items it gave, and its room; fire with the L{Circle}."""
        circle = yield self.parent.store.deleteCircle(self.parent.name, name)
        if circle is None:
            raise CircleError(f"no circle named {name!r}")
        service = self.service
        room = service.room(jid.JID(circle.room).user) if service is not None else None
        if room is not None:
            yield service.destroyRoom(room, reason=f"The circle {name} was deleted")
        for member in circle.members:
            yield self.pushRoster(member, [m for m in circle.members if m != member])
            yield self.unbookmark(member, circle)
        log.info("Circle {name!r} of {host} deleted", name=name, host=self.parent.name)
        return circle

    @defer.inlineCallbacks
    def add(self, name: str, username: str):
        """Put an account in a circle: subscriptions with the others, the room, an invite to it."""
        others = yield self.parent.store.addCircleMember(self.parent.name, name, username)
        if others is None:
            raise CircleError(f"no circle named {name!r} or no account {username!r}")
        circle = yield self.parent.store.getCircle(self.parent.name, name)
        yield self.joined(circle, username, others)
        return circle

    @defer.inlineCallbacks
    def remove(self, name: str, username: str):
        """Take an account out of a circle, its subscriptions with the others and the room."""
        others = yield self.parent.store.removeCircleMember(self.parent.name, name, username)
        if others is None:
            raise CircleError(f"{username!r} is not in a circle named {name!r}")
        circle = yield self.parent.store.getCircle(self.parent.name, name)
        yield self.syncRoom(circle)
        yield self.unbookmark(username, circle)
        yield self.pushRoster(username, others)
        for other in others:
            yield self.pushRoster(other, [username])
        log.info("{user} left the circle {name!r} of {host}", user=username, name=name,
                 host=self.parent.name)
        return circle

    def list(self):
        return self.parent.store.listCircles(self.parent.name)

    @defer.inlineCallbacks
    def joined(self, circle: Circle, username: str, others):
        """After C{username} joined: the room, the invite into it, and everyone's roster pushes."""
        room = yield self.syncRoom(circle)
        if room is not None:
            room.sendInvite(f"{username}@{self.parent.name}", "",
                            f"You are in the circle {circle.name}")
        yield self.bookmark(username, circle)
        yield self.pushRoster(username, others)
        for other in others:
            yield self.pushRoster(other, [username])
        presence = self.parent.modules.get("presence")
        if presence is not None:  # the new subscriptions: each side sees the other online
            for other in others:
                presence.sendCurrentPresence(username, f"{other}@{self.parent.name}")
                presence.sendCurrentPresence(other, f"{username}@{self.parent.name}")
        log.info("{user} joined the circle {name!r} of {host}", user=username, name=circle.name,
                 host=self.parent.name)

    def bookmark(self, username: str, circle: Circle):
        """The circle's room in the member's bookmarks (XEP-0402), to be joined automatically."""
        pep = self.parent.modules.get("pep")
        if pep is None:  # invitesrvctl, or PEP switched off
            return defer.succeed(None)
        conference = domish.Element((NS_BOOKMARKS, "conference"))
        conference["name"] = circle.name
        conference["autojoin"] = "true"
        conference.addElement("nick", content=username)
        return pep.publish(username, NS_BOOKMARKS, circle.room, conference, defaults=BOOKMARK_NODE)

    @defer.inlineCallbacks
    def unbookmark(self, username: str, circle: Circle):
        """Take the circle's room out of the bookmarks of someone who left it."""
        pep = self.parent.modules.get("pep")
        if pep is None:
            return
        if circle.room in dict((yield pep.items(username, NS_BOOKMARKS)) or ()):
            yield pep.retract(username, NS_BOOKMARKS, [circle.room], notify=True)

    def pushRoster(self, username: str, contacts):
        """Roster pushes of what a circle change wrote, to the user's interested resources."""
        roster = self.parent.modules.get("roster")
        if roster is None:  # invitesrvctl: the server pushes nothing it did not write
            return defer.succeed(None)
        bares = [f"{contact}@{self.parent.name}" for contact in contacts]
        return roster.pushStored(username, bares)

    # -- registrations and deletions -----------------------------------------------------

    @defer.inlineCallbacks
    def onRegistering(self, registration):
        """The circles an account invite names (its groups) are joined with the account."""
        invite = registration.invite
        if invite is None or registration.reset or not invite.groups:
            return
        for name in invite.groups:
            if (yield self.parent.store.getCircle(self.parent.name, name)) is not None:
                registration.circles.append(name)

    @defer.inlineCallbacks
    def onRegistered(self, registration):
        for name in registration.circles:
            circle = yield self.parent.store.getCircle(self.parent.name, name)
            if circle is not None:
                others = [m for m in circle.members if m != registration.username]
                yield self.joined(circle, registration.username, others)

    @defer.inlineCallbacks
    def onDeleting(self, host: str, username: str):
        """An account about to go leaves its circles' rooms (the store drops its memberships)."""
        service = self.service
        for circle in (yield self.list()):
            if username in circle.members and service is not None:
                room = service.room(jid.JID(circle.room).user)
                if room is not None:
                    room.setAffiliation(f"{username}@{host}", "none")
                    yield service.saveRoom(room)


class CircleCommand(FormCommand):
    """Admins: list, create and delete circles, add and remove their members (XEP-0050)."""

    node = NODE
    name = "Manage circles"
    adminOnly = True

    def makeForm(self, requester, session):
        form = data_form.Form("form", title="Manage circles",
                              instructions=["Create or delete a circle, or add or remove a member"])
        form.addField(data_form.Field("list-single", "action", value="list", label="Action",
                                      options={action: action for action in ACTIONS},
                                      required=True))
        form.addField(data_form.Field("text-single", "circle", label="Circle"))
        form.addField(data_form.Field("jid-single", "account", label="Account (add, remove)"))
        return form

    @defer.inlineCallbacks
    def submit(self, requester, form, session):
        host = session.host
        circles = host.modules["circles"]
        action, name = form.get("action"), form.get("circle") or ""
        account = form.get("account")
        if action not in ACTIONS:
            raise CommandError("bad-request", f"The action is one of {', '.join(ACTIONS)}",
                               "bad-payload")
        try:
            if action == "list":
                listed = yield circles.list()
                result = data_form.Form("result", title="Circles")
                result.addField(data_form.Field("text-multi", "circles", label="Circles", values=[
                    f"{c.name} ({c.room}): {', '.join(c.members) or 'no members'}" for c in listed]))
                return CommandResult.completed(result)
            if action in ("add", "remove"):
                if account is None or account.host != host.name or not account.user:
                    raise CircleError(f"give an account of {host.name}")
                yield getattr(circles, action)(name, account.user)
            else:
                yield getattr(circles, action)(name)
        except CircleError as e:
            raise CommandError("bad-request", str(e).capitalize(), "bad-payload") from None
        return CommandResult.completed(note=f"Done: {action} {name}")
