//! Nothing lost when a station is restored from a backup: `backup` copies
//! a running station under load, `restore` puts the copy in a new data
//! directory and records the restore in its log, and the phones, finding
//! the log went back, see the restore there and send again every change
//! and photo the station lost. SQLite with the `backup` command,
//! PostgreSQL with the database's tools (docs/operations.md).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use fieldreport_core::{Role, Value};
use fieldreport_e2e::*;

fn cli(args: &[String]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_station-cli"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn photo(seed: u8, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

fn edit(d: &Device, r: uuid::Uuid, text: &str) {
    d.store
        .set_field(r, "narrative", Value::Text(text.into()))
        .unwrap();
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// How a station is backed up while it serves, and restored into a new
/// data directory (and database), recording the restore.
trait Engine {
    fn backup(&self, st: &TestStation, into: &Path);
    /// The new data directory and database, restored and recorded.
    fn restore(&self, backup: &Path, work: &Path) -> (std::path::PathBuf, Option<String>);
}

struct Sqlite;

impl Engine for Sqlite {
    fn backup(&self, st: &TestStation, into: &Path) {
        let mut args = vec!["backup".to_string(), "--out".into(), path(into)];
        args.extend(st.cli_args());
        let (ok, out) = cli(&args);
        assert!(ok, "{out}");
        assert!(out.contains("checked"), "{out}");
        let (ok, out) = cli(&["backup-check".into(), path(into)]);
        assert!(ok && out.starts_with("OK"), "{out}");
    }

    fn restore(&self, backup: &Path, work: &Path) -> (std::path::PathBuf, Option<String>) {
        // A damaged backup is refused before anything is copied.
        let damaged = work.join("damaged");
        copy_tree(backup, &damaged);
        let media_file = first_file_under(&damaged.join("media"));
        let mut bytes = std::fs::read(&media_file).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&media_file, bytes).unwrap();
        let (ok, out) = cli(&["backup-check".into(), path(&damaged)]);
        assert!(!ok && out.contains("the manifest says"), "{out}");
        let refused = work.join("refused");
        let (ok, _) = cli(&[
            "restore".into(),
            path(&damaged),
            "--data".into(),
            path(&refused),
        ]);
        assert!(!ok);
        assert!(!refused.join("station.db").exists(), "nothing restored");

        let restored = work.join("restored");
        let (ok, out) = cli(&[
            "restore".into(),
            path(backup),
            "--data".into(),
            path(&restored),
        ]);
        assert!(ok, "{out}");
        // Not over a station.
        let (ok, out) = cli(&[
            "restore".into(),
            path(backup),
            "--data".into(),
            path(&restored),
        ]);
        assert!(!ok && out.contains("not empty"), "{out}");
        (restored, None)
    }
}

/// docs/operations.md's procedure: `pg_dump` while the stations serve,
/// then the data directory; `pg_restore` into a new database, the
/// directory back, `record-restore`.
struct Postgres {
    backup_time: std::sync::Mutex<String>,
}

fn pg_tool(name: &str) -> String {
    let bin = std::env::var("FR_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    format!("{bin}/{name}")
}

impl Engine for Postgres {
    fn backup(&self, st: &TestStation, into: &Path) {
        std::fs::create_dir_all(into).unwrap();
        *self.backup_time.lock().unwrap() = chrono::DateTime::from_timestamp_millis(st.now_ms())
            .unwrap()
            .to_rfc3339();
        let out = std::process::Command::new(pg_tool("pg_dump"))
            .args(["--format=custom", "--no-owner", "--file"])
            .arg(into.join("db.dump"))
            .args(["--dbname", st.database.as_deref().unwrap()])
            .output()
            .expect("run pg_dump (set FR_PG_BIN to its directory)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        copy_tree(&st.dir.path().join("station"), &into.join("data"));
    }

    fn restore(&self, backup: &Path, work: &Path) -> (std::path::PathBuf, Option<String>) {
        let admin = std::env::var("FR_TEST_DATABASE_URL").unwrap();
        let url = fresh_database(&admin);
        let out = std::process::Command::new(pg_tool("pg_restore"))
            .args(["--no-owner", "--exit-on-error", "--dbname", &url])
            .arg(backup.join("db.dump"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let data = work.join("restored");
        copy_tree(&backup.join("data"), &data);
        let (ok, out) = cli(&[
            "record-restore".into(),
            "--database".into(),
            url.clone(),
            "--data".into(),
            path(&data),
            "--backup-time".into(),
            self.backup_time.lock().unwrap().clone(),
        ]);
        assert!(ok, "{out}");
        (data, Some(url))
    }
}

#[test]
fn a_station_restored_from_a_backup_is_refilled_by_its_phones() {
    if on_postgres() {
        refilled_after_restore(&Postgres {
            backup_time: Default::default(),
        });
    } else {
        refilled_after_restore(&Sqlite);
    }
}

fn refilled_after_restore(engine: &dyn Engine) {
    let mut st = TestStation::start();
    let a = st.device(&person("Rstann Able", "71001", Role::Officer, "D9"), None);
    let b = st.device(&person("Rstbob Baker", "71002", Role::Officer, "D9"), None);
    let c = st.device(&person("Rstcat Cole", "71003", Role::Officer, "D9"), None);
    let sup = st.device(
        &person("Rstsue Chief", "71009", Role::Supervisor, "D9"),
        None,
    );
    let ra = a.store.create_report().unwrap();
    edit(&a, ra, "before the backup");
    a.attach_photo(ra, "a1.jpg", photo(1, 400_000));
    let rb = b.store.create_report().unwrap();
    edit(&b, rb, "B before the backup");
    let rc = c.store.create_report().unwrap();
    for d in [&a, &b, &c, &sup] {
        d.sync();
    }

    // The backup, while C keeps editing and syncing.
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("backup");
    let (stop, synced) = (AtomicBool::new(false), AtomicUsize::new(0));
    std::thread::scope(|s| {
        let load = s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                edit(&c, rc, &format!("C edit {n}"));
                c.sync();
                n += 1;
                synced.store(n, Ordering::Relaxed);
            }
            n
        });
        while synced.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        engine.backup(&st, &backup);
        stop.store(true, Ordering::Relaxed);
        let edits = load.join().unwrap();
        assert!(edits > 0, "C synced during the backup");
    });

    // After the backup: more work, all of it acknowledged with receipts.
    edit(&a, ra, "after the backup");
    let late_photo = a.attach_photo(ra, "a2.jpg", photo(2, 900_000));
    edit(&b, rb, "B after the backup");
    let rb2 = b.store.create_report().unwrap();
    edit(&b, rb2, "a report the backup never saw");
    edit(&c, rc, "C after the backup");
    // An officer enrolled after the backup: the restored station will not
    // know the device. A holds its report (handed over at a scene).
    let late = st.device(&person("Rstlee Late", "71004", Role::Officer, "D9"), None);
    a.client.refresh_devices(&a.store).unwrap();
    let rl = late.store.create_report().unwrap();
    edit(&late, rl, "by an officer enrolled after the backup");
    late.hand_over_to(&a);
    let late_changes = late.store.report_changes(rl).unwrap().len() as u64;
    for d in [&a, &b, &c, &late, &sup] {
        d.sync();
    }
    for d in [&a, &b, &c, &late] {
        assert_eq!(d.store.outbox_len().unwrap(), 0);
    }
    let acknowledged = st.counts();
    let seen_by_sup = sup.store.list_reports(&Default::default()).unwrap();

    // The disk dies; the backup is restored into a new directory.
    let (restored, database) = engine.restore(&backup, work.path());
    st.restart_on(&restored, database);
    let before_refill = st.counts();
    assert!(
        before_refill.changes < acknowledged.changes,
        "the restored station lacks what came after the backup"
    );
    assert!(before_refill.media_complete < acknowledged.media_complete);

    // The phones find the log went back, read the restore in it, and send
    // again what the station may lack: no person in the loop.
    let report = a.sync();
    let seen = report.station_restored.expect("A saw the restore");
    assert!(seen.restored_size < seen.held_size, "{seen:?}");
    assert!(seen.resent > 0);
    // The late officer's changes: refused by a station that does not know
    // the device, kept on A, and the rest of the sync done.
    assert_eq!(report.forward_set_aside, late_changes, "{report:?}");
    assert!(report.pulled > 0, "the pull ran: {report:?}");
    for d in [&b, &c, &sup] {
        assert!(d.sync().station_restored.is_some());
    }
    let refilled = st.counts();
    assert_eq!(
        (refilled.changes, refilled.media_complete),
        (
            acknowledged.changes - late_changes,
            acknowledged.media_complete
        ),
        "every change and photo acknowledged before is back, but the unknown device's"
    );
    assert_eq!(
        a.store.report_changes(rl).unwrap().len() as u64,
        late_changes
    );
    let found = st.rt.block_on(st.storage.check_log()).unwrap();
    assert!(found.ok(), "{:?}", found.problems);
    // The supervisor still sees every report, and a new supervisor phone
    // gets them all, the late photo included.
    assert_eq!(
        sup.store.list_reports(&Default::default()).unwrap().len(),
        seen_by_sup.len(),
        "the supervisor's phone keeps every report it had"
    );
    let fresh = st.device(
        &person("Rstnew Chief", "71010", Role::Supervisor, "D9"),
        None,
    );
    let got = fresh.sync();
    assert_eq!(
        fresh.store.list_reports(&Default::default()).unwrap().len(),
        seen_by_sup.len() - 1,
        "all but the unknown device's"
    );
    assert!(got.media_downloaded >= 2);
    assert!(fresh.store.media().contains(&late_photo));
    for r in [ra, rb, rb2, rc] {
        assert_eq!(
            fresh.store.report(r).unwrap(),
            a_or_owner(&[&a, &b, &c], r).store.report(r).unwrap()
        );
    }

    // Once refilled, a sync is an ordinary one; the phone keeps the lost
    // history's checkpoints aside, and the station's audit says what
    // happened.
    let again = a.sync();
    assert!(again.station_restored.is_none());
    assert_eq!((again.pushed, again.forward_set_aside), (0, late_changes));
    let retired = a.store.retired_log_checkpoints().unwrap();
    assert!(retired.iter().any(|n| n.starts_with("restore seen")));
    assert!(retired.len() >= 2);
    let audit = st.rt.block_on(st.storage.audit_log(0, 10_000)).unwrap();
    assert!(audit
        .iter()
        .any(|e| e.action == "station restored from backup"));
    assert!(audit
        .iter()
        .any(|e| e.action == "log alarm" && e.outcome.contains("restore seen")));
}

/// A station whose log went back without a restore in it (its database
/// swapped for an older copy by hand) is still refused.
#[test]
fn a_copy_put_back_without_restore_is_still_refused() {
    if on_postgres() {
        return;
    }
    let mut st = TestStation::start();
    let a = st.device(&person("Rstdan Able", "72001", Role::Officer, "D9"), None);
    let r = a.store.create_report().unwrap();
    a.sync();
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("backup");
    let mut args = vec!["backup".to_string(), "--out".into(), path(&backup)];
    args.extend(st.cli_args());
    let (ok, out) = cli(&args);
    assert!(ok, "{out}");
    edit(&a, r, "after");
    a.sync();
    // The files put in place by hand: no restore in the log.
    let by_hand = work.path().join("by-hand");
    copy_tree(&backup, &by_hand);
    std::fs::remove_file(by_hand.join("MANIFEST.json")).unwrap();
    st.restart_on(&by_hand, None);
    let err = a
        .client
        .sync(
            &a.store,
            &fieldreport_core::sync::NoProgress,
            &Default::default(),
        )
        .unwrap_err();
    assert!(
        matches!(err, fieldreport_core::Error::StationLog(_)),
        "{err:?}"
    );
    assert_eq!(a.store.outbox_len().unwrap(), 0, "nothing marked to resend");
}

fn a_or_owner<'a>(devices: &[&'a Device], r: uuid::Uuid) -> &'a Device {
    devices
        .iter()
        .find(|d| d.store.report(r).is_ok())
        .copied()
        .unwrap()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn first_file_under(dir: &Path) -> std::path::PathBuf {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            if let Some(f) = std::fs::read_dir(e.path())
                .unwrap()
                .find_map(|x| x.ok().filter(|x| x.file_type().unwrap().is_file()))
            {
                return f.path();
            }
        } else {
            return e.path();
        }
    }
    panic!("no file under {}", dir.display());
}
