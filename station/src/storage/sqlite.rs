//! The embedded SQLite engine: one database file in the data directory.
//! One writer connection (so commit order is log order) and reader
//! connections beside it (WAL readers never block the writer or each
//! other); blocking work runs on tokio's blocking pool. The `changes` and
//! `devices` tables use the core's log layout
//! (`fieldreport_core::store::log`). SQL only: the rules are in
//! [`super::service`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fieldreport_core::crdt::{Change, ChangeId, Hash};
use fieldreport_core::evidence::ChainLookup;
use fieldreport_core::store::log::{decode_row, insert_change, uuid_of, SqlLookup};
use fieldreport_core::sync::wire::{ClockSkew, ReportEvent};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

use super::common::with_person_secret;
use super::engine::*;
use super::service::Service;
use super::{Attestation, AttestationKind, AuditEntry, Counts, DashboardAccount};
use crate::clock::{Clock, SystemClock};
use crate::error::{Result, StationError};
use fieldreport_core::schema::Migrations;

pub const DB_FILE: &str = "station.db";

/// This engine's schema steps, `station/migrations/sqlite/NNNN_name.sql`, on `PRAGMA user_version`.
pub const MIGRATIONS: Migrations = Migrations::new(&[
    include_str!("../../migrations/sqlite/0001_initial.sql"),
    include_str!("../../migrations/sqlite/0002_clock_skew.sql"),
    include_str!("../../migrations/sqlite/0003_audit_log.sql"),
    include_str!("../../migrations/sqlite/0004_credential_expiry.sql"),
    include_str!("../../migrations/sqlite/0005_dashboard_accounts.sql"),
    include_str!("../../migrations/sqlite/0006_settings.sql"),
    include_str!("../../migrations/sqlite/0007_changes_report_index.sql"),
    include_str!("../../migrations/sqlite/0008_transparency_log.sql"),
    include_str!("../../migrations/sqlite/0009_log_attestations.sql"),
]);

/// The station's storage on SQLite.
pub type SqliteStorage = Service<SqliteEngine>;

impl Service<SqliteEngine> {
    pub fn open(dir: &Path) -> Result<SqliteStorage> {
        Self::open_with_clock(dir, SystemClock::shared()?)
    }

    /// Opens the station's storage in `dir`, judging time by `clock`.
    pub fn open_with_clock(dir: &Path, clock: Arc<dyn Clock>) -> Result<SqliteStorage> {
        // Private before the database (and its WAL) is created or opened.
        crate::files::open_data_dir(dir)?;
        Service::new(SqliteEngine::open(&dir.join(DB_FILE))?, dir, clock)
    }
}

/// Reader connections (pulls of many supervisors run side by side).
const READERS: usize = 4;

pub struct SqliteEngine {
    writer: Arc<tokio::sync::Mutex<Connection>>,
    readers: Arc<Vec<Mutex<Connection>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn join_error(_: tokio::task::JoinError) -> StationError {
    StationError::Internal("blocking task failed".into())
}

impl SqliteEngine {
    /// Opens (creating or upgrading) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteEngine> {
        let mut writer = Connection::open(path)?;
        writer.busy_timeout(Duration::from_secs(10))?;
        // Refuse a newer schema before any pragma writes to the file.
        MIGRATIONS.check_sqlite(&writer)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(None, "synchronous", "FULL")?;
        writer.pragma_update(None, "foreign_keys", "ON")?;
        MIGRATIONS.run_sqlite(&mut writer)?;
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
            let r = Connection::open(path)?;
            r.busy_timeout(Duration::from_secs(10))?;
            readers.push(Mutex::new(r));
        }
        Ok(SqliteEngine {
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            readers: Arc::new(readers),
        })
    }

    /// A free reader connection, or the first one when all are busy
    /// (tests read rows through it).
    #[doc(hidden)]
    pub fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        for r in self.readers.iter() {
            if let Ok(c) = r.try_lock() {
                return c;
            }
        }
        lock(&self.readers[0])
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            for r in readers.iter() {
                if let Ok(c) = r.try_lock() {
                    return f(&c);
                }
            }
            f(&lock(&readers[0]))
        })
        .await
        .map_err(join_error)?
    }

    /// One write outside a transaction of the caller's (a statement, or a
    /// transaction `f` makes itself).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let mut conn = self.writer.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || {
            // Never inside a transaction left behind (see `TxConn`).
            if !conn.is_autocommit() {
                conn.execute_batch("ROLLBACK")?;
            }
            f(&mut conn)
        })
        .await
        .map_err(join_error)?
    }
}

/// SQL for the reports a device may see, with its parameters numbered from
/// `first` (person key, is supervisor, unit).
fn visible(first: usize) -> String {
    format!(
        "(SELECT report_id FROM report_access WHERE person_key = ?{p}
          UNION SELECT report_id FROM reports WHERE ?{s} AND unit = ?{u})",
        p = first,
        s = first + 1,
        u = first + 2
    )
}

