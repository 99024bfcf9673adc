-- invitesrv schema, version 3: XEP-0191 blocklists, one row per blocked JID,
-- deleted with their account.

CREATE TABLE blocklist (
    host        TEXT NOT NULL,
    username    TEXT NOT NULL,
    blocked     TEXT NOT NULL,
    PRIMARY KEY (host, username, blocked),
    FOREIGN KEY (host, username) REFERENCES accounts ON DELETE CASCADE
);
