//! Device identity and signatures: each device's Ed25519 key pair, the
//! directory of known devices, and verification of changes from peers
//! (signatures, per-device-per-report hash chains), and (feature
//! `package`) evidence packages for the State's Attorney with their verifier.

pub mod keys;
#[cfg(feature = "package")]
pub mod package;
pub mod verify;

pub use keys::{new_person_secret, DeviceIdentity, DeviceRecord, Person};
pub use verify::{verify_batch, ChainLookup, VerifiedBatch};
