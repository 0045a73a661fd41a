//! The one public error enum apps see, converted from the core's rich
//! [`fieldreport_core::Error`]. Messages name fields, ids and limits only:
//! the core never puts names, badge numbers or narrative in an error, and
//! nothing here adds any.

use fieldreport_core::Error as CoreError;

#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum FieldReportError {
    /// The app passed something the report model refuses (unknown field,
    /// wrong type, too long, bad id, no such entry, no conflict there).
    #[error("invalid input: {reason}")]
    InvalidInput { reason: String },
    /// No report or media file with that id in this store.
    #[error("not found: {reason}")]
    NotFound { reason: String },
    /// The report's lifecycle does not allow this action now.
    #[error("not allowed: {reason}")]
    NotAllowed { reason: String },
    /// Submission refused: these required fields are empty.
    #[error("required fields missing: {}", fields.join(", "))]
    MissingRequired { fields: Vec<String> },
    /// The store has no device identity, or no station, yet: enroll first.
    #[error("not enrolled: {reason}")]
    NotEnrolled { reason: String },
    #[error("this store is already enrolled")]
    AlreadyEnrolled,
    /// The station could not be reached (retried with backoff first).
    #[error("network: {reason}")]
    Network { reason: String },
    /// The station no longer accepts this device's credential.
    #[error("the station does not accept this device's credential")]
    Unauthorized,
    /// The station refused the request; `code` is its machine-readable reason.
    #[error("the station refused the request ({status} {code})")]
    Station { status: u16, code: String },
    /// A file to attach could not be read.
    #[error("media file cannot be read: {reason}")]
    MediaUnreadable { reason: String },
    /// Changes received from elsewhere failed verification; nothing of the
    /// batch was applied.
    #[error("rejected changes: {reason}")]
    Rejected { reason: String },
    #[error("the device storage is full")]
    StorageFull,
    /// The store could not be read or written; it is left as it was.
    #[error("storage: {reason}")]
    Storage { reason: String },
    #[error("cancelled")]
    Cancelled,
    /// The key does not open this store. Nothing was changed.
    #[error("the key does not open this store")]
    WrongKey,
    /// `wipe` refused: this much has not reached the station yet.
    #[error("{changes} changes and {media} media files are not yet at the station")]
    UnsyncedWork { changes: u64, media: u64 },
    /// The station presented a TLS key other than the one pinned at
    /// enrollment (an impostor, or a station whose key was replaced).
    /// Nothing was sent; the work stays on the device.
    #[error("the station's key is not the pinned one")]
    StationPinMismatch,
    /// The station shows a log that does not extend the one this device
    /// saw (restored from an older copy, forked, or signed by another
    /// key): nothing more was sent, the outbox is kept, and the station's
    /// audit was told. Show it to the officer and their supervisor.
    #[error("the station's log is inconsistent: {reason}")]
    StationLogInconsistent { reason: String },
    /// The station's witnessed checkpoint lacks cosignatures of the
    /// witnesses this device requires (`set_required_witnesses`): the
    /// station's witnesses are not this device's. Everything was synced;
    /// the receipts stay unwitnessed.
    #[error("the station's witnessed checkpoint has {got} of the {needed} cosignatures required")]
    WitnessQuorumNotMet { needed: u32, got: u32 },
    /// The store was wiped; open a new one.
    #[error("this store has been wiped")]
    Wiped,
    /// A bug in the library (a Rust panic, caught at the boundary). The
    /// store is still consistent: every write is one transaction.
    #[error("internal error")]
    Internal,
}

impl From<CoreError> for FieldReportError {
    fn from(e: CoreError) -> Self {
        let reason = e.to_string();
        match e {
            CoreError::UnknownField(_)
            | CoreError::UnknownCollection(_)
            | CoreError::WrongType { .. }
            | CoreError::TooLong { .. }
            | CoreError::InvalidValue { .. }
            | CoreError::ReadOnlyField(_)
            | CoreError::EntryNotFound { .. }
            | CoreError::EntryExists { .. }
            | CoreError::NoConflict(_)
            | CoreError::BadKey { .. }
            | CoreError::BadPin { .. }
            | CoreError::InsecureUrl { .. }
            | CoreError::NotThisLog(_)
            | CoreError::BadWitnesses { .. } => FieldReportError::InvalidInput { reason },
            CoreError::ReportNotFound(_) | CoreError::MediaNotFound(_) => {
                FieldReportError::NotFound { reason }
            }
            CoreError::InvalidState { .. }
            | CoreError::NotYourRole(_)
            | CoreError::NotPermitted { .. }
            | CoreError::NotEncrypted
            | CoreError::EncryptionUnavailable => FieldReportError::NotAllowed { reason },
            CoreError::WrongKey => FieldReportError::WrongKey,
            CoreError::UnsyncedWork { changes, media } => {
                FieldReportError::UnsyncedWork { changes, media }
            }
            CoreError::Wiped => FieldReportError::Wiped,
            CoreError::MissingRequired(fields) => FieldReportError::MissingRequired { fields },
            CoreError::NoIdentity | CoreError::NotEnrolled => {
                FieldReportError::NotEnrolled { reason }
            }
            CoreError::IdentityExists => FieldReportError::AlreadyEnrolled,
            CoreError::MediaUnreadable(_) => FieldReportError::MediaUnreadable { reason },
            CoreError::MalformedChange { .. }
            | CoreError::InvalidOperation { .. }
            | CoreError::BadSignature { .. }
            | CoreError::UnknownDevice { .. }
            | CoreError::BrokenChain { .. }
            | CoreError::Equivocation { .. } => FieldReportError::Rejected { reason },
            CoreError::StorageFull => FieldReportError::StorageFull,
            CoreError::SchemaTooNew { .. }
            | CoreError::Database(_)
            | CoreError::Io(_)
            | CoreError::Corrupt(_)
            | CoreError::Package(_) => FieldReportError::Storage { reason },
            CoreError::Cancelled => FieldReportError::Cancelled,
            CoreError::Network(_) => FieldReportError::Network { reason },
            CoreError::Station { status, code } => FieldReportError::Station { status, code },
            CoreError::Unauthorized => FieldReportError::Unauthorized,
            CoreError::PinMismatch => FieldReportError::StationPinMismatch,
            CoreError::StationLog(e) => FieldReportError::StationLogInconsistent {
                reason: e.to_string(),
            },
            CoreError::WitnessQuorum { needed, got } => {
                FieldReportError::WitnessQuorumNotMet { needed, got }
            }
        }
    }
}

pub type Result<T, E = FieldReportError> = std::result::Result<T, E>;

/// Runs one exported call, turning a panic into [`FieldReportError::Internal`]
/// so that it reaches Kotlin and Swift as a typed exception. The panic's
/// message is not passed on: it could quote data.
pub(crate) fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or(Err(FieldReportError::Internal))
}
