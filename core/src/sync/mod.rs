//! Sync with the station: wire types and the station key pin (both
//! sides), and the blocking sync client (phones; feature `sync-client`).

#[cfg(feature = "sync-client")]
pub mod client;
pub mod pin;
#[cfg(feature = "sync-client")]
pub mod tls;
pub mod wire;

#[cfg(feature = "sync-client")]
pub use client::{
    CancelToken, NoProgress, Phase, Progress, RestoreSeen, SyncClient, SyncProgress, SyncReport,
};
pub use pin::StationPin;
