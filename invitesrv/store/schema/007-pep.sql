-- invitesrv schema, version 7: each account's XEP-0163 PEP nodes and their
-- items, and its XML kept by key (XEP-0049 private storage, the vCard);
-- all deleted with their account.

CREATE TABLE pep_nodes (
    host        TEXT NOT NULL,
    username    TEXT NOT NULL,
    node        TEXT NOT NULL,
    config      TEXT NOT NULL,          -- JSON: the node's options
    PRIMARY KEY (host, username, node),
    FOREIGN KEY (host, username) REFERENCES accounts ON DELETE CASCADE
);

CREATE TABLE pep_items (
    host        TEXT NOT NULL,
    username    TEXT NOT NULL,
    node        TEXT NOT NULL,
    item_id     TEXT NOT NULL,
    xml         TEXT NOT NULL,          -- the whole <item/>
    seq         INTEGER NOT NULL,       -- publication order within the node
    PRIMARY KEY (host, username, node, item_id),
    FOREIGN KEY (host, username, node) REFERENCES pep_nodes ON DELETE CASCADE
);

CREATE TABLE account_xml (
    host        TEXT NOT NULL,
    username    TEXT NOT NULL,
    key         TEXT NOT NULL,          -- '{namespace}name' of private XML, 'vcard-temp'
    xml         TEXT NOT NULL,
    PRIMARY KEY (host, username, key),
    FOREIGN KEY (host, username) REFERENCES accounts ON DELETE CASCADE
);
