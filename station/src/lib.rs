//! FieldReport station: the sync server devices enroll and sync with.
//!
//! - [`storage`]: the station store behind one trait (SQLite engine here);
//! - [`api`]: the HTTP API (`/v1`), authentication, event stream;
//! - [`config`]: configuration from a file and the environment;
//! - [`export`]: evidence packages for the State's Attorney;
//! - [`demo`]: the guided demo a newcomer runs;
//! - [`cli`]: the `fieldreport-station` command line.

pub mod api;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod error;
pub mod export;
pub mod oversight;
pub mod storage;

use std::net::SocketAddr;
use std::sync::Arc;

pub use api::{router, AppState};
pub use storage::sqlite::SqliteStorage;
pub use storage::StationStorage;

/// A station serving on a bound listener, in the background.
pub struct RunningStation {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl RunningStation {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(mut self) {
        self.state.shutdown.cancel();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// Serves `storage` on `listener` until stopped.
pub async fn spawn(
    listener: tokio::net::TcpListener,
    storage: Arc<dyn StationStorage>,
) -> std::io::Result<RunningStation> {
    let addr = listener.local_addr()?;
    let state = AppState::new(storage, format!("station-{addr}"));
    let app = router(state.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    Ok(RunningStation {
        addr,
        state,
        shutdown: Some(tx),
        task: Some(task),
    })
}
