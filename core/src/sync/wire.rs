//! JSON wire types of the station's HTTP API (`/v1`), shared by the sync
//! client and the station. Changes travel as their canonical bytes and
//! signature (base64), never re-encoded, so what is signed is what is sent.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crdt::Change;
use crate::error::{Error, Result};
use crate::evidence::{DeviceRecord, Person};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WireChange {
    /// Canonical body bytes, base64.
    #[cfg_attr(feature = "openapi", schema(format = Byte, min_length = 4))]
    pub body: String,
    /// Ed25519 signature, base64 (64 bytes: 86 characters and `==`).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9+/]{85}[AQgw]==$"))]
    pub signature: String,
}

impl WireChange {
    pub fn from_change(c: &Change) -> Self {
        WireChange {
            body: B64.encode(c.bytes()),
            signature: B64.encode(c.signature()),
        }
    }

    /// Decodes and structurally validates (the signature is checked when
    /// the change is applied).
    pub fn to_change(&self) -> Result<Change> {
        let malformed = |reason: &str| Error::MalformedChange {
            change: "?".into(),
            reason: reason.into(),
        };
        let body = B64
            .decode(&self.body)
            .map_err(|_| malformed("body is not base64"))?;
        let sig: [u8; 64] = B64
            .decode(&self.signature)
            .map_err(|_| malformed("signature is not base64"))?
            .try_into()
            .map_err(|_| malformed("signature is not 64 bytes"))?;
        Change::from_parts(body, sig)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollRequest {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub code: String,
    pub device_id: Uuid,
    /// Ed25519 public key, hex.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-fA-F]{64}$"))]
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    /// Bearer credential for this device (shown once; the station keeps a hash).
    pub credential: String,
    pub device: DeviceRecord,
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    pub station_id: String,
    /// When the credential stops being accepted unless renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_expires_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DevicesResponse {
    pub devices: Vec<DeviceRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushRequest {
    /// At most 1000 (the station's `MAX_PUSH_CHANGES`).
    #[cfg_attr(feature = "openapi", schema(max_items = 1000))]
    pub changes: Vec<WireChange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushResponse {
    pub applied: usize,
    pub duplicates: usize,
    /// The station's receipts for the changes of this push, new or held
    /// before: a checkpoint and, per change, its log index and inclusion
    /// proof in that tree (docs/log.md). Absent only when the station
    /// could not read them back (the phone then sends the batch again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PushLog>,
}

/// A push's receipts: one signed checkpoint, and each new change's place
/// in the tree it signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushLog {
    /// A C2SP signed note: the `tlog-checkpoint` text, a blank line, and
    /// the log key's signature line.
    pub checkpoint: String,
    pub receipts: Vec<LogReceipt>,
}

/// Where one change sits in the station's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogReceipt {
    pub device: Uuid,
    pub seq: u64,
    /// The change's leaf index in the log.
    pub index: u64,
    /// The station's receipt time, as the leaf holds it (ms).
    pub received_at_ms: i64,
    /// The RFC 6962 inclusion proof to the checkpoint's tree: base64
    /// hashes, leaf side first.
    pub proof: Vec<String>,
}

/// A device's report that the station's log is not the one it saw
/// (`POST /v1/log/alarm`): kept in the station's audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogAlarm {
    /// What the device found (no personal data: sizes and key names).
    pub problem: String,
    /// The newest checkpoint the device held (a signed note), if any.
    pub held: Option<String>,
}

/// A consistency proof between two sizes of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsistencyResponse {
    pub old_size: u64,
    pub new_size: u64,
    /// Base64 hashes (empty when the sizes are equal or the old one is 0).
    pub proof: Vec<String>,
}

/// The restores the station's log records (docs/log.md, "A station
/// restored from a backup"): each restore leaf with its inclusion proof in
/// the tree of `checkpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestoresResponse {
    /// The newest checkpoint (a signed note) the proofs lead to.
    pub checkpoint: String,
    pub restores: Vec<InclusionResponse>,
}

/// One leaf of the log with its inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InclusionResponse {
    pub index: u64,
    pub size: u64,
    /// The leaf's bytes, base64 (`fieldreport_core::tlog::Leaf`).
    pub leaf: String,
    pub proof: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PullResponse {
    /// Visible changes after the cursor, in station log order.
    pub changes: Vec<WireChange>,
    /// Pass as `after` to continue.
    pub next: i64,
    pub more: bool,
}

/// Header on a push: the device's wall clock when it sent the request
/// (ms since the epoch), so the station can flag a skewed clock.
pub const DEVICE_TIME_HEADER: &str = "x-fieldreport-device-time";

/// When the station received each change of a report, and the device
/// clocks it found skewed while receiving them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReceiptsResponse {
    pub report_id: Uuid,
    pub changes: Vec<Receipt>,
    pub clock_skew: Vec<ClockSkew>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Receipt {
    pub device: Uuid,
    pub seq: u64,
    /// The station's clock when the change arrived.
    pub received_at_ms: i64,
    /// The device's wall clock when it made the change, as it read it.
    pub device_clock_ms: i64,
}

/// A device whose clock differed from the station's by more than the
/// tolerance when it pushed changes of the report (latest observation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClockSkew {
    pub device: Uuid,
    /// Device clock minus station clock: positive = ahead.
    pub skew_ms: i64,
    pub observed_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportChangesResponse {
    pub changes: Vec<WireChange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MediaStatus {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]{64}$"))]
    pub sha256: String,
    /// Bytes the station holds (send the rest from this offset).
    pub received: u64,
    pub complete: bool,
}

/// Every 4xx/5xx response carries this body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Stable machine code, e.g. `bad_signature`, `unauthorized`.
    pub error: String,
    pub message: String,
}

/// A Server-Sent Event on `/v1/events` (event name `report`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportEvent {
    pub report_id: Uuid,
    /// Station log position of the newest change in the push.
    pub log_id: i64,
    /// `new` (first changes of the report) or `changed`.
    pub kind: String,
}

/// What the admin's enrollment command creates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentOffer {
    pub person: Person,
    pub code: String,
    pub expires_at_ms: i64,
}
