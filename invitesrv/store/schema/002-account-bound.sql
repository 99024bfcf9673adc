-- invitesrv schema, version 2: what belonged to an account goes with it, and
-- look-alike usernames can be found.

-- The UTS #39 skeleton of each username (invitesrv.usernames.skeleton, an SQL
-- function of the connection): a new name is compared with the accounts that
-- share its skeleton.
ALTER TABLE accounts ADD COLUMN skeleton TEXT;
UPDATE accounts SET skeleton = username_skeleton(username);
CREATE INDEX accounts_by_skeleton ON accounts (host, skeleton);

-- Deleting an account now revokes the pending invites it made or that name
-- it. Those left pending by accounts deleted before are revoked here: reset
-- and contact invites of accounts that are gone, and invites whose creator
-- (a bare JID in source) is gone.
UPDATE invites SET revoked = CAST(strftime('%s', 'now') AS REAL)
WHERE revoked IS NULL AND expires > CAST(strftime('%s', 'now') AS REAL)
AND (uses_allowed IS NULL OR uses < uses_allowed) AND (
    (kind = 'reset' AND NOT EXISTS (SELECT 1 FROM accounts a
                                    WHERE a.host = invites.host AND a.username = invites.username))
    OR (inviter IS NOT NULL AND NOT EXISTS (SELECT 1 FROM accounts a
                                            WHERE a.host = invites.host AND a.username = invites.inviter))
    OR (source LIKE '%@%' AND NOT EXISTS (SELECT 1 FROM accounts a
                                          WHERE a.username || '@' || a.host = invites.source)));
