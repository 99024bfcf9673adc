-- invitesrv PostgreSQL schema, version 3: which server holds the invite
-- reservations (invites.reserved), so that those of a server that died
-- (its connection gone) are freed while other servers of a cluster run.
-- holder: the application_name of the server's connections.
CREATE TABLE invite_holds (
    invite_id   TEXT NOT NULL REFERENCES invites ON DELETE CASCADE,
    holder      TEXT NOT NULL,
    held        INTEGER NOT NULL CHECK (held > 0),
    PRIMARY KEY (invite_id, holder)
);
CREATE INDEX invite_holds_holder ON invite_holds (holder);
