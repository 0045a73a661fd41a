//! The device store: one SQLite database (WAL, one writer connection and
//! reader connections beside it) holding the signed changes, the
//! materialised reports, the device identity and directory, media records
//! and sync bookkeeping; plus the content-addressed media directory.
//!
//! Every write is one transaction: a change is acknowledged to the caller
//! only once it and the report it updates are durably committed
//! (`synchronous=FULL`).
//!
//! [`Store`] is the one entry point (the FFI wraps it); its methods live
//! by concern: opening, identity and reading here; `authoring` (edits and
//! lifecycle actions), `replication` (heads, applying received changes,
//! integrity), `sync_state` (outbox, pending media, sync values),
//! `receipts` (the station log's checkpoints and receipts this device
//! holds) and
//! `encryption` (open encrypted, rekey, wipe) beside it; `copy` an online
//! copy of a store directory (the station's backup); `log` holds the
//! change-log SQL the station's SQLite engine shares, `media` the sealed
//! media files, `key` the store key, `migrations` the schema steps.

mod authoring;
mod copy;
mod encryption;
pub mod key;
pub mod log;
pub mod media;
pub mod migrations;
mod receipts;
mod replication;
mod sync_state;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crdt::author::{build_ops, Writer};
use crate::crdt::{Action, Change, ChangeBody, ChangeId, Edit, Hlc, ReportDoc, State, Target};
use crate::error::{Error, Result};
use crate::evidence::{verify_batch, ChainLookup, DeviceIdentity, DeviceRecord, Person};
use crate::model::schema::{self, LIFECYCLE_FIELD, RETURN_COMMENT_FIELD};
use crate::model::workflow;
use crate::model::{LifecycleState, Report, Value};
pub use copy::copy_store;
pub use key::StoreKey;
pub use log::SqlLookup;
use log::{decode_row, hash_of, insert_change, load_doc, upsert_device, uuid_of, ZERO_HASH};
pub use media::{MediaKey, MediaReader, MediaStore, StoredMedia};
pub use receipts::{StoredReceipt, WitnessPolicy, WitnessStatus, WitnessedCheckpoint};

/// Source of wall-clock time (replaceable in tests: skewed clocks).
pub trait WallClock: Send + Sync {
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

pub struct StoreOptions {
    pub clock: Arc<dyn WallClock>,
    pub readers: usize,
    /// Encrypts the store (database and media) at rest. A store created
    /// with a key must always be opened with it; a plain store opened with
    /// a key is encrypted on the spot.
    pub key: Option<StoreKey>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            clock: Arc::new(SystemClock),
            readers: 2,
            key: None,
        }
    }
}

/// What `Store::wipe` removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WipeOutcome {
    /// Signed changes that had not reached the station (lost, when forced).
    pub unsynced_changes: u64,
    /// Media files that had not reached the station.
    pub unsynced_media: u64,
}

/// Facts about a photo or other file being attached.
#[derive(Debug, Clone, Default)]
pub struct MediaMeta {
    pub mime_type: String,
    pub file_name: Option<String>,
    pub captured_at_ms: Option<i64>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub caption: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedMedia {
    pub entry: Uuid,
    pub sha256: String,
    pub size: u64,
}

/// One row of the report list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportSummary {
    pub id: Uuid,
    pub lifecycle: LifecycleState,
    pub occurred_start_ms: Option<i64>,
    pub updated_ms: i64,
    pub updated_counter: u32,
    pub conflict_count: u32,
    /// Changes not yet acknowledged by the station.
    pub unsynced_count: u32,
}

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub lifecycle: Option<LifecycleState>,
    /// Continue after this row of a previous page.
    pub after: Option<ListCursor>,
    pub limit: u32,
}

/// Keyset position in the list (newest update first, then report id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    pub updated_ms: i64,
    pub updated_counter: u32,
    pub id: Uuid,
}

impl ReportSummary {
    pub fn cursor(&self) -> ListCursor {
        ListCursor {
            updated_ms: self.updated_ms,
            updated_counter: self.updated_counter,
            id: self.id,
        }
    }
}

