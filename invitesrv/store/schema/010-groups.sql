-- invitesrv schema, version 10: group chats (XEP-0045) and circles.
--
-- A persistent room keeps its configuration (JSON), subject and
-- affiliations; its archive (XEP-0313) keeps one row per groupchat message,
-- found by its stanza id (XEP-0359). A circle is a named group of accounts of
-- a host with a members-only room; its members go with their account.

CREATE TABLE muc_rooms (
    service     TEXT NOT NULL,
    name        TEXT NOT NULL,
    config      TEXT NOT NULL,
    subject     TEXT NOT NULL DEFAULT '',
    subject_by  TEXT NOT NULL DEFAULT '',
    created     REAL NOT NULL,
    PRIMARY KEY (service, name)
);

CREATE TABLE muc_affiliations (
    service     TEXT NOT NULL,
    name        TEXT NOT NULL,
    jid         TEXT NOT NULL,
    affiliation TEXT NOT NULL CHECK (affiliation IN ('owner', 'admin', 'member', 'outcast')),
    reason      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (service, name, jid),
    FOREIGN KEY (service, name) REFERENCES muc_rooms ON DELETE CASCADE
);

CREATE TABLE muc_archive (
    id          INTEGER PRIMARY KEY,
    service     TEXT NOT NULL,
    name        TEXT NOT NULL,
    stanza_id   TEXT NOT NULL UNIQUE,
    stamp       REAL NOT NULL,
    sender      TEXT NOT NULL,
    occupant    TEXT NOT NULL,
    stanza      TEXT NOT NULL,
    FOREIGN KEY (service, name) REFERENCES muc_rooms ON DELETE CASCADE
);
CREATE INDEX muc_archive_room ON muc_archive (service, name, id);

-- A contact invite may bring its redeemer into a room its inviter owns.
ALTER TABLE invites ADD COLUMN room TEXT NOT NULL DEFAULT '';

CREATE TABLE circles (
    host        TEXT NOT NULL,
    name        TEXT NOT NULL,
    room        TEXT NOT NULL,
    created     REAL NOT NULL,
    PRIMARY KEY (host, name)
);

CREATE TABLE circle_members (
    host        TEXT NOT NULL,
    circle      TEXT NOT NULL,
    username    TEXT NOT NULL,
    PRIMARY KEY (host, circle, username),
    FOREIGN KEY (host, circle) REFERENCES circles ON DELETE CASCADE,
    FOREIGN KEY (host, username) REFERENCES accounts ON DELETE CASCADE
);
