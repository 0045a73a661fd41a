//! The PostgreSQL engine: several station processes share one database
//! (and one media directory, on shared storage). SQL only: the rules are
//! in [`super::service`].
//!
//! - **Connections** come from an async pool (`deadpool-postgres`): a
//!   connection the server dropped (a restart) is replaced on next use, so
//!   requests fail with 503 (devices retry) while the database is away and
//!   succeed once it is back, without restarting the station. TLS to the
//!   database when the station has a CA for it (`database_ca`), and then
//!   always: a server that offers no TLS is refused.
//! - **Log order.** Every push takes one transaction-level advisory lock
//!   before it numbers its changes and holds it until commit, so log ids
//!   are assigned in commit order: a pull that has seen id N can never miss
//!   a change with a lower id committed later. Pulls read in one
//!   REPEATABLE READ snapshot, so a page and the log head agree.
//! - **Events** fan out through `NOTIFY fieldreport_events` sent inside the
//!   push transaction (delivered on commit); every process LISTENs on its
//!   own connection (reconnecting after a loss) and feeds its local event
//!   stream.
//! - **Media** uploads of one file are serialised across processes by an
//!   advisory lock on its hash.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use fieldreport_core::crdt::{Change, ChangeId, Hash};
use fieldreport_core::sync::wire::{ClockSkew, ReportEvent};
use tokio::sync::broadcast;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, NoTls, Row, Socket};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::common::with_person_secret;
use super::engine::*;
use super::service::Service;
use super::{Attestation, AttestationKind, AuditEntry, Counts, DashboardAccount};
use crate::clock::{Clock, SystemClock};
use crate::error::{Result, StationError};
use fieldreport_core::schema::Migrations;

/// This engine's schema steps, `station/migrations/postgres/NNNN_name.sql`; `schema_version` records how many ran.
pub const MIGRATIONS: Migrations = Migrations::new(&[
    include_str!("../../migrations/postgres/0001_initial.sql"),
    include_str!("../../migrations/postgres/0002_clock_skew.sql"),
    include_str!("../../migrations/postgres/0003_audit_log.sql"),
    include_str!("../../migrations/postgres/0004_credential_expiry.sql"),
    include_str!("../../migrations/postgres/0005_dashboard_accounts.sql"),
    include_str!("../../migrations/postgres/0006_settings.sql"),
    include_str!("../../migrations/postgres/0007_transparency_log.sql"),
    include_str!("../../migrations/postgres/0008_log_attestations.sql"),
]);

/// Advisory lock keys (arbitrary, fixed).
const LOCK_MIGRATE: i64 = 0x4652_0001;
const LOCK_LOG: i64 = 0x4652_0002;
/// Audit inserts hold it shared, the log's sealer exclusive: when the
/// sealer reads, no audit row with a lower id is still uncommitted.
const LOCK_AUDIT: i64 = 0x4652_0003;
/// First key of the two-key media locks (the second is the hash's).
const LOCK_MEDIA_CLASS: i32 = 0x4652;
const CHANNEL: &str = "fieldreport_events";
/// Connections per station process.
const CONNECTIONS: usize = 8;
/// How long a request waits for a connection (or to make one) before it is
/// answered 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The station's storage on PostgreSQL.
pub type PostgresStorage = Service<PostgresEngine>;

impl Service<PostgresEngine> {
    /// Connects to `url` (creating the schema if needed) with media files
    /// under `data` (shared by every process on the database).
    pub fn open(url: &str, data: &Path) -> Result<PostgresStorage> {
        Self::open_with(url, data, SystemClock::shared()?, None)
    }

    /// Like [`PostgresStorage::open`], judging time by `clock`.
    pub fn open_with_clock(
        url: &str,
        data: &Path,
        clock: Arc<dyn Clock>,
    ) -> Result<PostgresStorage> {
        Self::open_with(url, data, clock, None)
    }

    /// Like [`PostgresStorage::open`], judging time by `clock`, with TLS to
    /// the database checked against the CA certificates in `ca` (PEM).
    pub fn open_with(
        url: &str,
        data: &Path,
        clock: Arc<dyn Clock>,
        ca: Option<&Path>,
    ) -> Result<PostgresStorage> {
        crate::files::open_data_dir(data)?;
        Service::new(PostgresEngine::open(url, ca)?, data, clock)
    }
}

