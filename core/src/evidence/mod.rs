//! Device identity and signatures: each device's Ed25519 key pair, the
//! directory of known devices, and verification of changes from peers
//! (signatures, per-device-per-report hash chains).

pub mod keys;
pub mod verify;

pub use keys::{DeviceIdentity, DeviceRecord, Person};
pub use verify::{verify_batch, ChainLookup, VerifiedBatch};
