//! Sync with the station: wire types and the blocking sync client.

pub mod client;
pub mod tls;
pub mod wire;

pub use client::{CancelToken, NoProgress, Phase, Progress, SyncClient, SyncProgress, SyncReport};
pub use tls::StationPin;