/// One value in the history of a field or entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub change: ChangeId,
    pub clock_ms: u64,
    pub clock_counter: u32,
    pub wall_clock_ms: i64,
    /// `set`, `add` or `remove`.
    pub action: String,
    pub value: Option<Value>,
    /// Still a live value (not superseded).
    pub live: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyOutcome {
    pub applied: usize,
    pub duplicates: usize,
}

/// The latest seq of each (report, device) chain a replica holds. Chains are
/// stored gap-free, so this summarises exactly what a replica has.
pub type Heads = BTreeMap<(Uuid, Uuid), u64>;

/// Where a batch of changes comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The station: the changes are acknowledged there already.
    Station,
    /// Another device: they still need to reach the station.
    Peer,
}

struct WriterState {
    conn: Connection,
    identity: Option<Arc<DeviceIdentity>>,
    next_seq: u64,
    hlc: Hlc,
    /// Recently written reports' documents, as committed.
    docs: DocCache,
}

/// A small cache of report documents and their materialised state, so an
/// edit neither re-reads and re-decodes the report's log nor materialises
/// it twice. Only committed state goes in.
#[derive(Default)]
struct DocCache {
    docs: std::collections::HashMap<Uuid, (ReportDoc, Arc<State>)>,
}

impl DocCache {
    const CAPACITY: usize = 64;

    fn get_or_load(&mut self, conn: &Connection, report: Uuid) -> Result<(ReportDoc, Arc<State>)> {
        if let Some((doc, state)) = self.docs.get(&report) {
            return Ok((doc.clone(), state.clone()));
        }
        let doc = load_doc(conn, report)?;
        let state = Arc::new(doc.materialise());
        Ok((doc, state))
    }

    fn put(&mut self, report: Uuid, doc: ReportDoc, state: Arc<State>) {
        if self.docs.len() >= Self::CAPACITY && !self.docs.contains_key(&report) {
            self.docs.clear();
        }
        self.docs.insert(report, (doc, state));
    }
}

pub struct Store {
    dir: PathBuf,
    // Readers are declared (so dropped) first: the writer, closing last,
    // checkpoints and removes the WAL.
    readers: Vec<Mutex<Connection>>,
    writer: Mutex<WriterState>,
    media: MediaStore,
    clock: Arc<dyn WallClock>,
    /// Set when the store was opened with a key; replaced on rekey.
    key: Mutex<Option<StoreKey>>,
    wiped: AtomicBool,
}

const DB_FILE: &str = "fieldreport.db";

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

/// Opens the database file, applying the key first when there is one. A
/// file that does not decrypt (wrong key, or no key for an encrypted
/// store) is reported as `WrongKey`, before anything is written.
fn open_connection(path: &Path, key: Option<&StoreKey>, flags: OpenFlags) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    if let Some(key) = key {
        key::apply(&conn, key)?;
    }
    key::check_readable(&conn)?;
    Ok(conn)
}

fn open_reader(path: &Path, key: Option<&StoreKey>) -> Result<Connection> {
    let r = open_connection(
        path,
        key,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    r.busy_timeout(Duration::from_secs(10))?;
    Ok(r)
}

/// The media key kept in the encrypted database, created on first use.
fn media_key(conn: &mut Connection) -> Result<MediaKey> {
    let tx = conn.transaction()?;
    let existing: Option<Vec<u8>> = tx
        .query_row(
            "SELECT value FROM secrets WHERE name = 'media_key'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let key = match existing {
        Some(bytes) => MediaKey::from_bytes(&bytes)?,
        None => {
            let key = MediaKey::generate()?;
            tx.execute(
                "INSERT INTO secrets (name, value) VALUES ('media_key', ?1)",
                [key.as_bytes()],
            )?;
            // A new store has no plain files to seal; an old one may.
            let has_media: bool =
                tx.query_row("SELECT EXISTS (SELECT 1 FROM media)", [], |r| r.get(0))?;
            if !has_media {
                tx.execute(
                    "INSERT OR REPLACE INTO secrets (name, value) VALUES ('media_sealed', x'01')",
                    [],
                )?;
            }
            key
        }
    };
    tx.commit()?;
    Ok(key)
}

fn media_sealed(conn: &Connection) -> bool {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM secrets WHERE name = 'media_sealed')",
        [],
        |r| r.get(0),
    )
    .unwrap_or(false)
}

