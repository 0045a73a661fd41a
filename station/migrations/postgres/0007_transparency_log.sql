-- 7: the transparency log (docs/log.md). Leaves in log order, the tree's
-- stored hashes (golang.org/x/mod/sumdb/tlog numbering), and every signed
-- checkpoint. A leaf is a change (change_id) or a seal of audit rows up to
-- audit_last. Append-only, as the audit log.
CREATE TABLE log_leaves (
    idx BIGINT PRIMARY KEY,
    change_id BIGINT UNIQUE,
    audit_last BIGINT,
    leaf BYTEA NOT NULL
);
-- The last sealed audit row is read at every extension.
CREATE INDEX log_leaves_audit_last ON log_leaves (audit_last);
CREATE TABLE log_hashes (
    idx BIGINT PRIMARY KEY,
    hash BYTEA NOT NULL
);
CREATE TABLE log_checkpoints (
    size BIGINT PRIMARY KEY,
    note TEXT NOT NULL
);
CREATE TRIGGER log_leaves_no_change BEFORE UPDATE OR DELETE ON log_leaves
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER log_leaves_no_truncate BEFORE TRUNCATE ON log_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER log_hashes_no_change BEFORE UPDATE OR DELETE ON log_hashes
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER log_hashes_no_truncate BEFORE TRUNCATE ON log_hashes
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER log_checkpoints_no_change BEFORE UPDATE OR DELETE ON log_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER log_checkpoints_no_truncate BEFORE TRUNCATE ON log_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
