//! `fieldreport-bench`: every figure the project quotes, each beside its
//! baseline measured in the same run, printed as a table and written as
//! JSON. Workloads are generated deterministically (fixed seeds).
//!
//! ```text
//! cargo run --release -p fieldreport-bench -- all            # full sizes (< 20 min)
//! cargo run --release -p fieldreport-bench -- all --quick    # small sizes (CI)
//! cargo run --release -p fieldreport-bench -- run merge list # some scenarios
//! ```

mod core_figures;
mod lib_size;
mod list;
mod log_proofs;
mod merge;
mod photo_sync;
mod report;
mod station_day;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use report::Row;

const SCENARIOS: &[&str] = &[
    "edit",
    "apply",
    "merge",
    "list",
    "media",
    "station-day",
    "log-overhead",
    "log-proofs",
    "photo-sync",
    "wire",
    "size",
];

#[derive(Parser)]
#[command(
    name = "fieldreport-bench",
    about = "FieldReport figures beside their baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every scenario.
    All {
        /// Small sizes: checks the harness, not the figures.
        #[arg(long)]
        quick: bool,
        /// Where to write the JSON (default target/bench.json).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Some scenarios: edit, apply, merge, list, media, station-day,
    /// log-overhead, log-proofs, photo-sync, wire, size.
    Run {
        #[arg(required = true)]
        scenarios: Vec<String>,
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    // Child processes of the scenarios that measure a process's own RSS.
    if station_day::serve_if_child()? || photo_sync::device_if_child()? {
        return Ok(());
    }
    let cli = Cli::parse();
    let (scenarios, quick, json) = match cli.command {
        Cmd::All { quick, json } => (
            SCENARIOS.iter().map(|s| s.to_string()).collect(),
            quick,
            json,
        ),
        Cmd::Run {
            scenarios,
            quick,
            json,
        } => {
            if let Some(bad) = scenarios.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                anyhow::bail!("unknown scenario `{bad}`; known: {}", SCENARIOS.join(", "));
            }
            (scenarios, quick, json)
        }
    };
    let want = |name: &str| scenarios.iter().any(|s| s == name);
    // On the real disk (fsync costs included), not tmpfs.
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&target)?;
    let dir = tempfile::tempdir_in(&target)?;

    let started = std::time::Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut step = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<Vec<Row>>| {
        if !want(name) {
            return Ok::<_, anyhow::Error>(());
        }
        eprintln!("== {name}");
        let t = std::time::Instant::now();
        let r = f()?;
        eprintln!("   {name}: {:.1} s", t.elapsed().as_secs_f64());
        rows.extend(r);
        Ok(())
    };
    for name in ["edit", "apply"] {
        step(name, &mut || {
            Ok(core_figures::rows(dir.path(), quick, &|s| s == name))
        })?;
    }
    step("merge", &mut || merge::run(quick))?;
    step("list", &mut || list::run(dir.path(), quick))?;
    step("media", &mut || {
        Ok(core_figures::rows(dir.path(), quick, &|s| s == "media"))
    })?;
    step("station-day", &mut || {
        let mut r = station_day::run(dir.path(), quick, None)?;
        // PostgreSQL: a fresh database on the server FR_BENCH_DATABASE_URL
        // (or the tests' FR_TEST_DATABASE_URL) names.
        let server = std::env::var("FR_BENCH_DATABASE_URL")
            .or_else(|_| std::env::var("FR_TEST_DATABASE_URL"))
            .ok();
        match server {
            Some(server) => {
                let db = station_day::fresh_database(&server)?;
                r.extend(station_day::run(dir.path(), quick, Some(&db))?);
            }
            None => r.push(Row::pending(
                "station day, PostgreSQL (same workload)",
                "no server: set FR_BENCH_DATABASE_URL (scripts/pg-cluster.sh start DIR starts one)",
                "< 5 min, RSS < 500 MB",
            )),
        }
        Ok(r)
    })?;
    step("log-overhead", &mut || {
        station_day::log_overhead(dir.path(), quick)
    })?;
    step("log-proofs", &mut || log_proofs::run(quick))?;
    step("photo-sync", &mut || photo_sync::run(dir.path(), quick))?;
    step("wire", &mut station_day::wire)?;
    step("size", &mut || lib_size::run(quick))?;

    report::print_table(&rows);
    let missed = rows.iter().filter(|r| r.met == Some(false)).count();
    println!(
        "\n{} rows, {} goals missed, {} not measured; {:.0} s{}",
        rows.len(),
        missed,
        rows.iter().filter(|r| r.met.is_none()).count(),
        started.elapsed().as_secs_f64(),
        if quick {
            " (quick sizes: the figures are not the project's)"
        } else {
            ""
        }
    );
    let json_path = json.unwrap_or_else(|| target.join("bench.json"));
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&serde_json::json!({
            "quick": quick,
            "seconds": started.elapsed().as_secs_f64(),
            "rows": rows,
        }))?,
    )?;
    println!("JSON: {}", json_path.display());
    Ok(())
}
