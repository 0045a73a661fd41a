//! The PostgreSQL engine: several station processes share one database
//! (and one media directory, on shared storage).
//!
//! - **Log order.** Every push takes one transaction-level advisory lock
//!   before it numbers its changes and holds it until commit, so log ids
//!   are assigned in commit order: a pull that has seen id N can never miss
//!   a change with a lower id committed later. Pulls read in one
//!   REPEATABLE READ snapshot, so a page and the log head agree.
//! - **Verification** is the core's (`verify_batch`), fed from a few bulk
//!   queries per batch made under that lock.
//! - **Events** fan out through `NOTIFY fieldreport_events` sent inside the
//!   push transaction (delivered on commit); every process LISTENs on its
//!   own connection and feeds its local event stream.
//! - **Media** uploads of one file are serialised across processes by an
//!   advisory lock on its hash.
//!
//! Blocking `postgres` clients run on tokio's blocking pool, as the SQLite
//! engine's connections do.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ed25519_dalek::VerifyingKey;
use fieldreport_core::crdt::{Change, ChangeId, Hash, ReportDoc};
use fieldreport_core::evidence::package::DeviceEnrollment;
use fieldreport_core::evidence::{verify_batch, ChainLookup, DeviceRecord, Person};
use fieldreport_core::model::media_refs;
use fieldreport_core::store::MediaStore;
use fieldreport_core::sync::wire::{
    ClockSkew, MediaStatus, Receipt, ReceiptsResponse, ReportEvent,
};
use fieldreport_core::{Report, Role};
use postgres::{Client, IsolationLevel, NoTls, Transaction};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::common::*;
use super::{
    AuditEntry, Counts, DashboardAccount, Enrolled, ExportMaterial, PullPage, PushOutcome,
    StationStorage, CREDENTIAL_LIFETIME_MS,
};
use crate::clock::{Clock, SystemClock};
use crate::error::{Result, StationError};

/// Numbered schema steps; `schema_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE devices (
        device_id UUID PRIMARY KEY,
        public_key BYTEA NOT NULL,
        record TEXT NOT NULL,
        person_key TEXT NOT NULL,
        role TEXT NOT NULL,
        unit TEXT NOT NULL,
        credential_hash BYTEA NOT NULL UNIQUE,
        enrolled_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
    CREATE TABLE enrollment_codes (
        code_hash BYTEA PRIMARY KEY,
        person TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT,
        used_by UUID
    );
    CREATE TABLE changes (
        id BIGINT PRIMARY KEY,
        hash BYTEA NOT NULL UNIQUE,
        device_id UUID NOT NULL,
        seq BIGINT NOT NULL,
        report_id UUID NOT NULL,
        prev BYTEA NOT NULL,
        body BYTEA NOT NULL,
        signature BYTEA NOT NULL,
        hlc_wall BIGINT NOT NULL,
        received_at BIGINT NOT NULL,
        UNIQUE (device_id, seq),
        UNIQUE (report_id, device_id, prev)
    );
    CREATE INDEX changes_report ON changes (report_id, id);
    CREATE TABLE reports (
        report_id UUID PRIMARY KEY,
        unit TEXT NOT NULL,
        created_by UUID NOT NULL,
        lifecycle TEXT NOT NULL,
        updated_ms BIGINT NOT NULL,
        json TEXT NOT NULL
    );
    CREATE INDEX reports_unit ON reports (unit);
    CREATE TABLE report_access (
        person_key TEXT NOT NULL,
        report_id UUID NOT NULL,
        PRIMARY KEY (person_key, report_id)
    );
    CREATE TABLE media (
        sha256 TEXT PRIMARY KEY,
        total BIGINT NOT NULL,
        received BIGINT NOT NULL,
        complete BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE TABLE media_refs (
        sha256 TEXT NOT NULL,
        report_id UUID NOT NULL,
        PRIMARY KEY (sha256, report_id)
    );
    CREATE TABLE rejected (
        id BIGSERIAL PRIMARY KEY,
        received_at BIGINT NOT NULL,
        device_id UUID,
        reason TEXT NOT NULL,
        bytes BYTEA NOT NULL
    );
"#,
    // 2: device clocks found skewed when they pushed a report's changes.
    r#"
    CREATE TABLE clock_skew (
        report_id UUID NOT NULL,
        device_id UUID NOT NULL,
        skew_ms BIGINT NOT NULL,
        observed_at BIGINT NOT NULL,
        PRIMARY KEY (report_id, device_id)
    );
"#,
    // 3: the audit log, append-only (the trigger refuses any change).
    r#"
    CREATE TABLE audit_log (
        id BIGSERIAL PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;
    CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
    CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
        FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
"#,
    // 4: credentials expire. Devices enrolled before get 180 days from
    // enrollment, and at least 30 from this upgrade.
    r#"
    ALTER TABLE devices ADD COLUMN credential_expires_at BIGINT;
    UPDATE devices SET credential_expires_at = GREATEST(
        enrolled_at + 15552000000,
        (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT + 2592000000);
"#,
    // 5: dashboard accounts, moved from `dashboard/users.json` (imported
    // by the dashboard on start): secrets sealed with the station key.
    r#"
    CREATE TABLE dashboard_accounts (
        star_number TEXT PRIMARY KEY,
        device_id UUID NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        totp_sealed BYTEA NOT NULL,
        store_key_sealed BYTEA NOT NULL,
        updated_at BIGINT NOT NULL
    );
"#,
    // 6: station settings written once, such as the check value that ties
    // the database to its station key.
    r#"
    CREATE TABLE station_settings (
        name TEXT PRIMARY KEY,
        value BYTEA NOT NULL
    );
"#,
];

/// Advisory lock keys (arbitrary, fixed).
const LOCK_MIGRATE: i64 = 0x4652_0001;
const LOCK_LOG: i64 = 0x4652_0002;
const CHANNEL: &str = "fieldreport_events";
const CONNECTIONS: usize = 8;

const ZERO_HASH: [u8; 32] = [0; 32];

pub struct PostgresStorage {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Vec<Mutex<Client>>,
    media: MediaStore,
    partial_dir: PathBuf,
    scratch: PathBuf,
    data: PathBuf,
    events: broadcast::Sender<(String, ReportEvent)>,
    /// Tells the listener thread to stop.
    closed: Arc<AtomicBool>,
    clock: Arc<dyn Clock>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
        // Closing a blocking client blocks on its own runtime, which must
        // not happen on an async worker: close them on a thread of their own.
        let pool = std::mem::take(&mut self.pool);
        std::thread::spawn(move || drop(pool));
    }
}

impl Inner {
    /// A free connection, or the first one when all are busy.
    fn conn(&self) -> std::sync::MutexGuard<'_, Client> {
        for c in &self.pool {
            if let Ok(g) = c.try_lock() {
                return g;
            }
        }
        self.pool[0].lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn db(e: postgres::Error) -> StationError {
    // The server's message may quote values; keep only the SQLSTATE.
    let code = e
        .code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| "connection".into());
    StationError::Internal(format!("postgres error {code}"))
}

fn is_unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
}

