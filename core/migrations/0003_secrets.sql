-- 3: secrets kept inside the (encrypted) database: the media key.
CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
