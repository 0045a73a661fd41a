//! The one schema-migration pattern of the device store and both station
//! engines. Each keeps its steps as numbered files (`NNNN_name.sql`, step N
//! upgrades version N-1 to N) included into a [`Migrations`] list; it
//! records its version (`PRAGMA user_version` on SQLite, a `schema_version`
//! row on PostgreSQL), runs the pending steps with the version bump in a
//! transaction (one per step on SQLite; all of them in one on PostgreSQL,
//! where DDL is transactional), and refuses a schema written by a newer
//! build before touching anything.
//!
//! Why not `refinery` or `rusqlite_migration`: both pin rusqlite below the
//! 0.43 this workspace builds SQLCipher with (`rusqlite_migration` 2.6 wants
//! 0.40, `refinery-core` 0.10 at most 0.41), and two rusqlite versions
//! cannot link two `libsqlite3-sys` into one binary. The pattern here is
//! theirs: numbered files, a version per step, one transaction per step.

use std::path::Path;

use rusqlite::Connection;

use crate::error::{Error, Result};

/// One numbered step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The version this step brings the schema to (1 for the first).
    pub version: i64,
    pub sql: &'static str,
}

/// An ordered list of steps; index 0 upgrades an empty schema to version 1.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    steps: &'static [&'static str],
}

impl Migrations {
    pub const fn new(steps: &'static [&'static str]) -> Migrations {
        Migrations { steps }
    }

    /// The version a fully upgraded schema has.
    pub fn current(&self) -> i64 {
        self.steps.len() as i64
    }

    /// Step `version` (1-based), for upgrade tests that build an older schema.
    pub fn step(&self, version: i64) -> Option<Step> {
        let i = usize::try_from(version.checked_sub(1)?).ok()?;
        self.steps.get(i).map(|sql| Step { version, sql })
    }

    /// The steps that bring a schema at `found` up to date, or
    /// [`Error::SchemaTooNew`] for a schema from a newer build (and for a
    /// negative version, which no build writes).
    pub fn pending(&self, found: i64) -> Result<Vec<Step>> {
        let supported = self.current();
        if found > supported || found < 0 {
            return Err(Error::SchemaTooNew { found, supported });
        }
        Ok((found + 1..=supported)
            .filter_map(|v| self.step(v))
            .collect())
    }

    /// Checks a SQLite schema's `user_version` without changing anything.
    pub fn check_sqlite(&self, conn: &Connection) -> Result<i64> {
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        self.pending(found)?;
        Ok(found)
    }

    /// Brings a SQLite database (device store or station) up to date,
    /// each step and its `user_version` bump in one transaction.
    pub fn run_sqlite(&self, conn: &mut Connection) -> Result<()> {
        let found = self.check_sqlite(conn)?;
        for step in self.pending(found)? {
            let tx = conn.transaction()?;
            tx.execute_batch(step.sql)?;
            tx.pragma_update(None, "user_version", step.version)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Checks that `dir` holds exactly these steps as `NNNN_name.sql`
    /// files, numbered from 1 without gaps, each with the same text: a step
    /// added as a file but not listed (or listed out of order) fails the
    /// crate's tests instead of being skipped in the field.
    pub fn check_dir(&self, dir: &Path) -> std::result::Result<(), String> {
        let mut files: Vec<(String, String)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".sql") {
                continue;
            }
            let text = std::fs::read_to_string(entry.path())
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
            files.push((name, text));
        }
        files.sort();
        if files.len() != self.steps.len() {
            return Err(format!(
                "{} has {} step files, the list has {}",
                dir.display(),
                files.len(),
                self.steps.len()
            ));
        }
        for (i, ((name, text), sql)) in files.iter().zip(self.steps).enumerate() {
            let want = format!("{:04}_", i + 1);
            if !name.starts_with(&want) {
                return Err(format!("step {} is {name}, expected {want}*.sql", i + 1));
            }
            if text != sql {
                return Err(format!("{name} is not step {} of the list", i + 1));
            }
        }
        Ok(())
    }
}

