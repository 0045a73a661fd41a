//! `fieldreport-station`: serve, enroll devices, run the demo.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use fieldreport_core::{Person, Role};
use fieldreport_station::config::Config;
use fieldreport_station::{SqliteStorage, StationStorage};

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
        /// TOML file with `listen` and `data`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:8787).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data directory (default ./station-data).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Create a one-time enrollment code for a person.
    Enroll {
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear line for the admin, whatever RUST_BACKTRACE says.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
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
        } => {
            let cfg = Config::load(config.as_deref(), env, listen, data)?;
            let storage: Arc<dyn StationStorage> = Arc::new(SqliteStorage::open(&cfg.data)?);
            let listener = tokio::net::TcpListener::bind(cfg.listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
            let station = fieldreport_station::spawn(listener, storage).await?;
            tracing::info!(url = %station.url(), data = %cfg.data.display(), "station serving");
            tokio::signal::ctrl_c().await?;
            tracing::info!("shutting down");
            station.stop().await;
        }
        Command::Enroll {
            data,
            config,
            name,
            star,
            role,
            unit,
            ttl_minutes,
        } => {
            if ttl_minutes <= 0 {
                anyhow::bail!("--ttl-minutes must be positive");
            }
            let cfg = Config::load(config.as_deref(), env, None, data)?;
            let storage = SqliteStorage::open(&cfg.data)?;
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
            let (code, expires) = storage
                .create_enrollment(person, ttl_minutes * 60_000)
                .await?;
            let expires = chrono::DateTime::from_timestamp_millis(expires).unwrap_or_default();
            println!("enrollment code: {code}");
            println!(
                "expires: {} (one use)",
                expires.format("%Y-%m-%d %H:%M UTC")
            );
        }
        Command::Demo { keep_running, data } => {
            fieldreport_station::demo::run(keep_running, data).await?;
        }
    }
    Ok(())
}
