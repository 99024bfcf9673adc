-- invitesrv schema, version 5: the devices an account logs in from with SASL2
-- (XEP-0388 user-agent id), and each device's XEP-0484 FAST tokens. A token
-- itself is never stored: only the salt it is derived from with the
-- installation's secret. cur_* is the token in use, new_* one issued and not
-- used yet (the current one stays valid until it is). Deleted with the account.

CREATE TABLE devices (
    host         TEXT NOT NULL,
    username     TEXT NOT NULL,
    device       TEXT NOT NULL,
    software     TEXT NOT NULL DEFAULT '',
    name         TEXT NOT NULL DEFAULT '',
    last_login   REAL NOT NULL,
    cur_mechanism TEXT,
    cur_salt     BLOB,
    cur_issued   REAL,
    cur_expires  REAL,
    cur_count    INTEGER,
    new_mechanism TEXT,
    new_salt     BLOB,
    new_issued   REAL,
    new_expires  REAL,
    PRIMARY KEY (host, username, device),
    FOREIGN KEY (host, username) REFERENCES accounts ON DELETE CASCADE
);