/// A SQLite database as SQL: `PRAGMA user_version`, the schema as stored
/// in `sqlite_master`, then every row as an `INSERT` of literals. This is
/// how upgrade fixtures are saved (`core/tests/fixtures/`,
/// `tests/fixtures/station/`); loading the text with `execute_batch` gives
/// the same database back.
pub fn dump_sqlite(conn: &Connection) -> rusqlite::Result<String> {
    use rusqlite::types::ValueRef;
    let mut out = String::new();
    let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    out.push_str(&format!("PRAGMA user_version = {v};\n"));
    // Tables, then their rows, then indexes and triggers (a trigger may
    // refuse the rows' inserts; `sqlite3 .dump` keeps the same order).
    let items: Vec<(String, String, String)> = conn
        .prepare(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'
             ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 ELSE 2 END, name",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (kind, _, sql) in &items {
        if kind == "table" {
            out.push_str(sql);
            out.push_str(";\n");
        }
    }
    for (kind, name, _) in &items {
        if kind != "table" {
            continue;
        }
        let mut st = conn.prepare(&format!("SELECT * FROM \"{name}\""))?;
        let cols = st.column_count();
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let mut vals = Vec::with_capacity(cols);
            for i in 0..cols {
                vals.push(match r.get_ref(i)? {
                    ValueRef::Null => "NULL".into(),
                    ValueRef::Integer(i) => i.to_string(),
                    ValueRef::Real(f) => format!("{f:?}"),
                    ValueRef::Text(t) => {
                        format!("'{}'", String::from_utf8_lossy(t).replace('\'', "''"))
                    }
                    ValueRef::Blob(b) => format!("X'{}'", hex::encode(b)),
                });
            }
            out.push_str(&format!(
                "INSERT INTO \"{name}\" VALUES ({});\n",
                vals.join(", ")
            ));
        }
    }
    for (kind, _, sql) in &items {
        if kind != "table" {
            out.push_str(sql);
            out.push_str(";\n");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: Migrations = Migrations::new(&[
        "CREATE TABLE a (x INTEGER);",
        "ALTER TABLE a ADD COLUMN y INTEGER;",
        "CREATE TABLE b (z INTEGER);",
    ]);

    #[test]
    fn pending_steps_follow_the_recorded_version() {
        assert_eq!(STEPS.pending(0).unwrap().len(), 3);
        assert_eq!(
            STEPS
                .pending(1)
                .unwrap()
                .iter()
                .map(|s| s.version)
                .collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(STEPS.pending(3).unwrap().is_empty());
        assert!(matches!(
            STEPS.pending(4),
            Err(Error::SchemaTooNew {
                found: 4,
                supported: 3
            })
        ));
        assert!(STEPS.pending(-1).is_err());
        assert_eq!(STEPS.step(0), None);
        assert_eq!(STEPS.step(4), None);
    }

    #[test]
    fn a_failing_step_keeps_the_version_of_the_last_good_one() {
        const BAD: Migrations = Migrations::new(&[
            "CREATE TABLE a (x INTEGER);",
            "CREATE TABLE b (y INTEGER); INSERT INTO nowhere VALUES (1);",
        ]);
        let mut c = Connection::open_in_memory().unwrap();
        assert!(BAD.run_sqlite(&mut c).is_err());
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
        let b: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'b'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(b, 0, "the failed step left nothing behind");
        STEPS.run_sqlite(&mut c).unwrap();
        assert_eq!(STEPS.check_sqlite(&c).unwrap(), 3);
    }

    #[test]
    fn a_dump_loads_back_into_the_same_database() {
        let mut c = Connection::open_in_memory().unwrap();
        STEPS.run_sqlite(&mut c).unwrap();
        c.execute_batch(
            "CREATE INDEX a_y ON a (y);
             INSERT INTO a VALUES (1, NULL), (-7, 3);
             CREATE TABLE t (s TEXT, b BLOB, r REAL);
             INSERT INTO t VALUES ('it''s\nhere', x'00ff', 0.1), (NULL, x'', -2.5e300);
             CREATE TRIGGER t_append_only BEFORE DELETE ON t BEGIN SELECT RAISE(ABORT, 'no'); END;",
        )
        .unwrap();
        let dump = dump_sqlite(&c).unwrap();
        let d = Connection::open_in_memory().unwrap();
        d.execute_batch(&dump).unwrap();
        assert_eq!(dump_sqlite(&d).unwrap(), dump);
        assert_eq!(STEPS.check_sqlite(&d).unwrap(), 3);
        let s: String = d
            .query_row("SELECT s FROM t WHERE s IS NOT NULL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(s, "it's\nhere");
    }

    #[test]
    fn the_step_files_must_match_the_list() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("0001_a.sql"), STEPS.steps[0]).unwrap();
        std::fs::write(d.path().join("0002_b.sql"), STEPS.steps[1]).unwrap();
        assert!(STEPS
            .check_dir(d.path())
            .unwrap_err()
            .contains("2 step files"));
        std::fs::write(d.path().join("0004_c.sql"), STEPS.steps[2]).unwrap();
        assert!(STEPS
            .check_dir(d.path())
            .unwrap_err()
            .contains("expected 0003_"));
        std::fs::remove_file(d.path().join("0004_c.sql")).unwrap();
        std::fs::write(d.path().join("0003_c.sql"), "edited").unwrap();
        assert!(STEPS
            .check_dir(d.path())
            .unwrap_err()
            .contains("not step 3"));
        std::fs::write(d.path().join("0003_c.sql"), STEPS.steps[2]).unwrap();
        STEPS.check_dir(d.path()).unwrap();
    }
}