fn is_sealed_file(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let mut f = std::fs::File::open(path)?;
    Ok(f.read_exact(&mut head).is_ok() && &head == media::MAGIC)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock rolled its transaction back on unwind;
    // the connection is still sound.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// Opens (creating if needed) the store in `dir`. A store that fails to
    /// open is reported and left exactly as it was.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        Self::open_with(dir, StoreOptions::default())
    }

    pub fn open_with(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        media::create_dir_durable(&dir)?;
        let path = dir.join(DB_FILE);
        let key = options.key;
        if let Some(key) = &key {
            if key::is_plain_sqlite(&path)? {
                key::encrypt_plain_store(&path, key)?;
            }
        }
        if path.exists() {
            // Try the key on a read-only connection first: one that cannot
            // checkpoint or delete the WAL. A read-write connection with the
            // wrong key, closing, would checkpoint the WAL under that key.
            drop(open_reader(&path, key.as_ref())?);
        }
        let mut conn = open_connection(&path, key.as_ref(), OpenFlags::default())?;
        // Check the version before anything writes to the file: a store from
        // a newer build is left exactly as it is.
        migrations::check_version(&conn)?;
        configure(&conn)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Corrupt("cannot enable WAL".into()));
        }
        migrations::migrate(&mut conn)?;
        // A new database file's name (SQLite syncs the directory for a new
        // WAL, not for the database itself) survives a power cut.
        std::fs::File::open(&dir)?.sync_all()?;
        rematerialise_pending(&mut conn)?;
        // Checkpoint every 4000 pages (16 MiB of WAL) rather than 1000: an
        // edit writes several pages (log row, indexes, materialised report),
        // and fewer, larger checkpoints keep them off most edits. The WAL
        // file is trimmed back to that size after each checkpoint.
        conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
        conn.pragma_update(None, "journal_size_limit", 16 * 1024 * 1024)?;
        let (identity, next_seq, hlc) = load_identity(&conn, options.clock.now_ms())?;
        let media_key = match &key {
            Some(_) => Some(media_key(&mut conn)?),
            None => None,
        };
        let mut readers = Vec::new();
        for _ in 0..options.readers.max(1) {
            readers.push(Mutex::new(open_reader(&path, key.as_ref())?));
        }
        let media = MediaStore::open_with(dir.join("media"), media_key.clone())?;
        if media_key.is_some() && !media_sealed(&conn) {
            // Files stored before the store was encrypted: seal them once.
            for sha in media.stored_hashes()? {
                if !is_sealed_file(&media.path_of(&sha))? {
                    media.seal_in_place(&sha)?;
                }
            }
            conn.execute(
                "INSERT OR REPLACE INTO secrets (name, value) VALUES ('media_sealed', x'01')",
                [],
            )?;
        }
        Ok(Store {
            dir,
            writer: Mutex::new(WriterState {
                conn,
                identity: identity.map(Arc::new),
                next_seq,
                hlc,
                docs: DocCache::default(),
            }),
            readers,
            media,
            clock: options.clock,
            key: Mutex::new(key),
            wiped: AtomicBool::new(false),
        })
    }

    fn writer(&self) -> Result<MutexGuard<'_, WriterState>> {
        let w = lock(&self.writer);
        if self.wiped.load(Ordering::SeqCst) {
            return Err(Error::Wiped);
        }
        Ok(w)
    }

    /// This device's wall clock (the store's clock source), in ms.
    pub fn wall_clock_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// This device's hybrid logical clock: its next change's is later.
    pub fn hlc(&self) -> Hlc {
        lock(&self.writer).hlc
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn media(&self) -> &MediaStore {
        &self.media
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        if self.wiped.load(Ordering::SeqCst) {
            return Err(Error::Wiped);
        }
        for r in &self.readers {
            if let Ok(conn) = r.try_lock() {
                return f(&conn);
            }
        }
        f(&lock(&self.readers[0]))
    }

    // ----- identity and directory

    /// This device's directory record, if it has an identity.
    pub fn identity(&self) -> Option<DeviceRecord> {
        lock(&self.writer)
            .identity
            .as_ref()
            .map(|i| i.record.clone())
    }

    /// Creates this device's key pair (at enrollment) and adds it to the
    /// directory.
    pub fn create_identity(&self, person: Person) -> Result<DeviceRecord> {
        self.install_identity(DeviceIdentity::generate(person)?)
    }

    /// Installs a given identity (tests, and restoring a device).
    pub fn install_identity(&self, identity: DeviceIdentity) -> Result<DeviceRecord> {
        let mut w = self.writer()?;
        if w.identity.is_some() {
            return Err(Error::IdentityExists);
        }
        let tx = w.conn.transaction()?;
        tx.execute(
            "INSERT INTO identity (id, device_id, secret_key, hlc_wall, hlc_counter)
             VALUES (1, ?1, ?2, 0, 0)",
            params![
                identity.device_id().as_bytes().as_slice(),
                identity.signing_key.to_bytes().as_slice()
            ],
        )?;
        upsert_device(&tx, &identity.record)?;
        tx.commit()?;
        let record = identity.record.clone();
        w.identity = Some(Arc::new(identity));
        w.next_seq = 1;
        Ok(record)
    }

    /// Adds or updates a known device (the station distributes these).
    pub fn add_known_device(&self, record: &DeviceRecord) -> Result<()> {
        let key = record.verifying_key()?;
        if key.is_weak() {
            return Err(Error::Corrupt(format!(
                "weak public key for device {}",
                record.device_id
            )));
        }
        let mut w = self.writer()?;
        // This device's own record, as the station holds it (with the
        // person secret its creations reveal): the same key, or nothing.
        let own = w
            .identity
            .as_ref()
            .filter(|i| i.device_id() == record.device_id)
            .cloned();
        if let Some(own) = own {
            if own.record.public_key != record.public_key {
                return Err(Error::Corrupt(format!(
                    "the directory's key for this device {} is not its own",
                    record.device_id
                )));
            }
            if record.person.name.is_empty() {
                return Ok(()); // not this device's whole record: keep its own
            }
            upsert_device(&w.conn, record)?;
            w.identity = Some(Arc::new(DeviceIdentity {
                record: record.clone(),
                signing_key: own.signing_key.clone(),
            }));
            return Ok(());
        }
        upsert_device(&w.conn, record)
    }

    pub fn known_devices(&self) -> Result<Vec<DeviceRecord>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT record FROM devices ORDER BY device_id")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.map(|r| {
                serde_json::from_str(&r?).map_err(|_| Error::Corrupt("device record".into()))
            })
            .collect()
        })
    }

    // ----- reading

    fn report_exists(&self, report: Uuid) -> Result<bool> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT 1 FROM reports WHERE report_id = ?1",
                [report.as_bytes().as_slice()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
        })
    }

    /// The materialised CRDT state of a report, rebuilt from its changes.
    pub fn state(&self, report: Uuid) -> Result<State> {
        let doc = self.read(|c| load_doc(c, report))?;
        if doc.is_empty() {
            return Err(Error::ReportNotFound(report));
        }
        Ok(doc.materialise())
    }

    /// The current value of a field or entry field (path form, as for
    /// [`Store::resolve_conflict`]). `None` when unset; when the field is in
    /// conflict, the first of its live values (the report lists them all).
    pub fn field_value(&self, report: Uuid, path: &str) -> Result<Option<Value>> {
        let target = Target::parse_path(path)?;
        if matches!(target, Target::Entry { .. }) {
            return Err(Error::UnknownField(path.chars().take(64).collect()));
        }
        let state = self.state(report)?;
        Ok(state.register(&target).and_then(|r| r.value()).cloned())
    }

    /// The report as stored in the materialised table.
    pub fn report(&self, report: Uuid) -> Result<Report> {
        let json: Option<String> = self.read(|c| {
            Ok(c.query_row(
                "SELECT json FROM reports WHERE report_id = ?1",
                [report.as_bytes().as_slice()],
                |r| r.get(0),
            )
            .optional()?)
        })?;
        let json = json.ok_or(Error::ReportNotFound(report))?;
        serde_json::from_str(&json).map_err(|_| Error::Corrupt("materialised report".into()))
    }

    /// The report's canonical JSON (identical on all replicas with the same
    /// changes).
    pub fn report_json(&self, report: Uuid) -> Result<String> {
        Ok(self.report(report)?.to_canonical_json())
    }

    /// Every value a field or entry ever had, oldest first.
    pub fn field_history(&self, report: Uuid, path: &str) -> Result<Vec<HistoryEntry>> {
        let target = Target::parse_path(path)?;
        let doc = self.read(|c| load_doc(c, report))?;
        if doc.is_empty() {
            return Err(Error::ReportNotFound(report));
        }
        let state = doc.materialise();
        let live: BTreeSet<_> = match &target {
            Target::Entry { collection, entry } => state
                .entry(collection, *entry)
                .map(|e| e.existence_live.iter().copied().collect())
                .unwrap_or_default(),
            t => state.pred_for(t).into_iter().collect(),
        };
        let mut out = Vec::new();
        for c in doc.changes() {
            let b = c.body();
            for (i, op) in b.ops.iter().enumerate() {
                if op.target != target {
                    continue;
                }
                let op_id = crate::crdt::OpId {
                    device: b.device,
                    seq: b.seq,
                    index: i as u32,
                };
                let (action, value) = match &op.action {
                    Action::Set(v) => ("set", Some(v.clone())),
                    Action::Add => ("add", None),
                    Action::Remove => ("remove", None),
                };
                out.push(HistoryEntry {
                    change: b.id(),
                    clock_ms: b.hlc.wall_ms,
                    clock_counter: b.hlc.counter,
                    wall_clock_ms: b.wall_clock_ms,
                    action: action.into(),
                    value,
                    live: live.contains(&op_id),
                });
            }
        }
        out.sort_by_key(|h| (h.clock_ms, h.clock_counter, h.change));
        Ok(out)
    }

    /// Reports, newest update first.
    pub fn list_reports(&self, q: &ListQuery) -> Result<Vec<ReportSummary>> {
        let limit = if q.limit == 0 { 50 } else { q.limit.min(1000) };
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT r.report_id, r.lifecycle, r.occurred_start, r.updated_ms, r.updated_counter,
                        r.conflict_count,
                        (SELECT COUNT(*) FROM changes ch WHERE ch.report_id = r.report_id AND ch.acked = 0)
                 FROM reports r
                 WHERE (?1 IS NULL OR r.lifecycle = ?1)
                   AND (?2 IS NULL OR r.updated_ms < ?2
                        OR (r.updated_ms = ?2 AND (r.updated_counter < ?3
                            OR (r.updated_counter = ?3 AND r.report_id > ?4))))
                 ORDER BY r.updated_ms DESC, r.updated_counter DESC, r.report_id LIMIT ?5",
            )?;
            let after = q.after;
            let rows = st.query_map(
                params![
                    q.lifecycle.map(|l| l.as_str()),
                    after.map(|a| a.updated_ms),
                    after.map(|a| a.updated_counter),
                    after.map(|a| a.id.as_bytes().to_vec()),
                    limit
                ],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, u32>(4)?,
                        r.get::<_, u32>(5)?,
                        r.get::<_, u32>(6)?,
                    ))
                },
            )?;
            rows.map(|row| {
                let (id, lc, occ, upd, counter, conflicts, unsynced) = row?;
                Ok(ReportSummary {
                    id: uuid_of(id)?,
                    lifecycle: LifecycleState::parse(&lc)
                        .ok_or_else(|| Error::Corrupt("lifecycle".into()))?,
                    occurred_start_ms: occ,
                    updated_ms: upd,
                    updated_counter: counter,
                    conflict_count: conflicts,
                    unsynced_count: unsynced,
                })
            })
            .collect()
        })
    }
}

