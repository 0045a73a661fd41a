//! The embedded SQLite engine: one database file in the data directory,
//! media files beside it. One writer connection (so commit order is log
//! order) and a reader connection; blocking work runs on tokio's blocking
//! pool. The `changes` and `devices` tables use the core's log layout
//! (`fieldreport_core::store::log`), so verification and merge are the
//! very code the phones run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fieldreport_core::crdt::Change;
use fieldreport_core::evidence::package::DeviceEnrollment;
use fieldreport_core::evidence::{verify_batch, DeviceRecord, Person};
use fieldreport_core::model::media_refs;
use fieldreport_core::store::log::{decode_row, device_record, insert_change, load_doc, SqlLookup};
use fieldreport_core::store::MediaStore;
use fieldreport_core::sync::wire::{
    ClockSkew, MediaStatus, Receipt, ReceiptsResponse, ReportEvent,
};
use fieldreport_core::{Report, Role};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use uuid::Uuid;

use super::common::*;
use super::{
    AuditEntry, Counts, DashboardAccount, Enrolled, ExportMaterial, PullPage, PushOutcome,
    StationStorage, CREDENTIAL_LIFETIME_MS,
};
use crate::clock::{Clock, SystemClock};
use crate::error::{Result, StationError};

pub const DB_FILE: &str = "station.db";

