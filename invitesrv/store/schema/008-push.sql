-- invitesrv schema, version 8: XEP-0357 push registrations, one row per app
-- server and node, deleted with their account.

CREATE TABLE push_registrations (
    host        TEXT NOT NULL,
    username    TEXT NOT NULL,
    service     TEXT NOT NULL,
    node        TEXT NOT NULL,
    options     TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (host, username, service, node),
    FOREIGN KEY (host, username) REFERENCES accounts ON DELETE CASCADE
);
