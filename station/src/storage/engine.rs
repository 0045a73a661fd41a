//! The narrow interface a storage engine implements, with SQL only: rows
//! in, rows out, and a write transaction. What the station decides (who
//! may see what, enrollment rules, materialising reports, media uploads,
//! what an evidence package holds) is in [`super::service`], written once
//! over this trait; `sqlite` and `postgres` implement it. Two rules are
//! SQL and so stand in both engines, side by side with the conformance
//! suite (`tests/tests/conformance.rs`) checking they agree: which reports
//! a device may see (`report_access` by person, or its unit's when a
//! supervisor), and which directory entries carry names (the device itself
//! and the authors of what it may see).

use std::collections::{BTreeSet, HashMap, HashSet};

use async_trait::async_trait;
use ed25519_dalek::VerifyingKey;
use fieldreport_core::crdt::{Change, ChangeId, Hash};
use fieldreport_core::evidence::ChainLookup;
use fieldreport_core::sync::wire::{ClockSkew, ReportEvent};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{Attestation, AttestationKind, AuditEntry, Counts, DashboardAccount};
use crate::error::{Result, StationError};

/// The 32 zero bytes stored as `prev` of a chain root.
pub const ZERO_HASH: Hash = [0; 32];

/// Who is asking, as the visibility SQL takes it: a report is visible to
/// the people who wrote to it (`report_access` by person key) and, when
/// `supervisor`, to every report of `unit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visibility {
    pub person_key: String,
    pub supervisor: bool,
    pub unit: String,
}

/// A `devices` row.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    /// The `DeviceRecord`, JSON, with its person secret.
    pub record: String,
    pub enrolled_at: i64,
    pub revoked_at: Option<i64>,
    pub credential_expires_at: Option<i64>,
}

/// A device being enrolled.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub device_id: Uuid,
    pub public_key: [u8; 32],
    pub record: String,
    pub person_key: String,
    pub role: String,
    pub unit: String,
    pub credential_hash: Vec<u8>,
    pub enrolled_at: i64,
    pub credential_expires_at: i64,
}

/// An `enrollment_codes` row.
#[derive(Debug, Clone)]
pub struct CodeRow {
    /// The `Person`, JSON.
    pub person: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// A `reports` row: the materialised report.
#[derive(Debug, Clone)]
pub struct ReportRow {
    pub report_id: Uuid,
    pub unit: String,
    pub created_by: Uuid,
    pub lifecycle: String,
    pub updated_ms: i64,
    pub json: String,
}

/// A `media` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaRow {
    pub total: u64,
    pub received: u64,
    pub complete: bool,
}

/// A stored change with the station's receipt time.
#[derive(Debug, Clone)]
pub struct StoredChange {
    pub change: Change,
    pub received_at: i64,
}

/// What an evidence package is read from, in one snapshot: each report's
/// changes, the rows of the media they reference, and their authors.
#[derive(Debug, Default)]
pub struct ExportRows {
    pub reports: Vec<(Uuid, Vec<StoredChange>)>,
    pub media: HashMap<String, MediaRow>,
    pub devices: HashMap<Uuid, DeviceRow>,
}

/// What `verify_batch` needs of the stored log for one batch, fetched
/// inside the push's transaction.
#[derive(Debug, Default)]
pub struct ChainFacts {
    /// Hash and signature of stored changes with the batch's ids.
    pub stored: HashMap<ChangeId, (Hash, [u8; 64])>,
    /// (device, report, seq) of stored changes the batch names as `prev`.
    pub by_hash: HashMap<Hash, (Uuid, Uuid, u64)>,
    /// (report, device, prev) of stored changes with a batch change's prev.
    pub children: BTreeSet<(Uuid, Uuid, Hash)>,
    /// Public keys of the batch's authors.
    pub keys: HashMap<Uuid, VerifyingKey>,
}

impl ChainLookup for ChainFacts {
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

/// A stored change from its columns.
pub fn decode_change(body: Vec<u8>, signature: Vec<u8>) -> Result<Change> {
    let sig: [u8; 64] = signature
        .try_into()
        .map_err(|_| StationError::Internal("signature column".into()))?;
    Ok(Change::from_parts(body, sig)?)
}

/// A 32-byte hash column.
pub fn hash_column(v: Vec<u8>) -> Result<Hash> {
    v.try_into()
        .map_err(|_| StationError::Internal("hash column".into()))
}

/// A public key column, if it holds a valid key.
pub fn key_column(v: Vec<u8>) -> Result<Option<VerifyingKey>> {
    let k: [u8; 32] = v
        .try_into()
        .map_err(|_| StationError::Internal("public key column".into()))?;
    Ok(VerifyingKey::from_bytes(&k).ok())
}

/// What the transparency log has yet to take in, read under the log lock:
/// the log's size, the audit rows after the last sealed one (id order),
/// and, only while the log holds no change at all (a station upgraded from
/// a build without the log), every stored change (id order). Once the log
/// holds changes, a change is logged by the push that stores it and no
/// other way: a row inserted behind the station's back is never taken in,
/// and the log check names it.
#[derive(Debug, Default)]
pub struct LogBacklog {
    pub size: u64,
    pub backfill: Vec<(i64, StoredChange)>,
    pub audit: Vec<AuditEntry>,
}

/// A `log_leaves` row: (log index, change id or none, last audit id
/// sealed or none, leaf bytes).
pub type LogRow = (u64, Option<i64>, Option<i64>, Vec<u8>);

/// One extension of the transparency log, written in the transaction that
/// read its [`LogBacklog`].
#[derive(Debug, Default)]
pub struct LogAppend {
    pub leaves: Vec<LogRow>,
    /// Stored tree hashes (tlog numbering).
    pub hashes: Vec<(u64, Hash)>,
    /// The new checkpoint: tree size and signed note.
    pub checkpoint: (u64, String),
}

/// What a write transaction is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxKind {
    /// Pushes and enrollments: all of it or nothing, ordered with every
    /// other write.
    Log,
    /// A media chunk: ordered with other uploads of the same file while
    /// the chunk is written and (last chunk) the file hashed. On SQLite its
    /// statements commit one by one, so the database's write lock is not
    /// held through the file work (another process's `revoke` would wait
    /// on it).
    Media,
}