const ACCOUNT_COLUMNS: &str =
    "star_number, device_id, password_hash, totp_sealed, store_key_sealed, updated_at";

fn account_row(r: &rusqlite::Row) -> rusqlite::Result<Result<DashboardAccount>> {
    let device: Vec<u8> = r.get(1)?;
    Ok(Ok(DashboardAccount {
        star_number: r.get(0)?,
        device_id: match uuid_of(device) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e.into())),
        },
        password_hash: r.get(2)?,
        totp_sealed: r.get(3)?,
        store_key_sealed: r.get(4)?,
        updated_at: r.get(5)?,
    }))
}

fn device_row(r: &rusqlite::Row) -> rusqlite::Result<DeviceRow> {
    Ok(DeviceRow {
        record: r.get(0)?,
        enrolled_at: r.get(1)?,
        revoked_at: r.get(2)?,
        credential_expires_at: r.get(3)?,
    })
}

const DEVICE_COLUMNS: &str = "record, enrolled_at, revoked_at, credential_expires_at";

fn stored_changes(c: &Connection, report: Uuid) -> Result<Vec<StoredChange>> {
    let mut st = c.prepare_cached(
        "SELECT body, signature, received_at FROM changes WHERE report_id = ?1 ORDER BY id",
    )?;
    let mut rows = st.query([report.as_bytes().as_slice()])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(StoredChange {
            change: decode_row(r.get(0)?, r.get(1)?)?,
            received_at: r.get(2)?,
        });
    }
    Ok(out)
}

fn media_row_of(c: &Connection, sha: &str) -> Result<Option<MediaRow>> {
    Ok(c.query_row(
        "SELECT total, received, complete FROM media WHERE sha256 = ?1",
        [sha],
        |r| {
            Ok(MediaRow {
                total: r.get::<_, i64>(0)? as u64,
                received: r.get::<_, i64>(1)? as u64,
                complete: r.get(2)?,
            })
        },
    )
    .optional()?)
}

