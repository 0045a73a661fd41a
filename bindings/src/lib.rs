//! `fieldreport-ffi`: the only uniffi crate. It owns nothing but the
//! boundary: thin, blocking wrappers over [`fieldreport_core`] that take and
//! return plain records, turn the core's rich errors into one small public
//! enum ([`FieldReportError`]) and turn panics into
//! [`FieldReportError::Internal`] instead of crashing the app.
//!
//! Every call blocks: apps call from a background thread (a coroutine on
//! `Dispatchers.IO`, a Swift `Task.detached`). No object holds an async
//! runtime, so dropping one from any thread is safe.

mod error;
mod store;
mod types;

pub use error::FieldReportError;
pub use store::{EventListener, FieldReportStore, SyncCancel, SyncListener};
pub use types::*;

uniffi::setup_scaffolding!();

/// Panics inside the library, so tests can prove a panic reaches the app as
/// [`FieldReportError::Internal`]. Only in debug builds.
#[cfg(debug_assertions)]
#[uniffi::export]
pub fn debug_trigger_panic() -> Result<(), FieldReportError> {
    error::guard(|| panic!("debug_trigger_panic"))
}

/// The library's version, for the app's about screen and bug reports.
/// 32 random bytes from the system's generator, for a new store key. The
/// app keeps them wrapped by a key in Android Keystore or the iOS Keychain
/// and passes them to `FieldReportStore.open`.
#[uniffi::export]
pub fn generate_store_key() -> Result<Vec<u8>, FieldReportError> {
    error::guard(|| Ok(fieldreport_core::store::StoreKey::generate()?.to_vec()))
}

#[uniffi::export]
pub fn library_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