const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE devices (
        device_id BLOB PRIMARY KEY,
        public_key BLOB NOT NULL,
        record TEXT NOT NULL,
        person_key TEXT NOT NULL,
        role TEXT NOT NULL,
        unit TEXT NOT NULL,
        credential_hash BLOB NOT NULL UNIQUE,
        enrolled_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE TABLE enrollment_codes (
        code_hash BLOB PRIMARY KEY,
        person TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER,
        used_by BLOB
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
        acked INTEGER NOT NULL DEFAULT 1,
        received_at INTEGER NOT NULL,
        UNIQUE (device_id, seq),
        UNIQUE (report_id, device_id, prev)
    );
    CREATE TABLE reports (
        report_id BLOB PRIMARY KEY,
        unit TEXT NOT NULL,
        created_by BLOB NOT NULL,
        lifecycle TEXT NOT NULL,
        updated_ms INTEGER NOT NULL,
        json TEXT NOT NULL
    );
    CREATE INDEX reports_unit ON reports (unit);
    CREATE TABLE report_access (
        person_key TEXT NOT NULL,
        report_id BLOB NOT NULL,
        PRIMARY KEY (person_key, report_id)
    );
    CREATE TABLE media (
        sha256 TEXT PRIMARY KEY,
        total INTEGER NOT NULL,
        received INTEGER NOT NULL,
        complete INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE media_refs (
        sha256 TEXT NOT NULL,
        report_id BLOB NOT NULL,
        PRIMARY KEY (sha256, report_id)
    );
    CREATE TABLE rejected (
        id INTEGER PRIMARY KEY,
        received_at INTEGER NOT NULL,
        device_id BLOB,
        reason TEXT NOT NULL,
        bytes BLOB NOT NULL
    );
"#,
    // 2: device clocks found skewed when they pushed a report's changes.
    r#"
    CREATE TABLE clock_skew (
        report_id BLOB NOT NULL,
        device_id BLOB NOT NULL,
        skew_ms INTEGER NOT NULL,
        observed_at INTEGER NOT NULL,
        PRIMARY KEY (report_id, device_id)
    );
"#,
    // 3: the audit log, append-only (the triggers refuse any change).
    r#"
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#,
    // 4: credentials expire. Devices enrolled before get 180 days from
    // enrollment, and at least 30 from this upgrade.
    r#"
    ALTER TABLE devices ADD COLUMN credential_expires_at INTEGER;
    UPDATE devices SET credential_expires_at = max(
        enrolled_at + 15552000000,
        CAST(strftime('%s', 'now') AS INTEGER) * 1000 + 2592000000);
"#,
    // 5: dashboard accounts, moved from `dashboard/users.json` (imported
    // by the dashboard on start): secrets sealed with the station key.
    r#"
    CREATE TABLE dashboard_accounts (
        star_number TEXT PRIMARY KEY,
        device_id BLOB NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        totp_sealed BLOB NOT NULL,
        store_key_sealed BLOB NOT NULL,
        updated_at INTEGER NOT NULL
    );
"#,
    // 6: station settings written once, such as the check value that ties
    // the database to its station key.
    r#"
    CREATE TABLE station_settings (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
"#,
];

pub struct SqliteStorage {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    /// Read connections; a request takes a free one (WAL readers never
    /// block the writer or each other).
    readers: Vec<Mutex<Connection>>,
    media: MediaStore,
    scratch: PathBuf,
    partial_dir: PathBuf,
    data: PathBuf,
    clock: Arc<dyn Clock>,
}

/// Reader connections (pulls of many supervisors run side by side).
const READERS: usize = 4;

impl Inner {
    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        for r in &self.readers {
            if let Ok(c) = r.try_lock() {
                return c;
            }
        }
        lock(&self.readers[0])
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SqliteStorage {
    pub fn open(dir: &Path) -> Result<SqliteStorage> {
        Self::open_with_clock(dir, SystemClock::shared()?)
    }

    /// Opens the station's storage in `dir`, judging time by `clock`.
    pub fn open_with_clock(dir: &Path, clock: Arc<dyn Clock>) -> Result<SqliteStorage> {
        // Private before the database (and its WAL) is created or opened.
        crate::files::open_data_dir(dir)?;
        let path = dir.join(DB_FILE);
        let mut writer = Connection::open(&path)?;
        writer.busy_timeout(Duration::from_secs(10))?;
        let found: i64 = writer.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > MIGRATIONS.len() as i64 {
            return Err(StationError::Core(fieldreport_core::Error::SchemaTooNew {
                found,
                supported: MIGRATIONS.len() as i64,
            }));
        }
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(None, "synchronous", "FULL")?;
        writer.pragma_update(None, "foreign_keys", "ON")?;
        for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = writer.transaction()?;
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        {
            let tx = writer.transaction()?;
            let rows: Vec<(Vec<u8>, String)> = tx
                .prepare("SELECT device_id, record FROM devices WHERE record NOT LIKE '%\"person_secret\"%'")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (device, record) in rows {
                if let Some(json) = with_person_secret(&record)? {
                    tx.execute(
                        "UPDATE devices SET record = ?1 WHERE device_id = ?2",
                        params![json, device],
                    )?;
                }
            }
            tx.commit()?;
        }
        let mut readers = Vec::new();
        for _ in 0..READERS {
            let r = Connection::open(&path)?;
            r.busy_timeout(Duration::from_secs(10))?;
            readers.push(Mutex::new(r));
        }
        let partial_dir = dir.join("media").join("partial");
        std::fs::create_dir_all(&partial_dir)?;
        // Exports are built here. Another process (the `export` command
        // beside a running server) may be using it, so only leftovers of a
        // crash, a day old, are removed.
        let scratch = dir.join("exports-tmp");
        std::fs::create_dir_all(&scratch)?;
        remove_stale(&scratch, Duration::from_secs(24 * 3600));
        Ok(SqliteStorage {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                readers,
                media: MediaStore::open(dir.join("media"))?,
                scratch,
                partial_dir,
                data: dir.to_path_buf(),
                clock,
            }),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|_| StationError::Internal("blocking task failed".into()))?
    }
}

/// SQL for the reports a device may see.
const VISIBLE: &str = "(SELECT report_id FROM report_access WHERE person_key = ?p
                        UNION SELECT report_id FROM reports WHERE ?s AND unit = ?u)";

fn visible_params(who: &Enrolled) -> (String, bool, String) {
    (
        person_key(&who.record.person),
        who.role() == Role::Supervisor,
        who.unit().to_string(),
    )
}

fn authorize_all(
    tx: &Transaction,
    changes: &[Change],
    reports: &std::collections::HashMap<Uuid, ReportFacts>,
) -> Result<()> {
    let mut people = std::collections::HashMap::new();
    for c in changes {
        if let std::collections::hash_map::Entry::Vacant(slot) = people.entry(c.device()) {
            if let Some(p) = device_record(tx, c.device())? {
                slot.insert(p);
            }
        }
    }
    authorize_changes(changes, &people, reports)
}

/// The authors of `changes` that are revoked now.
fn revoked_authors(
    tx: &Transaction,
    changes: &[Change],
) -> Result<std::collections::HashSet<Uuid>> {
    let authors: BTreeSet<Uuid> = changes.iter().map(|c| c.device()).collect();
    let mut st =
        tx.prepare_cached("SELECT 1 FROM devices WHERE device_id = ?1 AND revoked_at IS NOT NULL")?;
    let mut out = std::collections::HashSet::new();
    for d in authors {
        if st.exists([d.as_bytes().as_slice()])? {
            out.insert(d);
        }
    }
    Ok(out)
}

fn write_report(tx: &Transaction, report: Uuid) -> Result<(ReportFacts, bool)> {
    let doc = load_doc(tx, report)?;
    let state = doc.materialise();
    let r = Report::from_state(report, &state);
    let creator = r
        .created_by_device
        .ok_or_else(|| StationError::Internal("report without changes".into()))?;
    let unit: String = tx
        .query_row(
            "SELECT unit FROM devices WHERE device_id = ?1",
            [creator.as_bytes().as_slice()],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or_default();
    let existed = tx
        .query_row(
            "SELECT 1 FROM reports WHERE report_id = ?1",
            [report.as_bytes().as_slice()],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    tx.execute(
        "INSERT INTO reports (report_id, unit, created_by, lifecycle, updated_ms, json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (report_id) DO UPDATE SET unit = excluded.unit, created_by = excluded.created_by,
           lifecycle = excluded.lifecycle, updated_ms = excluded.updated_ms, json = excluded.json",
        params![
            report.as_bytes().as_slice(),
            unit,
            creator.as_bytes().as_slice(),
            r.lifecycle.as_str(),
            state.updated.map(|h| h.wall_ms as i64).unwrap_or(0),
            r.to_canonical_json()
        ],
    )?;
    Ok((
        ReportFacts {
            unit,
            creations: state.creations,
        },
        !existed,
    ))
}

#[async_trait]
impl StationStorage for SqliteStorage {
    async fn create_enrollment(&self, person: Person, ttl_ms: i64) -> Result<(String, i64)> {
        self.blocking(move |i| {
            // 10 bytes = 20 hex characters, typed by hand at enrollment.
            let code = random_token(10)?;
            let now = i.clock.now_ms();
            let expires = now
                .checked_add(ttl_ms)
                .ok_or_else(|| StationError::BadRequest("bad_ttl", "a code's lifetime is out of range".into()))?;
            let person = serde_json::to_string(&person)
                .map_err(|_| StationError::Internal("person".into()))?;
            lock(&i.writer).execute(
                "INSERT INTO enrollment_codes (code_hash, person, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![digest(&code), person, now, expires],
            )?;
            Ok((code, expires))
        })
        .await
    }

    async fn enroll(
        &self,
        code: &str,
        device_id: Uuid,
        public_key: [u8; 32],
    ) -> Result<(DeviceRecord, String)> {
        let code = code.trim().to_ascii_lowercase();
        self.blocking(move |i| {
            let key = ed25519_key(&public_key)?;
            let mut w = lock(&i.writer);
            let tx = w.transaction()?;
            let row: Option<(String, i64, Option<i64>)> = tx
                .query_row(
                    "SELECT person, expires_at, used_at FROM enrollment_codes WHERE code_hash = ?1",
                    [digest(&code)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((person, expires, used)) = row else {
                return Err(StationError::Unprocessable("invalid_code", "unknown enrollment code".into()));
            };
            if used.is_some() {
                return Err(StationError::Unprocessable("code_used", "enrollment code already used".into()));
            }
            if expires <= i.clock.now_ms() {
                return Err(StationError::Unprocessable("code_expired", "enrollment code expired".into()));
            }
            let person: Person = serde_json::from_str(&person)
                .map_err(|_| StationError::Internal("person".into()))?;
            let mut record = DeviceRecord::new(device_id, key, person);
            // Only the device gets it; its creations reveal it (docs/sync.md).
            record.person_secret = Some(
                fieldreport_core::evidence::new_person_secret().map_err(StationError::Core)?,
            );
            let credential = random_token(32)?;
            let json = serde_json::to_string(&record)
                .map_err(|_| StationError::Internal("record".into()))?;
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO devices (device_id, public_key, record, person_key, role, unit, credential_hash, enrolled_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    device_id.as_bytes().as_slice(),
                    public_key.as_slice(),
                    json,
                    person_key(&record.person),
                    record.person.role.as_str(),
                    record.person.unit,
                    digest(&credential),
                    i.clock.now_ms()
                ],
            )?;
            tx.execute(
                "UPDATE devices SET credential_expires_at = ?1 WHERE device_id = ?2",
                params![i.clock.now_ms() + CREDENTIAL_LIFETIME_MS, device_id.as_bytes().as_slice()],
            )?;
            if inserted == 0 {
                return Err(StationError::Conflict("device_exists", "device id already enrolled".into()));
            }
            tx.execute(
                "UPDATE enrollment_codes SET used_at = ?1, used_by = ?2 WHERE code_hash = ?3",
                params![i.clock.now_ms(), device_id.as_bytes().as_slice(), digest(&code)],
            )?;
            tx.commit()?;
            Ok((record, credential))
        })
        .await
    }

    async fn authenticate(&self, credential: &str) -> Result<Option<Enrolled>> {
        let h = digest(credential);
        self.blocking(move |i| {
            let row: Option<(String, Option<i64>, Option<i64>)> = i
                .reader()
                .query_row(
                    "SELECT record, revoked_at, credential_expires_at FROM devices WHERE credential_hash = ?1",
                    [h],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            row.map(|(rec, rev, exp)| enrolled_from_row(rec, rev, exp))
                .transpose()
        })
        .await
    }

    async fn device(&self, device: Uuid) -> Result<Option<Enrolled>> {
        self.blocking(move |i| {
            let row: Option<(String, Option<i64>, Option<i64>)> = i
                .reader()
                .query_row(
                    "SELECT record, revoked_at, credential_expires_at FROM devices WHERE device_id = ?1",
                    [device.as_bytes().as_slice()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            row.map(|(rec, rev, exp)| enrolled_from_row(rec, rev, exp))
                .transpose()
        })
        .await
    }

    async fn retire_credential(&self, device: Uuid) -> Result<bool> {
        self.blocking(move |i| {
            let unknown = digest(&random_token(32)?);
            Ok(lock(&i.writer).execute(
                "UPDATE devices SET credential_hash = ?1 WHERE device_id = ?2",
                params![unknown, device.as_bytes().as_slice()],
            )? > 0)
        })
        .await
    }

    async fn dashboard_account(&self, star_number: &str) -> Result<Option<DashboardAccount>> {
        let star = star_number.to_string();
        self.blocking(move |i| {
            i.reader()
                .query_row(
                    &format!(
                        "SELECT {ACCOUNT_COLUMNS} FROM dashboard_accounts WHERE star_number = ?1"
                    ),
                    [star],
                    account_row,
                )
                .optional()?
                .transpose()
        })
        .await
    }

    async fn dashboard_accounts(&self) -> Result<Vec<DashboardAccount>> {
        self.blocking(move |i| {
            let c = i.reader();
            let mut st = c.prepare(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM dashboard_accounts ORDER BY star_number"
            ))?;
            let rows = st.query_map([], account_row)?;
            rows.map(|r| r?).collect()
        })
        .await
    }

    async fn put_dashboard_account(&self, a: DashboardAccount, replace: bool) -> Result<bool> {
        self.blocking(move |i| {
            let conflict = if replace {
                "DO UPDATE SET device_id = excluded.device_id, password_hash = excluded.password_hash,
                   totp_sealed = excluded.totp_sealed, store_key_sealed = excluded.store_key_sealed,
                   updated_at = excluded.updated_at"
            } else {
                "DO NOTHING"
            };
            Ok(lock(&i.writer).execute(
                &format!(
                    "INSERT INTO dashboard_accounts (star_number, device_id, password_hash, totp_sealed, store_key_sealed, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (star_number) {conflict}"
                ),
                params![
                    a.star_number,
                    a.device_id.as_bytes().as_slice(),
                    a.password_hash,
                    a.totp_sealed,
                    a.store_key_sealed,
                    a.updated_at
                ],
            )? > 0)
        })
        .await
    }

    async fn forget_sealed(&self) -> Result<Vec<Uuid>> {
        self.blocking(move |i| {
            let mut w = lock(&i.writer);
            let tx = w.transaction()?;
            let devices = tx
                .prepare("SELECT device_id FROM dashboard_accounts ORDER BY star_number")?
                .query_map([], |r| r.get::<_, Vec<u8>>(0))?
                .map(|d| Ok(fieldreport_core::store::log::uuid_of(d?)?))
                .collect::<Result<Vec<_>>>()?;
            tx.execute("DELETE FROM dashboard_accounts", [])?;
            tx.execute(
                "DELETE FROM station_settings WHERE name = 'station_key_check'",
                [],
            )?;
            tx.commit()?;
            Ok(devices)
        })
        .await
    }

    async fn setting(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let name = name.to_string();
        self.blocking(move |i| {
            Ok(i.reader()
                .query_row(
                    "SELECT value FROM station_settings WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await
    }

    async fn put_setting_once(&self, name: &str, value: Vec<u8>) -> Result<Vec<u8>> {
        let name = name.to_string();
        self.blocking(move |i| {
            let w = lock(&i.writer);
            w.execute(
                "INSERT INTO station_settings (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![name, value],
            )?;
            Ok(w.query_row(
                "SELECT value FROM station_settings WHERE name = ?1",
                [name],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn devices(&self) -> Result<Vec<DeviceRecord>> {
        self.blocking(|i| {
            let c = i.reader();
            let mut st = c.prepare("SELECT record FROM devices ORDER BY enrolled_at, device_id")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.map(|r| {
                serde_json::from_str(&r?)
                    .map(DeviceRecord::without_secret)
                    .map_err(|_| StationError::Internal("device record".into()))
            })
            .collect()
        })
        .await
    }

    async fn revoke(&self, device: Uuid) -> Result<bool> {
        self.blocking(move |i| {
            // One statement under the write lock, ordered with every push.
            // The revocation time is after every receipt of the device's
            // changes, even on a clock that stepped back or in the same
            // millisecond, so "received before revocation" is exact.
            Ok(lock(&i.writer).execute(
                "UPDATE devices SET revoked_at = max(?1, COALESCE(
                    (SELECT MAX(received_at) + 1 FROM changes WHERE device_id = ?2), ?1))
                 WHERE device_id = ?2 AND revoked_at IS NULL",
                params![i.clock.now_ms(), device.as_bytes().as_slice()],
            )? > 0)
        })
        .await
    }

    async fn set_credential_expiry(&self, device: Uuid, expires_at_ms: i64) -> Result<bool> {
        self.blocking(move |i| {
            Ok(lock(&i.writer).execute(
                "UPDATE devices SET credential_expires_at = ?1 WHERE device_id = ?2",
                params![expires_at_ms, device.as_bytes().as_slice()],
            )? > 0)
        })
        .await
    }

    async fn push(&self, changes: Vec<Change>) -> Result<PushOutcome> {
        self.blocking(move |i| {
            let mut w = lock(&i.writer);
            // Write-locked from the start: a revocation by another process
            // (the `revoke` command) waits for this push or is seen by it.
            let tx = w.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let verified = verify_batch(changes, &SqlLookup(&tx))?;
            refuse_revoked(&verified.new, &revoked_authors(&tx, &verified.new)?)?;
            // A change may attach media only once the station holds it.
            for sha in media_refs(&verified.new) {
                let complete: bool = tx
                    .query_row("SELECT complete FROM media WHERE sha256 = ?1", [&sha], |r| r.get(0))
                    .optional()?
                    .unwrap_or(false);
                if !complete {
                    return Err(StationError::Conflict(
                        "media_missing",
                        format!("media {sha} must be uploaded before the change that attaches it"),
                    ));
                }
            }
            let now = i.clock.now_ms();
            let mut touched = BTreeSet::new();
            for c in &verified.new {
                insert_change(&tx, c, true, now)?;
                touched.insert(c.report());
                let author_key: Option<String> = tx
                    .query_row(
                        "SELECT person_key FROM devices WHERE device_id = ?1",
                        [c.device().as_bytes().as_slice()],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(k) = author_key {
                    tx.execute(
                        "INSERT OR IGNORE INTO report_access (person_key, report_id) VALUES (?1, ?2)",
                        params![k, c.report().as_bytes().as_slice()],
                    )?;
                }
                for sha in media_refs(std::slice::from_ref(c)) {
                    tx.execute(
                        "INSERT OR IGNORE INTO media_refs (sha256, report_id) VALUES (?1, ?2)",
                        params![sha, c.report().as_bytes().as_slice()],
                    )?;
                }
            }
            let log_id: i64 = tx.query_row("SELECT COALESCE(MAX(id), 0) FROM changes", [], |r| r.get(0))?;
            let mut events = Vec::new();
            let mut units = std::collections::HashMap::new();
            for report in touched {
                let (facts, new) = write_report(&tx, report)?;
                let unit = facts.unit.clone();
                units.insert(report, facts);
                events.push((
                    unit,
                    ReportEvent {
                        report_id: report,
                        log_id,
                        kind: if new { "new" } else { "changed" }.into(),
                    },
                ));
            }
            authorize_all(&tx, &verified.new, &units)?;
            tx.commit()?;
            Ok(PushOutcome {
                applied: verified.new.len(),
                duplicates: verified.duplicates,
                events,
            })
        })
        .await
    }

    async fn pull(&self, who: &Enrolled, after: i64, limit: u32) -> Result<PullPage> {
        let who = who.clone();
        self.blocking(move |i| {
            let mut c = i.reader();
            // One read transaction: the page and the log head agree.
            let tx = c.transaction()?;
            let (p, s, u) = visible_params(&who);
            let sql = format!(
                "SELECT id, body, signature FROM changes
                 WHERE id > ?1 AND report_id IN {}
                 ORDER BY id LIMIT ?2",
                VISIBLE
                    .replace("?p", "?3")
                    .replace("?s", "?4")
                    .replace("?u", "?5")
            );
            let mut st = tx.prepare(&sql)?;
            let mut rows = st.query(params![after, limit as i64 + 1, p, s, u])?;
            let mut changes = Vec::new();
            let mut last = after;
            let mut more = false;
            while let Some(r) = rows.next()? {
                if changes.len() == limit as usize {
                    more = true;
                    break;
                }
                last = r.get(0)?;
                changes.push(decode_row(r.get(1)?, r.get(2)?)?);
            }
            drop(rows);
            drop(st);
            let next = if more {
                last
            } else {
                // Nothing more is visible: skip past invisible changes too.
                tx.query_row("SELECT COALESCE(MAX(id), 0) FROM changes", [], |r| {
                    r.get::<_, i64>(0)
                })?
                .max(after)
            };
            Ok(PullPage {
                changes,
                next,
                more,
            })
        })
        .await
    }

    async fn report_changes(&self, who: &Enrolled, report: Uuid) -> Result<Vec<Change>> {
        let who = who.clone();
        self.blocking(move |i| {
            let c = i.reader();
            require_visible(&c, &who, report)?;
            let mut st =
                c.prepare("SELECT body, signature FROM changes WHERE report_id = ?1 ORDER BY id")?;
            let mut rows = st.query([report.as_bytes().as_slice()])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(decode_row(r.get(0)?, r.get(1)?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn report_json(&self, who: &Enrolled, report: Uuid) -> Result<String> {
        let who = who.clone();
        self.blocking(move |i| {
            let c = i.reader();
            require_visible(&c, &who, report)?;
            c.query_row(
                "SELECT json FROM reports WHERE report_id = ?1",
                [report.as_bytes().as_slice()],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(StationError::NotFound)
        })
        .await
    }

    async fn visible_reports(&self, who: &Enrolled) -> Result<Vec<String>> {
        let who = who.clone();
        self.blocking(move |i| {
            let c = i.reader();
            let (p, s, u) = visible_params(&who);
            let sql = format!(
                "SELECT json FROM reports WHERE report_id IN {} ORDER BY updated_ms DESC",
                VISIBLE
                    .replace("?p", "?1")
                    .replace("?s", "?2")
                    .replace("?u", "?3")
            );
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(params![p, s, u], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn directory(&self, who: &Enrolled) -> Result<Vec<DeviceRecord>> {
        let who = who.clone();
        self.blocking(move |i| {
            let c = i.reader();
            let (p, s, u) = visible_params(&who);
            let sql = format!(
                "SELECT record, device_id = ?4 OR device_id IN
                   (SELECT device_id FROM changes WHERE report_id IN {})
                 FROM devices ORDER BY enrolled_at, device_id",
                VISIBLE
                    .replace("?p", "?1")
                    .replace("?s", "?2")
                    .replace("?u", "?3")
            );
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(
                params![p, s, u, who.record.device_id.as_bytes().as_slice()],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)),
            )?;
            rows.map(|row| {
                let (record, named) = row?;
                directory_entry(&record, named, who.record.device_id)
            })
            .collect()
        })
        .await
    }

    async fn all_reports(&self) -> Result<Vec<String>> {
        self.blocking(move |i| {
            let c = i.reader();
            let mut st = c.prepare("SELECT json FROM reports ORDER BY report_id")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn audit(&self, e: AuditEntry) -> Result<()> {
        self.blocking(move |i| {
            lock(&i.writer).execute(
                "INSERT INTO audit_log (at_ms, actor, action, target, outcome) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.at_ms, e.actor, e.action, e.target, e.outcome],
            )?;
            Ok(())
        })
        .await
    }

    async fn audit_log(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>> {
        self.blocking(move |i| {
            let c = i.reader();
            let mut st = c.prepare(
                "SELECT id, at_ms, actor, action, target, outcome FROM audit_log
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = st.query_map(params![after, limit], |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    outcome: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn media_status(&self, sha256: &str) -> Result<MediaStatus> {
        if !valid_sha(sha256) {
            return Err(bad_hash());
        }
        let sha = sha256.to_string();
        self.blocking(move |i| status_of(&i.reader(), &sha)).await
    }

    async fn media_append(
        &self,
        sha256: &str,
        offset: u64,
        total: u64,
        bytes: &[u8],
    ) -> Result<MediaStatus> {
        check_chunk(sha256, offset, total, bytes.len())?;
        let sha = sha256.to_string();
        let bytes = bytes.to_vec();
        self.blocking(move |i| {
            // Uploads of one file are serialised by the writer lock.
            let w = lock(&i.writer);
            let status = status_of(&w, &sha)?;
            if status.complete {
                return Ok(status);
            }
            if offset != status.received {
                return Err(StationError::Conflict(
                    "offset_mismatch",
                    format!("the station holds {} bytes; send from there", status.received),
                ));
            }
            let partial = i.partial_dir.join(&sha);
            let received = write_chunk(&partial, offset, &bytes)?;
            if received < total {
                w.execute(
                    "INSERT INTO media (sha256, total, received) VALUES (?1, ?2, ?3)
                     ON CONFLICT (sha256) DO UPDATE SET total = excluded.total, received = excluded.received",
                    params![sha, total as i64, received as i64],
                )?;
                return Ok(MediaStatus { sha256: sha, received, complete: false });
            }
            // Complete: the bytes must hash to the name.
            if i.media.adopt(&partial, &sha)?.is_none() {
                w.execute("DELETE FROM media WHERE sha256 = ?1", [&sha])?;
                return Err(StationError::Unprocessable(
                    "hash_mismatch",
                    "the uploaded bytes do not match the hash; upload again from 0".into(),
                ));
            }
            w.execute(
                "INSERT INTO media (sha256, total, received, complete) VALUES (?1, ?2, ?2, 1)
                 ON CONFLICT (sha256) DO UPDATE SET total = excluded.total, received = excluded.received, complete = 1",
                params![sha, total as i64],
            )?;
            Ok(MediaStatus { sha256: sha, received: total, complete: true })
        })
        .await
    }

    async fn media_path(&self, who: &Enrolled, sha256: &str) -> Result<PathBuf> {
        if !valid_sha(sha256) {
            return Err(bad_hash());
        }
        let who = who.clone();
        let sha = sha256.to_string();
        self.blocking(move |i| {
            let c = i.reader();
            let (p, s, u) = visible_params(&who);
            let sql = format!(
                "SELECT 1 FROM media m JOIN media_refs r ON r.sha256 = m.sha256
                 WHERE m.sha256 = ?1 AND m.complete = 1 AND r.report_id IN {} LIMIT 1",
                VISIBLE
                    .replace("?p", "?2")
                    .replace("?s", "?3")
                    .replace("?u", "?4")
            );
            let ok = c
                .query_row(&sql, params![sha, p, s, u], |_| Ok(()))
                .optional()?
                .is_some();
            if !ok {
                return Err(StationError::NotFound);
            }
            Ok(i.media.path_of(&sha))
        })
        .await
    }

    async fn record_rejection(
        &self,
        device: Option<Uuid>,
        reason: &str,
        bytes: &[u8],
    ) -> Result<()> {
        let reason = reason.to_string();
        let bytes = bytes.to_vec();
        self.blocking(move |i| {
            lock(&i.writer).execute(
                "INSERT INTO rejected (received_at, device_id, reason, bytes) VALUES (?1, ?2, ?3, ?4)",
                params![i.clock.now_ms(), device.map(|d| d.as_bytes().to_vec()), reason, bytes],
            )?;
            Ok(())
        })
        .await
    }

    async fn counts(&self) -> Result<Counts> {
        self.blocking(|i| {
            let c = i.reader();
            let q = |sql: &str| {
                c.query_row(sql, [], |r| r.get::<_, i64>(0))
                    .map(|v| v as u64)
            };
            Ok(Counts {
                changes: q("SELECT COUNT(*) FROM changes")?,
                reports: q("SELECT COUNT(*) FROM reports")?,
                media_complete: q("SELECT COUNT(*) FROM media WHERE complete = 1")?,
                media_bytes: q("SELECT COALESCE(SUM(received), 0) FROM media")?,
            })
        })
        .await
    }

    fn scratch_dir(&self) -> PathBuf {
        self.inner.scratch.clone()
    }

    fn data_dir(&self) -> PathBuf {
        self.inner.data.clone()
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.inner.clock.clone()
    }

    async fn record_clock_skew(
        &self,
        device: Uuid,
        reports: Vec<Uuid>,
        skew_ms: i64,
    ) -> Result<()> {
        self.blocking(move |i| {
            let mut w = lock(&i.writer);
            let tx = w.transaction()?;
            for r in reports {
                tx.execute(
                    "INSERT INTO clock_skew (report_id, device_id, skew_ms, observed_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (report_id, device_id) DO UPDATE SET skew_ms = excluded.skew_ms, observed_at = excluded.observed_at",
                    params![r.as_bytes().as_slice(), device.as_bytes().as_slice(), skew_ms, i.clock.now_ms()],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn receipts(&self, who: &Enrolled, report: Uuid) -> Result<ReceiptsResponse> {
        let who = who.clone();
        self.blocking(move |i| {
            let c = i.reader();
            require_visible(&c, &who, report)?;
            let mut st = c.prepare(
                "SELECT body, signature, received_at FROM changes WHERE report_id = ?1 ORDER BY id",
            )?;
            let mut rows = st.query([report.as_bytes().as_slice()])?;
            let mut changes = Vec::new();
            while let Some(r) = rows.next()? {
                let ch = decode_row(r.get(0)?, r.get(1)?)?;
                changes.push(Receipt {
                    device: ch.device(),
                    seq: ch.body().seq,
                    received_at_ms: r.get(2)?,
                    device_clock_ms: ch.body().wall_clock_ms,
                });
            }
            let mut st = c.prepare(
                "SELECT device_id, skew_ms, observed_at FROM clock_skew WHERE report_id = ?1 ORDER BY device_id",
            )?;
            let mut rows = st.query([report.as_bytes().as_slice()])?;
            let mut clock_skew = Vec::new();
            while let Some(r) = rows.next()? {
                clock_skew.push(ClockSkew {
                    device: fieldreport_core::store::log::uuid_of(r.get(0)?)?,
                    skew_ms: r.get(1)?,
                    observed_at_ms: r.get(2)?,
                });
            }
            Ok(ReceiptsResponse {
                report_id: report,
                changes,
                clock_skew,
            })
        })
        .await
    }

    async fn export_material(
        &self,
        who: Option<&Enrolled>,
        reports: &[Uuid],
    ) -> Result<ExportMaterial> {
        let who = who.cloned();
        let reports: Vec<Uuid> = reports
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        self.blocking(move |i| {
            let c = i.reader();
            // One snapshot for the whole package.
            let tx = c.unchecked_transaction()?;
            let mut out = ExportMaterial {
                reports: Vec::new(),
                devices: Vec::new(),
                media: BTreeMap::new(),
                received: BTreeMap::new(),
            };
            let mut authors = BTreeSet::new();
            for report in reports {
                if let Some(who) = &who {
                    require_visible(&tx, who, report)?;
                }
                let mut st = tx.prepare_cached(
                    "SELECT body, signature, received_at FROM changes WHERE report_id = ?1 ORDER BY id",
                )?;
                let mut rows = st.query([report.as_bytes().as_slice()])?;
                let mut changes = Vec::new();
                while let Some(r) = rows.next()? {
                    let ch = decode_row(r.get(0)?, r.get(1)?)?;
                    authors.insert(ch.device());
                    out.received.insert(*ch.hash(), receipt_time(r.get(2)?)?);
                    changes.push(ch);
                }
                if changes.is_empty() {
                    return Err(StationError::NotFound);
                }
                for sha in media_refs(&changes) {
                    let complete: Option<bool> = tx
                        .query_row(
                            "SELECT complete FROM media WHERE sha256 = ?1",
                            [&sha],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if complete != Some(true) {
                        return Err(StationError::Conflict(
                            "media_incomplete",
                            format!("media {sha} of report {report} has not finished uploading"),
                        ));
                    }
                    out.media.insert(sha.clone(), i.media.path_of(&sha));
                }
                out.reports.push((report, changes));
            }
            let mut st = tx.prepare_cached(
                "SELECT record, enrolled_at, revoked_at FROM devices WHERE device_id = ?1",
            )?;
            for d in authors {
                let (record, enrolled, revoked): (String, i64, Option<i64>) = st
                    .query_row([d.as_bytes().as_slice()], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?;
                out.devices.push(DeviceEnrollment {
                    record: enrolled_from_row(record, None, None)?.record,
                    enrolled_at: ms_time(Some(enrolled)),
                    revoked_at: ms_time(revoked),
                });
            }
            Ok(out)
        })
        .await
    }
}

const ACCOUNT_COLUMNS: &str =
    "star_number, device_id, password_hash, totp_sealed, store_key_sealed, updated_at";

fn account_row(r: &rusqlite::Row) -> rusqlite::Result<Result<DashboardAccount>> {
    let device: Vec<u8> = r.get(1)?;
    Ok(Ok(DashboardAccount {
        star_number: r.get(0)?,
        device_id: match fieldreport_core::store::log::uuid_of(device) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e.into())),
        },
        password_hash: r.get(2)?,
        totp_sealed: r.get(3)?,
        store_key_sealed: r.get(4)?,
        updated_at: r.get(5)?,
    }))
}

fn remove_stale(dir: &Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|a| a > age);
        if old {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// `NotFound` unless `who` may see `report` (a report one may not see is
/// indistinguishable from one that does not exist).
fn require_visible(c: &Connection, who: &Enrolled, report: Uuid) -> Result<()> {
    let (p, s, u) = visible_params(who);
    let sql = format!(
        "SELECT 1 WHERE ?1 IN {}",
        VISIBLE
            .replace("?p", "?2")
            .replace("?s", "?3")
            .replace("?u", "?4")
    );
    c.query_row(&sql, params![report.as_bytes().as_slice(), p, s, u], |_| {
        Ok(())
    })
    .optional()?
    .ok_or(StationError::NotFound)
}

fn status_of(c: &Connection, sha: &str) -> Result<MediaStatus> {
    let row: Option<(i64, bool)> = c
        .query_row(
            "SELECT received, complete FROM media WHERE sha256 = ?1",
            [sha],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (received, complete) = row.unwrap_or((0, false));
    Ok(MediaStatus {
        sha256: sha.to_string(),
        received: received as u64,
        complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A station database made by the first schema upgrades in place and
    /// keeps its rows.
    #[test]
    fn a_version_1_database_upgrades_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO media (sha256, total, received, complete) VALUES ('ab', 10, 10, 1)",
                [],
            )
            .unwrap();
        }
        let s = SqliteStorage::open(dir.path()).unwrap();
        let c = s.inner.reader();
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM clock_skew", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        let kept: i64 = c
            .query_row("SELECT total FROM media WHERE sha256 = 'ab'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(kept, 10);
    }

    /// A device enrolled before person secrets gets one when the station
    /// opens, so the directory can publish its keyed digest.
    #[test]
    fn a_device_enrolled_before_person_secrets_gets_one() {
        let dir = tempfile::tempdir().unwrap();
        let device = Uuid::new_v4();
        let record = DeviceRecord::new(
            device,
            [9; 32],
            Person {
                name: "A. Alvarez".into(),
                star_number: "101".into(),
                role: Role::Officer,
                unit: "D9".into(),
            },
        );
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains("person_secret"));
        {
            let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
            for step in MIGRATIONS {
                c.execute_batch(step).unwrap();
            }
            c.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
                .unwrap();
            c.execute(
                "INSERT INTO devices (device_id, public_key, record, person_key, role, unit, credential_hash, enrolled_at)
                 VALUES (?1, x'00', ?2, 'star:101', 'officer', 'D9', x'01', 5)",
                params![device.as_bytes().as_slice(), json],
            )
            .unwrap();
        }
        let secret = |s: &SqliteStorage| {
            let json: String = s
                .inner
                .reader()
                .query_row("SELECT record FROM devices", [], |r| r.get(0))
                .unwrap();
            serde_json::from_str::<DeviceRecord>(&json)
                .unwrap()
                .person_secret
        };
        let s = SqliteStorage::open(dir.path()).unwrap();
        let first = secret(&s).expect("a secret was made");
        assert_eq!(first.len(), 64);
        drop(s);
        let s = SqliteStorage::open(dir.path()).unwrap();
        assert_eq!(secret(&s), Some(first), "made once, then kept");
    }

    /// A version 4 database (before dashboard accounts moved into storage)
    /// upgrades, keeps its devices, and takes accounts.
    #[test]
    fn a_version_4_database_upgrades_and_takes_dashboard_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let device = Uuid::new_v4();
        {
            let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
            for step in &MIGRATIONS[..4] {
                c.execute_batch(step).unwrap();
            }
            c.pragma_update(None, "user_version", 4).unwrap();
            c.execute(
                "INSERT INTO devices (device_id, public_key, record, person_key, role, unit, credential_hash, enrolled_at, credential_expires_at)
                 VALUES (?1, x'00', '{}', 'star:1', 'supervisor', 'D9', x'01', 5, 6)",
                [device.as_bytes().as_slice()],
            )
            .unwrap();
        }
        let s = SqliteStorage::open(dir.path()).unwrap();
        {
            let c = s.inner.reader();
            let v: i64 = c
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(v, MIGRATIONS.len() as i64);
            let kept: i64 = c
                .query_row("SELECT credential_expires_at FROM devices", [], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(kept, 6);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let a = DashboardAccount {
            star_number: "1".into(),
            device_id: device,
            password_hash: "h".into(),
            totp_sealed: vec![1, 2],
            store_key_sealed: vec![3],
            updated_at: 7,
        };
        assert!(rt
            .block_on(s.put_dashboard_account(a.clone(), false))
            .unwrap());
        let b = DashboardAccount {
            password_hash: "h2".into(),
            ..a.clone()
        };
        assert!(!rt
            .block_on(s.put_dashboard_account(b.clone(), false))
            .unwrap());
        assert_eq!(rt.block_on(s.dashboard_account("1")).unwrap(), Some(a));
        assert!(rt
            .block_on(s.put_dashboard_account(b.clone(), true))
            .unwrap());
        assert_eq!(rt.block_on(s.dashboard_accounts()).unwrap(), vec![b]);
        assert_eq!(rt.block_on(s.dashboard_account("2")).unwrap(), None);
        assert!(rt.block_on(s.retire_credential(device)).unwrap());
        let h: Vec<u8> = s
            .inner
            .reader()
            .query_row("SELECT credential_hash FROM devices", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            h.len(),
            32,
            "replaced by the hash of a credential nobody holds"
        );
    }
}