fn audit_rows(c: &Connection, first: i64, last: i64) -> Result<Vec<AuditEntry>> {
    let mut st = c.prepare_cached(
        "SELECT id, at_ms, actor, action, target, outcome FROM audit_log
         WHERE id >= ?1 AND id <= ?2 ORDER BY id",
    )?;
    let rows = st.query_map(params![first, last], |r| {
        Ok(AuditEntry {
            id: r.get(0)?,
            at_ms: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            outcome: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn log_hashes_of(c: &Connection, indexes: &[u64]) -> Result<Vec<Hash>> {
    let mut st = c.prepare_cached("SELECT hash FROM log_hashes WHERE idx = ?1")?;
    indexes
        .iter()
        .map(|i| {
            let h: Option<Vec<u8>> = st.query_row([*i as i64], |r| r.get(0)).optional()?;
            hash_column(h.ok_or_else(|| StationError::Internal("log hash missing".into()))?)
        })
        .collect()
}

fn log_backlog_of(c: &Connection) -> Result<LogBacklog> {
    let size: i64 = c.query_row(
        "SELECT COALESCE(MAX(idx) + 1, 0) FROM log_leaves",
        [],
        |r| r.get(0),
    )?;
    // One MAX per query: SQLite reads a lone MAX from its index, and two
    // in one query scan the whole table (at every push).
    let logged: bool = c.query_row(
        "SELECT MAX(change_id) IS NOT NULL FROM log_leaves",
        [],
        |r| r.get(0),
    )?;
    let last_audit: i64 = c.query_row(
        "SELECT COALESCE(MAX(audit_last), 0) FROM log_leaves",
        [],
        |r| r.get(0),
    )?;
    let mut changes = Vec::new();
    let mut st = c.prepare_cached(
        "SELECT id, body, signature, received_at FROM changes WHERE ?1 = 0 ORDER BY id",
    )?;
    // Read only while the log holds no change (see `LogBacklog`).
    let mut rows = st.query([if logged { 1 } else { 0 }])?;
    while let Some(r) = rows.next()? {
        changes.push((
            r.get(0)?,
            StoredChange {
                change: decode_row(r.get(1)?, r.get(2)?)?,
                received_at: r.get(3)?,
            },
        ));
    }
    Ok(LogBacklog {
        size: size as u64,
        backfill: changes,
        audit: audit_rows(c, last_audit + 1, i64::MAX)?,
    })
}

#[async_trait]
impl Engine for SqliteEngine {
    async fn begin(&self, kind: TxKind) -> Result<Box<dyn WriteTx>> {
        let conn = TxConn(self.writer.clone().lock_owned().await);
        let mut tx = SqliteTx {
            conn: Some(conn),
            kind,
        };
        if kind == TxKind::Log {
            // Write-locked from the start: a revocation by another process
            // (the `revoke` command) waits for this one or is seen by it.
            tx.run(|c| Ok(c.execute_batch("BEGIN IMMEDIATE")?)).await?;
        }
        Ok(Box::new(tx))
    }

    async fn insert_code(
        &self,
        code_hash: Vec<u8>,
        person: String,
        created_at: i64,
        expires_at: i64,
    ) -> Result<()> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO enrollment_codes (code_hash, person, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![code_hash, person, created_at, expires_at],
            )?;
            Ok(())
        })
        .await
    }

    async fn device_by_credential(&self, credential_hash: Vec<u8>) -> Result<Option<DeviceRow>> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE credential_hash = ?1"),
                [credential_hash],
                device_row,
            )
            .optional()?)
        })
        .await
    }

    async fn device(&self, device: Uuid) -> Result<Option<DeviceRow>> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = ?1"),
                [device.as_bytes().as_slice()],
                device_row,
            )
            .optional()?)
        })
        .await
    }

    async fn set_credential_hash(&self, device: Uuid, credential_hash: Vec<u8>) -> Result<bool> {
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE devices SET credential_hash = ?1 WHERE device_id = ?2",
                params![credential_hash, device.as_bytes().as_slice()],
            )? > 0)
        })
        .await
    }

    async fn set_credential_expiry(&self, device: Uuid, expires_at: i64) -> Result<bool> {
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE devices SET credential_expires_at = ?1 WHERE device_id = ?2",
                params![expires_at, device.as_bytes().as_slice()],
            )? > 0)
        })
        .await
    }

    async fn revoke(&self, device: Uuid, now: i64) -> Result<bool> {
        self.write(move |c| {
            // One statement under the write lock, ordered with every push.
            Ok(c.execute(
                "UPDATE devices SET revoked_at = max(?1, COALESCE(
                    (SELECT MAX(received_at) + 1 FROM changes WHERE device_id = ?2), ?1))
                 WHERE device_id = ?2 AND revoked_at IS NULL",
                params![now, device.as_bytes().as_slice()],
            )? > 0)
        })
        .await
    }

    async fn device_records(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT record FROM devices ORDER BY enrolled_at, device_id")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn directory_rows(&self, who: &Visibility, me: Uuid) -> Result<Vec<(String, bool)>> {
        let who = who.clone();
        self.read(move |c| {
            let sql = format!(
                "SELECT record, device_id = ?4 OR device_id IN
                   (SELECT device_id FROM changes WHERE report_id IN {})
                 FROM devices ORDER BY enrolled_at, device_id",
                visible(1)
            );
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(
                params![
                    who.person_key,
                    who.supervisor,
                    who.unit,
                    me.as_bytes().as_slice()
                ],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)),
            )?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn dashboard_account(&self, star_number: &str) -> Result<Option<DashboardAccount>> {
        let star = star_number.to_string();
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {ACCOUNT_COLUMNS} FROM dashboard_accounts WHERE star_number = ?1"),
                [star],
                account_row,
            )
            .optional()?
            .transpose()
        })
        .await
    }

    async fn dashboard_accounts(&self) -> Result<Vec<DashboardAccount>> {
        self.read(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM dashboard_accounts ORDER BY star_number"
            ))?;
            let rows = st.query_map([], account_row)?;
            rows.map(|r| r?).collect()
        })
        .await
    }

    async fn put_dashboard_account(&self, a: DashboardAccount, replace: bool) -> Result<bool> {
        self.write(move |c| {
            let conflict = if replace {
                "DO UPDATE SET device_id = excluded.device_id, password_hash = excluded.password_hash,
                   totp_sealed = excluded.totp_sealed, store_key_sealed = excluded.store_key_sealed,
                   updated_at = excluded.updated_at"
            } else {
                "DO NOTHING"
            };
            Ok(c.execute(
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
        self.write(move |c| {
            let tx = c.transaction()?;
            let devices = tx
                .prepare("SELECT device_id FROM dashboard_accounts ORDER BY star_number")?
                .query_map([], |r| r.get::<_, Vec<u8>>(0))?
                .map(|d| Ok(uuid_of(d?)?))
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
        self.read(move |c| {
            Ok(c.query_row(
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
        self.write(move |c| {
            c.execute(
                "INSERT INTO station_settings (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![name, value],
            )?;
            Ok(c.query_row(
                "SELECT value FROM station_settings WHERE name = ?1",
                [name],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn pull_rows(
        &self,
        who: &Visibility,
        after: i64,
        limit: u32,
    ) -> Result<(Vec<(i64, Change)>, i64)> {
        let who = who.clone();
        self.read(move |c| {
            // One read transaction: the page and the log head agree.
            let tx = c.unchecked_transaction()?;
            let sql = format!(
                "SELECT id, body, signature FROM changes
                 WHERE id > ?1 AND report_id IN {}
                 ORDER BY id LIMIT ?2",
                visible(3)
            );
            let mut out = Vec::new();
            {
                let mut st = tx.prepare(&sql)?;
                let mut rows = st.query(params![
                    after,
                    limit as i64,
                    who.person_key,
                    who.supervisor,
                    who.unit
                ])?;
                while let Some(r) = rows.next()? {
                    out.push((r.get(0)?, decode_row(r.get(1)?, r.get(2)?)?));
                }
            }
            let head: i64 =
                tx.query_row("SELECT COALESCE(MAX(id), 0) FROM changes", [], |r| r.get(0))?;
            Ok((out, head))
        })
        .await
    }

    async fn is_visible(&self, who: &Visibility, report: Uuid) -> Result<bool> {
        let who = who.clone();
        self.read(move |c| {
            let sql = format!("SELECT 1 WHERE ?1 IN {}", visible(2));
            Ok(c.query_row(
                &sql,
                params![
                    report.as_bytes().as_slice(),
                    who.person_key,
                    who.supervisor,
                    who.unit
                ],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
        })
        .await
    }

    async fn report_changes(&self, report: Uuid) -> Result<Vec<StoredChange>> {
        self.read(move |c| stored_changes(c, report)).await
    }

    async fn report_json(&self, report: Uuid) -> Result<Option<String>> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT json FROM reports WHERE report_id = ?1",
                [report.as_bytes().as_slice()],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn visible_report_jsons(&self, who: &Visibility) -> Result<Vec<String>> {
        let who = who.clone();
        self.read(move |c| {
            let sql = format!(
                "SELECT json FROM reports WHERE report_id IN {} ORDER BY updated_ms DESC",
                visible(1)
            );
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(params![who.person_key, who.supervisor, who.unit], |r| {
                r.get::<_, String>(0)
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn all_report_jsons(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT json FROM reports ORDER BY report_id")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn clock_skew(&self, report: Uuid) -> Result<Vec<ClockSkew>> {
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT device_id, skew_ms, observed_at FROM clock_skew WHERE report_id = ?1 ORDER BY device_id",
            )?;
            let mut rows = st.query([report.as_bytes().as_slice()])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(ClockSkew {
                    device: uuid_of(r.get(0)?)?,
                    skew_ms: r.get(1)?,
                    observed_at_ms: r.get(2)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn record_clock_skew(
        &self,
        device: Uuid,
        reports: Vec<Uuid>,
        skew_ms: i64,
        now: i64,
    ) -> Result<()> {
        self.write(move |c| {
            let tx = c.transaction()?;
            for r in reports {
                tx.execute(
                    "INSERT INTO clock_skew (report_id, device_id, skew_ms, observed_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (report_id, device_id) DO UPDATE SET skew_ms = excluded.skew_ms, observed_at = excluded.observed_at",
                    params![r.as_bytes().as_slice(), device.as_bytes().as_slice(), skew_ms, now],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn export_rows(&self, reports: &[Uuid]) -> Result<ExportRows> {
        let reports = reports.to_vec();
        self.read(move |c| {
            // One snapshot for the whole package.
            let tx = c.unchecked_transaction()?;
            let mut out = ExportRows::default();
            let mut authors = BTreeSet::new();
            for report in reports {
                let changes = stored_changes(&tx, report)?;
                authors.extend(changes.iter().map(|s| s.change.device()));
                let mut st = tx.prepare_cached(
                    "SELECT r.sha256, m.total, m.received, m.complete FROM media_refs r
                     JOIN media m ON m.sha256 = r.sha256 WHERE r.report_id = ?1",
                )?;
                let rows = st.query_map([report.as_bytes().as_slice()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        MediaRow {
                            total: r.get::<_, i64>(1)? as u64,
                            received: r.get::<_, i64>(2)? as u64,
                            complete: r.get(3)?,
                        },
                    ))
                })?;
                for row in rows {
                    let (sha, m) = row?;
                    out.media.insert(sha, m);
                }
                out.reports.push((report, changes));
            }
            let mut st = tx.prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = ?1"
            ))?;
            for d in authors {
                if let Some(row) = st
                    .query_row([d.as_bytes().as_slice()], device_row)
                    .optional()?
                {
                    out.devices.insert(d, row);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn media_row(&self, sha256: &str) -> Result<Option<MediaRow>> {
        let sha = sha256.to_string();
        self.read(move |c| media_row_of(c, &sha)).await
    }

    async fn media_visible(&self, who: &Visibility, sha256: &str) -> Result<bool> {
        let who = who.clone();
        let sha = sha256.to_string();
        self.read(move |c| {
            let sql = format!(
                "SELECT 1 FROM media m JOIN media_refs r ON r.sha256 = m.sha256
                 WHERE m.sha256 = ?1 AND m.complete = 1 AND r.report_id IN {} LIMIT 1",
                visible(2)
            );
            Ok(c.query_row(
                &sql,
                params![sha, who.person_key, who.supervisor, who.unit],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
        })
        .await
    }

    async fn append_audit(&self, e: AuditEntry) -> Result<()> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO audit_log (at_ms, actor, action, target, outcome) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.at_ms, e.actor, e.action, e.target, e.outcome],
            )?;
            Ok(())
        })
        .await
    }

    async fn audit_range(&self, first: i64, last: i64) -> Result<Vec<AuditEntry>> {
        self.read(move |c| audit_rows(c, first, last)).await
    }

    async fn log_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>> {
        let indexes = indexes.to_vec();
        self.read(move |c| log_hashes_of(c, &indexes)).await
    }

    async fn checkpoint(&self, size: Option<u64>) -> Result<Option<(u64, String)>> {
        self.read(move |c| {
            let row = match size {
                Some(n) => c
                    .query_row(
                        "SELECT size, note FROM log_checkpoints WHERE size = ?1",
                        [n as i64],
                        |r| Ok((r.get::<_, i64>(0)?, r.get(1)?)),
                    )
                    .optional()?,
                None => c
                    .query_row(
                        "SELECT size, note FROM log_checkpoints ORDER BY size DESC LIMIT 1",
                        [],
                        |r| Ok((r.get::<_, i64>(0)?, r.get(1)?)),
                    )
                    .optional()?,
            };
            Ok(row.map(|(n, note)| (n as u64, note)))
        })
        .await
    }

    async fn add_attestation(&self, a: Attestation) -> Result<()> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO log_attestations (size, kind, party, body, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![
                    a.size as i64,
                    a.kind.as_str(),
                    a.party,
                    a.body,
                    a.received_at_ms
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn attestations(&self, size: u64) -> Result<Vec<Attestation>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT kind, party, body, received_at FROM log_attestations
                 WHERE size = ?1 ORDER BY kind, party",
            )?;
            let rows = st.query_map([size as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (kind, party, body, at) = row?;
                let kind = AttestationKind::parse(&kind)
                    .ok_or_else(|| StationError::Internal("attestation kind".into()))?;
                out.push(Attestation {
                    size,
                    kind,
                    party,
                    body,
                    received_at_ms: at,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn last_attested(&self, kind: AttestationKind, party: &str) -> Result<Option<u64>> {
        let party = party.to_string();
        self.read(move |c| {
            let n: Option<i64> = c.query_row(
                "SELECT MAX(size) FROM log_attestations WHERE kind = ?1 AND party = ?2",
                params![kind.as_str(), party],
                |r| r.get(0),
            )?;
            Ok(n.map(|n| n as u64))
        })
        .await
    }

    async fn newest_cosigned(&self, witnesses: u32) -> Result<Option<u64>> {
        self.read(move |c| {
            // Newest first along the primary key (size, kind, party).
            let n: Option<i64> = c
                .query_row(
                    "SELECT size FROM log_attestations WHERE kind = 'cosignature'
                     GROUP BY size HAVING COUNT(*) >= ?1 ORDER BY size DESC LIMIT 1",
                    [i64::from(witnesses)],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(n.map(|n| n as u64))
        })
        .await
    }

    async fn log_leaves(&self, from: u64, to: u64) -> Result<Vec<LogRow>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT idx, change_id, audit_last, leaf FROM log_leaves
                 WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
            )?;
            let rows = st.query_map(params![from as i64, to as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn log_restores(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT idx, leaf FROM log_leaves
                 WHERE change_id IS NULL AND audit_last IS NULL ORDER BY idx",
            )?;
            let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn logged_changes(&self, hashes: &[[u8; 32]]) -> Result<Vec<(u64, Uuid, u64, i64)>> {
        let hashes = hashes.to_vec();
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT l.idx, c.device_id, c.seq, c.received_at FROM changes c
                 JOIN log_leaves l ON l.change_id = c.id WHERE c.hash = ?1",
            )?;
            let mut out = Vec::new();
            for h in &hashes {
                let mut rows = st.query([h.as_slice()])?;
                while let Some(r) = rows.next()? {
                    out.push((
                        r.get::<_, i64>(0)? as u64,
                        uuid_of(r.get(1)?)?,
                        r.get::<_, i64>(2)? as u64,
                        r.get(3)?,
                    ));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, StoredChange)>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT id, body, signature, received_at FROM changes WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let mut rows = st.query(params![after, limit])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push((
                    r.get(0)?,
                    StoredChange {
                        change: decode_row(r.get(1)?, r.get(2)?)?,
                        received_at: r.get(3)?,
                    },
                ));
            }
            Ok(out)
        })
        .await
    }

    async fn audit_log(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>> {
        self.read(move |c| {
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
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn record_rejection(
        &self,
        at: i64,
        device: Option<Uuid>,
        reason: String,
        bytes: Vec<u8>,
    ) -> Result<()> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO rejected (received_at, device_id, reason, bytes) VALUES (?1, ?2, ?3, ?4)",
                params![at, device.map(|d| d.as_bytes().to_vec()), reason, bytes],
            )?;
            Ok(())
        })
        .await
    }

    async fn counts(&self) -> Result<Counts> {
        self.read(|c| {
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
}

/// The writer connection, held by one transaction. Dropped inside a
/// transaction that did not commit (an error, a panic), it rolls back
/// before the next user gets the connection.
struct TxConn(OwnedMutexGuard<Connection>);

impl Drop for TxConn {
    fn drop(&mut self) {
        if !self.0.is_autocommit() {
            let _ = self.0.execute_batch("ROLLBACK");
        }
    }
}

/// The writer connection inside `BEGIN IMMEDIATE` (a [`TxKind::Log`]
/// transaction) or, for [`TxKind::Media`], statements committed one by one
/// under the writer's lock; each call runs on the blocking pool.
struct SqliteTx {
    conn: Option<TxConn>,
    kind: TxKind,
}

impl SqliteTx {
    async fn run<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self
            .conn
            .take()
            .ok_or_else(|| StationError::Internal("transaction already ended".into()))?;
        let (conn, out) = tokio::task::spawn_blocking(move || {
            let out = f(&conn.0);
            (conn, out)
        })
        .await
        .map_err(join_error)?;
        self.conn = Some(conn);
        out
    }
}

#[async_trait]
impl WriteTx for SqliteTx {
    async fn lock_log(&mut self) -> Result<()> {
        // `BEGIN IMMEDIATE` holds the database's one write lock already.
        Ok(())
    }

    async fn lock_media(&mut self, _sha256: &str) -> Result<()> {
        Ok(())
    }

    async fn chain_facts(&mut self, changes: &[Change]) -> Result<ChainFacts> {
        let keys: Vec<(ChangeId, Uuid, Uuid, Option<[u8; 32]>)> = changes
            .iter()
            .map(|c| (c.id(), c.device(), c.report(), c.body().prev))
            .collect();
        self.run(move |c| {
            let lookup = SqlLookup(c);
            let mut out = ChainFacts::default();
            for (id, device, report, prev) in keys {
                if let Some(s) = lookup.stored(id)? {
                    out.stored.insert(id, s);
                }
                if let Some(p) = prev {
                    if let Some(found) = lookup.stored_by_hash(&p)? {
                        out.by_hash.insert(p, found);
                    }
                }
                if lookup.has_stored_child(device, report, prev.as_ref())? {
                    out.children
                        .insert((report, device, prev.unwrap_or(ZERO_HASH)));
                }
                if let std::collections::hash_map::Entry::Vacant(slot) = out.keys.entry(device) {
                    if let Some(k) = lookup.device_key(device)? {
                        slot.insert(k);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn revoked_among(&mut self, devices: &[Uuid]) -> Result<HashSet<Uuid>> {
        let devices = devices.to_vec();
        self.run(move |c| {
            let mut st = c.prepare_cached(
                "SELECT 1 FROM devices WHERE device_id = ?1 AND revoked_at IS NOT NULL",
            )?;
            let mut out = HashSet::new();
            for d in devices {
                if st.exists([d.as_bytes().as_slice()])? {
                    out.insert(d);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn complete_among(&mut self, sha256s: &[String]) -> Result<HashSet<String>> {
        let shas = sha256s.to_vec();
        self.run(move |c| {
            let mut out = HashSet::new();
            for sha in shas {
                if media_row_of(c, &sha)?.is_some_and(|m| m.complete) {
                    out.insert(sha);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn append_changes(&mut self, changes: &[Change], received_at: i64) -> Result<i64> {
        let changes = changes.to_vec();
        self.run(move |c| {
            for ch in &changes {
                insert_change(c, ch, true, received_at)?;
            }
            Ok(c.query_row("SELECT COALESCE(MAX(id), 0) FROM changes", [], |r| r.get(0))?)
        })
        .await
    }

    async fn grant_author_access(&mut self, pairs: &[(Uuid, Uuid)]) -> Result<()> {
        let pairs = pairs.to_vec();
        self.run(move |c| {
            let mut st = c.prepare_cached(
                "INSERT OR IGNORE INTO report_access (person_key, report_id)
                 SELECT person_key, ?2 FROM devices WHERE device_id = ?1",
            )?;
            for (device, report) in pairs {
                st.execute(params![
                    device.as_bytes().as_slice(),
                    report.as_bytes().as_slice()
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn add_media_refs(&mut self, pairs: &[(String, Uuid)]) -> Result<()> {
        let pairs = pairs.to_vec();
        self.run(move |c| {
            let mut st = c.prepare_cached(
                "INSERT OR IGNORE INTO media_refs (sha256, report_id) VALUES (?1, ?2)",
            )?;
            for (sha, report) in pairs {
                st.execute(params![sha, report.as_bytes().as_slice()])?;
            }
            Ok(())
        })
        .await
    }

    async fn report_changes(&mut self, report: Uuid) -> Result<Vec<Change>> {
        self.run(move |c| {
            Ok(stored_changes(c, report)?
                .into_iter()
                .map(|s| s.change)
                .collect())
        })
        .await
    }

    async fn device_unit(&mut self, device: Uuid) -> Result<Option<String>> {
        self.run(move |c| {
            Ok(c.query_row(
                "SELECT unit FROM devices WHERE device_id = ?1",
                [device.as_bytes().as_slice()],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn device_records_of(&mut self, devices: &[Uuid]) -> Result<HashMap<Uuid, String>> {
        let devices = devices.to_vec();
        self.run(move |c| {
            let mut st = c.prepare_cached("SELECT record FROM devices WHERE device_id = ?1")?;
            let mut out = HashMap::new();
            for d in devices {
                if let Some(r) = st
                    .query_row([d.as_bytes().as_slice()], |r| r.get::<_, String>(0))
                    .optional()?
                {
                    out.insert(d, r);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_report(&mut self, row: ReportRow) -> Result<bool> {
        self.run(move |c| {
            let existed = c
                .query_row(
                    "SELECT 1 FROM reports WHERE report_id = ?1",
                    [row.report_id.as_bytes().as_slice()],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            c.execute(
                "INSERT INTO reports (report_id, unit, created_by, lifecycle, updated_ms, json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (report_id) DO UPDATE SET unit = excluded.unit, created_by = excluded.created_by,
                   lifecycle = excluded.lifecycle, updated_ms = excluded.updated_ms, json = excluded.json",
                params![
                    row.report_id.as_bytes().as_slice(),
                    row.unit,
                    row.created_by.as_bytes().as_slice(),
                    row.lifecycle,
                    row.updated_ms,
                    row.json
                ],
            )?;
            Ok(!existed)
        })
        .await
    }

    async fn publish(&mut self, _event: &(String, ReportEvent)) -> Result<()> {
        // One process: the API sends its pushes' events itself.
        Ok(())
    }

    async fn code(&mut self, code_hash: &[u8]) -> Result<Option<CodeRow>> {
        let h = code_hash.to_vec();
        self.run(move |c| {
            Ok(c.query_row(
                "SELECT person, expires_at, used_at FROM enrollment_codes WHERE code_hash = ?1",
                [h],
                |r| {
                    Ok(CodeRow {
                        person: r.get(0)?,
                        expires_at: r.get(1)?,
                        used_at: r.get(2)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    async fn insert_device(&mut self, d: NewDevice) -> Result<bool> {
        self.run(move |c| {
            Ok(c.execute(
                "INSERT OR IGNORE INTO devices (device_id, public_key, record, person_key, role, unit,
                   credential_hash, enrolled_at, credential_expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    d.device_id.as_bytes().as_slice(),
                    d.public_key.as_slice(),
                    d.record,
                    d.person_key,
                    d.role,
                    d.unit,
                    d.credential_hash,
                    d.enrolled_at,
                    d.credential_expires_at
                ],
            )? > 0)
        })
        .await
    }

    async fn mark_code_used(&mut self, code_hash: &[u8], at: i64, device: Uuid) -> Result<()> {
        let h = code_hash.to_vec();
        self.run(move |c| {
            c.execute(
                "UPDATE enrollment_codes SET used_at = ?1, used_by = ?2 WHERE code_hash = ?3",
                params![at, device.as_bytes().as_slice(), h],
            )?;
            Ok(())
        })
        .await
    }

    async fn log_backlog(&mut self) -> Result<LogBacklog> {
        self.run(log_backlog_of).await
    }

    async fn log_hashes(&mut self, indexes: &[u64]) -> Result<Vec<Hash>> {
        let indexes = indexes.to_vec();
        self.run(move |c| log_hashes_of(c, &indexes)).await
    }

    async fn append_log(&mut self, append: LogAppend) -> Result<()> {
        self.run(move |c| {
            let mut st = c.prepare_cached(
                "INSERT INTO log_leaves (idx, change_id, audit_last, leaf) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (idx, change, audit, leaf) in &append.leaves {
                st.execute(params![*idx as i64, change, audit, leaf])?;
            }
            let mut st = c.prepare_cached("INSERT INTO log_hashes (idx, hash) VALUES (?1, ?2)")?;
            for (idx, hash) in &append.hashes {
                st.execute(params![*idx as i64, hash.as_slice()])?;
            }
            c.execute(
                "INSERT INTO log_checkpoints (size, note) VALUES (?1, ?2)",
                params![append.checkpoint.0 as i64, append.checkpoint.1],
            )?;
            Ok(())
        })
        .await
    }

    async fn media_row(&mut self, sha256: &str) -> Result<Option<MediaRow>> {
        let sha = sha256.to_string();
        self.run(move |c| media_row_of(c, &sha)).await
    }

    async fn put_media(&mut self, sha256: &str, row: MediaRow) -> Result<()> {
        let sha = sha256.to_string();
        self.run(move |c| {
            c.execute(
                "INSERT INTO media (sha256, total, received, complete) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (sha256) DO UPDATE SET total = excluded.total,
                   received = excluded.received, complete = excluded.complete",
                params![sha, row.total as i64, row.received as i64, row.complete],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_media(&mut self, sha256: &str) -> Result<()> {
        let sha = sha256.to_string();
        self.run(move |c| {
            c.execute("DELETE FROM media WHERE sha256 = ?1", [sha])?;
            Ok(())
        })
        .await
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if self.kind == TxKind::Log {
            self.run(|c| Ok(c.execute_batch("COMMIT")?)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldreport_core::evidence::{DeviceRecord, Person};
    use fieldreport_core::Role;

    #[test]
    fn every_step_file_is_listed_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        MIGRATIONS.check_dir(&dir).unwrap();
    }

    /// A station database made by the first schema upgrades in place and
    /// keeps its rows.
    #[test]
    fn a_version_1_database_upgrades_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
            c.execute_batch(MIGRATIONS.step(1).unwrap().sql).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO media (sha256, total, received, complete) VALUES ('ab', 10, 10, 1)",
                [],
            )
            .unwrap();
        }
        let s = SqliteStorage::open(dir.path()).unwrap();
        let c = s.engine().reader();
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.current());
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
            for v in 1..=MIGRATIONS.current() {
                c.execute_batch(MIGRATIONS.step(v).unwrap().sql).unwrap();
            }
            c.pragma_update(None, "user_version", MIGRATIONS.current())
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
                .engine()
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

    /// A write transaction dropped before it commits, or cancelled with
    /// the task that held it, leaves nothing behind and frees the writer:
    /// later writes land and readers see them.
    #[test]
    fn a_dropped_or_cancelled_transaction_rolls_back_and_frees_the_writer() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStorage::open(dir.path()).unwrap();
        let sha = "ab".repeat(32);
        let row = MediaRow {
            total: 3,
            received: 3,
            complete: true,
        };
        rt.block_on(async {
            let mut tx = s.engine().begin(TxKind::Log).await.unwrap();
            tx.put_media(&sha, row).await.unwrap();
            drop(tx);
            assert_eq!(s.engine().media_row(&sha).await.unwrap(), None);

            let held = s.clone();
            let (started, wait) = tokio::sync::oneshot::channel();
            let sha2 = sha.clone();
            let task = tokio::spawn(async move {
                let mut tx = held.engine().begin(TxKind::Log).await.unwrap();
                tx.put_media(&sha2, row).await.unwrap();
                let _ = started.send(());
                std::future::pending::<()>().await;
            });
            wait.await.unwrap();
            task.abort();
            let _ = task.await;
            assert_eq!(s.engine().media_row(&sha).await.unwrap(), None);

            use crate::storage::StationStorage;
            assert_eq!(s.put_setting_once("after", vec![1]).await.unwrap(), vec![1]);
            assert_eq!(s.setting("after").await.unwrap(), Some(vec![1]));
        });
    }

    /// A version 6 database upgrades, keeps its changes, and gets the index
    /// that reads a report's changes in log order.
    #[test]
    fn a_version_6_database_upgrades_and_indexes_report_changes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
            for v in 1..=6 {
                c.execute_batch(MIGRATIONS.step(v).unwrap().sql).unwrap();
            }
            c.pragma_update(None, "user_version", 6).unwrap();
            c.execute(
                "INSERT INTO changes (hash, device_id, seq, report_id, prev, body, signature, hlc_wall, acked, received_at)
                 VALUES (x'01', x'02', 1, x'03', x'04', x'05', x'06', 7, 1, 8)",
                [],
            )
            .unwrap();
        }
        let s = SqliteStorage::open(dir.path()).unwrap();
        let c = s.engine().reader();
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.current());
        let kept: i64 = c
            .query_row("SELECT received_at FROM changes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 8);
        let plan: String = c
            .query_row(
                "EXPLAIN QUERY PLAN SELECT body FROM changes WHERE report_id = x'03' ORDER BY id",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("changes_report"), "{plan}");
    }

    /// A version 4 database (before dashboard accounts moved into storage)
    /// upgrades, keeps its devices, and takes accounts.
    #[test]
    fn a_version_4_database_upgrades_and_takes_dashboard_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let device = Uuid::new_v4();
        {
            let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
            for v in 1..=4 {
                c.execute_batch(MIGRATIONS.step(v).unwrap().sql).unwrap();
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
            let c = s.engine().reader();
            let v: i64 = c
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(v, MIGRATIONS.current());
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
        super::super::test_support::accounts_round_trip(&rt, &s, device);
        let h: Vec<u8> = s
            .engine()
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
