//! The device store's schema steps (`core/migrations/NNNN_name.sql`, run
//! by [`crate::schema::Migrations`] on `PRAGMA user_version`). Every
//! earlier version has a saved store in `core/tests/fixtures/` and an
//! upgrade test.

use rusqlite::Connection;

use crate::error::Result;
use crate::schema::Migrations;

/// The device store's steps, in order.
pub const MIGRATIONS: Migrations = Migrations::new(&[
    include_str!("../../migrations/0001_initial.sql"),
    include_str!("../../migrations/0002_report_rebuild.sql"),
    include_str!("../../migrations/0003_secrets.sql"),
    include_str!("../../migrations/0004_log_receipts.sql"),
]);

pub fn current_version() -> i64 {
    MIGRATIONS.current()
}

/// Refuses a store written by a newer build.
pub fn check_version(conn: &Connection) -> Result<i64> {
    MIGRATIONS.check_sqlite(conn)
}

/// Brings the store to the current version. Refuses (and leaves untouched)
/// a store written by a newer build.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    MIGRATIONS.run_sqlite(conn)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_step_file_is_listed_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        super::MIGRATIONS.check_dir(&dir).unwrap();
    }
}
