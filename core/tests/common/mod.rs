//! Helpers shared by the core's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use fieldreport_core::store::Store;
use fieldreport_core::{Person, Role};

/// A temporary directory, on tmpfs when there is one (fsync is cheap there).
pub fn tempdir() -> tempfile::TempDir {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(&shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

pub fn person(name: &str, role: Role) -> Person {
    Person {
        name: name.into(),
        star_number: format!("{}", name.len() * 1111),
        role,
        unit: "District 9".into(),
    }
}

/// The system clock plus a fixed offset (a phone set wrong).
pub struct Skewed(pub i64);

impl fieldreport_core::store::WallClock for Skewed {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis() + self.0
    }
}

/// About 80 years, in ms: a phone set to the next century.
pub const EIGHTY_YEARS_MS: i64 = 80 * 36525 * 24 * 36_000;

/// Stores for these people, each with its clock offset (ms), that know
/// each other's devices.
pub fn stores_with(people: &[(Person, i64)]) -> (Vec<tempfile::TempDir>, Vec<Store>) {
    let dirs: Vec<_> = people.iter().map(|_| tempdir()).collect();
    let stores: Vec<Store> = dirs
        .iter()
        .zip(people)
        .map(|(d, (_, offset))| {
            Store::open_with(
                d.path(),
                fieldreport_core::store::StoreOptions {
                    clock: std::sync::Arc::new(Skewed(*offset)),
                    ..Default::default()
                },
            )
            .expect("open")
        })
        .collect();
    let records: Vec<_> = stores
        .iter()
        .zip(people)
        .map(|(s, (p, _))| s.create_identity(p.clone()).unwrap())
        .collect();
    for s in &stores {
        for r in &records {
            s.add_known_device(r).unwrap();
        }
    }
    (dirs, stores)
}

/// Stores that know each other's devices.
pub fn replicas(n: usize) -> (Vec<tempfile::TempDir>, Vec<Store>) {
    let dirs: Vec<_> = (0..n).map(|_| tempdir()).collect();
    let stores: Vec<Store> = dirs
        .iter()
        .map(|d| Store::open(d.path()).expect("open"))
        .collect();
    let records: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.create_identity(person(&format!("officer{i}"), Role::Officer))
                .unwrap()
        })
        .collect();
    for s in &stores {
        for r in &records {
            s.add_known_device(r).unwrap();
        }
    }
    (dirs, stores)
}

/// Everything observable about a store's data, to assert "nothing changed".
pub fn snapshot(s: &Store) -> (u64, Vec<String>) {
    let list = s
        .list_reports(&fieldreport_core::ListQuery {
            limit: 1000,
            ..Default::default()
        })
        .unwrap();
    let mut jsons: Vec<String> = list.iter().map(|r| s.report_json(r.id).unwrap()).collect();
    jsons.sort();
    (s.change_count().unwrap(), jsons)
}

/// Sends everything `from` has that `to` lacks.
pub fn sync(from: &Store, to: &Store) {
    let missing = from.changes_missing_from(&to.heads().unwrap()).unwrap();
    to.apply_changes(missing, fieldreport_core::Origin::Peer)
        .unwrap();
}
