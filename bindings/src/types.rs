//! Records and enums crossing the boundary, and their conversions from the
//! core's types. Ids are strings (UUIDs) on the foreign side.

use fieldreport_core::model::report::{Conflict, ConflictKind};
use fieldreport_core::store::{HistoryEntry, ListCursor, ReportSummary};
use fieldreport_core::sync::client::{Phase, Progress, SyncReport};
use fieldreport_core::{DeviceRecord, Value};
use uuid::Uuid;

use crate::error::{FieldReportError, Result};

pub(crate) fn parse_id(what: &str, s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| FieldReportError::InvalidInput {
        reason: format!("{what} is not a UUID"),
    })
}

/// A field's value. `Time` is milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum FieldValue {
    Null,
    Bool { value: bool },
    Int { value: i64 },
    Float { value: f64 },
    Text { value: String },
    Time { epoch_ms: i64 },
    TextList { items: Vec<String> },
}

impl From<FieldValue> for Value {
    fn from(v: FieldValue) -> Value {
        match v {
            FieldValue::Null => Value::Null,
            FieldValue::Bool { value } => Value::Bool(value),
            FieldValue::Int { value } => Value::Int(value),
            FieldValue::Float { value } => Value::Float(value),
            FieldValue::Text { value } => Value::Text(value),
            FieldValue::Time { epoch_ms } => Value::Time(epoch_ms),
            FieldValue::TextList { items } => Value::List(items),
        }
    }
}

impl From<Value> for FieldValue {
    fn from(v: Value) -> FieldValue {
        match v {
            Value::Null => FieldValue::Null,
            Value::Bool(value) => FieldValue::Bool { value },
            Value::Int(value) => FieldValue::Int { value },
            Value::Float(value) => FieldValue::Float { value },
            Value::Text(value) => FieldValue::Text { value },
            Value::Time(epoch_ms) => FieldValue::Time { epoch_ms },
            Value::List(items) => FieldValue::TextList { items },
        }
    }
}

/// The device this store signs as, and its person (from enrollment).
#[derive(Debug, Clone, uniffi::Record)]
pub struct DeviceInfo {
    pub device_id: String,
    pub name: String,
    pub star_number: String,
    /// `officer` or `supervisor`.
    pub role: String,
    pub unit: String,
}

impl From<DeviceRecord> for DeviceInfo {
    fn from(d: DeviceRecord) -> Self {
        DeviceInfo {
            device_id: d.device_id.to_string(),
            name: d.person.name,
            star_number: d.person.star_number,
            role: d.person.role.as_str().to_string(),
            unit: d.person.unit,
        }
    }
}

/// Facts about a file being attached (all but the type optional).
#[derive(Debug, Clone, uniffi::Record)]
pub struct MediaInfo {
    pub mime_type: String,
    #[uniffi(default = None)]
    pub file_name: Option<String>,
    #[uniffi(default = None)]
    pub captured_at_ms: Option<i64>,
    #[uniffi(default = None)]
    pub latitude: Option<f64>,
    #[uniffi(default = None)]
    pub longitude: Option<f64>,
    #[uniffi(default = None)]
    pub caption: Option<String>,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct AttachedMedia {
    /// The `media` collection entry that carries the file's facts.
    pub entry_id: String,
    pub sha256: String,
    pub size: u64,
}

/// One candidate value of a conflict.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ConflictValue {
    pub value: FieldValue,
    pub device_id: String,
    pub seq: u64,
    /// The author device's wall clock when it made the change.
    pub wall_clock_ms: i64,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct ConflictInfo {
    /// `narrative`, `force/<uuid>/type`, or `agents/<uuid>` for a removal.
    pub path: String,
    /// True when an entry was removed while someone else edited it.
    pub removed_while_edited: bool,
    /// Every live value, the displayed one first (empty for removals).
    pub values: Vec<ConflictValue>,
}

impl From<Conflict> for ConflictInfo {
    fn from(c: Conflict) -> Self {
        ConflictInfo {
            path: c.path,
            removed_while_edited: c.kind == ConflictKind::RemovedWhileEdited,
            values: c
                .values
                .into_iter()
                .map(|v| ConflictValue {
                    value: v.value.into(),
                    device_id: v.device.to_string(),
                    seq: v.seq,
                    wall_clock_ms: v.wall_clock_ms,
                })
                .collect(),
        }
    }
}

/// A photo or file attached to a report.
#[derive(Debug, Clone, uniffi::Record)]
pub struct MediaView {
    pub entry_id: String,
    pub sha256: Option<String>,
    pub size: Option<i64>,
    pub mime_type: Option<String>,
    pub captured_at_ms: Option<i64>,
    /// Whether the file is on this device yet (read it with `read_media`;
    /// it is stored encrypted, so there is no path to hand out).
    pub stored_locally: bool,
}

/// What `wipe` removed.
#[derive(Debug, Clone, uniffi::Record)]
pub struct WipeResult {
    /// Signed changes that had not reached the station (lost: forced).
    pub unsynced_changes: u64,
    /// Media files that had not reached the station.
    pub unsynced_media: u64,
}

/// A report as it stands: lifecycle, kept conflicts, media, and the whole
/// report as canonical JSON (the same bytes on every replica that holds the
/// same changes) for the app's own decoding.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ReportView {
    pub id: String,
    pub lifecycle: String,
    pub created_by_device: Option<String>,
    pub conflicts: Vec<ConflictInfo>,
    pub media: Vec<MediaView>,
    /// The supervisor's comment with the latest return.
    pub return_comment: Option<String>,
    /// The 30-day internal review: due (incident + 30 days) and done.
    pub review_due_ms: Option<i64>,
    pub review_done_ms: Option<i64>,
    /// Fields edited after the first submission (shown as amendments).
    pub amended_paths: Vec<String>,
    pub json: String,
}

