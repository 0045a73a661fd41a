//! Numbered schema migrations on `PRAGMA user_version`. Step N upgrades a
//! store at version N-1 to N inside one transaction. Every earlier version
//! has a saved schema in `core/tests/fixtures/` and an upgrade test.

use rusqlite::Connection;

use crate::error::{Error, Result};

/// Migration steps; index 0 upgrades version 0 (empty) to version 1.
pub const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE identity (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        device_id BLOB NOT NULL,
        secret_key BLOB NOT NULL,
        -- Highest clock seen from peers; the device's own clock and next
        -- sequence number are derived from its newest change.
        hlc_wall INTEGER NOT NULL,
        hlc_counter INTEGER NOT NULL
    );
    CREATE TABLE devices (
        device_id BLOB PRIMARY KEY,
        public_key BLOB NOT NULL,
        record TEXT NOT NULL
    );
    CREATE TABLE changes (
        id INTEGER PRIMARY KEY,
        hash BLOB NOT NULL UNIQUE,
        device_id BLOB NOT NULL,
        seq INTEGER NOT NULL,
        report_id BLOB NOT NULL,
        prev BLOB NOT NULL,
        body BLOB NOT NULL,
        signature BLOB NOT NULL,
        hlc_wall INTEGER NOT NULL,
        acked INTEGER NOT NULL DEFAULT 0,
        received_at INTEGER NOT NULL,
        UNIQUE (device_id, seq),
        UNIQUE (report_id, device_id, prev)
    );
    -- UNIQUE (report_id, device_id, prev) also serves lookups by report.
    CREATE INDEX changes_outbox ON changes (id) WHERE acked = 0;
    CREATE TABLE reports (
        report_id BLOB PRIMARY KEY,
        lifecycle TEXT NOT NULL,
        occurred_start INTEGER,
        updated_ms INTEGER NOT NULL,
        updated_counter INTEGER NOT NULL,
        conflict_count INTEGER NOT NULL,
        json TEXT NOT NULL
    );
    CREATE INDEX reports_updated ON reports (updated_ms DESC, updated_counter DESC, report_id);
    CREATE TABLE media (
        sha256 TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mime_type TEXT NOT NULL,
        stored_at INTEGER NOT NULL,
        uploaded INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE sync_state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 2: the materialised report gained the replayed lifecycle, amendments,
    // review and referral; reports listed here are rebuilt from their
    // changes when the store opens (and a later format change can reuse it).
    r#"
    CREATE TABLE rematerialise (report_id BLOB PRIMARY KEY);
    INSERT INTO rematerialise SELECT DISTINCT report_id FROM changes;
    "#,
    // 3: secrets kept inside the (encrypted) database: the media key.
    r#"
    CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    "#,
];

pub fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Refuses a store written by a newer build.
pub fn check_version(conn: &Connection) -> Result<i64> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = current_version();
    if found > supported {
        return Err(Error::SchemaTooNew { found, supported });
    }
    Ok(found)
}

/// Brings the store to the current version. Refuses (and leaves untouched)
/// a store written by a newer build.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let found = check_version(conn)?;
    for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
