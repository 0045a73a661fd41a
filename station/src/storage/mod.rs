//! Station storage behind one trait, [`StationStorage`], implemented once
//! by [`service::Service`] (the rules) over an [`engine::Engine`] (SQL
//! only). `sqlite` is the embedded engine (one file, zero set-up);
//! `postgres` lets several station processes share one database.
//!
//! The station log is one ordered sequence of changes; a pull returns the
//! visible changes after a cursor. Implementations must guarantee that a
//! cursor never skips a change committed later with a lower position (the
//! SQLite engine has a single writer, so commit order is log order).

pub mod common;
pub mod engine;
pub mod postgres;
pub mod service;
pub mod sqlite;
pub mod transparency;

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use fieldreport_core::evidence::package::DeviceEnrollment;
use fieldreport_core::evidence::{DeviceRecord, Person};
use fieldreport_core::sync::wire::{
    ConsistencyResponse, InclusionResponse, MediaStatus, PushLog, ReceiptsResponse, ReportEvent,
};
use fieldreport_core::tlog::NoteVerifier;
use fieldreport_core::{Change, Role};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::Result;
use std::sync::Arc;

/// An enrolled device, as the station knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub record: DeviceRecord,
    pub revoked: bool,
    /// When the device's credential stops being accepted (ms since epoch).
    pub credential_expires_at: Option<i64>,
}

/// How long a device credential is accepted after enrollment or renewal.
/// An admin extends or ends one with `fieldreport-station credential`.
pub const CREDENTIAL_LIFETIME_MS: i64 = 180 * 86_400_000;

impl Enrolled {
    pub fn role(&self) -> Role {
        self.record.person.role
    }
    pub fn unit(&self) -> &str {
        &self.record.person.unit
    }
}

/// One audit log entry: when, who (a device id, `anonymous`, or `admin`),
/// what (method and route), on what (the request path: ids and hashes, no
/// personal data) and the outcome (HTTP status, or `ok`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
}

/// What an outside party said of one of the log's checkpoints
/// (docs/log.md): a time-stamp authority's RFC 3161 response, or a
/// witness's cosignature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// The checkpoint's tree size.
    pub size: u64,
    pub kind: AttestationKind,
    /// The authority's URL, or the witness's name.
    pub party: String,
    /// The DER response, or the cosignature line (UTF-8, no newline).
    pub body: Vec<u8>,
    pub received_at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttestationKind {
    Timestamp,
    Cosignature,
}

impl AttestationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AttestationKind::Timestamp => "timestamp",
            AttestationKind::Cosignature => "cosignature",
        }
    }

    pub fn parse(s: &str) -> Option<AttestationKind> {
        match s {
            "timestamp" => Some(AttestationKind::Timestamp),
            "cosignature" => Some(AttestationKind::Cosignature),
            _ => None,
        }
    }
}

/// A supervisor's dashboard account as the station keeps it: nothing in
/// it opens anything without the station key (kept apart, see
/// [`crate::keys`]) or the supervisor's password. Name, star number, role
/// and unit are the account device's record.
#[derive(Clone, PartialEq, Eq)]
pub struct DashboardAccount {
    /// The sign-in name.
    pub star_number: String,
    /// The account's own signing device (enrolled like a phone).
    pub device_id: Uuid,
    /// Argon2id, PHC string.
    pub password_hash: String,
    /// The RFC 6238 secret (raw bytes), sealed with the station key.
    pub totp_sealed: Vec<u8>,
    /// The SQLCipher key of the device's signing store, sealed with the
    /// station key.
    pub store_key_sealed: Vec<u8>,
    /// Station clock, ms.
    pub updated_at: i64,
}

impl std::fmt::Debug for DashboardAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardAccount")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default)]
pub struct PushOutcome {
    pub applied: usize,
    pub duplicates: usize,
    /// (unit of the report, event) for each report that changed.
    pub events: Vec<(String, ReportEvent)>,
    /// The log's receipts for the changes stored.
    pub log: Option<PushLog>,
}

#[derive(Debug, Clone)]
pub struct PullPage {
    pub changes: Vec<Change>,
    pub next: i64,
    pub more: bool,
}

/// What an evidence package of some reports is made from.
#[derive(Debug, Clone)]
pub struct ExportMaterial {
    pub reports: Vec<(Uuid, Vec<Change>)>,
    /// Every device that authored one of the changes.
    pub devices: Vec<DeviceEnrollment>,
    /// Path of each complete media file the changes attach, by sha256.
    pub media: BTreeMap<String, PathBuf>,
    /// When the station received each change (its `received_at`), by
    /// change hash.
    pub received: BTreeMap<fieldreport_core::crdt::Hash, chrono::DateTime<chrono::Utc>>,
    /// The log as of the export's checkpoint (the completeness proof).
    pub log: Option<fieldreport_core::evidence::package::LogMaterial>,
}