/// Rebuilds the materialised rows a migration queued, in one transaction.
fn rematerialise_pending(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction()?;
    let reports: Vec<Uuid> = {
        let mut st = tx.prepare("SELECT report_id FROM rematerialise")?;
        let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|r| uuid_of(r?)).collect::<Result<_>>()?
    };
    if reports.is_empty() {
        return Ok(());
    }
    for &r in &reports {
        let doc = load_doc(&tx, r)?;
        write_report_row(&tx, r, &doc.materialise())?;
    }
    tx.execute("DELETE FROM rematerialise", [])?;
    tx.commit()?;
    Ok(())
}

/// The order's minimum for a submitted report.
pub fn missing_for_submission(r: &Report) -> Vec<String> {
    let mut missing = Vec::new();
    if r.occurred.start.is_none() {
        missing.push("occurred.start".to_string());
    }
    let has_coords = r.location.latitude.is_some() && r.location.longitude.is_some();
    if !has_coords && r.location.address.is_none() {
        missing.push("location".to_string());
    }
    if r.federal_agencies.is_empty() {
        missing.push("federal_agencies".to_string());
    }
    missing
}

/// The identity, the next seq and the clock. The clock is the newest own
/// change's, or the highest seen from peers if later and not beyond the
/// bound ahead of `now_ms` (a store that followed a far-ahead peer before
/// the bound existed lets go of it; its own signed changes keep their
/// clocks, and the clock never goes below them).
fn load_identity(conn: &Connection, now_ms: i64) -> Result<(Option<DeviceIdentity>, u64, Hlc)> {
    let row = conn
        .query_row(
            "SELECT i.device_id, i.secret_key, i.hlc_wall, i.hlc_counter, d.record
             FROM identity i JOIN devices d ON d.device_id = i.device_id WHERE i.id = 1",
            [],
            |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, u32>(3)?,
                    r.get::<_, String>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((id, secret, wall, counter, record)) = row else {
        return Ok((None, 1, Hlc::default()));
    };
    // This device's newest change gives the next seq and its own clock.
    let newest = conn
        .query_row(
            "SELECT body, signature FROM changes WHERE device_id = ?1 ORDER BY seq DESC LIMIT 1",
            [id.as_slice()],
            |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )
        .optional()?
        .map(|(b, s)| decode_row(b, s))
        .transpose()?;
    let (next_seq, own_hlc) = newest
        .map(|c| (c.body().seq + 1, c.body().hlc))
        .unwrap_or((1, Hlc::default()));
    let secret: [u8; 32] = secret
        .try_into()
        .map_err(|_| Error::Corrupt("device key".into()))?;
    let record: DeviceRecord =
        serde_json::from_str(&record).map_err(|_| Error::Corrupt("device record".into()))?;
    let mut identity = DeviceIdentity::from_secret(uuid_of(id)?, secret, record.person);
    // The person secret the station gave this device (its creations reveal
    // it), kept across restarts.
    identity.record.person_secret = record.person_secret;
    let hlc = own_hlc.observe(
        Hlc {
            wall_ms: wall as u64,
            counter,
        },
        now_ms.max(0) as u64,
    );
    Ok((Some(identity), next_seq, hlc))
}

fn write_report_row(conn: &Connection, report: Uuid, state: &State) -> Result<()> {
    let r = Report::from_state(report, state);
    let mut st = conn.prepare_cached(
        "INSERT INTO reports (report_id, lifecycle, occurred_start, updated_ms, updated_counter, conflict_count, json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (report_id) DO UPDATE SET lifecycle = excluded.lifecycle,
           occurred_start = excluded.occurred_start, updated_ms = excluded.updated_ms,
           updated_counter = excluded.updated_counter,
           conflict_count = excluded.conflict_count, json = excluded.json",
    )?;
    let updated = state.updated.unwrap_or_default();
    st.execute(params![
        report.as_bytes().as_slice(),
        r.lifecycle.as_str(),
        r.occurred.start.map(|t| t.timestamp_millis()),
        updated.wall_ms as i64,
        updated.counter,
        state.conflict_count() as i64,
        r.to_canonical_json()
    ])?;
    Ok(())
}

/// Which report a change goes to: one that exists, or a new one (its
/// creation) whose id derives from the change and this nonce.
#[derive(Clone, Copy)]
enum ReportRef<'a> {
    Existing(Uuid),
    New { nonce: &'a str },
}