/// Keyset position in the report list, for the next page.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ListPosition {
    pub updated_ms: i64,
    pub updated_counter: u32,
    pub id: String,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct ReportListItem {
    pub id: String,
    pub lifecycle: String,
    pub occurred_start_ms: Option<i64>,
    pub updated_ms: i64,
    pub conflict_count: u32,
    /// Changes the station has not acknowledged yet.
    pub unsynced_count: u32,
    /// Pass as `after` to get the page after this row.
    pub position: ListPosition,
}

impl From<ReportSummary> for ReportListItem {
    fn from(s: ReportSummary) -> Self {
        let c = s.cursor();
        ReportListItem {
            id: s.id.to_string(),
            lifecycle: s.lifecycle.as_str().to_string(),
            occurred_start_ms: s.occurred_start_ms,
            updated_ms: s.updated_ms,
            conflict_count: s.conflict_count,
            unsynced_count: s.unsynced_count,
            position: ListPosition {
                updated_ms: c.updated_ms,
                updated_counter: c.updated_counter,
                id: c.id.to_string(),
            },
        }
    }
}

impl ListPosition {
    pub(crate) fn to_cursor(&self) -> Result<ListCursor> {
        Ok(ListCursor {
            updated_ms: self.updated_ms,
            updated_counter: self.updated_counter,
            id: parse_id("list position id", &self.id)?,
        })
    }
}

/// One value in a field's history, oldest first.
#[derive(Debug, Clone, uniffi::Record)]
pub struct HistoryItem {
    pub device_id: String,
    pub seq: u64,
    pub wall_clock_ms: i64,
    /// `set`, `add` or `remove`.
    pub action: String,
    pub value: Option<FieldValue>,
    /// Still a live value (not superseded).
    pub live: bool,
}

