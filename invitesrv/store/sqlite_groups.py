"""
Group chat rooms, their archives and circles in SQLite (L{IRooms},
L{ICircles}): a part of L{invitesrv.store.sqlite.SQLiteStore}, which runs
each call as one transaction on its worker thread.
"""

from __future__ import annotations

import json

from invitesrv.store.interfaces import (
    ArchivedRoomMessage,
    ArchiveItemNotFound,
    Circle,
    CircleExists,
    StoredRoom,
    joinedCircle,
    leftCircle,
)


def _archived(row) -> ArchivedRoomMessage:
    return ArchivedRoomMessage(id=row[0], stamp=row[1], sender=row[2], occupant=row[3],
                               stanza=row[4])


class GroupsSQL:
    """Rooms, their archives and circles in SQLite (L{IRooms}, L{ICircles}), mixed into the store."""

    # -- rooms --------------------------------------------------------------

    def saveRoom(self, room: StoredRoom):
        def save(conn):
            conn.execute(
                "INSERT INTO muc_rooms (service, name, config, subject, subject_by, created)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (service, name) DO UPDATE SET"
                " config = excluded.config, subject = excluded.subject,"
                " subject_by = excluded.subject_by",
                (room.service, room.name, json.dumps(room.config), room.subject, room.subjectBy,
                 room.created))
            conn.execute("DELETE FROM muc_affiliations WHERE service = ? AND name = ?",
                         (room.service, room.name))
            conn.executemany(
                "INSERT INTO muc_affiliations (service, name, jid, affiliation, reason)"
                " VALUES (?, ?, ?, ?, ?)",
                [(room.service, room.name, who, affiliation, reason)
                 for who, (affiliation, reason) in sorted(room.affiliations.items())])
        return self._run(save)

    def listRooms(self, service):
        def rooms(conn):
            affiliations: dict[str, dict] = {}
            for name, who, affiliation, reason in conn.execute(
                    "SELECT name, jid, affiliation, reason FROM muc_affiliations WHERE service = ?",
                    (service,)):
                affiliations.setdefault(name, {})[who] = (affiliation, reason)
            return [StoredRoom(service, name, json.loads(config), subject, subjectBy, created,
                               affiliations.get(name, {}))
                    for name, config, subject, subjectBy, created in conn.execute(
                        "SELECT name, config, subject, subject_by, created FROM muc_rooms"
                        " WHERE service = ? ORDER BY name", (service,))]
        return self._run(rooms)

    def deleteRoom(self, service, name):
        return self._run(lambda conn: conn.execute(
            "DELETE FROM muc_rooms WHERE service = ? AND name = ?", (service, name)).rowcount > 0)

    def archiveRoomMessage(self, service, name, message, cap):
        def archive(conn):
            conn.execute(
                "INSERT INTO muc_archive (service, name, stanza_id, stamp, sender, occupant, stanza)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (service, name, message.id, message.stamp, message.sender, message.occupant,
                 message.stanza))
            if cap:
                conn.execute(
                    "DELETE FROM muc_archive WHERE service = ? AND name = ? AND id <= ("
                    " SELECT id FROM muc_archive WHERE service = ? AND name = ?"
                    " ORDER BY id DESC LIMIT 1 OFFSET ?)", (service, name, service, name, cap))
        return self._run(archive)

    def queryRoomArchive(self, service, name, query):
        def run(conn):
            where, args = ["service = ?", "name = ?"], [service, name]

            def rowOf(stanzaId):
                row = conn.execute("SELECT id FROM muc_archive WHERE service = ? AND name = ?"
                                   " AND stanza_id = ?", (service, name, stanzaId)).fetchone()
                if row is None:
                    raise ArchiveItemNotFound(stanzaId)
                return row[0]
            if query.afterId is not None:
                where.append("id > ?")
                args.append(rowOf(query.afterId))
            if query.beforeId is not None:
                where.append("id < ?")
                args.append(rowOf(query.beforeId))
            if query.with_ is not None:
                where.append("sender = ?")
                args.append(query.with_)
            if query.start is not None:
                where.append("stamp >= ?")
                args.append(query.start)
            if query.end is not None:
                where.append("stamp <= ?")
                args.append(query.end)
            if query.ids:
                where.append(f"stanza_id IN ({', '.join('?' * len(query.ids))})")
                args.extend(query.ids)
            order = "DESC" if query.last else "ASC"
            rows = conn.execute(
                "SELECT stanza_id, stamp, sender, occupant, stanza FROM muc_archive"
                f" WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT ?",
                (*args, query.max + 1)).fetchall()
            page = [_archived(row) for row in rows[:query.max]]
            if query.last:
                page.reverse()
            return page, len(rows) <= query.max
        return self._run(run)

    def retractRoomMessage(self, service, name, stanzaId, tombstone):
        def retract(conn):
            row = conn.execute(
                "SELECT stanza_id, stamp, sender, occupant, stanza FROM muc_archive"
                " WHERE service = ? AND name = ? AND stanza_id = ?",
                (service, name, stanzaId)).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE muc_archive SET stanza = ? WHERE stanza_id = ?",
                         (tombstone, stanzaId))
            return _archived(row)
        return self._run(retract)

    # -- circles ------------------------------------------------------------

    def createCircle(self, circle: Circle):
        def create(conn):
            if conn.execute("SELECT 1 FROM circles WHERE host = ? AND name = ?",
                            (circle.host, circle.name)).fetchone():
                raise CircleExists(circle.name)
            conn.execute("INSERT INTO circles (host, name, room, created) VALUES (?, ?, ?, ?)",
                         (circle.host, circle.name, circle.room, circle.created))
        return self._run(create)

    @staticmethod
    def _getCircle(conn, host, name) -> Circle | None:
        row = conn.execute("SELECT room, created FROM circles WHERE host = ? AND name = ?",
                           (host, name)).fetchone()
        if row is None:
            return None
        members = tuple(r[0] for r in conn.execute(
            "SELECT username FROM circle_members WHERE host = ? AND circle = ? ORDER BY username",
            (host, name)))
        return Circle(host, name, row[0], row[1], members)

    def getCircle(self, host, name):
        return self._run(self._getCircle, host, name)

    def listCircles(self, host):
        return self._run(lambda conn: [
            self._getCircle(conn, host, name) for (name,) in conn.execute(
                "SELECT name FROM circles WHERE host = ? ORDER BY name", (host,)).fetchall()])

    @classmethod
    def _leave(cls, conn, host, name, username, others) -> None:
        """Undo what circle C{name} gave C{username} and each of C{others} on their rosters."""
        for owner, contact in [(username, o) for o in others] + [(o, username) for o in others]:
            item = cls._getRosterItem(conn, host, owner, f"{contact}@{host}")
            changed = leftCircle(item, name)
            if changed is None:
                cls._removeRosterItem(conn, host, owner, f"{contact}@{host}")
            elif changed is not False:
                cls._setRosterItem(conn, host, owner, changed)

    def deleteCircle(self, host, name):
        self.rosterChanging(host, None)  # every member's roster loses the others
        def delete(conn):
            circle = self._getCircle(conn, host, name)
            if circle is None:
                return None
            members = list(circle.members)
            while members:
                self._leave(conn, host, name, members.pop(), members)
            conn.execute("DELETE FROM circles WHERE host = ? AND name = ?", (host, name))
            return circle
        return self._run(delete)

    @classmethod
    def _addCircleMember(cls, conn, host, name, username):
        circle = cls._getCircle(conn, host, name)
        if circle is None or not conn.execute(
                "SELECT 1 FROM accounts WHERE host = ? AND username = ?",
                (host, username)).fetchone():
            return None
        others = [member for member in circle.members if member != username]
        conn.execute("INSERT OR IGNORE INTO circle_members (host, circle, username) VALUES (?, ?, ?)",
                     (host, name, username))
        for owner, contact in [(username, o) for o in others] + [(o, username) for o in others]:
            bare = f"{contact}@{host}"
            item = cls._getRosterItem(conn, host, owner, bare)
            cls._setRosterItem(conn, host, owner, joinedCircle(item, bare, name))
        return others

    def addCircleMember(self, host, name, username):
        self.rosterChanging(host, None)  # the newcomer's and every member's
        return self._run(self._addCircleMember, host, name, username)

    def removeCircleMember(self, host, name, username):
        self.rosterChanging(host, None)  # the leaver's and every member's
        def remove(conn):
            circle = self._getCircle(conn, host, name)
            if circle is None or username not in circle.members:
                return None
            others = [member for member in circle.members if member != username]
            self._leave(conn, host, name, username, others)
            conn.execute("DELETE FROM circle_members WHERE host = ? AND circle = ? AND username = ?",
                         (host, name, username))
            return others
        return self._run(remove)
