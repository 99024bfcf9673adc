-- invitesrv schema, version 6: XEP-0313 message archives, XEP-0441 archive
-- preferences. All of it goes with its account.

-- One row per archived message. id is the archive's id (XEP-0359
-- stanza-id): microseconds since the epoch when the message was archived,
-- increasing on each host, so that an id is also the message's time and a
-- page of the archive, a time range and the retention sweep are all ranges
-- of one index. peer is the bare JID of the other party, resource its
-- resource (for a full-JID "with" filter).
CREATE TABLE archive (
    host        TEXT NOT NULL,
    username    TEXT NOT NULL,
    id          INTEGER NOT NULL,
    peer        TEXT NOT NULL,
    resource    TEXT NOT NULL DEFAULT '',
    stanza      TEXT NOT NULL,
    FOREIGN KEY (host, username) REFERENCES accounts ON DELETE CASCADE
);
CREATE UNIQUE INDEX archive_owner ON archive (host, username, id);
CREATE INDEX archive_peer ON archive (host, username, peer, id);
CREATE INDEX archive_age ON archive (host, id);

-- How many messages each archive holds, kept with every change, so that
-- the per-user limit costs one row read per write, not a count.
CREATE TABLE archive_sizes (
    host        TEXT NOT NULL,
    username    TEXT NOT NULL,
    items       INTEGER NOT NULL,
    PRIMARY KEY (host, username),
    FOREIGN KEY (host, username) REFERENCES accounts ON DELETE CASCADE
);

-- XEP-0441 preferences of the users who set any; JSON lists of JIDs.
CREATE TABLE archive_prefs (
    host        TEXT NOT NULL,
    username    TEXT NOT NULL,
    policy      TEXT NOT NULL CHECK (policy IN ('always', 'never', 'roster')),
    always      TEXT NOT NULL,
    never       TEXT NOT NULL,
    PRIMARY KEY (host, username),
    FOREIGN KEY (host, username) REFERENCES accounts ON DELETE CASCADE
);
