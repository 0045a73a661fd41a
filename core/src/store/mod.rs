//! The device store: one SQLite database (WAL, one writer connection and
//! reader connections beside it) holding the signed changes, the
//! materialised reports, the device identity and directory, media records
//! and sync bookkeeping; plus the content-addressed media directory.
//!
//! Every write is one transaction: a change is acknowledged to the caller
//! only once it and the report it updates are durably committed
//! (`synchronous=FULL`).

pub mod key;
pub mod log;
pub mod media;
pub mod migrations;

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
pub use key::StoreKey;
pub use log::SqlLookup;
use log::{decode_row, hash_of, insert_change, load_doc, upsert_device, uuid_of, ZERO_HASH};
pub use media::{MediaKey, MediaReader, MediaStore, StoredMedia};

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
        std::fs::create_dir_all(&dir)?;
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

    /// Opens an encrypted store (creating it if needed).
    pub fn open_encrypted(dir: impl AsRef<Path>, key: StoreKey) -> Result<Store> {
        Self::open_with(
            dir,
            StoreOptions {
                key: Some(key),
                ..StoreOptions::default()
            },
        )
    }

    /// Whether the store is encrypted at rest.
    pub fn is_encrypted(&self) -> bool {
        lock(&self.key).is_some()
    }

    /// Changes the store key. The database is re-encrypted in one
    /// transaction (a crash leaves it under the old key or the new one);
    /// media stay sealed with the media key, which the database holds.
    pub fn rekey(&self, new_key: StoreKey) -> Result<()> {
        let mut key_slot = lock(&self.key);
        let old_key = key_slot.clone().ok_or(Error::NotEncrypted)?;
        let w = self.writer()?;
        let path = self.dir.join(DB_FILE);
        // Leaving WAL mode needs the only connection: park the readers.
        let mut readers: Vec<_> = self.readers.iter().map(lock).collect();
        for r in readers.iter_mut() {
            **r = Connection::open_in_memory()?;
        }
        let result = (|| -> Result<()> {
            w.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            let mode: String =
                w.conn
                    .pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("delete") {
                return Err(Error::Corrupt("cannot leave WAL to rekey".into()));
            }
            let rekeyed = key::rekey(&w.conn, &new_key);
            // Back to WAL whatever happened, under whichever key is current.
            w.conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
            rekeyed
        })();
        let current = if result.is_ok() { &new_key } else { &old_key };
        for r in readers.iter_mut() {
            **r = open_reader(&path, Some(current))?;
        }
        result?;
        *key_slot = Some(new_key);
        Ok(())
    }

    /// Signs this device out and removes the store: database, media and
    /// the directory itself. Refused with `UnsyncedWork` while changes or
    /// media have not reached the station, unless `force` is set. After a
    /// wipe every call on this `Store` fails with `Wiped`. Media and
    /// database are encrypted, so once the app also deletes the key from
    /// the platform key store, any copy left in flash is unreadable.
    pub fn wipe(&self, force: bool) -> Result<WipeOutcome> {
        let mut w = self.writer()?;
        let changes: u64 =
            w.conn
                .query_row("SELECT COUNT(*) FROM changes WHERE acked = 0", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64;
        let media: u64 =
            w.conn
                .query_row("SELECT COUNT(*) FROM media WHERE uploaded = 0", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64;
        if (changes > 0 || media > 0) && !force {
            return Err(Error::UnsyncedWork { changes, media });
        }
        self.wiped.store(true, Ordering::SeqCst);
        for r in &self.readers {
            *lock(r) = Connection::open_in_memory()?;
        }
        w.conn = Connection::open_in_memory()?;
        w.identity = None;
        w.docs = DocCache::default();
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(parent) = self.dir.parent() {
            if let Ok(d) = std::fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(WipeOutcome {
            unsynced_changes: changes,
            unsynced_media: media,
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

    // ----- authoring

    /// Creates a draft report; the reporting officer comes from this
    /// device's enrollment.
    pub fn create_report(&self) -> Result<Uuid> {
        drop(self.writer()?); // a wiped store says so, not "no identity"
        let record = self.identity().ok_or(Error::NoIdentity)?;
        let person = &record.person;
        let set = |path: &str, v: &str| Edit::SetField {
            path: path.into(),
            value: Value::Text(v.into()),
        };
        let mut edits = vec![
            set(LIFECYCLE_FIELD, LifecycleState::Draft.as_str()),
            set("reporting_officer.name", &person.name),
            set("reporting_officer.star_number", &person.star_number),
            set("reporting_officer.unit", &person.unit),
        ];
        // Opens this device's person digest on phones without its name.
        if let Some(secret) = &record.person_secret {
            edits.push(set(workflow::REPORTING_OFFICER_PROOF, secret));
        }
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|_| Error::Io(std::io::ErrorKind::Other))?;
        let nonce = hex::encode(nonce);
        edits.push(set(workflow::CREATION_NONCE, &nonce));
        // The report's id derives from its creation change's id and nonce.
        let created = self.commit_with(
            ReportRef::New { nonce: &nonce },
            &edits,
            Writer::System,
            |_| Ok(()),
        )?;
        Ok(workflow::report_id_for(created, &nonce))
    }

    /// Applies one user action (one or more edits) as one signed change.
    pub fn edit(&self, report: Uuid, edits: &[Edit]) -> Result<ChangeId> {
        self.commit_edits(report, edits, Writer::User)
    }

    pub fn set_field(&self, report: Uuid, path: &str, value: Value) -> Result<ChangeId> {
        self.edit(
            report,
            &[Edit::SetField {
                path: path.into(),
                value,
            }],
        )
    }

    /// Adds an entry to a collection; returns its id.
    pub fn add_entry(
        &self,
        report: Uuid,
        collection: &str,
        fields: Vec<(String, Value)>,
    ) -> Result<Uuid> {
        let entry = Uuid::new_v4();
        self.edit(
            report,
            &[Edit::AddEntry {
                collection: collection.into(),
                entry,
                fields,
            }],
        )?;
        Ok(entry)
    }

    pub fn set_entry_field(
        &self,
        report: Uuid,
        collection: &str,
        entry: Uuid,
        field: &str,
        value: Value,
    ) -> Result<ChangeId> {
        self.edit(
            report,
            &[Edit::SetEntryField {
                collection: collection.into(),
                entry,
                field: field.into(),
                value,
            }],
        )
    }

    pub fn remove_entry(&self, report: Uuid, collection: &str, entry: Uuid) -> Result<ChangeId> {
        self.edit(
            report,
            &[Edit::RemoveEntry {
                collection: collection.into(),
                entry,
            }],
        )
    }

    /// Resolves a value conflict on a field or entry field (path form, e.g.
    /// `supervisory_federal_officer.badge_number` or `force/<uuid>/type`) by
    /// setting the chosen value over all the live ones.
    pub fn resolve_conflict(&self, report: Uuid, path: &str, value: Value) -> Result<ChangeId> {
        let target = Target::parse_path(path)?;
        let state = self.state(report)?;
        let in_conflict = state.register(&target).is_some_and(|r| r.is_conflict());
        if !in_conflict {
            return Err(Error::NoConflict(path.to_string()));
        }
        let edit = match target {
            Target::Field(path) => Edit::SetField { path, value },
            Target::EntryField {
                collection,
                entry,
                field,
            } => Edit::SetEntryField {
                collection,
                entry,
                field,
                value,
            },
            Target::Entry { .. } => return Err(Error::NoConflict(path.to_string())),
        };
        self.edit(report, &[edit])
    }

    /// Submits a draft (or returned) report after checking the fields the
    /// order requires.
    pub fn submit(&self, report: Uuid) -> Result<ChangeId> {
        let r = self.report(report)?;
        if !matches!(
            r.lifecycle,
            LifecycleState::Draft | LifecycleState::Returned
        ) {
            return Err(Error::InvalidState {
                state: r.lifecycle.as_str(),
                action: "submit",
            });
        }
        let missing = missing_for_submission(&r);
        if !missing.is_empty() {
            return Err(Error::MissingRequired(missing));
        }
        self.commit_edits(
            report,
            &[Edit::SetField {
                path: LIFECYCLE_FIELD.into(),
                value: Value::Text(LifecycleState::Submitted.as_str().into()),
            }],
            Writer::System,
        )
    }

    /// Moves the report along its lifecycle with the given extra fields, if
    /// the transition fits its current state. Who may is checked when the
    /// change is built (`workflow::authorize`).
    fn transition(
        &self,
        report: Uuid,
        to: LifecycleState,
        action: &'static str,
        mut edits: Vec<Edit>,
    ) -> Result<ChangeId> {
        let from = self.state(report)?.lifecycle.state;
        if !workflow::transition_allowed(from, to) {
            return Err(Error::InvalidState {
                state: from.as_str(),
                action,
            });
        }
        edits.push(Edit::SetField {
            path: LIFECYCLE_FIELD.into(),
            value: Value::Text(to.as_str().into()),
        });
        self.commit_edits(report, &edits, Writer::System)
    }

    fn require_supervisor(&self, action: &'static str) -> Result<()> {
        let me = self.identity().ok_or(Error::NoIdentity)?;
        if me.person.role != crate::model::Role::Supervisor {
            return Err(Error::NotYourRole(action));
        }
        Ok(())
    }

    /// Returns a submitted report to its officer with a comment
    /// (supervisors of the report's unit).
    pub fn return_report(&self, report: Uuid, comment: &str) -> Result<ChangeId> {
        self.require_supervisor("return a report")?;
        if comment.trim().is_empty() {
            return Err(Error::InvalidValue {
                path: RETURN_COMMENT_FIELD.into(),
                reason: "a return needs a comment",
            });
        }
        self.transition(
            report,
            LifecycleState::Returned,
            "return",
            vec![Edit::SetField {
                path: RETURN_COMMENT_FIELD.into(),
                value: Value::Text(comment.into()),
            }],
        )
    }

    /// Approves a submitted report; its fields are locked from then on.
    pub fn approve(&self, report: Uuid) -> Result<ChangeId> {
        self.require_supervisor("approve a report")?;
        self.transition(report, LifecycleState::Approved, "approve", Vec::new())
    }

    /// Refers an approved report's felony matters to the State's Attorney.
    pub fn refer(
        &self,
        report: Uuid,
        date_ms: i64,
        reference: &str,
        felonies: Vec<String>,
    ) -> Result<ChangeId> {
        self.require_supervisor("refer a report")?;
        if felonies.is_empty() {
            return Err(Error::InvalidValue {
                path: "referral.felonies".into(),
                reason: "a referral lists at least one felony matter",
            });
        }
        if reference.trim().is_empty() {
            return Err(Error::InvalidValue {
                path: "referral.reference".into(),
                reason: "a referral needs the State's Attorney's reference",
            });
        }
        self.transition(
            report,
            LifecycleState::Referred,
            "refer",
            vec![
                Edit::SetField {
                    path: "referral.date".into(),
                    value: Value::Time(date_ms),
                },
                Edit::SetField {
                    path: "referral.reference".into(),
                    value: Value::Text(reference.into()),
                },
                Edit::SetField {
                    path: "referral.felonies".into(),
                    value: Value::List(felonies),
                },
            ],
        )
    }

    /// Closes an approved or referred report.
    pub fn close(&self, report: Uuid) -> Result<ChangeId> {
        self.require_supervisor("close a report")?;
        self.transition(report, LifecycleState::Closed, "close", Vec::new())
    }

    /// Records the internal review (supervisors of the report's unit, once
    /// the report is submitted). Recording again amends it; the history
    /// keeps both.
    pub fn record_review(
        &self,
        report: Uuid,
        findings: &str,
        cpd_conduct: &str,
        dispatch_knew: bool,
    ) -> Result<ChangeId> {
        self.require_supervisor("record a review")?;
        let state = self.state(report)?.lifecycle.state;
        if state == LifecycleState::Draft {
            return Err(Error::InvalidState {
                state: state.as_str(),
                action: "review",
            });
        }
        let now = self.clock.now_ms();
        let text = |path: &str, v: &str| Edit::SetField {
            path: path.into(),
            value: Value::Text(v.into()),
        };
        self.commit_edits(
            report,
            &[
                text("review.findings", findings),
                text("review.cpd_conduct", cpd_conduct),
                Edit::SetField {
                    path: "review.dispatch_knew".into(),
                    value: Value::Bool(dispatch_knew),
                },
                Edit::SetField {
                    path: "review.completed_at".into(),
                    value: Value::Time(now),
                },
            ],
            Writer::System,
        )
    }

    /// Streams a file into the media store and attaches it to the report in
    /// a signed change carrying its hash, size and capture facts.
    pub fn attach_media(
        &self,
        report: Uuid,
        path: &Path,
        meta: MediaMeta,
    ) -> Result<AttachedMedia> {
        let mut fields = vec![("mime_type".to_string(), Value::Text(meta.mime_type.clone()))];
        let mut opt = |name: &str, v: Option<Value>| {
            if let Some(v) = v {
                fields.push((name.to_string(), v));
            }
        };
        opt("file_name", meta.file_name.clone().map(Value::Text));
        opt("captured_at", meta.captured_at_ms.map(Value::Time));
        opt("latitude", meta.latitude.map(Value::Float));
        opt("longitude", meta.longitude.map(Value::Float));
        opt("caption", meta.caption.clone().map(Value::Text));
        // Validate everything before touching the disk.
        for (name, v) in &fields {
            schema::validate(
                name,
                schema::entry_field(schema::MEDIA_COLLECTION, name)?,
                v,
            )?;
        }
        if !self.report_exists(report)? {
            return Err(Error::ReportNotFound(report));
        }
        let stored = self.media.ingest(path)?;
        fields.push(("sha256".into(), Value::Text(stored.sha256.clone())));
        fields.push(("size".into(), Value::Int(stored.size as i64)));
        let entry = Uuid::new_v4();
        let now = self.clock.now_ms();
        let sha = stored.sha256.clone();
        let mime = meta.mime_type.clone();
        self.commit_with(
            ReportRef::Existing(report),
            &[Edit::AddEntry {
                collection: schema::MEDIA_COLLECTION.into(),
                entry,
                fields,
            }],
            Writer::System,
            move |tx| {
                tx.execute(
                    "INSERT OR IGNORE INTO media (sha256, size, mime_type, stored_at) VALUES (?1, ?2, ?3, ?4)",
                    params![sha, stored.size as i64, mime, now],
                )?;
                Ok(())
            },
        )?;
        Ok(AttachedMedia {
            entry,
            sha256: stored.sha256,
            size: stored.size,
        })
    }

    fn commit_edits(&self, report: Uuid, edits: &[Edit], writer: Writer) -> Result<ChangeId> {
        self.commit_with(ReportRef::Existing(report), edits, writer, |_| Ok(()))
    }

    /// Signs and stores one change of `edits` to `report`, or the creation
    /// of a new report whose id derives from the change's id and nonce
    /// (`workflow::report_id_for`).
    fn commit_with(
        &self,
        report: ReportRef<'_>,
        edits: &[Edit],
        writer: Writer,
        extra: impl FnOnce(&rusqlite::Transaction) -> Result<()>,
    ) -> Result<ChangeId> {
        let mut guard = self.writer()?;
        let w = &mut *guard;
        let identity = w.identity.clone().ok_or(Error::NoIdentity)?;
        let device = identity.device_id();
        let (report, create) = match report {
            ReportRef::Existing(r) => (r, false),
            ReportRef::New { nonce } => (
                workflow::report_id_for(
                    ChangeId {
                        device,
                        seq: w.next_seq,
                    },
                    nonce,
                ),
                true,
            ),
        };
        let tx = w.conn.transaction()?;
        let (mut doc, state) = w.docs.get_or_load(&tx, report)?;
        if doc.is_empty() != create {
            return Err(if create {
                Error::Corrupt("report id collision".into())
            } else {
                Error::ReportNotFound(report)
            });
        }
        let ops = build_ops(&state, edits, writer)?;
        if writer == Writer::User && workflow::locked(state.lifecycle.state) {
            let addenda_only = ops.iter().all(|op| match &op.target {
                Target::Entry { collection, .. } | Target::EntryField { collection, .. } => {
                    collection == schema::ADDENDA_COLLECTION
                }
                Target::Field(_) => false,
            });
            if !addenda_only {
                return Err(Error::InvalidState {
                    state: state.lifecycle.state.as_str(),
                    action: "editing fields (add an addendum instead)",
                });
            }
        }
        let now = self.clock.now_ms();
        let hlc = w.hlc.tick(now.max(0) as u64);
        let body = ChangeBody {
            format: crate::crdt::change::FORMAT_VERSION,
            report,
            device,
            seq: w.next_seq,
            hlc,
            wall_clock_ms: now,
            prev: doc.chain_head(device),
            ops,
        };
        // The same rule every receiver applies (phone and station agree).
        let unit = state
            .field("reporting_officer.unit")
            .and_then(Value::as_text)
            .unwrap_or(&identity.record.person.unit)
            .to_string();
        workflow::authorize(&body, &identity.record, &unit)?;
        let change = Change::sign(body, &identity.signing_key)?;
        let id = change.id();
        insert_change(&tx, &change, false, now)?;
        doc.insert(Arc::new(change));
        let state = Arc::new(doc.materialise());
        write_report_row(&tx, report, &state)?;
        extra(&tx)?;
        tx.commit()?;
        w.docs.put(report, doc, state);
        w.next_seq += 1;
        w.hlc = hlc;
        Ok(id)
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

    // ----- replication

    /// All changes of one report, in chain order.
    pub fn report_changes(&self, report: Uuid) -> Result<Vec<Change>> {
        let doc = self.read(|c| load_doc(c, report))?;
        Ok(doc.changes().map(|c| c.as_ref().clone()).collect())
    }

    /// What this replica holds, per (report, device) chain.
    pub fn heads(&self) -> Result<Heads> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT report_id, device_id, MAX(seq) FROM changes GROUP BY report_id, device_id",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            rows.map(|row| {
                let (r, d, s) = row?;
                Ok(((uuid_of(r)?, uuid_of(d)?), s as u64))
            })
            .collect()
        })
    }

    /// The changes a peer with `heads` lacks, in chain order.
    pub fn changes_missing_from(&self, heads: &Heads) -> Result<Vec<Change>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT report_id, device_id, seq, body, signature FROM changes ORDER BY device_id, seq")?;
            let mut rows = st.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let key = (uuid_of(r.get(0)?)?, uuid_of(r.get(1)?)?);
                let seq = r.get::<_, i64>(2)? as u64;
                if heads.get(&key).is_some_and(|&h| h >= seq) {
                    continue;
                }
                out.push(decode_row(r.get(3)?, r.get(4)?)?);
            }
            Ok(out)
        })
    }

    /// Verifies and stores a batch of changes from a peer or the station.
    /// A batch with any bad change is refused whole; nothing is applied.
    pub fn apply_changes(&self, batch: Vec<Change>, origin: Origin) -> Result<ApplyOutcome> {
        let mut guard = self.writer()?;
        let w = &mut *guard;
        let tx = w.conn.transaction()?;
        let verified = verify_batch(batch, &SqlLookup(&tx))?;
        let now = self.clock.now_ms();
        let mut touched = BTreeSet::new();
        // Follow the peers' clocks, but none that is beyond the bound ahead
        // of this device's own wall clock.
        let mut observed = w.hlc;
        if origin == Origin::Station {
            // Changes we already held (ours, or a partner's) are now known
            // to be at the station.
            let mut st =
                tx.prepare_cached("UPDATE changes SET acked = 1 WHERE hash = ?1 AND acked = 0")?;
            for h in &verified.duplicate_hashes {
                st.execute([h.as_slice()])?;
            }
        }
        for c in &verified.new {
            insert_change(&tx, c, origin == Origin::Station, now)?;
            touched.insert(c.report());
            observed = observed.observe(c.body().hlc, now.max(0) as u64);
        }
        let mut docs = Vec::with_capacity(touched.len());
        let mut units = std::collections::HashMap::new();
        for report in touched {
            let doc = load_doc(&tx, report)?;
            let state = Arc::new(doc.materialise());
            write_report_row(&tx, report, &state)?;
            units.insert(
                report,
                (
                    state
                        .field("reporting_officer.unit")
                        .and_then(Value::as_text)
                        .map(str::to_string),
                    state.creations.clone(),
                ),
            );
            docs.push((report, doc, state));
        }
        // Who may have made each change; one refused change refuses the batch.
        let mut people = std::collections::HashMap::new();
        for c in &verified.new {
            let device = c.device();
            if let std::collections::hash_map::Entry::Vacant(slot) = people.entry(device) {
                let record = log::device_record(&tx, device)?.ok_or(Error::UnknownDevice {
                    change: c.id().to_string(),
                })?;
                slot.insert(record);
            }
            let record = &people[&device];
            let person = &record.person;
            let (unit, creations) = units
                .get(&c.report())
                .map(|(u, cr)| (u.as_deref(), cr.as_slice()))
                .unwrap_or((None, &[]));
            workflow::authorize(c.body(), record, unit.unwrap_or(&person.unit))?;
            workflow::authorize_one_creation(c.body(), creations)?;
        }
        if w.identity.is_some() && observed != w.hlc {
            tx.execute(
                "UPDATE identity SET hlc_wall = ?1, hlc_counter = ?2 WHERE id = 1",
                params![observed.wall_ms as i64, observed.counter],
            )?;
        }
        tx.commit()?;
        for (report, doc, state) in docs {
            w.docs.put(report, doc, state);
        }
        w.hlc = observed;
        Ok(ApplyOutcome {
            applied: verified.new.len(),
            duplicates: verified.duplicates,
        })
    }

    pub fn has_change(&self, id: ChangeId) -> Result<bool> {
        self.read(|c| Ok(SqlLookup(c).stored(id)?.is_some()))
    }

    /// Checks the store against its own log: every change decodes and its
    /// signature verifies, every chain is intact, every materialised report
    /// equals a rebuild from its changes, and the next sequence number is
    /// past every change this device made. Returns the number of changes.
    pub fn verify_integrity(&self) -> Result<u64> {
        let w = self.writer()?;
        let c = &w.conn;
        let lookup = SqlLookup(c);
        let mut st = c.prepare(
            "SELECT report_id, body, signature, prev FROM changes ORDER BY device_id, seq",
        )?;
        let mut rows = st.query([])?;
        let mut reports = BTreeSet::new();
        let mut count = 0u64;
        let mut max_own = 0u64;
        let me = w.identity.as_ref().map(|i| i.device_id());
        while let Some(r) = rows.next()? {
            let report = uuid_of(r.get(0)?)?;
            let change = decode_row(r.get(1)?, r.get(2)?)?;
            let key = lookup.device_key(change.device())?.ok_or_else(|| {
                Error::Corrupt(format!("change {} of unknown device", change.id()))
            })?;
            change.verify(&key)?;
            let prev = hash_of(r.get(3)?)?;
            if change.body().prev.unwrap_or(ZERO_HASH) != prev || change.report() != report {
                return Err(Error::Corrupt(format!("change {} columns", change.id())));
            }
            if let Some(p) = change.body().prev {
                match lookup.stored_by_hash(&p)? {
                    Some((d, rep, seq))
                        if d == change.device() && rep == report && seq < change.body().seq => {}
                    _ => return Err(Error::Corrupt(format!("chain of change {}", change.id()))),
                }
            }
            if Some(change.device()) == me {
                max_own = max_own.max(change.body().seq);
            }
            reports.insert(report);
            count += 1;
        }
        if me.is_some() && w.next_seq <= max_own {
            return Err(Error::Corrupt("next sequence number reused".into()));
        }
        for report in reports {
            let doc = load_doc(c, report)?;
            let expected = Report::from_state(report, &doc.materialise()).to_canonical_json();
            let stored: String = c.query_row(
                "SELECT json FROM reports WHERE report_id = ?1",
                [report.as_bytes().as_slice()],
                |r| r.get(0),
            )?;
            if stored != expected {
                return Err(Error::Corrupt(format!("materialised report {report}")));
            }
        }
        Ok(count)
    }

    // ----- sync bookkeeping

    /// This device's changes the station has not acknowledged yet, oldest
    /// first. Changes received from a partner's phone are not forwarded
    /// (they may attach media this device lacks); they are acknowledged
    /// when they come back from the station.
    pub fn outbox(&self, limit: u32) -> Result<Vec<Change>> {
        let Some(me) = self.identity().map(|r| r.device_id) else {
            return Ok(Vec::new());
        };
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT body, signature FROM changes WHERE acked = 0 AND device_id = ?1 ORDER BY id LIMIT ?2",
            )?;
            let mut rows = st.query(params![me.as_bytes().as_slice(), limit])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(decode_row(r.get(0)?, r.get(1)?)?);
            }
            Ok(out)
        })
    }

    pub fn outbox_len(&self) -> Result<u64> {
        let Some(me) = self.identity().map(|r| r.device_id) else {
            return Ok(0);
        };
        self.read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM changes WHERE acked = 0 AND device_id = ?1",
                [me.as_bytes().as_slice()],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })
    }

    /// Records that the station holds these changes.
    pub fn mark_acked(&self, ids: &[ChangeId]) -> Result<()> {
        let mut w = self.writer()?;
        let tx = w.conn.transaction()?;
        {
            let mut st = tx
                .prepare_cached("UPDATE changes SET acked = 1 WHERE device_id = ?1 AND seq = ?2")?;
            for id in ids {
                st.execute(params![id.device.as_bytes().as_slice(), id.seq as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Media not yet uploaded: (sha256, size), oldest first.
    pub fn pending_media(&self) -> Result<Vec<(String, u64)>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT sha256, size FROM media WHERE uploaded = 0 ORDER BY stored_at, sha256",
            )?;
            let rows = st.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    pub fn mark_media_uploaded(&self, sha256: &str) -> Result<()> {
        let w = self.writer()?;
        w.conn
            .execute("UPDATE media SET uploaded = 1 WHERE sha256 = ?1", [sha256])?;
        Ok(())
    }

    /// Records a media file received from the station (already verified and
    /// in the media store).
    pub fn record_downloaded_media(&self, stored: &StoredMedia, mime_type: &str) -> Result<()> {
        let w = self.writer()?;
        w.conn.execute(
            "INSERT OR IGNORE INTO media (sha256, size, mime_type, stored_at, uploaded) VALUES (?1, ?2, ?3, ?4, 1)",
            params![stored.sha256, stored.size as i64, mime_type, self.clock.now_ms()],
        )?;
        Ok(())
    }

    pub fn sync_value(&self, key: &str) -> Result<Option<String>> {
        self.read(|c| {
            Ok(
                c.query_row("SELECT value FROM sync_state WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
    }

    pub fn set_sync_value(&self, key: &str, value: &str) -> Result<()> {
        let w = self.writer()?;
        w.conn.execute(
            "INSERT INTO sync_state (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    /// Number of changes stored (all reports, all devices).
    pub fn change_count(&self) -> Result<u64> {
        self.read(|c| {
            Ok(c.query_row("SELECT COUNT(*) FROM changes", [], |r| r.get::<_, i64>(0))? as u64)
        })
    }

    /// Rebuilds every materialised report from its changes (after an
    /// upgrade, or to check the tables against the log).
    pub fn rebuild_materialised(&self) -> Result<usize> {
        let mut guard = self.writer()?;
        let tx = guard.conn.transaction()?;
        let reports: Vec<Uuid> = {
            let mut st = tx.prepare("SELECT DISTINCT report_id FROM changes")?;
            let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            rows.map(|r| uuid_of(r?)).collect::<Result<_>>()?
        };
        for &r in &reports {
            let doc = load_doc(&tx, r)?;
            write_report_row(&tx, r, &doc.materialise())?;
        }
        tx.commit()?;
        Ok(reports.len())
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
