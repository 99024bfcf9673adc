-- invitesrv schema, version 1.

CREATE TABLE accounts (
    host        TEXT NOT NULL,
    username    TEXT NOT NULL,
    created     REAL NOT NULL,
    roster_version INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (host, username)
);

CREATE TABLE credentials (
    host        TEXT NOT NULL,
    username    TEXT NOT NULL,
    mechanism   TEXT NOT NULL,
    salt        BLOB NOT NULL,
    iterations  INTEGER NOT NULL,
    stored_key  BLOB NOT NULL,
    server_key  BLOB NOT NULL,
    PRIMARY KEY (host, username, mechanism),
    FOREIGN KEY (host, username) REFERENCES accounts ON DELETE CASCADE
);

CREATE TABLE roles (
    host        TEXT NOT NULL,
    username    TEXT NOT NULL,
    role        TEXT NOT NULL,
    PRIMARY KEY (host, username, role),
    FOREIGN KEY (host, username) REFERENCES accounts ON DELETE CASCADE
);

-- Removed items stay as tombstones (subscription 'remove') so that roster
-- versioning can send them as changes.
CREATE TABLE roster_items (
    host        TEXT NOT NULL,
    username    TEXT NOT NULL,
    contact     TEXT NOT NULL,
    name        TEXT,
    subscription TEXT NOT NULL
        CHECK (subscription IN ('none', 'to', 'from', 'both', 'remove')),
    ask         INTEGER NOT NULL DEFAULT 0,
    approved    INTEGER NOT NULL DEFAULT 0,
    groups      TEXT NOT NULL DEFAULT '[]',
    version     INTEGER NOT NULL,
    PRIMARY KEY (host, username, contact),
    FOREIGN KEY (host, username) REFERENCES accounts ON DELETE CASCADE
);

CREATE TABLE pending_in (
    host        TEXT NOT NULL,
    username    TEXT NOT NULL,
    contact     TEXT NOT NULL,
    stanza      TEXT NOT NULL,
    PRIMARY KEY (host, username, contact),
    FOREIGN KEY (host, username) REFERENCES accounts ON DELETE CASCADE
);

CREATE TABLE offline_messages (
    id          INTEGER PRIMARY KEY,
    host        TEXT NOT NULL,
    username    TEXT NOT NULL,
    stamp       REAL NOT NULL,
    stanza      TEXT NOT NULL,
    FOREIGN KEY (host, username) REFERENCES accounts ON DELETE CASCADE
);
CREATE INDEX offline_messages_owner ON offline_messages (host, username, id);

-- Only a SHA-256 of each token is kept: a leaked database holds no usable invite.
CREATE TABLE invites (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    token_hash  BLOB NOT NULL UNIQUE,
    kind        TEXT NOT NULL CHECK (kind IN ('account', 'contact', 'reset')),
    username    TEXT,
    inviter     TEXT,
    allow_registration INTEGER NOT NULL,
    uses_allowed INTEGER,
    uses        INTEGER NOT NULL DEFAULT 0,
    reserved    INTEGER NOT NULL DEFAULT 0,
    created     REAL NOT NULL,
    expires     REAL NOT NULL,
    revoked     REAL,
    roles       TEXT NOT NULL DEFAULT '[]',
    groups      TEXT NOT NULL DEFAULT '[]',
    note        TEXT NOT NULL DEFAULT '',
    source      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX invites_by_host ON invites (host, created);
CREATE INDEX invites_by_username ON invites (host, username);

-- The audit outlives the invite it speaks of.
CREATE TABLE invite_uses (
    id          INTEGER PRIMARY KEY,
    invite_id   TEXT NOT NULL,
    host        TEXT NOT NULL,
    used_at     REAL NOT NULL,
    username    TEXT NOT NULL,
    path        TEXT NOT NULL,
    address     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX invite_uses_by_invite ON invite_uses (invite_id);

CREATE TABLE api_keys (
    key_id      TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    host        TEXT NOT NULL,
    name        TEXT NOT NULL,
    created     REAL NOT NULL
);
