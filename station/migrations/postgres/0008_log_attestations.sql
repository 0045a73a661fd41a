-- 8: what outside parties said of the log's checkpoints (docs/log.md): an
-- RFC 3161 time-stamp response (kind 'timestamp', party: the authority's
-- URL, body: the DER response) or a witness's cosignature (kind
-- 'cosignature', party: the witness's name, body: its signature line).
-- Append-only, as the log.
CREATE TABLE log_attestations (
    size BIGINT NOT NULL REFERENCES log_checkpoints (size),
    kind TEXT NOT NULL CHECK (kind IN ('timestamp', 'cosignature')),
    party TEXT NOT NULL,
    body BYTEA NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (size, kind, party)
);
CREATE INDEX log_attestations_party ON log_attestations (kind, party, size);
CREATE TRIGGER log_attestations_no_change BEFORE UPDATE OR DELETE ON log_attestations
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER log_attestations_no_truncate BEFORE TRUNCATE ON log_attestations
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
