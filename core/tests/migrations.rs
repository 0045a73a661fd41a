//! Schema upgrades: every earlier version has a saved store in
//! `tests/fixtures/store_vN.sql`; each must open, upgrade to the current
//! version, and keep every change and report. A store from a newer build is
//! refused and left byte-for-byte untouched.
//!
//! After adding migration N+1, save the current schema with data first:
//! `cargo test -p fieldreport-core --test migrations -- --ignored write_fixture`.

mod common;

use std::path::PathBuf;

use common::*;
use fieldreport_core::store::migrations::current_version;
use fieldreport_core::store::Store;
use fieldreport_core::{Error, ListQuery, Role, Value};
use rusqlite::Connection;

fn fixture(v: i64) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/store_v{v}.sql"))
}

/// Not a check: a tool run by hand after adding a migration (ignored, so
/// it never shows as a passing test).
#[test]
#[ignore = "writes tests/fixtures/store_vN.sql; run by hand after adding a migration"]
fn write_fixture_of_current_version() {
    let (_d, s) = replicas(2);
    let r = s[0].create_report().unwrap();
    sync(&s[0], &s[1]);
    s[0].set_field(r, "narrative", Value::Text("a".into()))
        .unwrap();
    s[1].set_field(r, "narrative", Value::Text("b".into()))
        .unwrap();
    s[1].add_entry(
        r,
        "force",
        vec![("type".into(), Value::Text("takedown".into()))],
    )
    .unwrap();
    sync(&s[1], &s[0]);
    let conn = Connection::open(s[0].dir().join("fieldreport.db")).unwrap();
    std::fs::write(
        fixture(current_version()),
        fieldreport_core::schema::dump_sqlite(&conn).unwrap(),
    )
    .unwrap();
}

#[test]
fn every_earlier_version_upgrades() {
    for v in 1..=current_version() {
        let path = fixture(v);
        let sql = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "missing {} (save it before adding migration {})",
                path.display(),
                v + 1
            )
        });
        let d = tempdir();
        {
            let conn = Connection::open(d.path().join("fieldreport.db")).unwrap();
            conn.execute_batch(&sql).unwrap();
        }
        let s = Store::open(d.path()).unwrap_or_else(|e| panic!("v{v} does not open: {e}"));
        let version: i64 = Connection::open(d.path().join("fieldreport.db"))
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, current_version());
        let n = s.verify_integrity().unwrap_or_else(|e| panic!("v{v}: {e}"));
        assert!(n >= 4, "v{v}: changes kept");
        s.rebuild_materialised().unwrap();
        let list = s.list_reports(&ListQuery::default()).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            list[0].conflict_count, 1,
            "v{v}: the kept conflict survives"
        );
        // The station log's tables are there, empty until a sync.
        assert_eq!(s.newest_log_checkpoint().unwrap(), None, "v{v}");
        assert!(s.receipts_of_report(list[0].id).unwrap().is_empty());
        // The upgraded store keeps working.
        s.set_field(list[0].id, "narrative", Value::Text("c".into()))
            .unwrap();

        // The same old store opened with a key (an app updated to the
        // encrypting build): upgraded and encrypted, nothing lost.
        let e = tempdir();
        {
            let conn = Connection::open(e.path().join("fieldreport.db")).unwrap();
            conn.execute_batch(&sql).unwrap();
        }
        let key = fieldreport_core::store::StoreKey::from_bytes(&[7; 32]).unwrap();
        let s = Store::open_encrypted(e.path(), key)
            .unwrap_or_else(|err| panic!("v{v} does not open with a key: {err}"));
        assert!(s.is_encrypted());
        assert_eq!(s.verify_integrity().unwrap(), n, "v{v}: encrypted copy");
        assert_eq!(s.list_reports(&ListQuery::default()).unwrap().len(), 1);
        drop(s);
        assert!(matches!(
            Store::open(e.path()),
            Err(fieldreport_core::Error::WrongKey)
        ));
    }
}

#[test]
fn fresh_store_opens_at_current_version() {
    let d = tempdir();
    Store::open(d.path()).unwrap();
    let conn = Connection::open(d.path().join("fieldreport.db")).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, current_version());
}

#[test]
fn newer_store_is_refused_and_untouched() {
    let d = tempdir();
    {
        let s = Store::open(d.path()).unwrap();
        s.create_identity(person("A", Role::Officer)).unwrap();
        let r = s.create_report().unwrap();
        s.set_field(r, "narrative", Value::Text("unsynced work".into()))
            .unwrap();
    }
    let db = d.path().join("fieldreport.db");
    {
        let conn = Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", current_version() + 1)
            .unwrap();
        conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    match Store::open(d.path()) {
        Err(Error::SchemaTooNew { found, supported }) => {
            assert_eq!(
                (found, supported),
                (current_version() + 1, current_version())
            )
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a newer store opened"),
    }
    assert!(
        std::fs::read(&db).unwrap() == before,
        "the newer store was modified"
    );
}

#[test]
fn garbage_file_is_reported_not_deleted() {
    let d = tempdir();
    let db = d.path().join("fieldreport.db");
    std::fs::write(
        &db,
        b"this is not a database, but it might be someone's work",
    )
    .unwrap();
    // Without the right key an encrypted store looks like garbage too, so
    // both are reported the same way; neither is touched.
    assert!(matches!(Store::open(d.path()), Err(Error::WrongKey)));
    let key = fieldreport_core::store::StoreKey::from_bytes(&[7; 32]).unwrap();
    assert!(matches!(
        Store::open_encrypted(d.path(), key),
        Err(Error::WrongKey)
    ));
    assert!(
        std::fs::read(&db).unwrap() == b"this is not a database, but it might be someone's work"
    );
}