/// How the station reaches the database.
#[derive(Clone)]
enum DbTls {
    Plain,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl DbTls {
    fn new(config: &tokio_postgres::Config, ca: Option<&Path>) -> Result<DbTls> {
        let Some(ca) = ca else {
            if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
                return Err(StationError::Unavailable(
                    "the database URL requires TLS (sslmode=require): give the database's CA \
                     certificate (database_ca)"
                        .into(),
                ));
            }
            return Ok(DbTls::Plain);
        };
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| {
            StationError::Unavailable(format!("cannot read database_ca {}: {e}", ca.display()))
        })?;
        for cert in certs {
            let cert = cert.map_err(|e| {
                StationError::Unavailable(format!("database_ca {}: {e}", ca.display()))
            })?;
            roots.add(cert).map_err(|e| {
                StationError::Unavailable(format!("database_ca {}: {e}", ca.display()))
            })?;
        }
        if roots.is_empty() {
            return Err(StationError::Unavailable(format!(
                "database_ca {} holds no certificate",
                ca.display()
            )));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|_| StationError::Internal("TLS configuration".into()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(DbTls::Rustls(
            tokio_postgres_rustls::MakeRustlsConnect::new(tls),
        ))
    }

    fn manager(&self, config: tokio_postgres::Config) -> Manager {
        let mc = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        match self {
            DbTls::Plain => Manager::from_config(config, NoTls, mc),
            DbTls::Rustls(t) => Manager::from_config(config, t.clone(), mc),
        }
    }
}

/// A connection outside the pool (migrations, the event listener), its
/// connection task sending what the server says unasked to `messages`.
async fn connect(
    config: &tokio_postgres::Config,
    tls: &DbTls,
    messages: Option<tokio::sync::mpsc::UnboundedSender<AsyncMessage>>,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
    async fn drive<T>(
        config: &tokio_postgres::Config,
        tls: T,
        messages: Option<tokio::sync::mpsc::UnboundedSender<AsyncMessage>>,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)>
    where
        T: MakeTlsConnect<Socket>,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        // Connection errors name the server, never data: safe to show.
        let (client, mut conn) = config
            .connect(tls)
            .await
            .map_err(|e| StationError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        let task = tokio::spawn(async move {
            while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                match m {
                    Ok(m) => {
                        if let Some(tx) = &messages {
                            let _ = tx.send(m);
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        Ok((client, task))
    }
    match tls {
        DbTls::Plain => drive(config, NoTls, messages).await,
        DbTls::Rustls(t) => drive(config, t.clone(), messages).await,
    }
}

/// Runs `f` to completion on a runtime of its own (opening is blocking,
/// and may happen inside or outside a runtime).
fn run_apart<T: Send>(f: impl std::future::Future<Output = Result<T>> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(f)
        })
        .join()
        .map_err(|_| StationError::Internal("database set-up thread failed".into()))?
    })
}

fn db(e: tokio_postgres::Error) -> StationError {
    // The server's message may quote values; keep only the SQLSTATE.
    match e.code().map(|c| c.code()) {
        // Connection exceptions, operator intervention (a shutdown or
        // restart), serialization failures and deadlocks, too many
        // connections, a cancelled statement: the request may be retried.
        Some(code)
            if code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("40")
                || code == "53300"
                || code == "57014" =>
        {
            tracing::warn!(sqlstate = code, "postgres: transient error");
            StationError::Unavailable("the database is unavailable; retry".into())
        }
        Some(code) => {
            tracing::error!(sqlstate = code, "postgres error");
            StationError::Internal(format!("postgres error {code}"))
        }
        // No SQLSTATE: the connection (refused, lost, or its TLS refused).
        // Connection errors name the server, never data.
        None => {
            tracing::warn!(error = %e, "postgres: no connection");
            StationError::Unavailable("the database connection failed; retry".into())
        }
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StationError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db(e),
        _ => StationError::Unavailable("no database connection; retry".into()),
    }
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

pub struct PostgresEngine {
    pool: Pool,
    events: broadcast::Sender<(String, ReportEvent)>,
    /// Stops the event listener.
    closed: CancellationToken,
}

impl Drop for PostgresEngine {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl PostgresEngine {
    /// Connects (migrating the schema first) and starts the event listener.
    pub fn open(url: &str, ca: Option<&Path>) -> Result<PostgresEngine> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|_| StationError::Unavailable("the database URL does not parse".into()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if ca.is_some() {
            // With a CA, TLS or nothing: `prefer` would let whoever sits on
            // the path answer "no TLS" and read the traffic.
            if config.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
                return Err(StationError::Unavailable(
                    "database_ca is given but the database URL says sslmode=disable".into(),
                ));
            }
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let tls = DbTls::new(&config, ca)?;
        run_apart(migrate(&config, &tls))?;
        let pool = Pool::builder(tls.manager(config.clone()))
            .max_size(CONNECTIONS)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|_| StationError::Internal("database pool".into()))?;
        let (events, _) = broadcast::channel(1024);
        let closed = CancellationToken::new();
        spawn_listener(config, tls, events.clone(), closed.clone());
        Ok(PostgresEngine {
            pool,
            events,
            closed,
        })
    }

    async fn conn(&self) -> Result<Object> {
        self.pool.get().await.map_err(pool_error)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let c = self.conn().await?;
        let st = c.prepare_cached(sql).await.map_err(db)?;
        c.query(&st, params).await.map_err(db)
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Row>> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64> {
        let c = self.conn().await?;
        let st = c.prepare_cached(sql).await.map_err(db)?;
        c.execute(&st, params).await.map_err(db)
    }
}

async fn migrate(config: &tokio_postgres::Config, tls: &DbTls) -> Result<()> {
    let (mut c, _task) = connect(config, tls, None).await?;
    let tx = c.transaction().await.map_err(db)?;
    // Two processes starting together: one migrates, the other waits.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_MIGRATE])
        .await
        .map_err(db)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .await
        .map_err(db)?;
    let found: i32 = tx
        .query_opt("SELECT version FROM schema_version", &[])
        .await
        .map_err(db)?
        .map(|r| r.get(0))
        .unwrap_or(0);
    // All pending steps in this one transaction, under the lock: DDL is
    // transactional here, so a failed step leaves the schema as it was.
    for step in MIGRATIONS.pending(i64::from(found))? {
        tx.batch_execute(step.sql).await.map_err(db)?;
    }
    let rows = tx
        .query(
            "SELECT device_id, record FROM devices WHERE record NOT LIKE '%\"person_secret\"%'",
            &[],
        )
        .await
        .map_err(db)?;
    for r in rows {
        let device: Uuid = r.get(0);
        if let Some(json) = with_person_secret(&r.get::<_, String>(1))? {
            tx.execute(
                "UPDATE devices SET record = $1 WHERE device_id = $2",
                &[&json, &device],
            )
            .await
            .map_err(db)?;
        }
    }
    tx.execute("DELETE FROM schema_version", &[])
        .await
        .map_err(db)?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES ($1)",
        &[&(MIGRATIONS.current() as i32)],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

/// LISTENs on a connection of its own, on a thread of its own, and feeds
/// `events`; reconnects after a lost connection (a device that missed
/// events catches up by pulling).
fn spawn_listener(
    config: tokio_postgres::Config,
    tls: DbTls,
    events: broadcast::Sender<(String, ReportEvent)>,
    closed: CancellationToken,
) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            tracing::error!("postgres event listener: no runtime");
            return;
        };
        rt.block_on(async move {
            while !closed.is_cancelled() {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                match connect(&config, &tls, Some(tx)).await {
                    Ok((client, task)) => {
                        if client
                            .batch_execute(&format!("LISTEN {CHANNEL}"))
                            .await
                            .is_ok()
                        {
                            loop {
                                tokio::select! {
                                    _ = closed.cancelled() => return,
                                    m = rx.recv() => match m {
                                        Some(AsyncMessage::Notification(n)) => {
                                            if let Ok(ev) = serde_json::from_str::<(String, ReportEvent)>(n.payload()) {
                                                let _ = events.send(ev);
                                            }
                                        }
                                        Some(_) => {}
                                        None => break,
                                    },
                                }
                            }
                        }
                        task.abort();
                        tracing::warn!("postgres event listener disconnected; reconnecting");
                    }
                    Err(e) => tracing::warn!(error = %e, "postgres event listener cannot connect"),
                }
                tokio::select! {
                    _ = closed.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    });
}

/// SQL for the reports a device may see, its parameters numbered from
/// `first` (person key, is supervisor, unit).
fn visible(first: usize) -> String {
    format!(
        "(SELECT report_id FROM report_access WHERE person_key = ${p}
          UNION SELECT report_id FROM reports WHERE ${s} AND unit = ${u})",
        p = first,
        s = first + 1,
        u = first + 2
    )
}

const ACCOUNT_COLUMNS: &str =
    "star_number, device_id, password_hash, totp_sealed, store_key_sealed, updated_at";

fn account_row(r: &Row) -> DashboardAccount {
    DashboardAccount {
        star_number: r.get(0),
        device_id: r.get(1),
        password_hash: r.get(2),
        totp_sealed: r.get(3),
        store_key_sealed: r.get(4),
        updated_at: r.get(5),
    }
}

const DEVICE_COLUMNS: &str = "record, enrolled_at, revoked_at, credential_expires_at";

fn device_row(r: &Row) -> DeviceRow {
    DeviceRow {
        record: r.get(0),
        enrolled_at: r.get(1),
        revoked_at: r.get(2),
        credential_expires_at: r.get(3),
    }
}

fn media_row(r: &Row) -> MediaRow {
    MediaRow {
        total: r.get::<_, i64>(0) as u64,
        received: r.get::<_, i64>(1) as u64,
        complete: r.get(2),
    }
}

const AUDIT_RANGE: &str = "SELECT id, at_ms, actor, action, target, outcome FROM audit_log
     WHERE id >= $1 AND id <= $2 ORDER BY id";
const LOG_HASHES: &str = "SELECT idx, hash FROM log_hashes WHERE idx = ANY($1)";

fn audit_row(r: &Row) -> AuditEntry {
    AuditEntry {
        id: r.get(0),
        at_ms: r.get(1),
        actor: r.get(2),
        action: r.get(3),
        target: r.get(4),
        outcome: r.get(5),
    }
}

/// The hashes of `rows` (idx, hash) in the order of `idx`.
fn hashes_in_order(idx: &[i64], rows: Vec<Row>) -> Result<Vec<Hash>> {
    let by: HashMap<i64, Vec<u8>> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    idx.iter()
        .map(|i| {
            hash_column(
                by.get(i)
                    .cloned()
                    .ok_or_else(|| StationError::Internal("log hash missing".into()))?,
            )
        })
        .collect()
}

fn stored_change(r: &Row) -> Result<StoredChange> {
    Ok(StoredChange {
        change: decode_change(r.get(0), r.get(1))?,
        received_at: r.get(2),
    })
}

#[async_trait]
impl Engine for PostgresEngine {
    async fn begin(&self, _kind: TxKind) -> Result<Box<dyn WriteTx>> {
        // Owned by the transaction before `BEGIN` is sent: cancelled at any
        // point, the connection is closed, never pooled mid-transaction.
        let tx = PgTx {
            conn: Some(self.conn().await?),
        };
        tx.c()?.batch_execute("BEGIN").await.map_err(db)?;
        Ok(Box::new(tx))
    }

    async fn insert_code(
        &self,
        code_hash: Vec<u8>,
        person: String,
        created_at: i64,
        expires_at: i64,
    ) -> Result<()> {
        self.execute(
            "INSERT INTO enrollment_codes (code_hash, person, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            &[&code_hash, &person, &created_at, &expires_at],
        )
        .await?;
        Ok(())
    }

    async fn device_by_credential(&self, credential_hash: Vec<u8>) -> Result<Option<DeviceRow>> {
        Ok(self
            .query_opt(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE credential_hash = $1"),
                &[&credential_hash],
            )
            .await?
            .as_ref()
            .map(device_row))
    }

    async fn device(&self, device: Uuid) -> Result<Option<DeviceRow>> {
        Ok(self
            .query_opt(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = $1"),
                &[&device],
            )
            .await?
            .as_ref()
            .map(device_row))
    }

    async fn set_credential_hash(&self, device: Uuid, credential_hash: Vec<u8>) -> Result<bool> {
        Ok(self
            .execute(
                "UPDATE devices SET credential_hash = $1 WHERE device_id = $2",
                &[&credential_hash, &device],
            )
            .await?
            > 0)
    }

    async fn set_credential_expiry(&self, device: Uuid, expires_at: i64) -> Result<bool> {
        Ok(self
            .execute(
                "UPDATE devices SET credential_expires_at = $1 WHERE device_id = $2",
                &[&expires_at, &device],
            )
            .await?
            > 0)
    }

    async fn revoke(&self, device: Uuid, now: i64) -> Result<bool> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(db)?;
        // Under the log lock, ordered with every push: a push either
        // committed before (its changes stay valid) or sees the
        // revocation. The time recorded is after every receipt of the
        // device's changes, even when this process's clock is behind the
        // one that received them.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_LOG])
            .await
            .map_err(db)?;
        let n = tx
            .execute(
                "UPDATE devices SET revoked_at = GREATEST($1,
                    (SELECT MAX(received_at) + 1 FROM changes WHERE device_id = $2))
                 WHERE device_id = $2 AND revoked_at IS NULL",
                &[&now, &device],
            )
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(n > 0)
    }

    async fn device_records(&self) -> Result<Vec<String>> {
        Ok(self
            .query(
                "SELECT record FROM devices ORDER BY enrolled_at, device_id",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn directory_rows(&self, who: &Visibility, me: Uuid) -> Result<Vec<(String, bool)>> {
        let sql = format!(
            "SELECT record, device_id = $4 OR device_id IN
               (SELECT device_id FROM changes WHERE report_id IN {})
             FROM devices ORDER BY enrolled_at, device_id",
            visible(1)
        );
        Ok(self
            .query(&sql, &[&who.person_key, &who.supervisor, &who.unit, &me])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn dashboard_account(&self, star_number: &str) -> Result<Option<DashboardAccount>> {
        Ok(self
            .query_opt(
                &format!("SELECT {ACCOUNT_COLUMNS} FROM dashboard_accounts WHERE star_number = $1"),
                &[&star_number],
            )
            .await?
            .as_ref()
            .map(account_row))
    }

    async fn dashboard_accounts(&self) -> Result<Vec<DashboardAccount>> {
        Ok(self
            .query(
                &format!("SELECT {ACCOUNT_COLUMNS} FROM dashboard_accounts ORDER BY star_number"),
                &[],
            )
            .await?
            .iter()
            .map(account_row)
            .collect())
    }

    async fn put_dashboard_account(&self, a: DashboardAccount, replace: bool) -> Result<bool> {
        let conflict = if replace {
            "DO UPDATE SET device_id = excluded.device_id, password_hash = excluded.password_hash,
               totp_sealed = excluded.totp_sealed, store_key_sealed = excluded.store_key_sealed,
               updated_at = excluded.updated_at"
        } else {
            "DO NOTHING"
        };
        Ok(self
            .execute(
                &format!(
                    "INSERT INTO dashboard_accounts (star_number, device_id, password_hash, totp_sealed, store_key_sealed, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (star_number) {conflict}"
                ),
                &[
                    &a.star_number,
                    &a.device_id,
                    &a.password_hash,
                    &a.totp_sealed,
                    &a.store_key_sealed,
                    &a.updated_at,
                ],
            )
            .await?
            > 0)
    }

    async fn forget_sealed(&self) -> Result<Vec<Uuid>> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(db)?;
        let devices = tx
            .query(
                "SELECT device_id FROM dashboard_accounts ORDER BY star_number",
                &[],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.execute("DELETE FROM dashboard_accounts", &[])
            .await
            .map_err(db)?;
        tx.execute(
            "DELETE FROM station_settings WHERE name = 'station_key_check'",
            &[],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(devices)
    }

    async fn setting(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .query_opt(
                "SELECT value FROM station_settings WHERE name = $1",
                &[&name],
            )
            .await?
            .map(|r| r.get(0)))
    }

    async fn put_setting_once(&self, name: &str, value: Vec<u8>) -> Result<Vec<u8>> {
        self.execute(
            "INSERT INTO station_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &value],
        )
        .await?;
        self.query_opt(
            "SELECT value FROM station_settings WHERE name = $1",
            &[&name],
        )
        .await?
        .map(|r| r.get(0))
        .ok_or_else(|| StationError::Internal("setting vanished".into()))
    }

    async fn pull_rows(
        &self,
        who: &Visibility,
        after: i64,
        limit: u32,
    ) -> Result<(Vec<(i64, Change)>, i64)> {
        let mut c = self.conn().await?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db)?;
        let sql = format!(
            "SELECT id, body, signature FROM changes
             WHERE id > $1 AND report_id IN {}
             ORDER BY id LIMIT $2",
            visible(3)
        );
        let rows = tx
            .query(
                &sql,
                &[
                    &after,
                    &(limit as i64),
                    &who.person_key,
                    &who.supervisor,
                    &who.unit,
                ],
            )
            .await
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push((r.get(0), decode_change(r.get(1), r.get(2))?));
        }
        let head: i64 = tx
            .query_one("SELECT COALESCE(MAX(id), 0) FROM changes", &[])
            .await
            .map_err(db)?
            .get(0);
        tx.commit().await.map_err(db)?;
        Ok((out, head))
    }

    async fn is_visible(&self, who: &Visibility, report: Uuid) -> Result<bool> {
        let sql = format!("SELECT 1 WHERE $1 IN {}", visible(2));
        Ok(self
            .query_opt(
                &sql,
                &[&report, &who.person_key, &who.supervisor, &who.unit],
            )
            .await?
            .is_some())
    }

    async fn report_changes(&self, report: Uuid) -> Result<Vec<StoredChange>> {
        self.query(
            "SELECT body, signature, received_at FROM changes WHERE report_id = $1 ORDER BY id",
            &[&report],
        )
        .await?
        .iter()
        .map(stored_change)
        .collect()
    }

    async fn report_json(&self, report: Uuid) -> Result<Option<String>> {
        Ok(self
            .query_opt("SELECT json FROM reports WHERE report_id = $1", &[&report])
            .await?
            .map(|r| r.get(0)))
    }

    async fn visible_report_jsons(&self, who: &Visibility) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT json FROM reports WHERE report_id IN {} ORDER BY updated_ms DESC",
            visible(1)
        );
        Ok(self
            .query(&sql, &[&who.person_key, &who.supervisor, &who.unit])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn all_report_jsons(&self) -> Result<Vec<String>> {
        Ok(self
            .query("SELECT json FROM reports ORDER BY report_id", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn clock_skew(&self, report: Uuid) -> Result<Vec<ClockSkew>> {
        Ok(self
            .query(
                "SELECT device_id, skew_ms, observed_at FROM clock_skew WHERE report_id = $1 ORDER BY device_id",
                &[&report],
            )
            .await?
            .iter()
            .map(|r| ClockSkew {
                device: r.get(0),
                skew_ms: r.get(1),
                observed_at_ms: r.get(2),
            })
            .collect())
    }

    async fn record_clock_skew(
        &self,
        device: Uuid,
        reports: Vec<Uuid>,
        skew_ms: i64,
        now: i64,
    ) -> Result<()> {
        self.execute(
            "INSERT INTO clock_skew (report_id, device_id, skew_ms, observed_at)
             SELECT r, $2, $3, $4 FROM UNNEST($1::uuid[]) AS r
             ON CONFLICT (report_id, device_id) DO UPDATE SET skew_ms = excluded.skew_ms, observed_at = excluded.observed_at",
            &[&reports, &device, &skew_ms, &now],
        )
        .await?;
        Ok(())
    }

    async fn export_rows(&self, reports: &[Uuid]) -> Result<ExportRows> {
        let mut c = self.conn().await?;
        // One snapshot for the whole package.
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db)?;
        let mut out = ExportRows::default();
        for &report in reports {
            let changes = tx
                .query(
                    "SELECT body, signature, received_at FROM changes WHERE report_id = $1 ORDER BY id",
                    &[&report],
                )
                .await
                .map_err(db)?
                .iter()
                .map(stored_change)
                .collect::<Result<Vec<_>>>()?;
            out.reports.push((report, changes));
        }
        let reports = reports.to_vec();
        for r in tx
            .query(
                "SELECT m.total, m.received, m.complete, m.sha256 FROM media m
                 JOIN media_refs r ON r.sha256 = m.sha256 WHERE r.report_id = ANY($1)",
                &[&reports],
            )
            .await
            .map_err(db)?
        {
            out.media.insert(r.get(3), media_row(&r));
        }
        for r in tx
            .query(
                &format!(
                    "SELECT {DEVICE_COLUMNS}, device_id FROM devices WHERE device_id IN
                       (SELECT device_id FROM changes WHERE report_id = ANY($1))"
                ),
                &[&reports],
            )
            .await
            .map_err(db)?
        {
            out.devices.insert(r.get(4), device_row(&r));
        }
        tx.commit().await.map_err(db)?;
        Ok(out)
    }

    async fn media_row(&self, sha256: &str) -> Result<Option<MediaRow>> {
        Ok(self
            .query_opt(
                "SELECT total, received, complete FROM media WHERE sha256 = $1",
                &[&sha256],
            )
            .await?
            .as_ref()
            .map(media_row))
    }

    async fn media_visible(&self, who: &Visibility, sha256: &str) -> Result<bool> {
        let sql = format!(
            "SELECT 1 FROM media m JOIN media_refs r ON r.sha256 = m.sha256
             WHERE m.sha256 = $1 AND m.complete AND r.report_id IN {} LIMIT 1",
            visible(2)
        );
        Ok(self
            .query_opt(
                &sql,
                &[&sha256, &who.person_key, &who.supervisor, &who.unit],
            )
            .await?
            .is_some())
    }

    async fn append_audit(&self, e: AuditEntry) -> Result<()> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&LOCK_AUDIT])
            .await
            .map_err(db)?;
        tx.execute(
            "INSERT INTO audit_log (at_ms, actor, action, target, outcome) VALUES ($1, $2, $3, $4, $5)",
            &[&e.at_ms, &e.actor, &e.action, &e.target, &e.outcome],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn audit_range(&self, first: i64, last: i64) -> Result<Vec<AuditEntry>> {
        Ok(self
            .query(AUDIT_RANGE, &[&first, &last])
            .await?
            .iter()
            .map(audit_row)
            .collect())
    }

    async fn log_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>> {
        let idx: Vec<i64> = indexes.iter().map(|i| *i as i64).collect();
        hashes_in_order(&idx, self.query(LOG_HASHES, &[&idx]).await?)
    }

    async fn checkpoint(&self, size: Option<u64>) -> Result<Option<(u64, String)>> {
        let row = match size {
            Some(n) => {
                self.query_opt(
                    "SELECT size, note FROM log_checkpoints WHERE size = $1",
                    &[&(n as i64)],
                )
                .await?
            }
            None => {
                self.query_opt(
                    "SELECT size, note FROM log_checkpoints ORDER BY size DESC LIMIT 1",
                    &[],
                )
                .await?
            }
        };
        Ok(row.map(|r| (r.get::<_, i64>(0) as u64, r.get(1))))
    }

    async fn add_attestation(&self, a: Attestation) -> Result<()> {
        self.execute(
            "INSERT INTO log_attestations (size, kind, party, body, received_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[
                &(a.size as i64),
                &a.kind.as_str(),
                &a.party,
                &a.body,
                &a.received_at_ms,
            ],
        )
        .await?;
        Ok(())
    }

    async fn attestations(&self, size: u64) -> Result<Vec<Attestation>> {
        let rows = self
            .query(
                "SELECT kind, party, body, received_at FROM log_attestations
                 WHERE size = $1 ORDER BY kind, party",
                &[&(size as i64)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let kind = AttestationKind::parse(r.get(0))
                    .ok_or_else(|| StationError::Internal("attestation kind".into()))?;
                Ok(Attestation {
                    size,
                    kind,
                    party: r.get(1),
                    body: r.get(2),
                    received_at_ms: r.get(3),
                })
            })
            .collect()
    }

    async fn last_attested(&self, kind: AttestationKind, party: &str) -> Result<Option<u64>> {
        let row = self
            .query_opt(
                "SELECT MAX(size) FROM log_attestations WHERE kind = $1 AND party = $2",
                &[&kind.as_str(), &party],
            )
            .await?;
        Ok(row
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(|n| n as u64))
    }

    async fn newest_cosigned(&self, witnesses: u32) -> Result<Option<u64>> {
        let row = self
            .query_opt(
                "SELECT size FROM log_attestations WHERE kind = 'cosignature'
                 GROUP BY size HAVING COUNT(*) >= $1 ORDER BY size DESC LIMIT 1",
                &[&i64::from(witnesses)],
            )
            .await?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    async fn log_leaves(&self, from: u64, to: u64) -> Result<Vec<LogRow>> {
        Ok(self
            .query(
                "SELECT idx, change_id, audit_last, leaf FROM log_leaves
                 WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                &[&(from as i64), &(to as i64)],
            )
            .await?
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    async fn log_restores(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(self
            .query(
                "SELECT idx, leaf FROM log_leaves
                 WHERE change_id IS NULL AND audit_last IS NULL ORDER BY idx",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect())
    }

    async fn logged_changes(&self, hashes: &[[u8; 32]]) -> Result<Vec<(u64, Uuid, u64, i64)>> {
        let hashes: Vec<Vec<u8>> = hashes.iter().map(|h| h.to_vec()).collect();
        Ok(self
            .query(
                "SELECT l.idx, c.device_id, c.seq, c.received_at FROM changes c
                 JOIN log_leaves l ON l.change_id = c.id WHERE c.hash = ANY($1)",
                &[&hashes],
            )
            .await?
            .iter()
            .map(|r| {
                (
                    r.get::<_, i64>(0) as u64,
                    r.get::<_, Uuid>(1),
                    r.get::<_, i64>(2) as u64,
                    r.get::<_, i64>(3),
                )
            })
            .collect())
    }

    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, StoredChange)>> {
        self.query(
            "SELECT id, body, signature, received_at FROM changes WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after, &(limit as i64)],
        )
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.get::<_, i64>(0),
                StoredChange {
                    change: decode_change(r.get(1), r.get(2))?,
                    received_at: r.get(3),
                },
            ))
        })
        .collect()
    }

    async fn audit_log(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>> {
        Ok(self
            .query(
                "SELECT id, at_ms, actor, action, target, outcome FROM audit_log
                 WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &(limit as i64)],
            )
            .await?
            .iter()
            .map(|r| AuditEntry {
                id: r.get(0),
                at_ms: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                target: r.get(4),
                outcome: r.get(5),
            })
            .collect())
    }

    async fn record_rejection(
        &self,
        at: i64,
        device: Option<Uuid>,
        reason: String,
        bytes: Vec<u8>,
    ) -> Result<()> {
        self.execute(
            "INSERT INTO rejected (received_at, device_id, reason, bytes) VALUES ($1, $2, $3, $4)",
            &[&at, &device, &reason, &bytes],
        )
        .await?;
        Ok(())
    }

    async fn counts(&self) -> Result<Counts> {
        let r = self
            .query_opt(
                "SELECT (SELECT COUNT(*) FROM changes), (SELECT COUNT(*) FROM reports),
                        (SELECT COUNT(*) FROM media WHERE complete),
                        (SELECT COALESCE(SUM(received), 0)::BIGINT FROM media)",
                &[],
            )
            .await?
            .ok_or_else(|| StationError::Internal("counts".into()))?;
        Ok(Counts {
            changes: r.get::<_, i64>(0) as u64,
            reports: r.get::<_, i64>(1) as u64,
            media_complete: r.get::<_, i64>(2) as u64,
            media_bytes: r.get::<_, i64>(3) as u64,
        })
    }

    fn shared_events(&self) -> Option<broadcast::Sender<(String, ReportEvent)>> {
        Some(self.events.clone())
    }
}

/// A pooled connection inside `BEGIN`. Dropped before
/// [`WriteTx::commit`] (a refused push, an error), it is rolled back and
/// only then returned to the pool; when that cannot be done, the
/// connection is closed (the server then rolls back).
struct PgTx {
    conn: Option<Object>,
}

impl Drop for PgTx {
    fn drop(&mut self) {
        let Some(c) = self.conn.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if c.batch_execute("ROLLBACK").await.is_err() {
                        drop(Object::take(c));
                    }
                });
            }
            Err(_) => drop(Object::take(c)),
        }
    }
}

impl PgTx {
    fn c(&self) -> Result<&Object> {
        self.conn
            .as_ref()
            .ok_or_else(|| StationError::Internal("transaction already ended".into()))
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let c = self.c()?;
        let st = c.prepare_cached(sql).await.map_err(db)?;
        c.query(&st, params).await.map_err(db)
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64> {
        let c = self.c()?;
        let st = c.prepare_cached(sql).await.map_err(db)?;
        c.execute(&st, params).await.map_err(db)
    }
}

#[async_trait]
impl WriteTx for PgTx {
    async fn lock_log(&mut self) -> Result<()> {
        self.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_LOG])
            .await?;
        Ok(())
    }