impl From<HistoryEntry> for HistoryItem {
    fn from(h: HistoryEntry) -> Self {
        HistoryItem {
            device_id: h.change.device.to_string(),
            seq: h.change.seq,
            wall_clock_ms: h.wall_clock_ms,
            action: h.action,
            value: h.value.map(Into::into),
            live: h.live,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncPhase {
    Devices,
    UploadMedia,
    Push,
    Pull,
    DownloadMedia,
    Done,
}

/// Items and bytes, done and total, of the current phase.
#[derive(Debug, Clone, Copy, uniffi::Record)]
pub struct SyncProgress {
    pub phase: SyncPhase,
    pub items_done: u64,
    pub items_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl From<Progress> for SyncProgress {
    fn from(p: Progress) -> Self {
        SyncProgress {
            phase: match p.phase {
                Phase::Devices => SyncPhase::Devices,
                Phase::UploadMedia => SyncPhase::UploadMedia,
                Phase::Push => SyncPhase::Push,
                Phase::Pull => SyncPhase::Pull,
                Phase::DownloadMedia => SyncPhase::DownloadMedia,
                Phase::Done => SyncPhase::Done,
            },
            items_done: p.items_done,
            items_total: p.items_total,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
        }
    }
}

#[derive(Debug, Clone, Copy, uniffi::Record)]
pub struct SyncSummary {
    pub media_uploaded: u64,
    pub media_bytes_sent: u64,
    /// Changes the station acknowledged, forwarded ones included.
    pub pushed: u64,
    /// Of those, partners' changes (handed over phone to phone) this
    /// device forwarded.
    pub forwarded: u64,
    /// Forwarded changes the station refused (their author's phone was
    /// revoked first): kept on this device, not sent again.
    pub forward_refused: u64,
    /// Forwarded changes the station refused for another reason: kept,
    /// tried again at the next sync.
    pub forward_set_aside: u64,
    pub pulled: u64,
    pub media_downloaded: u64,
    /// Where the witnesses this device requires stand (none required:
    /// none).
    pub witnessed: Option<WitnessStatusInfo>,
    /// The station was found restored from a backup in this sync (its log
    /// records it): what this device sent again. Worth telling the user.
    pub station_restored: Option<StationRestoreInfo>,
}

/// A station restore this device took in (docs/log.md).
#[derive(Debug, Clone, Copy, uniffi::Record)]
pub struct StationRestoreInfo {
    /// The log's size at the backup.
    pub restored_size: u64,
    /// The size of the tree this device held, which the station lost.
    pub held_size: u64,
    /// When the backup was made, ms since the epoch (the station's clock).
    pub backup_at_ms: i64,
    /// Changes this device marked to send again.
    pub resent: u64,
}

/// How far the witnesses this device requires have seen the station's log.
#[derive(Debug, Clone, Copy, uniffi::Record)]
pub struct WitnessStatusInfo {
    /// How many of the required witnesses must cosign.
    pub quorum: u32,
    /// The newest tree size they cosigned (0: none yet).
    pub witnessed_size: u64,
    /// This device's receipts not yet in a tree they cosigned.
    pub receipts_awaiting: u64,
}

impl From<fieldreport_core::store::WitnessStatus> for WitnessStatusInfo {
    fn from(w: fieldreport_core::store::WitnessStatus) -> Self {
        WitnessStatusInfo {
            quorum: w.quorum,
            witnessed_size: w.size,
            receipts_awaiting: w.receipts_awaiting,
        }
    }
}

impl From<SyncReport> for SyncSummary {
    fn from(r: SyncReport) -> Self {
        SyncSummary {
            media_uploaded: r.media_uploaded,
            media_bytes_sent: r.media_bytes_sent,
            pushed: r.pushed,
            forwarded: r.forwarded,
            forward_refused: r.forward_refused,
            forward_set_aside: r.forward_set_aside,
            pulled: r.pulled,
            media_downloaded: r.media_downloaded,
            witnessed: r.witnessed.map(Into::into),
            station_restored: r.station_restored.map(|s| StationRestoreInfo {
                restored_size: s.restored_size,
                held_size: s.held_size,
                backup_at_ms: s.backup_at_ms,
                resent: s.resent,
            }),
        }
    }
}

/// A report pushed to the station (supervisors' live feed).
#[derive(Debug, Clone, uniffi::Record)]
pub struct ReportEvent {
    pub report_id: String,
    /// `new` or `changed`.
    pub kind: String,
}

/// The station's receipt for one of this device's changes.
#[derive(Debug, Clone, uniffi::Record)]
pub struct LogReceiptInfo {
    pub device_id: String,
    pub seq: u64,
    /// The change's leaf index in the station's log.
    pub log_index: u64,
    /// When the station received it (ms since the epoch, its clock).
    pub received_at_ms: i64,
    /// The size of the checkpoint the inclusion proof leads to.
    pub tree_size: u64,
    /// The inclusion proof's hashes (base64, leaf side first).
    pub proof: Vec<String>,
}

impl From<fieldreport_core::store::StoredReceipt> for LogReceiptInfo {
    fn from(r: fieldreport_core::store::StoredReceipt) -> Self {
        LogReceiptInfo {
            device_id: r.change.device.to_string(),
            seq: r.change.seq,
            log_index: r.index,
            received_at_ms: r.received_at_ms,
            tree_size: r.tree_size,
            proof: r.proof,
        }
    }
}
