//! What every request handler shares: the storage, the event fan-out, the
//! station key, the dashboard's sessions and signing stores, the clock.
//! Both the API ([`crate::api`]) and the dashboard ([`crate::dashboard`])
//! take it; it imports neither.

use std::sync::Arc;

use fieldreport_core::sync::wire::ReportEvent;
use tokio::sync::broadcast;

use crate::accounts::Stores;
use crate::clock::Clock;
use crate::keys::StationKey;
use crate::sessions::Sessions;
use crate::storage::StationStorage;

#[derive(Clone)]
pub struct AppState {
    pub storage: Arc<dyn StationStorage>,
    /// (unit, event) for every report a push changed.
    pub events: broadcast::Sender<(String, ReportEvent)>,
    pub station_id: String,
    /// Whether this process sends its pushes' events itself (false when
    /// the storage engine fans them out to every process).
    pub local_events: bool,
    /// Ends open event streams when the station stops.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The dashboard's sessions and sign-in lockouts.
    pub sessions: Arc<Sessions>,
    /// The signing stores of the dashboard accounts in use.
    pub signing_stores: Arc<Stores>,
    /// Seals and opens the dashboard accounts' secrets.
    pub station_key: Arc<StationKey>,
    /// The storage's clock: the one "now" of this station.
    pub clock: Arc<dyn Clock>,
    /// Who time-stamps and cosigns the log's checkpoints.
    pub attestors: Arc<crate::attest::Attestors>,
}

impl AppState {
    /// The state of a station on `storage`; `station_key` seals the
    /// dashboard's secrets (see [`crate::keys`]).
    pub fn new(
        storage: Arc<dyn StationStorage>,
        station_id: String,
        station_key: Arc<StationKey>,
    ) -> Self {
        let (events, local_events) = match storage.shared_events() {
            Some(shared) => (shared, false),
            None => (broadcast::channel(1024).0, true),
        };
        AppState {
            clock: storage.clock(),
            storage,
            events,
            local_events,
            station_id,
            shutdown: tokio_util::sync::CancellationToken::new(),
            sessions: Arc::new(Sessions::new()),
            signing_stores: Arc::default(),
            station_key,
            attestors: crate::attest::Attestors::none(),
        }
    }
}
