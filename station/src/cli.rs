//! The `fieldreport-station` command line: serve, enroll devices, export
//! and verify evidence packages, run the demo. Lives in the library so
//! that test binaries can run the very same command.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::Config;
use clap::{Parser, Subcommand};
use fieldreport_core::{Person, Role};

#[derive(Parser)]
#[command(
    name = "fieldreport-station",
    version,
    about = "FieldReport station: sync server for FieldReport devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve {
        /// TOML file with `listen`, `data`, `database`, `tls_cert`, `tls_key`,
        /// `plain_http` and `station_key`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:8787).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data directory (default ./station-data).
        #[arg(long)]
        data: Option<PathBuf>,
        /// PostgreSQL URL (postgres://…); default: SQLite in the data directory.
        #[arg(long)]
        database: Option<String>,
        /// PEM certificate chain (leaf first); default: a self-signed pair
        /// generated once in the data directory.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve plain HTTP: only behind a TLS proxy on this machine
        /// (devices refuse plain HTTP to any other host).
        #[arg(long, conflicts_with = "tls_cert")]
        plain_http: bool,
    },
    /// Create a one-time enrollment code for a person.
    Enroll {
        #[command(flatten)]
        storage: StorageArgs,
        /// Full name.
        #[arg(long)]
        name: String,
        /// Star (badge) number.
        #[arg(long)]
        star: String,
        #[arg(long, value_parser = ["officer", "supervisor"])]
        role: String,
        /// Unit or district.
        #[arg(long)]
        unit: String,
        /// Minutes until the code expires.
        #[arg(long, default_value_t = 60)]
        ttl_minutes: i64,
    },
    /// Create a supervisor's dashboard account (or set a new password for
    /// the same star number). The password comes from
    /// FIELDREPORT_DASHBOARD_PASSWORD or the first line of standard input.
    DashboardUser {
        #[command(flatten)]
        storage: StorageArgs,
        /// Full name.
        #[arg(long)]
        name: String,
        /// Star (badge) number: the sign-in name.
        #[arg(long)]
        star: String,
        /// Unit or district whose reports the supervisor sees.
        #[arg(long)]
        unit: String,
    },
    /// Revoke a device (a lost phone): its pushes, pulls and event streams
    /// are refused from now on, and so is any new change signed by its key,
    /// whoever pushes it. Takes effect on running stations.
    Revoke {
        #[command(flatten)]
        storage: StorageArgs,
        /// The device id, as the audit log shows it (the actor of its
        /// `POST /v1/enroll` entry).
        #[arg(long)]
        device: uuid::Uuid,
    },
    /// For a station whose key file is lost with no copy: deletes every
    /// dashboard account (their second factors and signing stores were
    /// sealed with the lost key) and revokes their signing devices, so the
    /// station starts again with a new key. Accounts are then made again
    /// with `dashboard-user`. Phones, reports and the log are untouched.
    ForgetStationKey {
        #[command(flatten)]
        storage: StorageArgs,
        /// Required: this cannot be undone.
        #[arg(long)]
        confirm: bool,
    },
    /// Set when a device's credential expires: extend an expired one (a
    /// phone that was off for months), or end one now with 0.
    Credential {
        #[command(flatten)]
        storage: StorageArgs,
        #[arg(long)]
        device: uuid::Uuid,
        /// Days from now; 0 expires it at once.
        #[arg(long)]
        expires_in_days: u32,
    },
    /// Print the audit log, oldest first: id, time (UTC), who (device id),
    /// what, on what, outcome; tab-separated.
    Audit {
        #[command(flatten)]
        storage: StorageArgs,
        /// Start after this entry id.
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Write the evidence package (a BagIt bag) of one or more reports.
    Export {
        #[command(flatten)]
        storage: StorageArgs,
        /// Report id; repeat for a referral of several reports.
        #[arg(long = "report", required = true)]
        reports: Vec<uuid::Uuid>,
        /// Directory to create (must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
        /// How the package names this station (default: the data directory).
        #[arg(long)]
        station_name: Option<String>,
    },
    /// Check an evidence package: manifests, signatures, device chains,
    /// media hashes, receipt times against revocations, and the replay of
    /// the history. Exits 1 if it fails.
    Verify {
        /// The package directory.
        dir: PathBuf,
        /// The station's published log verifier key (`name+id+key`, as
        /// `log-key` prints it): the checkpoint must be signed by it.
        /// Without it, the key in the package is used and the verdict
        /// says so.
        #[arg(long, conflicts_with = "without_log")]
        log_key: Option<String>,
        /// Skip the completeness check (packages made before the log).
        #[arg(long)]
        without_log: bool,
        /// PEM certificate(s) of the RFC 3161 time-stamp authority trusted:
        /// the checkpoint must carry a time-stamp whose signer chains to it.
        #[arg(long, visible_alias = "tsa-ca", conflicts_with = "without_log")]
        tsa_cert: Option<PathBuf>,
        /// A witness's cosigner key (`name+id+key`, as the witness
        /// prints it); repeat for several.
        #[arg(long = "witness", conflicts_with = "without_log")]
        witnesses: Vec<String>,
        /// How many of the --witness keys must have cosigned the
        /// checkpoint (default: all of them).
        #[arg(long, requires = "witnesses")]
        witness_quorum: Option<usize>,
    },
    /// Check the database against its transparency log: the newest
    /// checkpoint's signature and root, every change logged and every
    /// logged change stored, every sealed audit row unaltered. Exits 1 on
    /// any finding (docs/log.md).
    LogCheck {
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Print the log's verifier key (what phones, witnesses and `verify`
    /// are given) and its newest checkpoint.
    LogKey {
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Run a witness (C2SP tlog-witness) for an outside office: it cosigns
    /// a log's checkpoints only after checking each extends the last one
    /// it cosigned. Its key and state live in `--dir`, apart from any
    /// station. Plain HTTP: put it behind a TLS terminator (its answers
    /// are signatures, checked by whoever uses them). See docs/log.md.
    Witness {
        /// The witness's own directory (key and state; made 0700).
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8788")]
        listen: std::net::SocketAddr,
        /// A log's verifier key (`name+id+key`, as `log-key` prints it);
        /// repeat for several logs.
        #[arg(long = "log-key", required = true)]
        log_keys: Vec<String>,
        /// The witness's name in its cosignatures (default:
        /// fieldreport-witness/ and 8 bytes of its key's hash).
        #[arg(long)]
        name: Option<String>,
    },
    /// Back up a station on SQLite while it serves: the database at one
    /// committed state, its media, its keys (log key, station key, the
    /// development TLS pair) and the dashboard accounts' signing stores,
    /// with a manifest of every file's SHA-256; the copy is checked
    /// before the command succeeds. PostgreSQL: see docs/operations.md.
    Backup {
        #[command(flatten)]
        storage: StorageArgs,
        /// Directory to create (must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a backup: every file against the manifest, the database's
    /// integrity and its log checkpoint against the log key.
    BackupCheck {
        /// The backup directory.
        dir: PathBuf,
    },
    /// Restore a backup into a new data directory (refused if it is not
    /// empty): checks the backup first, copies it, and records the
    /// restore in the restored station's log and audit log, so that
    /// phones holding what the backup lacks send it again.
    Restore {
        /// The backup directory.
        from: PathBuf,
        /// The new data directory.
        #[arg(long)]
        data: PathBuf,
    },
    /// Record in a station's log that it was restored from a backup made
    /// at `--backup-time`, when it was restored by other means than
    /// `restore` (a PostgreSQL database from `pg_dump`, docs/operations.md).
    /// Run it once, before any `serve` starts on the restored station.
    RecordRestore {
        #[command(flatten)]
        storage: StorageArgs,
        /// When the backup was taken (RFC 3339, e.g. 2026-12-07T02:00:00Z);
        /// after an interrupted `restore`, the time it left in the data
        /// directory is used.
        #[arg(long)]
        backup_time: Option<String>,
    },
    /// Run the guided demo: a station, two officers and a supervisor.
    Demo {
        /// Leave the station running afterwards.
        #[arg(long)]
        keep_running: bool,
        /// Keep the demo's data here instead of a temporary directory.
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

/// Where a command finds the station's storage.
#[derive(clap::Args)]
struct StorageArgs {
    /// Data directory (default ./station-data).
    #[arg(long)]
    data: Option<PathBuf>,
    /// PostgreSQL URL; default: SQLite in the data directory.
    #[arg(long)]
    database: Option<String>,
    /// TOML file with `data`, `database` and `station_key` (the `serve`
    /// keys are ignored).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl StorageArgs {
    /// The configuration these arguments (and the environment) give.
    fn config(self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        Config::load(self.config.as_deref(), env, None, self.data)?.with_database(self.database)
    }
}

/// Parses the process arguments and runs the command.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(code) => code,
        Err(e) => {
            // One clear line for the admin, whatever RUST_BACKTRACE says.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    // The demo tells its own story on stdout; keep the logs to warnings.
    let default_level = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let env = |k: &str| std::env::var(k).ok();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data,
            database,
            tls_cert,
            tls_key,
            plain_http,
        } => {
            let cfg = Config::load(config.as_deref(), env, listen, data)?
                .with_database(database)?
                .with_tls(tls_cert, tls_key, plain_http)?;
            if crate::backup::pending_restore(&cfg.data)?.is_some() {
                anyhow::bail!(
                    "the restore into {} did not finish: run `fieldreport-station record-restore --data {}` first (phones would refuse a restored station whose log does not say so)",
                    cfg.data.display(),
                    cfg.data.display()
                );
            }
            let storage = cfg.open_storage_async().await?;
            let shift = crate::clock::SystemClock::from_env()?.offset_ms;
            if shift != 0 {
                admin_audit(
                    storage.as_ref(),
                    "station clock shifted",
                    format!("{shift} ms by {}", crate::clock::OFFSET_ENV),
                    "ok",
                )
                .await?;
            }
            let key = std::sync::Arc::new(cfg.station_key(storage.as_ref()).await?);
            let transport = match cfg.tls()? {
                Some((tls, generated)) => {
                    if generated {
                        let (cert, _) = crate::tls::dev_paths(&cfg.data);
                        tracing::warn!(
                            cert = %cert.display(),
                            "no TLS certificate configured: generated a self-signed one"
                        );
                    }
                    crate::Transport::Tls(std::sync::Arc::new(tls))
                }
                None => {
                    tracing::warn!("serving plain HTTP: put a TLS proxy in front");
                    crate::Transport::PlainHttp
                }
            };
            let listener = tokio::net::TcpListener::bind(cfg.listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
            let attestors = cfg.attestors()?;
            let station =
                crate::spawn_attested(listener, storage, transport, key, attestors).await?;
            tracing::info!(url = %station.url(), data = %cfg.data.display(), "station serving");
            // Plain lines on stdout for scripts (port 0 picks a free port):
            // the pin first, so a reader of "serving on" has both.
            if let Some(tls) = &station.tls {
                println!("station pin: {}", tls.pin);
            }
            println!("serving on {}", station.url());
            tokio::signal::ctrl_c().await?;
            tracing::info!("shutting down");
            station.stop().await;
        }
        Command::Enroll {
            storage,
            name,
            star,
            role,
            unit,
            ttl_minutes,
        } => {
            if ttl_minutes <= 0 {
                anyhow::bail!("--ttl-minutes must be positive");
            }
            let cfg = storage.config(env)?;
            let storage = cfg.open_storage_async().await?;
            let role = if role == "supervisor" {
                Role::Supervisor
            } else {
                Role::Officer
            };
            let person = Person {
                name,
                star_number: star,
                role,
                unit,
            };
            let role = person.role;
            let (code, expires) = storage
                .create_enrollment(person, ttl_minutes.saturating_mul(60_000))
                .await?;
            admin_audit(
                storage.as_ref(),
                "enrollment code made",
                format!("{role} code, {ttl_minutes} minutes"),
                "ok",
            )
            .await?;
            let expires = chrono::DateTime::from_timestamp_millis(expires).unwrap_or_default();
            println!("enrollment code: {code}");
            // The phone checks the station's key against this on enrolling.
            match cfg.tls() {
                Ok(Some((tls, _))) => println!("station pin: {}", tls.pin),
                Ok(None) => {}
                Err(e) => eprintln!("warning: no station pin to print: {e:#}"),
            }
            println!(
                "expires: {} (one use)",
                expires.format("%Y-%m-%d %H:%M UTC")
            );
        }
        Command::DashboardUser {
            storage,
            name,
            star,
            unit,
        } => {
            let password = match env("FIELDREPORT_DASHBOARD_PASSWORD") {
                Some(p) => p,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            let cfg = storage.config(env)?;
            let storage = cfg.open_storage_async().await?;
            let key = std::sync::Arc::new(cfg.station_key(storage.as_ref()).await?);
            let account = crate::accounts::create_account(
                storage.as_ref(),
                &key,
                &name,
                &star,
                &unit,
                &password,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            admin_audit(
                storage.as_ref(),
                "dashboard account made",
                format!("device {}", account.device_id),
                "ok",
            )
            .await?;
            println!("dashboard account ready: sign in at /dashboard with star number {star}");
            println!(
                "signing device: {} (`revoke --device` it to end the account)",
                account.device_id
            );
            println!("second factor: add this to the supervisor's authenticator app (shown once):");
            println!("{}", crate::accounts::totp_uri(&account));
            println!("secret: {}", account.totp_secret);
        }
        Command::Revoke { storage, device } => {
            let cfg = storage.config(env)?;
            let storage = cfg.open_storage_async().await?;
            let done = storage.revoke(device).await?;
            let outcome = if done { "ok" } else { "no such device" };
            admin_audit(
                storage.as_ref(),
                "revoke device",
                format!("device {device}"),
                outcome,
            )
            .await?;
            if !done {
                anyhow::bail!("no unrevoked device {device}");
            }
            println!("device {device} revoked");
        }
        Command::Backup { storage, out } => {
            let cfg = storage.config(env)?;
            if cfg.database.is_some() {
                anyhow::bail!(
                    "backup copies a station on SQLite; for PostgreSQL use pg_basebackup or pg_dump and copy the data directory (docs/operations.md)"
                );
            }
            let storage = cfg.open_storage_async().await?;
            let key = cfg.station_key(storage.as_ref()).await?;
            let key_file = cfg
                .station_key
                .clone()
                .unwrap_or_else(|| crate::keys::default_path(&cfg.data));
            let accounts = storage.dashboard_accounts().await?;
            let now = storage.clock().now_ms();
            let data = cfg.data.clone();
            let target = out.clone();
            let summary = tokio::task::spawn_blocking(move || {
                crate::backup::backup(
                    &data,
                    &key_file,
                    &key,
                    &accounts,
                    &target,
                    now,
                    &mut |step| eprintln!("backup: {step}"),
                )
            })
            .await??;
            admin_audit(
                storage.as_ref(),
                "station backed up",
                format!("log size {}", summary.manifest.log_size),
                "ok",
            )
            .await?;
            println!(
                "backed up to {}: log size {}, {} media file(s), {} dashboard store(s), {} bytes in {} files; checked",
                out.display(),
                summary.manifest.log_size,
                summary.media_files,
                summary.dashboard_stores,
                summary.bytes,
                summary.manifest.files.len()
            );
        }
        Command::BackupCheck { dir } => {
            let m = tokio::task::spawn_blocking(move || crate::backup::check(&dir)).await??;
            println!(
                "OK: backup of {} (log size {}), {} files",
                chrono::DateTime::from_timestamp_millis(m.created_at_ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default(),
                m.log_size,
                m.files.len()
            );
        }
        Command::Restore { from, data } => {
            let target = data.clone();
            let manifest = tokio::task::spawn_blocking(move || {
                crate::backup::restore(&from, &target, &mut |step| eprintln!("restore: {step}"))
            })
            .await??;
            // The restored directory alone: no database, station key or
            // other setting from the environment.
            let cfg = Config::load(None, |_| None, None, Some(data.clone()))?;
            let storage = cfg.open_storage_async().await.map_err(|e| {
                anyhow::anyhow!(
                    "the files are in {}, but the station does not open ({e:#}); delete the directory and restore again",
                    data.display()
                )
            })?;
            let index = record_restore(storage.as_ref(), manifest.created_at_ms).await?;
            crate::backup::finish_restore(&data)?;
            println!(
                "restored into {}: log size {} at the backup; the log records the restore at entry {index}. Phones that hold what the backup lacks send it again at their next sync. Revoke again any device revoked after the backup.",
                data.display(),
                manifest.log_size
            );
        }
        Command::RecordRestore {
            storage,
            backup_time,
        } => {
            let cfg = storage.config(env)?;
            let pending = crate::backup::pending_restore(&cfg.data)?;
            let at = match (&backup_time, pending) {
                (Some(t), _) => chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|e| anyhow::anyhow!("--backup-time is not an RFC 3339 time: {e}"))?
                    .timestamp_millis(),
                (None, Some(at)) => at,
                (None, None) => {
                    anyhow::bail!("--backup-time is needed: when was the backup taken?")
                }
            };
            let storage = cfg.open_storage_async().await?;
            let index = record_restore(storage.as_ref(), at).await?;
            if pending.is_some() {
                crate::backup::finish_restore(&cfg.data)?;
            }
            println!(
                "the log records the restore at entry {index}. Phones that hold what the backup lacks send it again at their next sync. Revoke again any device revoked after the backup."
            );
        }
        Command::ForgetStationKey { storage, confirm } => {
            if !confirm {
                anyhow::bail!(
                    "forget-station-key deletes every dashboard account; run it again with --confirm"
                );
            }
            let cfg = storage.config(env)?;
            let storage = cfg.open_storage_async().await?;
            let devices = storage.forget_sealed().await?;
            for d in &devices {
                storage.revoke(*d).await?;
            }
            admin_audit(
                storage.as_ref(),
                "forget station key",
                format!("{} dashboard accounts deleted", devices.len()),
                "ok",
            )
            .await?;
            println!(
                "{} dashboard accounts deleted and their devices revoked; the station makes a new key when it starts (if the key file is gone) and accounts are made again with dashboard-user",
                devices.len()
            );
        }
        Command::Credential {
            storage,
            device,
            expires_in_days,
        } => {
            let cfg = storage.config(env)?;
            let storage = cfg.open_storage_async().await?;
            let at = storage
                .clock()
                .now_ms()
                .saturating_add(i64::from(expires_in_days) * 86_400_000);
            let done = storage.set_credential_expiry(device, at).await?;
            let outcome = if done { "ok" } else { "no such device" };
            admin_audit(
                storage.as_ref(),
                "set credential expiry",
                format!("device {device}"),
                outcome,
            )
            .await?;
            if !done {
                anyhow::bail!("no device {device}");
            }
            let at = chrono::DateTime::from_timestamp_millis(at).unwrap_or_default();
            println!(
                "device {device}: credential expires {}",
                at.format("%Y-%m-%d %H:%M UTC")
            );
        }
        Command::Audit {
            storage,
            after,
            limit,
        } => {
            let cfg = storage.config(env)?;
            let storage = cfg.open_storage_async().await?;
            // Read before the entry for this reading is written.
            let entries = storage.audit_log(after, limit).await?;
            admin_audit(
                storage.as_ref(),
                "audit log read",
                format!("after {after}, at most {limit}"),
                "ok",
            )
            .await?;
            for e in entries {
                let at = chrono::DateTime::from_timestamp_millis(e.at_ms).unwrap_or_default();
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    e.id,
                    at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    e.actor,
                    e.action,
                    e.target,
                    e.outcome
                );
            }
        }
        #[cfg(feature = "demo")]
        Command::Demo { keep_running, data } => {
            crate::demo::run(keep_running, data).await?;
        }
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => {
            anyhow::bail!(
                "this build of the station has no demo (it was built without the `demo` \
                 feature); run `cargo run --release -p fieldreport-station -- demo`"
            );
        }
        Command::Export {
            storage,
            reports,
            out,
            station_name,
        } => {
            let cfg = storage.config(env)?;
            let storage = cfg.open_storage_async().await?;
            let attestors = cfg.attestors()?;
            let station = station_name.unwrap_or_else(|| {
                let dir = std::fs::canonicalize(&cfg.data).unwrap_or(cfg.data.clone());
                format!("FieldReport station at {}", dir.display())
            });
            let bar = progress_bar();
            let b = bar.clone();
            let summary = crate::export::export_package(
                &storage,
                &attestors,
                None,
                &reports,
                &station,
                &out,
                move |p| {
                    b.set_message(p.phase.label());
                    b.set_length(p.total);
                    b.set_position(p.done);
                },
            )
            .await;
            bar.finish_and_clear();
            let ids: Vec<String> = reports.iter().map(|r| r.to_string()).collect();
            let outcome = match &summary {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("refused: {}", e.status_and_code().1),
            };
            admin_audit(
                storage.as_ref(),
                "evidence package exported",
                format!("reports {}", ids.join(" ")),
                &outcome,
            )
            .await?;
            let summary = summary?;
            println!(
                "wrote {}: {} report(s), {} change(s), {} device(s), {} media file(s), {} payload bytes",
                out.display(),
                summary.reports,
                summary.changes,
                summary.devices,
                summary.media_files,
                summary.payload_bytes
            );
            println!(
                "check it with: fieldreport-station verify {}",
                out.display()
            );
        }
        Command::LogCheck { storage } => {
            let cfg = storage.config(env)?;
            let storage = cfg.open_storage_async().await?;
            let found = storage.check_log().await?;
            println!(
                "log: {} entries, {} changes, {} sealed audit rows",
                found.size, found.changes, found.audit_rows
            );
            for p in &found.problems {
                println!("FAIL {p}");
            }
            admin_audit(
                storage.as_ref(),
                "log checked",
                format!("size {}", found.size),
                if found.ok() { "ok" } else { "problems" },
            )
            .await?;
            if !found.ok() {
                return Ok(std::process::ExitCode::FAILURE);
            }
            println!("OK");
        }
        Command::Witness {
            dir,
            listen,
            log_keys,
            name,
        } => {
            let logs = log_keys
                .iter()
                .map(|k| {
                    fieldreport_core::tlog::NoteVerifier::parse(k)
                        .map_err(|e| anyhow::anyhow!("--log-key is not a verifier key: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let witness = std::sync::Arc::new(crate::witness::Witness::open(
                &dir,
                name.as_deref(),
                logs,
                std::sync::Arc::new(crate::clock::SystemClock::from_env()?),
            )?);
            let listener = tokio::net::TcpListener::bind(listen).await?;
            println!("witness key: {}", witness.key().encode());
            println!("witnessing on http://{}", listener.local_addr()?);
            axum::serve(listener, crate::witness::router(witness)).await?;
        }
        Command::LogKey { storage } => {
            let cfg = storage.config(env)?;
            let storage = cfg.open_storage_async().await?;
            println!("{}", storage.log_verifier().encode());
            if let Some(note) = storage.checkpoint().await? {
                print!("\n{note}");
            }
        }
        Command::Verify {
            dir,
            log_key,
            without_log,
            tsa_cert,
            witnesses,
            witness_quorum,
        } => {
            let timestamp_anchors = match tsa_cert {
                Some(path) => {
                    let pem = std::fs::read_to_string(&path).map_err(|e| {
                        anyhow::anyhow!("cannot read --tsa-cert {}: {e}", path.display())
                    })?;
                    fieldreport_core::timestamp::certificates_from_pem(&pem)
                        .map_err(|e| anyhow::anyhow!("--tsa-cert {}: {e}", path.display()))?
                }
                None => Vec::new(),
            };
            let witnesses = witnesses
                .iter()
                .map(|k| {
                    fieldreport_core::tlog::CosignerKey::parse(k.trim())
                        .map_err(|e| anyhow::anyhow!("--witness is not a cosigner key: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut names = std::collections::BTreeSet::new();
            for w in &witnesses {
                if !names.insert(w.name.as_str()) {
                    anyhow::bail!("--witness names {} twice", w.name);
                }
            }
            if let Some(q) = witness_quorum {
                if q > witnesses.len() {
                    anyhow::bail!(
                        "--witness-quorum {q} is more than the {} --witness keys given",
                        witnesses.len()
                    );
                }
            }
            let options = fieldreport_core::evidence::package::VerifyOptions {
                log_key: log_key
                    .map(|k| {
                        fieldreport_core::tlog::NoteVerifier::parse(k.trim())
                            .map_err(|e| anyhow::anyhow!("--log-key is not a verifier key: {e}"))
                    })
                    .transpose()?,
                without_log,
                timestamp_anchors,
                witnesses,
                witness_quorum,
            };
            let bar = progress_bar();
            let b = bar.clone();
            let verdict = tokio::task::spawn_blocking(move || {
                fieldreport_core::evidence::package::verify_package_with(
                    &dir,
                    &options,
                    &mut |done, total| {
                        b.set_message("hashing");
                        b.set_length(total);
                        b.set_position(done);
                    },
                )
            })
            .await?;
            bar.finish_and_clear();
            let verdict = verdict?;
            print!("{verdict}");
            if !verdict.is_ok() {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A progress bar on stderr; invisible when stderr is not a terminal.
fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>10} [{bar:40}] {percent:>3}% {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Records an administrator's console command in the audit log: what, on
/// what (ids only, never a name or star number) and how it ended.
/// Appends the restore entry to the log, and audits it.
async fn record_restore(
    storage: &dyn crate::storage::StationStorage,
    backup_at_ms: i64,
) -> anyhow::Result<u64> {
    let index = storage.record_restore(backup_at_ms).await?;
    admin_audit(
        storage,
        "station restored from backup",
        format!("backup at {backup_at_ms} ms, log size {index}, restore entry {index}"),
        "ok",
    )
    .await?;
    Ok(index)
}

async fn admin_audit(
    storage: &dyn crate::storage::StationStorage,
    action: &str,
    target: String,
    outcome: &str,
) -> anyhow::Result<()> {
    storage
        .audit(crate::storage::AuditEntry {
            id: 0,
            at_ms: storage.clock().now_ms(),
            actor: "admin".into(),
            action: action.into(),
            target,
            outcome: outcome.into(),
        })
        .await?;
    Ok(())
}
