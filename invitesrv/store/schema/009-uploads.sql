-- invitesrv schema, version 9: XEP-0363 HTTP uploads, one row per upload slot
-- handed out. Not tied to the accounts table: an account's files may outlive
-- it (the upload module's delete_with_account option), until they expire.
-- state: 'slot' (PUT URL handed out), 'uploading' (a PUT is being received),
-- 'stored' (the file is on disk). expires: the end of the PUT URL's life for
-- a slot, of the file's for a stored upload.

CREATE TABLE uploads (
    id            TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    username      TEXT NOT NULL,
    filename      TEXT NOT NULL,
    size          INTEGER NOT NULL,
    content_type  TEXT NOT NULL,
    created       REAL NOT NULL,
    expires       REAL NOT NULL,
    state         TEXT NOT NULL
);

CREATE INDEX uploads_owner ON uploads (host, username, created);
CREATE INDEX uploads_expires ON uploads (expires);
