//! The core's error type. Messages name fields, change ids (device UUID and
//! sequence number) and limits, never values: no names, badge numbers or
//! narrative ever appear in an error or a log line.

use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- bad input from the app
    #[error("unknown field `{0}`")]
    UnknownField(String),
    #[error("unknown collection `{0}`")]
    UnknownCollection(String),
    #[error("field `{path}` expects {expected}")]
    WrongType {
        path: String,
        expected: &'static str,
    },
    #[error("field `{path}` is longer than {max} bytes")]
    TooLong { path: String, max: usize },
    #[error("field `{path}`: {reason}")]
    InvalidValue { path: String, reason: &'static str },
    #[error("field `{0}` is set by the system and cannot be edited")]
    ReadOnlyField(String),
    #[error("report {0} not found")]
    ReportNotFound(Uuid),
    #[error("entry {entry} not found in `{collection}`")]
    EntryNotFound { collection: String, entry: Uuid },
    #[error("entry {entry} already exists in `{collection}`")]
    EntryExists { collection: String, entry: Uuid },
    #[error("`{0}` has no conflict to resolve")]
    NoConflict(String),
    #[error("cannot submit: required fields missing: {}", .0.join(", "))]
    MissingRequired(Vec<String>),
    #[error("report is {state}; {action} is not allowed")]
    InvalidState {
        state: &'static str,
        action: &'static str,
    },
    #[error("media file cannot be read: {0}")]
    MediaUnreadable(std::io::ErrorKind),
    #[error("media {0} is not in the store")]
    MediaNotFound(String),
    #[error("this device has no identity yet (enroll first)")]
    NoIdentity,
    #[error("this device already has an identity")]
    IdentityExists,

    // --- changes from peers (a batch with one of these is refused whole)
    #[error("change {change}: malformed: {reason}")]
    MalformedChange { change: String, reason: String },
    #[error("change {change}: invalid operation: {source}")]
    InvalidOperation {
        change: String,
        #[source]
        source: Box<Error>,
    },
    #[error("change {change}: signature does not verify")]
    BadSignature { change: String },
    #[error("change {change}: from unknown device")]
    UnknownDevice { change: String },
    #[error("change {change}: hash chain broken ({reason})")]
    BrokenChain {
        change: String,
        reason: &'static str,
    },
    #[error("change {change}: not permitted: {reason}")]
    NotPermitted {
        change: String,
        reason: &'static str,
    },
    #[error("this device's person may not {0}")]
    NotYourRole(&'static str),
    #[error("change {change}: differs from the stored change with the same id")]
    Equivocation { change: String },

    // --- storage
    #[error("store schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("the store does not open with this key (wrong key, no key for an encrypted store, or not a store)")]
    WrongKey,
    #[error("bad store key: {reason}")]
    BadKey { reason: &'static str },
    #[error("this build has no store encryption (feature `sqlcipher`)")]
    EncryptionUnavailable,
    #[error("this store is not encrypted")]
    NotEncrypted,
    #[error("{changes} changes and {media} media files are not yet at the station")]
    UnsyncedWork { changes: u64, media: u64 },
    #[error("this store has been wiped")]
    Wiped,
    #[error("storage is full")]
    StorageFull,
    #[error("database error: {0}")]
    Database(rusqlite::Error),
    #[error("I/O error: {0}")]
    Io(std::io::ErrorKind),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("evidence package: {0}")]
    Package(String),
    #[error("operation cancelled")]
    Cancelled,

    // --- sync
    #[error("cannot reach the station: {0}")]
    Network(String),
    #[error("the station refused the request ({status} {code})")]
    Station { status: u16, code: String },
    #[error("the station does not accept this device's credential")]
    Unauthorized,
    #[error("this device is not enrolled with a station")]
    NotEnrolled,
    #[error(
        "the station presented a key other than the one pinned at enrollment; nothing was sent"
    )]
    PinMismatch,
    #[error("bad station pin: {reason}")]
    BadPin { reason: &'static str },
    /// The station's log is not one this device has seen extend: a smaller
    /// tree, a tree inconsistent with a checkpoint it signed before, or a
    /// checkpoint its log key did not sign (a station restored from an old
    /// copy, or one showing devices different histories). Nothing was
    /// sent, and the outbox is kept.
    #[error("the station's log is inconsistent with what this device saw: {0}")]
    StationLog(crate::tlog::LogError),
    /// A checkpoint handed to the device (not by the station) that is not
    /// one of this station's log: garbled, another log's, or not signed by
    /// its key. Nothing is held against the station.
    #[error("not a checkpoint of this station's log: {0}")]
    NotThisLog(crate::tlog::LogError),
    #[error("station URL refused: {reason}")]
    InsecureUrl { reason: &'static str },
    /// The witnesses a device is told to require are not a usable set.
    #[error("witnesses refused: {reason}")]
    BadWitnesses { reason: &'static str },
    /// The station's newest checkpoint cosigned by enough witnesses (as
    /// it counts them) has fewer verifying cosignatures of the witnesses
    /// this device requires: the station's witnesses are not this
    /// device's, or it holds cosignatures that do not verify.
    #[error("the station's witnessed checkpoint has {got} of the {needed} cosignatures this device requires")]
    WitnessQuorum { needed: u32, got: u32 },
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => Error::StorageFull,
            _ => Error::Database(e),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::StorageFull => Error::StorageFull,
            k => Error::Io(k),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
