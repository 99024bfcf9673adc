-- invitesrv schema, version 4: what an invite says to people. The inviter's
-- own welcome text for whoever accepts it, and when the inviter was reminded
-- that it is about to expire unused (NULL: not yet).
ALTER TABLE invites ADD COLUMN welcome TEXT NOT NULL DEFAULT '';
ALTER TABLE invites ADD COLUMN reminded REAL;
