//! FieldReport station: the sync server devices enroll and sync with.
//!
//! - [`storage`]: the station store: one trait, its rules once
//!   (`storage::service`) over two SQL engines (SQLite, PostgreSQL);
//! - [`state`]: what the API and the dashboard share ([`AppState`]);
//! - [`api`]: the HTTP API (`/v1`), device authentication;
//! - [`dashboard`]: the supervisors' web pages (`/dashboard`);
//! - [`accounts`]: dashboard accounts and their signing devices;
//! - [`sessions`]: dashboard sessions and sign-in lockouts;
//! - [`audit`]: the audit entry every request gets;
//! - [`events`]: the live event stream to supervisors;
//! - [`oversight`]: 30-day reviews and the public counts;
//! - [`clock`]: the station's one source of "now" (injected in tests);
//! - [`config`]: configuration from a file and the environment;
//! - [`keys`]: the station key, which seals the dashboard's secrets;
//! - [`files`]: the data directory's files are the station user's only;
//! - [`tls`]: the station's certificate and the TLS listener;
//! - [`export`]: evidence packages for the State's Attorney;
//! - [`demo`]: the guided demo a newcomer runs;
//! - [`cli`]: the `fieldreport-station` command line.

pub mod accounts;
pub mod api;
pub mod attest;
pub mod audit;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dashboard;
#[cfg(feature = "demo")]
pub mod demo;
pub mod error;
pub mod events;
pub mod export;
pub mod files;
pub mod keys;
pub mod oversight;
pub mod sessions;
pub mod state;
pub mod storage;
pub mod tls;
pub mod witness;

use std::net::SocketAddr;
use std::sync::Arc;

pub use api::router;
pub use state::AppState;
pub use storage::sqlite::SqliteStorage;
pub use storage::StationStorage;

/// How a station talks to its clients.
#[derive(Debug, Clone)]
pub enum Transport {
    /// HTTPS with this certificate (what `serve` does unless told otherwise).
    Tls(Arc<tls::StationTls>),
    /// Plain HTTP, for a station behind a TLS-terminating proxy on the
    /// same machine. Devices refuse plain HTTP to any other host.
    PlainHttp,
}

/// A station serving on a bound listener, in the background.
pub struct RunningStation {
    pub addr: SocketAddr,
    pub state: AppState,
    /// The certificate, when serving HTTPS.
    pub tls: Option<Arc<tls::StationTls>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The TLS accept loop, which owns the socket.
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl RunningStation {
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub async fn stop(mut self) {
        self.state.shutdown.cancel();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        // The socket is closed once this returns: the address can be
        // served again at once.
        if let Some(t) = self.accept.take() {
            let _ = t.await;
        }
    }
}

/// How often the log seals audit rows written since the last push.
pub const LOG_SEAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Seals the audit rows of a quiet station into the log, every
/// [`LOG_SEAL_INTERVAL`], until `stop`.
fn spawn_log_sealer(storage: Arc<dyn StationStorage>, stop: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(LOG_SEAL_INTERVAL) => {
                    if let Err(e) = storage.seal_log().await {
                        tracing::warn!(error = %e, "sealing the audit log into the transparency log failed; retrying");
                    }
                }
            }
        }
    });
}

/// Runs axum on `listener` in the background until `stopped` resolves.
fn serve_until<L>(
    listener: L,
    app: axum::Router,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<std::io::Result<()>>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
    })
}

/// Serves `storage` on `listener` until stopped, with the station key of
/// its data directory (`keys/station.key`, made on first use).
pub async fn spawn(
    listener: tokio::net::TcpListener,
    storage: Arc<dyn StationStorage>,
    transport: Transport,
) -> std::io::Result<RunningStation> {
    let path = keys::default_path(&storage.data_dir());
    let key = keys::StationKey::open_for(&path, true, storage.as_ref())
        .await
        .map_err(std::io::Error::other)?;
    spawn_with_key(listener, storage, transport, Arc::new(key)).await
}

/// Serves `storage` on `listener` until stopped; `key` seals the
/// dashboard's secrets. Dashboard accounts an earlier build left in the
/// data directory are imported first.
pub async fn spawn_with_key(
    listener: tokio::net::TcpListener,
    storage: Arc<dyn StationStorage>,
    transport: Transport,
    key: Arc<keys::StationKey>,
) -> std::io::Result<RunningStation> {
    spawn_attested(listener, storage, transport, key, attest::Attestors::none()).await
}

/// [`spawn_with_key`], with `attestors` time-stamping and cosigning the
/// log's checkpoints in the background and in every export.
pub async fn spawn_attested(
    listener: tokio::net::TcpListener,
    storage: Arc<dyn StationStorage>,
    transport: Transport,
    key: Arc<keys::StationKey>,
    attestors: Arc<attest::Attestors>,
) -> std::io::Result<RunningStation> {
    accounts::prepare(storage.as_ref(), &key)
        .await
        .map_err(std::io::Error::other)?;
    // Whatever an older build stored before the log existed is logged
    // before the first request.
    storage.seal_log().await.map_err(std::io::Error::other)?;
    let addr = listener.local_addr()?;
    let mut state = AppState::new(storage.clone(), format!("station-{addr}"), key);
    state.attestors = attestors.clone();
    spawn_log_sealer(storage.clone(), state.shutdown.clone());
    attest::spawn_attester(attestors, storage.clone(), state.shutdown.clone());
    let app = router(state.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async move {
        let _ = rx.await;
    };
    let tls = match transport {
        Transport::Tls(t) => Some(t),
        Transport::PlainHttp => None,
    };
    let (task, accept) = match &tls {
        Some(t) => {
            let config = t.server_config().map_err(std::io::Error::other)?;
            let (listener, accept) =
                tls::TlsListener::new(listener, config, storage, state.shutdown.clone())?;
            (serve_until(listener, app, stopped), Some(accept))
        }
        None => (serve_until(listener, app, stopped), None),
    };
    Ok(RunningStation {
        addr,
        state,
        tls,
        shutdown: Some(tx),
        task: Some(task),
        accept,
    })
}
