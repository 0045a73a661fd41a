-- 9: what outside parties said of the log's checkpoints (docs/log.md): an
-- RFC 3161 time-stamp response (kind 'timestamp', party: the authority's
-- URL, body: the DER response) or a witness's cosignature (kind
-- 'cosignature', party: the witness's name, body: its signature line).
-- Append-only, as the log.
CREATE TABLE log_attestations (
    size INTEGER NOT NULL REFERENCES log_checkpoints (size),
    kind TEXT NOT NULL CHECK (kind IN ('timestamp', 'cosignature')),
    party TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (size, kind, party)
);
CREATE INDEX log_attestations_party ON log_attestations (kind, party, size);
CREATE TRIGGER log_attestations_no_update BEFORE UPDATE ON log_attestations
    BEGIN SELECT RAISE(ABORT, 'the log is append-only'); END;
CREATE TRIGGER log_attestations_no_delete BEFORE DELETE ON log_attestations
    BEGIN SELECT RAISE(ABORT, 'the log is append-only'); END;
