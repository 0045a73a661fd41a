//! FieldReport core: everything that is not FFI or the HTTP server.
//!
//! - [`model`]: the typed incident report, its schema and limits;
//! - [`crdt`]: the signed operation log and its conflict-keeping merge;
//! - [`evidence`]: device keys, signatures and hash-chain verification;
//! - [`store`]: the device store (SQLite) and media store;
//! - `timestamp` (feature `package`): RFC 3161 time-stamps of log
//!   checkpoints;
//! - [`tlog`]: the transparency log's formats and proofs;
//! - [`schema`]: the migration runner the device store and both station
//!   engines share.
//!
//! The same code validates and merges on the phone and on the station, so
//! both always agree on what a report says.

pub mod crdt;
pub mod error;
pub mod evidence;
pub mod model;
pub mod schema;
pub mod store;
pub mod sync;
#[cfg(feature = "package")]
pub mod timestamp;
pub mod tlog;

pub use crdt::{Change, ChangeId, Edit};
pub use error::{Error, Result};
pub use evidence::{DeviceIdentity, DeviceRecord, Person};
pub use model::{LifecycleState, Report, Role, Value};
pub use store::{ListQuery, MediaMeta, Origin, Store};