fn hash32(v: Vec<u8>) -> Result<Hash> {
    v.try_into()
        .map_err(|_| StationError::Internal("hash column".into()))
}

fn decode(body: Vec<u8>, sig: Vec<u8>) -> Result<Change> {
    let sig: [u8; 64] = sig
        .try_into()
        .map_err(|_| StationError::Internal("signature column".into()))?;
    Ok(Change::from_parts(body, sig)?)
}

impl PostgresStorage {
    /// Connects to `url` (creating the schema if needed) with media files
    /// under `data` (shared by every process on the database).
    pub fn open(url: &str, data: &Path) -> Result<PostgresStorage> {
        Self::open_with_clock(url, data, SystemClock::shared()?)
    }

    /// Like [`PostgresStorage::open`], judging time by `clock`.
    pub fn open_with_clock(
        url: &str,
        data: &Path,
        clock: Arc<dyn Clock>,
    ) -> Result<PostgresStorage> {
        crate::files::open_data_dir(data)?;
        // Connection errors name the server, never data: safe to show.
        let connect = || {
            Client::connect(url, NoTls).map_err(|e| {
                StationError::Unavailable(format!("cannot connect to PostgreSQL: {e}"))
            })
        };
        let mut first = connect()?;
        migrate(&mut first)?;
        let mut pool = vec![Mutex::new(first)];
        for _ in 1..CONNECTIONS {
            pool.push(Mutex::new(connect()?));
        }
        let media = MediaStore::open(data.join("media"))?;
        let partial_dir = data.join("media").join("partial");
        std::fs::create_dir_all(&partial_dir)?;
        let scratch = data.join("exports-tmp");
        std::fs::create_dir_all(&scratch)?;
        let (events, _) = broadcast::channel(1024);
        let closed = Arc::new(AtomicBool::new(false));
        spawn_listener(url.to_string(), events.clone(), closed.clone());
        Ok(PostgresStorage {
            inner: Arc::new(Inner {
                pool,
                media,
                partial_dir,
                scratch,
                data: data.to_path_buf(),
                events,
                closed,
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

fn migrate(c: &mut Client) -> Result<()> {
    let mut tx = c.transaction().map_err(db)?;
    // Two processes starting together: one migrates, the other waits.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_MIGRATE])
        .map_err(db)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(db)?;
    let found: i32 = tx
        .query_opt("SELECT version FROM schema_version", &[])
        .map_err(db)?
        .map(|r| r.get(0))
        .unwrap_or(0);
    if found as usize > MIGRATIONS.len() {
        return Err(StationError::Core(fieldreport_core::Error::SchemaTooNew {
            found: found as i64,
            supported: MIGRATIONS.len() as i64,
        }));
    }
    for step in &MIGRATIONS[found as usize..] {
        tx.batch_execute(step).map_err(db)?;
    }
    let rows = tx
        .query(
            "SELECT device_id, record FROM devices WHERE record NOT LIKE '%\"person_secret\"%'",
            &[],
        )
        .map_err(db)?;
    for r in rows {
        let device: Uuid = r.get(0);
        if let Some(json) = with_person_secret(&r.get::<_, String>(1))? {
            tx.execute(
                "UPDATE devices SET record = $1 WHERE device_id = $2",
                &[&json, &device],
            )
            .map_err(db)?;
        }
    }
    tx.execute("DELETE FROM schema_version", &[]).map_err(db)?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES ($1)",
        &[&(MIGRATIONS.len() as i32)],
    )
    .map_err(db)?;
    tx.commit().map_err(db)
}

const ACCOUNT_COLUMNS: &str =
    "star_number, device_id, password_hash, totp_sealed, store_key_sealed, updated_at";

fn account_row(r: &postgres::Row) -> DashboardAccount {
    DashboardAccount {
        star_number: r.get(0),
        device_id: r.get(1),
        password_hash: r.get(2),
        totp_sealed: r.get(3),
        store_key_sealed: r.get(4),
        updated_at: r.get(5),
    }
}

/// LISTENs on its own connection and feeds `events`; reconnects after a
/// lost connection (a device that missed events catches up by pulling).
fn spawn_listener(
    url: String,
    events: broadcast::Sender<(String, ReportEvent)>,
    closed: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        while !closed.load(Ordering::Relaxed) {
            match Client::connect(&url, NoTls) {
                Ok(mut c) => {
                    if c.batch_execute(&format!("LISTEN {CHANNEL}")).is_ok() {
                        use postgres::fallible_iterator::FallibleIterator;
                        loop {
                            // A fresh 200 ms wait each time, to notice a
                            // closed storage.
                            let next = c
                                .notifications()
                                .timeout_iter(Duration::from_millis(200))
                                .next();
                            match next {
                                Ok(Some(note)) => {
                                    if let Ok(ev) = serde_json::from_str::<(String, ReportEvent)>(
                                        note.payload(),
                                    ) {
                                        let _ = events.send(ev);
                                    }
                                }
                                Ok(None) if !closed.load(Ordering::Relaxed) => {}
                                Ok(None) => return,
                                Err(_) => break,
                            }
                        }
                    }
                    tracing::warn!("postgres event listener disconnected; reconnecting");
                }
                Err(e) => tracing::warn!(error = %db(e), "postgres event listener cannot connect"),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

/// What `verify_batch` needs, fetched in bulk for one batch.
struct BatchLookup {
    stored: HashMap<ChangeId, (Hash, [u8; 64])>,
    by_hash: HashMap<Hash, (Uuid, Uuid, u64)>,
    children: BTreeSet<(Uuid, Uuid, Hash)>,
    keys: HashMap<Uuid, VerifyingKey>,
}

impl ChainLookup for BatchLookup {
    fn stored(&self, id: ChangeId) -> fieldreport_core::Result<Option<(Hash, [u8; 64])>> {
        Ok(self.stored.get(&id).copied())
    }
    fn stored_by_hash(&self, hash: &Hash) -> fieldreport_core::Result<Option<(Uuid, Uuid, u64)>> {
        Ok(self.by_hash.get(hash).copied())
    }
    fn has_stored_child(
        &self,
        device: Uuid,
        report: Uuid,
        prev: Option<&Hash>,
    ) -> fieldreport_core::Result<bool> {
        Ok(self
            .children
            .contains(&(report, device, *prev.unwrap_or(&ZERO_HASH))))
    }
    fn device_key(&self, device: Uuid) -> fieldreport_core::Result<Option<VerifyingKey>> {
        Ok(self.keys.get(&device).copied())
    }
}

fn batch_lookup(tx: &mut Transaction, changes: &[Change]) -> Result<BatchLookup> {
    let devices: Vec<Uuid> = changes.iter().map(|c| c.device()).collect();
    let seqs: Vec<i64> = changes.iter().map(|c| c.body().seq as i64).collect();
    let reports: Vec<Uuid> = changes.iter().map(|c| c.report()).collect();
    let prevs: Vec<Vec<u8>> = changes
        .iter()
        .map(|c| c.body().prev.unwrap_or(ZERO_HASH).to_vec())
        .collect();
    let mut out = BatchLookup {
        stored: HashMap::new(),
        by_hash: HashMap::new(),
        children: BTreeSet::new(),
        keys: HashMap::new(),
    };
    for r in tx
        .query(
            "SELECT c.device_id, c.seq, c.hash, c.signature FROM changes c
             JOIN UNNEST($1::uuid[], $2::bigint[]) AS k(d, s) ON c.device_id = k.d AND c.seq = k.s",
            &[&devices, &seqs],
        )
        .map_err(db)?
    {
        let sig: Vec<u8> = r.get(3);
        let sig: [u8; 64] = sig
            .try_into()
            .map_err(|_| StationError::Internal("signature column".into()))?;
        out.stored.insert(
            ChangeId {
                device: r.get(0),
                seq: r.get::<_, i64>(1) as u64,
            },
            (hash32(r.get(2))?, sig),
        );
    }
    for r in tx
        .query(
            "SELECT hash, device_id, report_id, seq FROM changes WHERE hash = ANY($1)",
            &[&prevs],
        )
        .map_err(db)?
    {
        out.by_hash.insert(
            hash32(r.get(0))?,
            (r.get(1), r.get(2), r.get::<_, i64>(3) as u64),
        );
    }
    for r in tx
        .query(
            "SELECT c.report_id, c.device_id, c.prev FROM changes c
             JOIN UNNEST($1::uuid[], $2::uuid[], $3::bytea[]) AS k(r, d, p)
               ON c.report_id = k.r AND c.device_id = k.d AND c.prev = k.p",
            &[&reports, &devices, &prevs],
        )
        .map_err(db)?
    {
        out.children.insert((r.get(0), r.get(1), hash32(r.get(2))?));
    }
    for r in tx
        .query(
            "SELECT device_id, public_key FROM devices WHERE device_id = ANY($1)",
            &[&devices],
        )
        .map_err(db)?
    {
        let k: Vec<u8> = r.get(1);
        let k: [u8; 32] = k
            .try_into()
            .map_err(|_| StationError::Internal("public key column".into()))?;
        if let Ok(vk) = VerifyingKey::from_bytes(&k) {
            out.keys.insert(r.get(0), vk);
        }
    }
    Ok(out)
}

/// Re-materialises `report` from all its changes; returns (unit, is new).
fn write_report(tx: &mut Transaction, report: Uuid) -> Result<(ReportFacts, bool)> {
    let mut doc = ReportDoc::new();
    for r in tx
        .query(
            "SELECT body, signature FROM changes WHERE report_id = $1",
            &[&report],
        )
        .map_err(db)?
    {
        doc.insert(Arc::new(decode(r.get(0), r.get(1))?));
    }
    let state = doc.materialise();
    let r = Report::from_state(report, &state);
    let creator = r
        .created_by_device
        .ok_or_else(|| StationError::Internal("report without changes".into()))?;
    let unit: String = tx
        .query_opt("SELECT unit FROM devices WHERE device_id = $1", &[&creator])
        .map_err(db)?
        .map(|row| row.get(0))
        .unwrap_or_default();
    let existed = tx
        .query_opt("SELECT 1 FROM reports WHERE report_id = $1", &[&report])
        .map_err(db)?
        .is_some();
    tx.execute(
        "INSERT INTO reports (report_id, unit, created_by, lifecycle, updated_ms, json)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (report_id) DO UPDATE SET unit = excluded.unit, created_by = excluded.created_by,
           lifecycle = excluded.lifecycle, updated_ms = excluded.updated_ms, json = excluded.json",
        &[
            &report,
            &unit,
            &creator,
            &r.lifecycle.as_str(),
            &state.updated.map(|h| h.wall_ms as i64).unwrap_or(0),
            &r.to_canonical_json(),
        ],
    )
    .map_err(db)?;
    Ok((
        ReportFacts {
            unit,
            creations: state.creations,
        },
        !existed,
    ))
}

/// SQL for the reports a device may see ($p person key, $s is supervisor, $u unit).
fn visible(p: usize, s: usize, u: usize) -> String {
    format!(
        "(SELECT report_id FROM report_access WHERE person_key = ${p}
          UNION SELECT report_id FROM reports WHERE ${s} AND unit = ${u})"
    )
}

fn visible_params(who: &Enrolled) -> (String, bool, String) {
    (
        person_key(&who.record.person),
        who.role() == Role::Supervisor,
        who.unit().to_string(),
    )
}

/// `NotFound` unless `who` may see `report` (a report one may not see is
/// indistinguishable from one that does not exist).
fn require_visible(
    c: &mut impl postgres::GenericClient,
    who: &Enrolled,
    report: Uuid,
) -> Result<()> {
    let (p, s, u) = visible_params(who);
    let sql = format!("SELECT 1 WHERE $1 IN {}", visible(2, 3, 4));
    match c.query_opt(&sql, &[&report, &p, &s, &u]).map_err(db)? {
        Some(_) => Ok(()),
        None => Err(StationError::NotFound),
    }
}

fn status_of(c: &mut impl postgres::GenericClient, sha: &str) -> Result<MediaStatus> {
    let row = c
        .query_opt(
            "SELECT received, complete FROM media WHERE sha256 = $1",
            &[&sha],
        )
        .map_err(db)?;
    let (received, complete) = row
        .map(|r| (r.get::<_, i64>(0), r.get::<_, bool>(1)))
        .unwrap_or((0, false));
    Ok(MediaStatus {
        sha256: sha.to_string(),
        received: received as u64,
        complete,
    })
}

#[async_trait]
impl StationStorage for PostgresStorage {
    async fn create_enrollment(&self, person: Person, ttl_ms: i64) -> Result<(String, i64)> {
        self.blocking(move |i| {
            let code = random_token(10)?;
            let now = i.clock.now_ms();
            let expires = now
                .checked_add(ttl_ms)
                .ok_or_else(|| StationError::BadRequest("bad_ttl", "a code's lifetime is out of range".into()))?;
            let person = serde_json::to_string(&person)
                .map_err(|_| StationError::Internal("person".into()))?;
            i.conn()
                .execute(
                    "INSERT INTO enrollment_codes (code_hash, person, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                    &[&digest(&code), &person, &now, &expires],
                )
                .map_err(db)?;
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
            let mut c = i.conn();
            let mut tx = c.transaction().map_err(db)?;
            let row = tx
                .query_opt(
                    "SELECT person, expires_at, used_at FROM enrollment_codes WHERE code_hash = $1 FOR UPDATE",
                    &[&digest(&code)],
                )
                .map_err(db)?;
            let Some(row) = row else {
                return Err(StationError::Unprocessable("invalid_code", "unknown enrollment code".into()));
            };
            let (person, expires, used): (String, i64, Option<i64>) = (row.get(0), row.get(1), row.get(2));
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
            let inserted = tx
                .execute(
                    "INSERT INTO devices (device_id, public_key, record, person_key, role, unit, credential_hash, enrolled_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                    &[
                        &device_id,
                        &public_key.as_slice(),
                        &json,
                        &person_key(&record.person),
                        &record.person.role.as_str(),
                        &record.person.unit,
                        &digest(&credential),
                        &i.clock.now_ms(),
                    ],
                )
                .map_err(db)?;
            if inserted == 0 {
                return Err(StationError::Conflict("device_exists", "device id already enrolled".into()));
            }
            tx.execute(
                "UPDATE devices SET credential_expires_at = $1 WHERE device_id = $2",
                &[&(i.clock.now_ms() + CREDENTIAL_LIFETIME_MS), &device_id],
            )
            .map_err(db)?;
            tx.execute(
                "UPDATE enrollment_codes SET used_at = $1, used_by = $2 WHERE code_hash = $3",
                &[&i.clock.now_ms(), &device_id, &digest(&code)],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok((record, credential))
        })
        .await
    }

    async fn authenticate(&self, credential: &str) -> Result<Option<Enrolled>> {
        let h = digest(credential);
        self.blocking(move |i| {
            let row = i
                .conn()
                .query_opt(
                    "SELECT record, revoked_at, credential_expires_at FROM devices WHERE credential_hash = $1",
                    &[&h],
                )
                .map_err(db)?;
            row.map(|r| enrolled_from_row(r.get(0), r.get(1), r.get(2)))
                .transpose()
        })
        .await
    }

    async fn device(&self, device: Uuid) -> Result<Option<Enrolled>> {
        self.blocking(move |i| {
            let row = i
                .conn()
                .query_opt(
                    "SELECT record, revoked_at, credential_expires_at FROM devices WHERE device_id = $1",
                    &[&device],
                )
                .map_err(db)?;
            row.map(|r| enrolled_from_row(r.get(0), r.get(1), r.get(2)))
                .transpose()
        })
        .await
    }

    async fn retire_credential(&self, device: Uuid) -> Result<bool> {
        self.blocking(move |i| {
            let unknown = digest(&random_token(32)?);
            Ok(i.conn()
                .execute(
                    "UPDATE devices SET credential_hash = $1 WHERE device_id = $2",
                    &[&unknown, &device],
                )
                .map_err(db)?
                > 0)
        })
        .await
    }

    async fn dashboard_account(&self, star_number: &str) -> Result<Option<DashboardAccount>> {
        let star = star_number.to_string();
        self.blocking(move |i| {
            Ok(i.conn()
                .query_opt(
                    &format!(
                        "SELECT {ACCOUNT_COLUMNS} FROM dashboard_accounts WHERE star_number = $1"
                    ),
                    &[&star],
                )
                .map_err(db)?
                .map(|r| account_row(&r)))
        })
        .await
    }

    async fn dashboard_accounts(&self) -> Result<Vec<DashboardAccount>> {
        self.blocking(move |i| {
            Ok(i.conn()
                .query(
                    &format!(
                        "SELECT {ACCOUNT_COLUMNS} FROM dashboard_accounts ORDER BY star_number"
                    ),
                    &[],
                )
                .map_err(db)?
                .iter()
                .map(account_row)
                .collect())
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
            Ok(i.conn()
                .execute(
                    &format!(
                        "INSERT INTO dashboard_accounts (star_number, device_id, password_hash, totp_sealed, store_key_sealed, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (star_number) {conflict}"
                    ),
                    &[
                        &a.star_number,
                        &a.device_id,
                        &a.password_hash,
                        &a.totp_sealed,
                        &a.store_key_sealed,
                        &a.updated_at,
                    ],
                )
                .map_err(db)?
                > 0)
        })
        .await
    }

    async fn forget_sealed(&self) -> Result<Vec<Uuid>> {
        self.blocking(move |i| {
            let mut c = i.conn();
            let mut tx = c.transaction().map_err(db)?;
            let devices = tx
                .query(
                    "SELECT device_id FROM dashboard_accounts ORDER BY star_number",
                    &[],
                )
                .map_err(db)?
                .iter()
                .map(|r| r.get::<_, Uuid>(0))
                .collect();
            tx.execute("DELETE FROM dashboard_accounts", &[])
                .map_err(db)?;
            tx.execute(
                "DELETE FROM station_settings WHERE name = 'station_key_check'",
                &[],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(devices)
        })
        .await
    }

    async fn setting(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let name = name.to_string();
        self.blocking(move |i| {
            Ok(i.conn()
                .query_opt(
                    "SELECT value FROM station_settings WHERE name = $1",
                    &[&name],
                )
                .map_err(db)?
                .map(|r| r.get(0)))
        })
        .await
    }

    async fn put_setting_once(&self, name: &str, value: Vec<u8>) -> Result<Vec<u8>> {
        let name = name.to_string();
        self.blocking(move |i| {
            let mut c = i.conn();
            c.execute(
                "INSERT INTO station_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &value],
            )
            .map_err(db)?;
            Ok(c.query_one("SELECT value FROM station_settings WHERE name = $1", &[&name])
                .map_err(db)?
                .get(0))
        })
        .await
    }

    async fn devices(&self) -> Result<Vec<DeviceRecord>> {
        self.blocking(|i| {
            i.conn()
                .query(
                    "SELECT record FROM devices ORDER BY enrolled_at, device_id",
                    &[],
                )
                .map_err(db)?
                .into_iter()
                .map(|r| {
                    serde_json::from_str(&r.get::<_, String>(0))
                        .map(DeviceRecord::without_secret)
                        .map_err(|_| StationError::Internal("device record".into()))
                })
                .collect()
        })
        .await
    }

    async fn revoke(&self, device: Uuid) -> Result<bool> {
        self.blocking(move |i| {
            let mut c = i.conn();
            let mut tx = c.transaction().map_err(db)?;
            // Under the log lock, ordered with every push: a push either
            // committed before (its changes stay valid) or sees the
            // revocation. The time recorded is after every receipt of the
            // device's changes, even when this process's clock is behind
            // the one that received them.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_LOG])
                .map_err(db)?;
            let n = tx
                .execute(
                    "UPDATE devices SET revoked_at = GREATEST($1,
                        (SELECT MAX(received_at) + 1 FROM changes WHERE device_id = $2))
                     WHERE device_id = $2 AND revoked_at IS NULL",
                    &[&i.clock.now_ms(), &device],
                )
                .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(n > 0)
        })
        .await
    }

    async fn set_credential_expiry(&self, device: Uuid, expires_at_ms: i64) -> Result<bool> {
        self.blocking(move |i| {
            Ok(i.conn()
                .execute(
                    "UPDATE devices SET credential_expires_at = $1 WHERE device_id = $2",
                    &[&expires_at_ms, &device],
                )
                .map_err(db)?
                > 0)
        })
        .await
    }

    async fn push(&self, changes: Vec<Change>) -> Result<PushOutcome> {
        self.blocking(move |i| {
            let mut c = i.conn();
            let mut tx = c.transaction().map_err(db)?;
            // Log order is commit order: one pusher numbers changes at a time.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_LOG])
                .map_err(db)?;
            let lookup = batch_lookup(&mut tx, &changes)?;
            let verified = verify_batch(changes, &lookup)?;
            // Read under the lock: a revocation (which takes it too) is
            // ordered before or after this push.
            let authors: Vec<Uuid> = verified
                .new
                .iter()
                .map(|c| c.device())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let revoked: std::collections::HashSet<Uuid> = tx
                .query(
                    "SELECT device_id FROM devices WHERE device_id = ANY($1) AND revoked_at IS NOT NULL",
                    &[&authors],
                )
                .map_err(db)?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            refuse_revoked(&verified.new, &revoked)?;
            let shas = media_refs(&verified.new);
            if !shas.is_empty() {
                let complete: BTreeSet<String> = tx
                    .query(
                        "SELECT sha256 FROM media WHERE sha256 = ANY($1) AND complete",
                        &[&shas],
                    )
                    .map_err(db)?
                    .into_iter()
                    .map(|r| r.get(0))
                    .collect();
                if let Some(sha) = shas.iter().find(|s| !complete.contains(*s)) {
                    return Err(StationError::Conflict(
                        "media_missing",
                        format!("media {sha} must be uploaded before the change that attaches it"),
                    ));
                }
            }
            if verified.new.is_empty() {
                tx.commit().map_err(db)?;
                return Ok(PushOutcome {
                    applied: 0,
                    duplicates: verified.duplicates,
                    events: Vec::new(),
                });
            }
            let head: i64 = tx
                .query_one("SELECT COALESCE(MAX(id), 0) FROM changes", &[])
                .map_err(db)?
                .get(0);
            let now = i.clock.now_ms();
            let n = verified.new.len();
            let ids: Vec<i64> = (1..=n as i64).map(|k| head + k).collect();
            let hashes: Vec<Vec<u8>> = verified.new.iter().map(|c| c.hash().to_vec()).collect();
            let devices: Vec<Uuid> = verified.new.iter().map(|c| c.device()).collect();
            let seqs: Vec<i64> = verified.new.iter().map(|c| c.body().seq as i64).collect();
            let reports: Vec<Uuid> = verified.new.iter().map(|c| c.report()).collect();
            let prevs: Vec<Vec<u8>> = verified
                .new
                .iter()
                .map(|c| c.body().prev.unwrap_or(ZERO_HASH).to_vec())
                .collect();
            let bodies: Vec<&[u8]> = verified.new.iter().map(|c| c.bytes()).collect();
            let sigs: Vec<&[u8]> = verified.new.iter().map(|c| c.signature().as_slice()).collect();
            let walls: Vec<i64> = verified
                .new
                .iter()
                .map(|c| c.body().hlc.wall_ms as i64)
                .collect();
            tx.execute(
                "INSERT INTO changes (id, hash, device_id, seq, report_id, prev, body, signature, hlc_wall, received_at)
                 SELECT k.*, $10 FROM UNNEST($1::bigint[], $2::bytea[], $3::uuid[], $4::bigint[], $5::uuid[],
                                             $6::bytea[], $7::bytea[], $8::bytea[], $9::bigint[]) AS k",
                &[&ids, &hashes, &devices, &seqs, &reports, &prevs, &bodies, &sigs, &walls, &now],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StationError::Conflict("retry", "a concurrent push stored the same change; retry".into())
                } else {
                    db(e)
                }
            })?;
            // Authors see their reports; media are tied to reports.
            tx.execute(
                "INSERT INTO report_access (person_key, report_id)
                 SELECT DISTINCT d.person_key, k.r FROM UNNEST($1::uuid[], $2::uuid[]) AS k(d, r)
                 JOIN devices d ON d.device_id = k.d
                 ON CONFLICT DO NOTHING",
                &[&devices, &reports],
            )
            .map_err(db)?;
            let mut media_sha = Vec::new();
            let mut media_report = Vec::new();
            for c in &verified.new {
                for sha in media_refs(std::slice::from_ref(c)) {
                    media_sha.push(sha);
                    media_report.push(c.report());
                }
            }
            if !media_sha.is_empty() {
                tx.execute(
                    "INSERT INTO media_refs (sha256, report_id)
                     SELECT DISTINCT * FROM UNNEST($1::text[], $2::uuid[]) ON CONFLICT DO NOTHING",
                    &[&media_sha, &media_report],
                )
                .map_err(db)?;
            }
            let log_id = head + n as i64;
            let touched: BTreeSet<Uuid> = reports.iter().copied().collect();
            let mut events = Vec::new();
            let mut units = HashMap::new();
            for report in touched {
                let (facts, new) = write_report(&mut tx, report)?;
                let unit = facts.unit.clone();
                units.insert(report, facts);
                let ev = (
                    unit,
                    ReportEvent {
                        report_id: report,
                        log_id,
                        kind: if new { "new" } else { "changed" }.into(),
                    },
                );
                let payload = serde_json::to_string(&ev)
                    .map_err(|_| StationError::Internal("event".into()))?;
                // Delivered to every process's listener when this commits.
                tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
                    .map_err(db)?;
                events.push(ev);
            }
            let mut people = HashMap::new();
            for r in tx
                .query(
                    "SELECT device_id, record FROM devices WHERE device_id = ANY($1)",
                    &[&devices],
                )
                .map_err(db)?
            {
                let record: DeviceRecord = serde_json::from_str(r.get::<_, &str>(1))
                    .map_err(|_| StationError::Internal("device record".into()))?;
                people.insert(r.get::<_, Uuid>(0), record);
            }
            authorize_changes(&verified.new, &people, &units)?;
            tx.commit().map_err(db)?;
            Ok(PushOutcome {
                applied: n,
                duplicates: verified.duplicates,
                events,
            })
        })
        .await
    }

    async fn pull(&self, who: &Enrolled, after: i64, limit: u32) -> Result<PullPage> {
        let who = who.clone();
        self.blocking(move |i| {
            let mut c = i.conn();
            let mut tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(db)?;
            let (p, s, u) = visible_params(&who);
            let sql = format!(
                "SELECT id, body, signature FROM changes
                 WHERE id > $1 AND report_id IN {}
                 ORDER BY id LIMIT $2",
                visible(3, 4, 5)
            );
            let rows = tx
                .query(&sql, &[&after, &(limit as i64 + 1), &p, &s, &u])
                .map_err(db)?;
            let more = rows.len() > limit as usize;
            let mut changes = Vec::with_capacity(rows.len().min(limit as usize));
            let mut last = after;
            for r in rows.into_iter().take(limit as usize) {
                last = r.get(0);
                changes.push(decode(r.get(1), r.get(2))?);
            }
            let next = if more {
                last
            } else {
                // Nothing more is visible in this snapshot: skip past
                // invisible changes too (every lower id is committed).
                tx.query_one("SELECT COALESCE(MAX(id), 0) FROM changes", &[])
                    .map_err(db)?
                    .get::<_, i64>(0)
                    .max(after)
            };
            tx.commit().map_err(db)?;
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
            let mut c = i.conn();
            require_visible(&mut *c, &who, report)?;
            c.query(
                "SELECT body, signature FROM changes WHERE report_id = $1 ORDER BY id",
                &[&report],
            )
            .map_err(db)?
            .into_iter()
            .map(|r| decode(r.get(0), r.get(1)))
            .collect()
        })
        .await
    }

    async fn report_json(&self, who: &Enrolled, report: Uuid) -> Result<String> {
        let who = who.clone();
        self.blocking(move |i| {
            let mut c = i.conn();
            require_visible(&mut *c, &who, report)?;
            c.query_opt("SELECT json FROM reports WHERE report_id = $1", &[&report])
                .map_err(db)?
                .map(|r| r.get(0))
                .ok_or(StationError::NotFound)
        })
        .await
    }

    async fn directory(&self, who: &Enrolled) -> Result<Vec<DeviceRecord>> {
        let who = who.clone();
        self.blocking(move |i| {
            let mut c = i.conn();
            let (p, s, u) = visible_params(&who);
            let sql = format!(
                "SELECT record, device_id = $4 OR device_id IN
                   (SELECT device_id FROM changes WHERE report_id IN {})
                 FROM devices ORDER BY enrolled_at, device_id",
                visible(1, 2, 3)
            );
            c.query(&sql, &[&p, &s, &u, &who.record.device_id])
                .map_err(db)?
                .into_iter()
                .map(|r| directory_entry(&r.get::<_, String>(0), r.get(1), who.record.device_id))
                .collect()
        })
        .await
    }

    async fn visible_reports(&self, who: &Enrolled) -> Result<Vec<String>> {
        let who = who.clone();
        self.blocking(move |i| {
            let mut c = i.conn();
            let (p, s, u) = visible_params(&who);
            let sql = format!(
                "SELECT json FROM reports WHERE report_id IN {} ORDER BY updated_ms DESC",
                visible(1, 2, 3)
            );
            Ok(c.query(&sql, &[&p, &s, &u])
                .map_err(db)?
                .into_iter()
                .map(|r| r.get(0))
                .collect())
        })
        .await
    }

    async fn all_reports(&self) -> Result<Vec<String>> {
        self.blocking(move |i| {
            Ok(i.conn()
                .query("SELECT json FROM reports ORDER BY report_id", &[])
                .map_err(db)?
                .into_iter()
                .map(|r| r.get(0))
                .collect())
        })
        .await
    }

    async fn audit(&self, e: AuditEntry) -> Result<()> {
        self.blocking(move |i| {
            i.conn()
                .execute(
                    "INSERT INTO audit_log (at_ms, actor, action, target, outcome) VALUES ($1, $2, $3, $4, $5)",
                    &[&e.at_ms, &e.actor, &e.action, &e.target, &e.outcome],
                )
                .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn audit_log(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>> {
        self.blocking(move |i| {
            Ok(i.conn()
                .query(
                    "SELECT id, at_ms, actor, action, target, outcome FROM audit_log
                     WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&after, &(limit as i64)],
                )
                .map_err(db)?
                .into_iter()
                .map(|r| AuditEntry {
                    id: r.get(0),
                    at_ms: r.get(1),
                    actor: r.get(2),
                    action: r.get(3),
                    target: r.get(4),
                    outcome: r.get(5),
                })
                .collect())
        })
        .await
    }

    async fn media_status(&self, sha256: &str) -> Result<MediaStatus> {
        if !valid_sha(sha256) {
            return Err(bad_hash());
        }
        let sha = sha256.to_string();
        self.blocking(move |i| status_of(&mut *i.conn(), &sha))
            .await
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
            let mut c = i.conn();
            let mut tx = c.transaction().map_err(db)?;
            // Uploads of one file, from any process, one at a time.
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&sha])
                .map_err(db)?;
            let status = status_of(&mut tx, &sha)?;
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
                tx.execute(
                    "INSERT INTO media (sha256, total, received) VALUES ($1, $2, $3)
                     ON CONFLICT (sha256) DO UPDATE SET total = excluded.total, received = excluded.received",
                    &[&sha, &(total as i64), &(received as i64)],
                )
                .map_err(db)?;
                tx.commit().map_err(db)?;
                return Ok(MediaStatus { sha256: sha, received, complete: false });
            }
            if i.media.adopt(&partial, &sha)?.is_none() {
                tx.execute("DELETE FROM media WHERE sha256 = $1", &[&sha])
                    .map_err(db)?;
                tx.commit().map_err(db)?;
                return Err(StationError::Unprocessable(
                    "hash_mismatch",
                    "the uploaded bytes do not match the hash; upload again from 0".into(),
                ));
            }
            tx.execute(
                "INSERT INTO media (sha256, total, received, complete) VALUES ($1, $2, $2, TRUE)
                 ON CONFLICT (sha256) DO UPDATE SET total = excluded.total, received = excluded.received, complete = TRUE",
                &[&sha, &(total as i64)],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
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
            let (p, s, u) = visible_params(&who);
            let sql = format!(
                "SELECT 1 FROM media m JOIN media_refs r ON r.sha256 = m.sha256
                 WHERE m.sha256 = $1 AND m.complete AND r.report_id IN {} LIMIT 1",
                visible(2, 3, 4)
            );
            let ok = i
                .conn()
                .query_opt(&sql, &[&sha, &p, &s, &u])
                .map_err(db)?
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
            i.conn()
                .execute(
                    "INSERT INTO rejected (received_at, device_id, reason, bytes) VALUES ($1, $2, $3, $4)",
                    &[&i.clock.now_ms(), &device, &reason, &bytes],
                )
                .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn counts(&self) -> Result<Counts> {
        self.blocking(|i| {
            let r = i
                .conn()
                .query_one(
                    "SELECT (SELECT COUNT(*) FROM changes), (SELECT COUNT(*) FROM reports),
                            (SELECT COUNT(*) FROM media WHERE complete),
                            (SELECT COALESCE(SUM(received), 0)::BIGINT FROM media)",
                    &[],
                )
                .map_err(db)?;
            Ok(Counts {
                changes: r.get::<_, i64>(0) as u64,
                reports: r.get::<_, i64>(1) as u64,
                media_complete: r.get::<_, i64>(2) as u64,
                media_bytes: r.get::<_, i64>(3) as u64,
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
            i.conn()
                .execute(
                    "INSERT INTO clock_skew (report_id, device_id, skew_ms, observed_at)
                     SELECT r, $2, $3, $4 FROM UNNEST($1::uuid[]) AS r
                     ON CONFLICT (report_id, device_id) DO UPDATE SET skew_ms = excluded.skew_ms, observed_at = excluded.observed_at",
                    &[&reports, &device, &skew_ms, &i.clock.now_ms()],
                )
                .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn receipts(&self, who: &Enrolled, report: Uuid) -> Result<ReceiptsResponse> {
        let who = who.clone();
        self.blocking(move |i| {
            let mut c = i.conn();
            require_visible(&mut *c, &who, report)?;
            let changes = c
                .query(
                    "SELECT body, signature, received_at FROM changes WHERE report_id = $1 ORDER BY id",
                    &[&report],
                )
                .map_err(db)?
                .into_iter()
                .map(|r| {
                    let ch = decode(r.get(0), r.get(1))?;
                    Ok(Receipt {
                        device: ch.device(),
                        seq: ch.body().seq,
                        received_at_ms: r.get(2),
                        device_clock_ms: ch.body().wall_clock_ms,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let clock_skew = c
                .query(
                    "SELECT device_id, skew_ms, observed_at FROM clock_skew WHERE report_id = $1 ORDER BY device_id",
                    &[&report],
                )
                .map_err(db)?
                .into_iter()
                .map(|r| ClockSkew {
                    device: r.get(0),
                    skew_ms: r.get(1),
                    observed_at_ms: r.get(2),
                })
                .collect();
            Ok(ReceiptsResponse {
                report_id: report,
                changes,
                clock_skew,
            })
        })
        .await
    }

    fn shared_events(&self) -> Option<broadcast::Sender<(String, ReportEvent)>> {
        Some(self.inner.events.clone())
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
            let mut c = i.conn();
            let mut tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(db)?;
            let mut out = ExportMaterial {
                reports: Vec::new(),
                devices: Vec::new(),
                media: BTreeMap::new(),
                received: BTreeMap::new(),
            };
            let mut authors = BTreeSet::new();
            for report in reports {
                if let Some(who) = &who {
                    require_visible(&mut tx, who, report)?;
                }
                let changes = tx
                    .query(
                        "SELECT body, signature, received_at FROM changes WHERE report_id = $1 ORDER BY id",
                        &[&report],
                    )
                    .map_err(db)?
                    .into_iter()
                    .map(|r| {
                        let c = decode(r.get(0), r.get(1))?;
                        out.received.insert(*c.hash(), receipt_time(r.get(2))?);
                        Ok(c)
                    })
                    .collect::<Result<Vec<_>>>()?;
                if changes.is_empty() {
                    return Err(StationError::NotFound);
                }
                authors.extend(changes.iter().map(|c| c.device()));
                for sha in media_refs(&changes) {
                    if !status_of(&mut tx, &sha)?.complete {
                        return Err(StationError::Conflict(
                            "media_incomplete",
                            format!("media {sha} of report {report} has not finished uploading"),
                        ));
                    }
                    out.media.insert(sha.clone(), i.media.path_of(&sha));
                }
                out.reports.push((report, changes));
            }
            for d in authors {
                let r = tx
                    .query_one(
                        "SELECT record, enrolled_at, revoked_at FROM devices WHERE device_id = $1",
                        &[&d],
                    )
                    .map_err(db)?;
                out.devices.push(DeviceEnrollment {
                    record: enrolled_from_row(r.get(0), None, None)?.record,
                    enrolled_at: ms_time(Some(r.get(1))),
                    revoked_at: ms_time(r.get(2)),
                });
            }
            tx.commit().map_err(db)?;
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database made by the first schema upgrades in place and keeps its
    /// rows. Needs `FR_TEST_DATABASE_URL` (skips without, unless
    /// `FR_REQUIRE_POSTGRES` is set).
    #[test]
    fn a_version_1_database_upgrades_and_keeps_its_rows() {
        let Some(server) = std::env::var("FR_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            assert!(
                std::env::var_os("FR_REQUIRE_POSTGRES").is_none(),
                "FR_REQUIRE_POSTGRES is set but FR_TEST_DATABASE_URL is not"
            );
            eprintln!("SKIPPED: no PostgreSQL (set FR_TEST_DATABASE_URL)");
            return;
        };
        let name = format!("fr_migrate_{}", Uuid::new_v4().simple());
        let mut admin = Client::connect(&server, NoTls).unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let url = format!("{}/{name}", server.rsplit_once('/').unwrap().0);
        {
            let mut c = Client::connect(&url, NoTls).unwrap();
            c.batch_execute(MIGRATIONS[0]).unwrap();
            c.batch_execute(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version VALUES (1);
                 INSERT INTO media (sha256, total, received, complete) VALUES ('ab', 10, 10, TRUE);",
            )
            .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let s = PostgresStorage::open(&url, dir.path()).unwrap();
        let mut c = s.inner.conn();
        let v: i32 = c
            .query_one("SELECT version FROM schema_version", &[])
            .unwrap()
            .get(0);
        assert_eq!(v as usize, MIGRATIONS.len());
        let n: i64 = c
            .query_one("SELECT COUNT(*) FROM clock_skew", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
        let kept: i64 = c
            .query_one("SELECT total FROM media WHERE sha256 = 'ab'", &[])
            .unwrap()
            .get(0);
        assert_eq!(kept, 10);
    }

    /// A version 4 database (before dashboard accounts moved into storage)
    /// upgrades, keeps its devices, and takes accounts.
    #[test]
    fn a_version_4_database_upgrades_and_takes_dashboard_accounts() {
        let Some(server) = std::env::var("FR_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            assert!(
                std::env::var_os("FR_REQUIRE_POSTGRES").is_none(),
                "FR_REQUIRE_POSTGRES is set but FR_TEST_DATABASE_URL is not"
            );
            eprintln!("SKIPPED: no PostgreSQL (set FR_TEST_DATABASE_URL)");
            return;
        };
        let name = format!("fr_migrate_{}", Uuid::new_v4().simple());
        let mut admin = Client::connect(&server, NoTls).unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let url = format!("{}/{name}", server.rsplit_once('/').unwrap().0);
        let device = Uuid::new_v4();
        {
            let mut c = Client::connect(&url, NoTls).unwrap();
            for step in &MIGRATIONS[..4] {
                c.batch_execute(step).unwrap();
            }
            c.batch_execute(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version VALUES (4);",
            )
            .unwrap();
            c.execute(
                "INSERT INTO devices (device_id, public_key, record, person_key, role, unit, credential_hash, enrolled_at, credential_expires_at)
                 VALUES ($1, '\\x00', '{}', 'star:1', 'supervisor', 'D9', '\\x01', 5, 6)",
                &[&device],
            )
            .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let s = PostgresStorage::open(&url, dir.path()).unwrap();
        {
            let mut c = s.inner.conn();
            let v: i32 = c
                .query_one("SELECT version FROM schema_version", &[])
                .unwrap()
                .get(0);
            assert_eq!(v as usize, MIGRATIONS.len());
            let kept: i64 = c
                .query_one("SELECT credential_expires_at FROM devices", &[])
                .unwrap()
                .get(0);
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
            .conn()
            .query_one("SELECT credential_hash FROM devices", &[])
            .unwrap()
            .get(0);
        assert_eq!(
            h.len(),
            32,
            "replaced by the hash of a credential nobody holds"
        );
    }
}