/// Counts used by tests and the admin to check nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub changes: u64,
    pub reports: u64,
    pub media_complete: u64,
    pub media_bytes: u64,
}

/// Materialised report rows (JSON) as reports.
pub fn parse_reports(jsons: Vec<String>) -> crate::error::Result<Vec<fieldreport_core::Report>> {
    jsons
        .iter()
        .map(|j| {
            serde_json::from_str(j).map_err(|_| {
                crate::error::StationError::Internal("stored report does not parse".into())
            })
        })
        .collect()
}

#[async_trait]
pub trait StationStorage: Send + Sync + 'static {
    /// The clock this station judges time by (the API and dashboard use
    /// it too, so one station has one "now").
    fn clock(&self) -> Arc<dyn Clock>;
    /// Creates a one-time enrollment code, valid for `ttl_ms`.
    async fn create_enrollment(&self, person: Person, ttl_ms: i64) -> Result<(String, i64)>;
    /// Redeems a code: registers the device's key, returns its record and
    /// its bearer credential (kept only as a hash).
    async fn enroll(
        &self,
        code: &str,
        device_id: Uuid,
        public_key: [u8; 32],
    ) -> Result<(DeviceRecord, String)>;
    /// The device a credential belongs to.
    async fn authenticate(&self, credential: &str) -> Result<Option<Enrolled>>;
    /// An enrolled device by id (the dashboard's signing devices, which
    /// hold no credential of their own).
    async fn device(&self, device: Uuid) -> Result<Option<Enrolled>>;
    /// Replaces a device's credential with one nobody holds (the
    /// dashboard's signing devices never use theirs); false if no such
    /// device.
    async fn retire_credential(&self, device: Uuid) -> Result<bool>;
    /// The dashboard account signing in with `star_number`.
    async fn dashboard_account(&self, star_number: &str) -> Result<Option<DashboardAccount>>;
    /// Every dashboard account.
    async fn dashboard_accounts(&self) -> Result<Vec<DashboardAccount>>;
    /// Adds an account, or replaces the one with its star number when
    /// `replace`; false when one existed and was kept.
    async fn put_dashboard_account(&self, account: DashboardAccount, replace: bool)
        -> Result<bool>;
    /// Deletes every dashboard account and the station key check, in one
    /// transaction; returns the accounts' signing devices. For a station
    /// whose key file is lost (`forget-station-key`).
    async fn forget_sealed(&self) -> Result<Vec<Uuid>>;
    /// A station setting (`station_settings`), if set.
    async fn setting(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Sets a setting unless it is set already; returns the value that is
    /// set, this one or the one found (several processes race to it).
    async fn put_setting_once(&self, name: &str, value: Vec<u8>) -> Result<Vec<u8>>;
    /// Every enrolled device (the station's own uses: the console, the
    /// dashboard's signing stores, exports).
    async fn devices(&self) -> Result<Vec<DeviceRecord>>;
    /// The device directory `who` receives: every device's key, role and
    /// unit, but names and star numbers only of `who` itself and of the
    /// authors of changes `who` may see (see [`common::directory_entry`]).
    async fn directory(&self, who: &Enrolled) -> Result<Vec<DeviceRecord>>;
    /// Revokes a device: its credential is refused, and so is any new
    /// change signed by it, whoever pushes it. Ordered with pushes; the
    /// time recorded is later than every receipt of its changes.
    async fn revoke(&self, device: Uuid) -> Result<bool>;
    /// Sets when a device's credential expires; false if no such device.
    async fn set_credential_expiry(&self, device: Uuid, expires_at_ms: i64) -> Result<bool>;

    /// Verifies and appends a batch (whole or nothing); idempotent. A new
    /// change by a revoked device refuses the batch (`DeviceRevoked`).
    async fn push(&self, changes: Vec<Change>) -> Result<PushOutcome>;
    /// Visible changes after `after`, in log order.
    async fn pull(&self, who: &Enrolled, after: i64, limit: u32) -> Result<PullPage>;
    /// All changes of one report, if visible.
    async fn report_changes(&self, who: &Enrolled, report: Uuid) -> Result<Vec<Change>>;
    /// The materialised report JSON, if visible.
    async fn report_json(&self, who: &Enrolled, report: Uuid) -> Result<String>;
    /// Appends to the audit log (there is no way to change or remove an
    /// entry: the database refuses it).
    async fn audit(&self, entry: AuditEntry) -> Result<()>;
    /// Audit entries after `after` (an entry id), oldest first.
    async fn audit_log(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>>;
    /// Every visible materialised report (JSON), most recently updated first.
    async fn visible_reports(&self, who: &Enrolled) -> Result<Vec<String>>;
    /// Every materialised report (JSON) of the station, for the public
    /// counts (which never show anything but counts).
    async fn all_reports(&self) -> Result<Vec<String>>;
    async fn media_status(&self, sha256: &str) -> Result<MediaStatus>;
    /// Appends bytes at `offset` of an upload of `total` bytes; verifies the
    /// hash when complete.
    async fn media_append(
        &self,
        sha256: &str,
        offset: u64,
        total: u64,
        bytes: &[u8],
    ) -> Result<MediaStatus>;
    /// Path of a complete media file, if a visible report references it.
    async fn media_path(&self, who: &Enrolled, sha256: &str) -> Result<PathBuf>;
    /// Keeps a refused request's bytes for audit.
    async fn record_rejection(
        &self,
        device: Option<Uuid>,
        reason: &str,
        bytes: &[u8],
    ) -> Result<()>;
    async fn counts(&self) -> Result<Counts>;
    /// A directory on the station's disk for building exports.
    fn scratch_dir(&self) -> PathBuf;
    /// The station's data directory (media, keys, the dashboard's signing
    /// stores; on SQLite the database too).
    fn data_dir(&self) -> PathBuf;
    /// Flags a device clock found off by `skew_ms` (device minus station)
    /// while it pushed changes of `reports` (the latest observation is kept).
    async fn record_clock_skew(&self, device: Uuid, reports: Vec<Uuid>, skew_ms: i64)
        -> Result<()>;
    /// Receipt times of a report's changes and its clock-skew flags, if visible.
    async fn receipts(&self, who: &Enrolled, report: Uuid) -> Result<ReceiptsResponse>;
    /// When the engine fans events out itself (to every station process
    /// on one database), the sender it feeds; the API then serves events
    /// from it and does not send its own pushes' events.
    /// The log's published key (`name+id+key`).
    fn log_verifier(&self) -> NoteVerifier;
    /// Logs whatever the log has yet to take in (audit rows written since
    /// the last push, changes of an older station) and signs a checkpoint;
    /// the new size, if it grew.
    async fn seal_log(&self) -> Result<Option<u64>>;
    /// The newest checkpoint (a signed note), if the log has one.
    async fn checkpoint(&self) -> Result<Option<String>>;
    /// The checkpoint the log signed of tree `size`, if it has one.
    async fn checkpoint_of(&self, size: u64) -> Result<Option<String>>;
    /// Leaf `index` of the tree of `size` (a size the log has a checkpoint
    /// of) with its inclusion proof; a change's leaf only if `who` may see
    /// its report.
    async fn inclusion(&self, who: &Enrolled, index: u64, size: u64) -> Result<InclusionResponse>;
    async fn consistency(&self, old: u64, new: u64) -> Result<ConsistencyResponse>;
    /// Checks the database against its own log.
    async fn check_log(&self) -> Result<crate::storage::transparency::LogCheck>;
    /// Records in the log that this station was restored from a backup
    /// made at `backup_at_ms` (a restore leaf, first after the restored
    /// tree; docs/log.md). Run once, by `restore`, before it serves.
    /// The restore leaf's index.
    async fn record_restore(&self, backup_at_ms: i64) -> Result<u64>;
    /// The log's restore leaves with their inclusion proofs in the newest
    /// checkpoint.
    async fn restores(&self) -> Result<fieldreport_core::sync::wire::RestoresResponse>;
    /// Keeps what an outside party said of a stored checkpoint (checked
    /// by [`crate::attest`] before); a second one of the same checkpoint,
    /// kind and party is ignored.
    async fn add_attestation(&self, a: Attestation) -> Result<()>;
    /// What outside parties said of the checkpoint of `size`.
    async fn attestations(&self, size: u64) -> Result<Vec<Attestation>>;
    /// The largest checkpoint `party` attested as `kind`.
    async fn last_attested(&self, kind: AttestationKind, party: &str) -> Result<Option<u64>>;
    /// The largest checkpoint at least `witnesses` witnesses cosigned
    /// (at least one).
    async fn newest_cosigned(&self, witnesses: u32) -> Result<Option<u64>>;

    fn shared_events(&self) -> Option<broadcast::Sender<(String, ReportEvent)>> {
        None
    }
    /// Everything an evidence package of `reports` needs. `who` is the
    /// requesting device (`None`: the station's administrator at the
    /// console); a report it may not see is `NotFound`, and a photo that
    /// has not finished uploading is a `Conflict`.
    async fn export_material(
        &self,
        who: Option<&Enrolled>,
        reports: &[Uuid],
    ) -> Result<ExportMaterial>;
}

/// Checks both engines' upgrade tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{DashboardAccount, StationStorage};

    /// Accounts added, kept, replaced and listed; a credential retired.
    pub fn accounts_round_trip(
        rt: &tokio::runtime::Runtime,
        s: &dyn StationStorage,
        device: uuid::Uuid,
    ) {
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
    }
}