/// Reads and single-statement writes. Reads see committed data; a pull
/// page with its log head, and an export's rows, are read in one snapshot.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// A write transaction. Dropped without [`WriteTx::commit`], it rolls
    /// back.
    async fn begin(&self, kind: TxKind) -> Result<Box<dyn WriteTx>>;

    async fn insert_code(
        &self,
        code_hash: Vec<u8>,
        person: String,
        created_at: i64,
        expires_at: i64,
    ) -> Result<()>;
    async fn device_by_credential(&self, credential_hash: Vec<u8>) -> Result<Option<DeviceRow>>;
    async fn device(&self, device: Uuid) -> Result<Option<DeviceRow>>;
    /// Gives a device a new credential hash; false if no such device.
    async fn set_credential_hash(&self, device: Uuid, credential_hash: Vec<u8>) -> Result<bool>;
    async fn set_credential_expiry(&self, device: Uuid, expires_at: i64) -> Result<bool>;
    /// Sets `revoked_at` (if not set) to `now` or one past the device's
    /// last receipt, whichever is later, ordered with every push.
    async fn revoke(&self, device: Uuid, now: i64) -> Result<bool>;
    /// Every device record (JSON), in enrollment order.
    async fn device_records(&self) -> Result<Vec<String>>;
    /// Every device record (JSON), in enrollment order, and whether it is
    /// `me` or wrote to a report `who` may see.
    async fn directory_rows(&self, who: &Visibility, me: Uuid) -> Result<Vec<(String, bool)>>;

    async fn dashboard_account(&self, star_number: &str) -> Result<Option<DashboardAccount>>;
    async fn dashboard_accounts(&self) -> Result<Vec<DashboardAccount>>;
    async fn put_dashboard_account(&self, account: DashboardAccount, replace: bool)
        -> Result<bool>;
    /// Deletes the dashboard accounts and the station key check in one
    /// transaction; returns the accounts' devices.
    async fn forget_sealed(&self) -> Result<Vec<Uuid>>;
    async fn setting(&self, name: &str) -> Result<Option<Vec<u8>>>;
    async fn put_setting_once(&self, name: &str, value: Vec<u8>) -> Result<Vec<u8>>;

    /// Up to `limit` (id, change) visible to `who` after `after`, and the
    /// log head, in one snapshot.
    async fn pull_rows(
        &self,
        who: &Visibility,
        after: i64,
        limit: u32,
    ) -> Result<(Vec<(i64, Change)>, i64)>;
    async fn is_visible(&self, who: &Visibility, report: Uuid) -> Result<bool>;
    /// A report's changes in log order, with receipt times.
    async fn report_changes(&self, report: Uuid) -> Result<Vec<StoredChange>>;
    async fn report_json(&self, report: Uuid) -> Result<Option<String>>;
    /// Reports `who` may see (JSON), most recently updated first.
    async fn visible_report_jsons(&self, who: &Visibility) -> Result<Vec<String>>;
    async fn all_report_jsons(&self) -> Result<Vec<String>>;
    async fn clock_skew(&self, report: Uuid) -> Result<Vec<ClockSkew>>;
    async fn record_clock_skew(
        &self,
        device: Uuid,
        reports: Vec<Uuid>,
        skew_ms: i64,
        now: i64,
    ) -> Result<()>;
    async fn export_rows(&self, reports: &[Uuid]) -> Result<ExportRows>;

    async fn media_row(&self, sha256: &str) -> Result<Option<MediaRow>>;
    /// Whether a complete media file is referenced by a report `who` may see.
    async fn media_visible(&self, who: &Visibility, sha256: &str) -> Result<bool>;

    async fn append_audit(&self, entry: AuditEntry) -> Result<()>;
    /// Audit rows with `first <= id <= last`, in id order.
    async fn audit_range(&self, first: i64, last: i64) -> Result<Vec<AuditEntry>>;

    /// Stored tree hashes by tlog index (committed ones only: a stored
    /// hash never changes once written).
    async fn log_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>>;
    /// The checkpoint of `size`, or the newest one.
    async fn checkpoint(&self, size: Option<u64>) -> Result<Option<(u64, String)>>;
    /// Stores an attestation of a stored checkpoint; a second one of the
    /// same checkpoint, kind and party is ignored (the first stands).
    async fn add_attestation(&self, a: Attestation) -> Result<()>;
    /// The attestations of the checkpoint of `size`, by kind and party.
    async fn attestations(&self, size: u64) -> Result<Vec<Attestation>>;
    /// The largest checkpoint `party` attested as `kind`.
    async fn last_attested(&self, kind: AttestationKind, party: &str) -> Result<Option<u64>>;
    /// The largest checkpoint at least `witnesses` witnesses cosigned.
    async fn newest_cosigned(&self, witnesses: u32) -> Result<Option<u64>>;
    /// Log leaves `from..to`.
    async fn log_leaves(&self, from: u64, to: u64) -> Result<Vec<LogRow>>;
    /// The log's restore leaves (neither a change nor an audit seal), by
    /// index: rare, read by phones that find the log went back.
    async fn log_restores(&self) -> Result<Vec<(u64, Vec<u8>)>>;
    /// Stored changes with their ids, in id order, after `after`, at most
    /// `limit` (the log check reads every row as stored).
    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, StoredChange)>>;
    /// Where stored changes sit in the log, by change hash: (leaf index,
    /// author, seq, receipt time ms); changes not logged are left out.
    async fn logged_changes(&self, hashes: &[[u8; 32]]) -> Result<Vec<(u64, Uuid, u64, i64)>>;
    async fn audit_log(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>>;
    async fn record_rejection(
        &self,
        at: i64,
        device: Option<Uuid>,
        reason: String,
        bytes: Vec<u8>,
    ) -> Result<()>;
    async fn counts(&self) -> Result<Counts>;
    /// The event fan-out the engine feeds itself (every process on one
    /// database), if it does.
    fn shared_events(&self) -> Option<broadcast::Sender<(String, ReportEvent)>> {
        None
    }
}

