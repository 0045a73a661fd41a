-- 8: the transparency log (docs/log.md). Leaves in log order, the tree's
-- stored hashes (golang.org/x/mod/sumdb/tlog numbering), and every signed
-- checkpoint. A leaf is a change (change_id) or a seal of audit rows up to
-- audit_last. Append-only, as the audit log.
CREATE TABLE log_leaves (
    idx INTEGER PRIMARY KEY,
    change_id INTEGER UNIQUE,
    audit_last INTEGER,
    leaf BLOB NOT NULL
);
-- The last sealed audit row is read at every extension.
CREATE INDEX log_leaves_audit_last ON log_leaves (audit_last);
CREATE TABLE log_hashes (
    idx INTEGER PRIMARY KEY,
    hash BLOB NOT NULL
);
CREATE TABLE log_checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL
);
CREATE TRIGGER log_leaves_no_update BEFORE UPDATE ON log_leaves
    BEGIN SELECT RAISE(ABORT, 'the log is append-only'); END;
CREATE TRIGGER log_leaves_no_delete BEFORE DELETE ON log_leaves
    BEGIN SELECT RAISE(ABORT, 'the log is append-only'); END;
CREATE TRIGGER log_hashes_no_update BEFORE UPDATE ON log_hashes
    BEGIN SELECT RAISE(ABORT, 'the log is append-only'); END;
CREATE TRIGGER log_hashes_no_delete BEFORE DELETE ON log_hashes
    BEGIN SELECT RAISE(ABORT, 'the log is append-only'); END;
CREATE TRIGGER log_checkpoints_no_update BEFORE UPDATE ON log_checkpoints
    BEGIN SELECT RAISE(ABORT, 'the log is append-only'); END;
CREATE TRIGGER log_checkpoints_no_delete BEFORE DELETE ON log_checkpoints
    BEGIN SELECT RAISE(ABORT, 'the log is append-only'); END;