    async fn lock_media(&mut self, sha256: &str) -> Result<()> {
        // The two-key form: its own key space, apart from LOCK_LOG's.
        self.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&LOCK_MEDIA_CLASS, &sha256],
        )
        .await?;
        Ok(())
    }

    async fn chain_facts(&mut self, changes: &[Change]) -> Result<ChainFacts> {
        let devices: Vec<Uuid> = changes.iter().map(|c| c.device()).collect();
        let seqs: Vec<i64> = changes.iter().map(|c| c.body().seq as i64).collect();
        let reports: Vec<Uuid> = changes.iter().map(|c| c.report()).collect();
        let prevs: Vec<Vec<u8>> = changes
            .iter()
            .map(|c| c.body().prev.unwrap_or(ZERO_HASH).to_vec())
            .collect();
        let mut out = ChainFacts::default();
        for r in self
            .query(
                "SELECT c.device_id, c.seq, c.hash, c.signature FROM changes c
                 JOIN UNNEST($1::uuid[], $2::bigint[]) AS k(d, s) ON c.device_id = k.d AND c.seq = k.s",
                &[&devices, &seqs],
            )
            .await?
        {
            let sig: [u8; 64] = r
                .get::<_, Vec<u8>>(3)
                .try_into()
                .map_err(|_| StationError::Internal("signature column".into()))?;
            out.stored.insert(
                ChangeId {
                    device: r.get(0),
                    seq: r.get::<_, i64>(1) as u64,
                },
                (hash_column(r.get(2))?, sig),
            );
        }
        for r in self
            .query(
                "SELECT hash, device_id, report_id, seq FROM changes WHERE hash = ANY($1)",
                &[&prevs],
            )
            .await?
        {
            out.by_hash.insert(
                hash_column(r.get(0))?,
                (r.get(1), r.get(2), r.get::<_, i64>(3) as u64),
            );
        }
        for r in self
            .query(
                "SELECT c.report_id, c.device_id, c.prev FROM changes c
                 JOIN UNNEST($1::uuid[], $2::uuid[], $3::bytea[]) AS k(r, d, p)
                   ON c.report_id = k.r AND c.device_id = k.d AND c.prev = k.p",
                &[&reports, &devices, &prevs],
            )
            .await?
        {
            out.children
                .insert((r.get(0), r.get(1), hash_column(r.get(2))?));
        }
        for r in self
            .query(
                "SELECT device_id, public_key FROM devices WHERE device_id = ANY($1)",
                &[&devices],
            )
            .await?
        {
            if let Some(k) = key_column(r.get(1))? {
                out.keys.insert(r.get(0), k);
            }
        }
        Ok(out)
    }

    async fn revoked_among(&mut self, devices: &[Uuid]) -> Result<HashSet<Uuid>> {
        Ok(self
            .query(
                "SELECT device_id FROM devices WHERE device_id = ANY($1) AND revoked_at IS NOT NULL",
                &[&devices],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn complete_among(&mut self, sha256s: &[String]) -> Result<HashSet<String>> {
        Ok(self
            .query(
                "SELECT sha256 FROM media WHERE sha256 = ANY($1) AND complete",
                &[&sha256s],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn append_changes(&mut self, changes: &[Change], received_at: i64) -> Result<i64> {
        let head: i64 = self
            .query("SELECT COALESCE(MAX(id), 0) FROM changes", &[])
            .await?
            .first()
            .map(|r| r.get(0))
            .unwrap_or(0);
        let n = changes.len() as i64;
        let ids: Vec<i64> = (1..=n).map(|k| head + k).collect();
        let hashes: Vec<Vec<u8>> = changes.iter().map(|c| c.hash().to_vec()).collect();
        let devices: Vec<Uuid> = changes.iter().map(|c| c.device()).collect();
        let seqs: Vec<i64> = changes.iter().map(|c| c.body().seq as i64).collect();
        let reports: Vec<Uuid> = changes.iter().map(|c| c.report()).collect();
        let prevs: Vec<Vec<u8>> = changes
            .iter()
            .map(|c| c.body().prev.unwrap_or(ZERO_HASH).to_vec())
            .collect();
        let bodies: Vec<&[u8]> = changes.iter().map(|c| c.bytes()).collect();
        let sigs: Vec<&[u8]> = changes.iter().map(|c| c.signature().as_slice()).collect();
        let walls: Vec<i64> = changes
            .iter()
            .map(|c| c.body().hlc.wall_ms as i64)
            .collect();
        let c = self.c()?;
        c.execute(
            "INSERT INTO changes (id, hash, device_id, seq, report_id, prev, body, signature, hlc_wall, received_at)
             SELECT k.*, $10 FROM UNNEST($1::bigint[], $2::bytea[], $3::uuid[], $4::bigint[], $5::uuid[],
                                         $6::bytea[], $7::bytea[], $8::bytea[], $9::bigint[]) AS k",
            &[&ids, &hashes, &devices, &seqs, &reports, &prevs, &bodies, &sigs, &walls, &received_at],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StationError::Conflict("retry", "a concurrent push stored the same change; retry".into())
            } else {
                db(e)
            }
        })?;
        Ok(head + n)
    }

    async fn grant_author_access(&mut self, pairs: &[(Uuid, Uuid)]) -> Result<()> {
        let devices: Vec<Uuid> = pairs.iter().map(|p| p.0).collect();
        let reports: Vec<Uuid> = pairs.iter().map(|p| p.1).collect();
        self.execute(
            "INSERT INTO report_access (person_key, report_id)
             SELECT DISTINCT d.person_key, k.r FROM UNNEST($1::uuid[], $2::uuid[]) AS k(d, r)
             JOIN devices d ON d.device_id = k.d
             ON CONFLICT DO NOTHING",
            &[&devices, &reports],
        )
        .await?;
        Ok(())
    }

    async fn add_media_refs(&mut self, pairs: &[(String, Uuid)]) -> Result<()> {
        let shas: Vec<&str> = pairs.iter().map(|p| p.0.as_str()).collect();
        let reports: Vec<Uuid> = pairs.iter().map(|p| p.1).collect();
        self.execute(
            "INSERT INTO media_refs (sha256, report_id)
             SELECT DISTINCT * FROM UNNEST($1::text[], $2::uuid[]) ON CONFLICT DO NOTHING",
            &[&shas, &reports],
        )
        .await?;
        Ok(())
    }

    async fn report_changes(&mut self, report: Uuid) -> Result<Vec<Change>> {
        self.query(
            "SELECT body, signature FROM changes WHERE report_id = $1",
            &[&report],
        )
        .await?
        .iter()
        .map(|r| decode_change(r.get(0), r.get(1)))
        .collect()
    }

    async fn device_unit(&mut self, device: Uuid) -> Result<Option<String>> {
        Ok(self
            .query("SELECT unit FROM devices WHERE device_id = $1", &[&device])
            .await?
            .first()
            .map(|r| r.get(0)))
    }

    async fn device_records_of(&mut self, devices: &[Uuid]) -> Result<HashMap<Uuid, String>> {
        Ok(self
            .query(
                "SELECT device_id, record FROM devices WHERE device_id = ANY($1)",
                &[&devices],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn put_report(&mut self, row: ReportRow) -> Result<bool> {
        let existed = !self
            .query(
                "SELECT 1 FROM reports WHERE report_id = $1",
                &[&row.report_id],
            )
            .await?
            .is_empty();
        self.execute(
            "INSERT INTO reports (report_id, unit, created_by, lifecycle, updated_ms, json)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (report_id) DO UPDATE SET unit = excluded.unit, created_by = excluded.created_by,
               lifecycle = excluded.lifecycle, updated_ms = excluded.updated_ms, json = excluded.json",
            &[
                &row.report_id,
                &row.unit,
                &row.created_by,
                &row.lifecycle,
                &row.updated_ms,
                &row.json,
            ],
        )
        .await?;
        Ok(!existed)
    }

    async fn publish(&mut self, event: &(String, ReportEvent)) -> Result<()> {
        let payload =
            serde_json::to_string(event).map_err(|_| StationError::Internal("event".into()))?;
        // Delivered to every process's listener when this commits.
        self.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
            .await?;
        Ok(())
    }

    async fn code(&mut self, code_hash: &[u8]) -> Result<Option<CodeRow>> {
        Ok(self
            .query(
                "SELECT person, expires_at, used_at FROM enrollment_codes WHERE code_hash = $1 FOR UPDATE",
                &[&code_hash],
            )
            .await?
            .first()
            .map(|r| CodeRow {
                person: r.get(0),
                expires_at: r.get(1),
                used_at: r.get(2),
            }))
    }

    async fn insert_device(&mut self, d: NewDevice) -> Result<bool> {
        Ok(self
            .execute(
                "INSERT INTO devices (device_id, public_key, record, person_key, role, unit,
                   credential_hash, enrolled_at, credential_expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                &[
                    &d.device_id,
                    &d.public_key.as_slice(),
                    &d.record,
                    &d.person_key,
                    &d.role,
                    &d.unit,
                    &d.credential_hash,
                    &d.enrolled_at,
                    &d.credential_expires_at,
                ],
            )
            .await?
            > 0)
    }

    async fn mark_code_used(&mut self, code_hash: &[u8], at: i64, device: Uuid) -> Result<()> {
        self.execute(
            "UPDATE enrollment_codes SET used_at = $1, used_by = $2 WHERE code_hash = $3",
            &[&at, &device, &code_hash],
        )
        .await?;
        Ok(())
    }

    async fn log_backlog(&mut self) -> Result<LogBacklog> {
        self.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_AUDIT])
            .await?;
        let head = self
            .query(
                "SELECT COALESCE(MAX(idx) + 1, 0), MAX(change_id) IS NOT NULL,
                    COALESCE(MAX(audit_last), 0)
                 FROM log_leaves",
                &[],
            )
            .await?;
        let (size, logged, last_audit): (i64, bool, i64) = head
            .first()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .unwrap_or((0, false, 0));
        // Read only while the log holds no change (see `LogBacklog`).
        let changes = self
            .query(
                "SELECT id, body, signature, received_at FROM changes WHERE NOT $1 ORDER BY id",
                &[&logged],
            )
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.get::<_, i64>(0),
                    StoredChange {
                        change: decode_change(r.get(1), r.get(2))?,
                        received_at: r.get(3),
                    },
                ))
            })
            .collect::<Result<_>>()?;
        let audit = self
            .query(AUDIT_RANGE, &[&(last_audit + 1), &i64::MAX])
            .await?
            .iter()
            .map(audit_row)
            .collect();
        Ok(LogBacklog {
            size: size as u64,
            backfill: changes,
            audit,
        })
    }

    async fn log_hashes(&mut self, indexes: &[u64]) -> Result<Vec<Hash>> {
        let idx: Vec<i64> = indexes.iter().map(|i| *i as i64).collect();
        let rows = self.query(LOG_HASHES, &[&idx]).await?;
        hashes_in_order(&idx, rows)
    }

    async fn append_log(&mut self, append: LogAppend) -> Result<()> {
        let idx: Vec<i64> = append.leaves.iter().map(|l| l.0 as i64).collect();
        let change: Vec<Option<i64>> = append.leaves.iter().map(|l| l.1).collect();
        let audit: Vec<Option<i64>> = append.leaves.iter().map(|l| l.2).collect();
        let leaf: Vec<&[u8]> = append.leaves.iter().map(|l| l.3.as_slice()).collect();
        self.execute(
            "INSERT INTO log_leaves (idx, change_id, audit_last, leaf)
             SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BYTEA[])",
            &[&idx, &change, &audit, &leaf],
        )
        .await?;
        let hidx: Vec<i64> = append.hashes.iter().map(|h| h.0 as i64).collect();
        let hash: Vec<&[u8]> = append.hashes.iter().map(|h| h.1.as_slice()).collect();
        self.execute(
            "INSERT INTO log_hashes (idx, hash) SELECT * FROM UNNEST($1::BIGINT[], $2::BYTEA[])",
            &[&hidx, &hash],
        )
        .await?;
        self.execute(
            "INSERT INTO log_checkpoints (size, note) VALUES ($1, $2)",
            &[&(append.checkpoint.0 as i64), &append.checkpoint.1],
        )
        .await?;
        Ok(())
    }

    async fn media_row(&mut self, sha256: &str) -> Result<Option<MediaRow>> {
        Ok(self
            .query(
                "SELECT total, received, complete FROM media WHERE sha256 = $1",
                &[&sha256],
            )
            .await?
            .first()
            .map(media_row))
    }

    async fn put_media(&mut self, sha256: &str, row: MediaRow) -> Result<()> {
        self.execute(
            "INSERT INTO media (sha256, total, received, complete) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sha256) DO UPDATE SET total = excluded.total,
               received = excluded.received, complete = excluded.complete",
            &[
                &sha256,
                &(row.total as i64),
                &(row.received as i64),
                &row.complete,
            ],
        )
        .await?;
        Ok(())
    }

    async fn delete_media(&mut self, sha256: &str) -> Result<()> {
        self.execute("DELETE FROM media WHERE sha256 = $1", &[&sha256])
            .await?;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.c()?.batch_execute("COMMIT").await.map_err(db)?;
        // Committed: the connection goes back to the pool.
        drop(self.conn.take());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres::Client;

    #[test]
    fn every_step_file_is_listed_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
        MIGRATIONS.check_dir(&dir).unwrap();
    }

    /// A new database on `FR_TEST_DATABASE_URL`'s server; `None` (the test
    /// skips) without one, unless `FR_REQUIRE_POSTGRES` is set.
    fn scratch_database() -> Option<String> {
        let Some(server) = std::env::var("FR_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            assert!(
                std::env::var_os("FR_REQUIRE_POSTGRES").is_none(),
                "FR_REQUIRE_POSTGRES is set but FR_TEST_DATABASE_URL is not"
            );
            eprintln!("SKIPPED: no PostgreSQL (set FR_TEST_DATABASE_URL)");
            return None;
        };
        let name = format!("fr_migrate_{}", Uuid::new_v4().simple());
        let mut admin = Client::connect(&server, NoTls).unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        Some(format!("{}/{name}", server.rsplit_once('/').unwrap().0))
    }

    /// A database made by the first schema upgrades in place and keeps its
    /// rows. Needs `FR_TEST_DATABASE_URL` (skips without, unless
    /// `FR_REQUIRE_POSTGRES` is set).
    #[test]
    fn a_version_1_database_upgrades_and_keeps_its_rows() {
        let Some(url) = scratch_database() else {
            return;
        };
        {
            let mut c = Client::connect(&url, NoTls).unwrap();
            c.batch_execute(MIGRATIONS.step(1).unwrap().sql).unwrap();
            c.batch_execute(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version VALUES (1);
                 INSERT INTO media (sha256, total, received, complete) VALUES ('ab', 10, 10, TRUE);",
            )
            .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let _s = PostgresStorage::open(&url, dir.path()).unwrap();
        let mut c = Client::connect(&url, NoTls).unwrap();
        let v: i32 = c
            .query_one("SELECT version FROM schema_version", &[])
            .unwrap()
            .get(0);
        assert_eq!(i64::from(v), MIGRATIONS.current());
        let n: i64 = c
            .query_one("SELECT COUNT(*) FROM clock_skew", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
        let kept: i64 = c
            .query_one("SELECT total FROM media WHERE sha256 = 'ab'", &[])
            .unwrap()
            .get(0);
        assert_eq!(kept, 10);
    }

    /// A version 4 database (before dashboard accounts moved into storage)
    /// upgrades, keeps its devices, and takes accounts.
    #[test]
    fn a_version_4_database_upgrades_and_takes_dashboard_accounts() {
        let Some(url) = scratch_database() else {
            return;
        };
        let device = Uuid::new_v4();
        {
            let mut c = Client::connect(&url, NoTls).unwrap();
            for v in 1..=4 {
                c.batch_execute(MIGRATIONS.step(v).unwrap().sql).unwrap();
            }
            c.batch_execute(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version VALUES (4);",
            )
            .unwrap();
            c.execute(
                "INSERT INTO devices (device_id, public_key, record, person_key, role, unit, credential_hash, enrolled_at, credential_expires_at)
                 VALUES ($1, '\\x00', '{}', 'star:1', 'supervisor', 'D9', '\\x01', 5, 6)",
                &[&device],
            )
            .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let s = PostgresStorage::open(&url, dir.path()).unwrap();
        {
            let mut c = Client::connect(&url, NoTls).unwrap();
            let v: i32 = c
                .query_one("SELECT version FROM schema_version", &[])
                .unwrap()
                .get(0);
            assert_eq!(i64::from(v), MIGRATIONS.current());
            let kept: i64 = c
                .query_one("SELECT credential_expires_at FROM devices", &[])
                .unwrap()
                .get(0);
            assert_eq!(kept, 6);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        super::super::test_support::accounts_round_trip(&rt, &s, device);
        let h: Vec<u8> = Client::connect(&url, NoTls)
            .unwrap()
            .query_one("SELECT credential_hash FROM devices", &[])
            .unwrap()
            .get(0);
        assert_eq!(
            h.len(),
            32,
            "replaced by the hash of a credential nobody holds"
        );
    }
}