/// One write transaction (a push, an enrollment, a media chunk).
#[async_trait]
pub trait WriteTx: Send {
    /// Orders this transaction with every push and revocation, from any
    /// process: log ids are then assigned in commit order.
    async fn lock_log(&mut self) -> Result<()>;
    /// Orders this transaction with every other upload of `sha256`.
    async fn lock_media(&mut self, sha256: &str) -> Result<()>;

    async fn chain_facts(&mut self, changes: &[Change]) -> Result<ChainFacts>;
    /// The devices among `devices` that are revoked.
    async fn revoked_among(&mut self, devices: &[Uuid]) -> Result<HashSet<Uuid>>;
    /// The complete media among `sha256s`.
    async fn complete_among(&mut self, sha256s: &[String]) -> Result<HashSet<String>>;
    /// Appends changes (chain order) received at `received_at`; returns
    /// the log head after them.
    async fn append_changes(&mut self, changes: &[Change], received_at: i64) -> Result<i64>;
    /// Lets each (device, report) pair's person see the report.
    async fn grant_author_access(&mut self, pairs: &[(Uuid, Uuid)]) -> Result<()>;
    /// Records which reports reference which media.
    async fn add_media_refs(&mut self, pairs: &[(String, Uuid)]) -> Result<()>;
    async fn report_changes(&mut self, report: Uuid) -> Result<Vec<Change>>;
    async fn device_unit(&mut self, device: Uuid) -> Result<Option<String>>;
    /// The device records (JSON) of `devices`, by id.
    async fn device_records_of(&mut self, devices: &[Uuid]) -> Result<HashMap<Uuid, String>>;
    /// Writes a materialised report; returns whether it is new.
    async fn put_report(&mut self, row: ReportRow) -> Result<bool>;
    /// Hands an event to every station process on this database when the
    /// transaction commits (nothing, for an engine of one process).
    async fn publish(&mut self, event: &(String, ReportEvent)) -> Result<()>;

    /// The code row, locked for this transaction.
    async fn code(&mut self, code_hash: &[u8]) -> Result<Option<CodeRow>>;
    /// Inserts a device; false if its id is taken.
    async fn insert_device(&mut self, device: NewDevice) -> Result<bool>;
    async fn mark_code_used(&mut self, code_hash: &[u8], at: i64, device: Uuid) -> Result<()>;

    /// What the log has yet to take in (call under [`WriteTx::lock_log`];
    /// PostgreSQL also waits here for audit rows being written).
    async fn log_backlog(&mut self) -> Result<LogBacklog>;
    /// Stored tree hashes by tlog index, as this transaction sees them.
    async fn log_hashes(&mut self, indexes: &[u64]) -> Result<Vec<Hash>>;
    async fn append_log(&mut self, append: LogAppend) -> Result<()>;

    async fn media_row(&mut self, sha256: &str) -> Result<Option<MediaRow>>;
    async fn put_media(&mut self, sha256: &str, row: MediaRow) -> Result<()>;
    async fn delete_media(&mut self, sha256: &str) -> Result<()>;

    async fn commit(self: Box<Self>) -> Result<()>;
}
