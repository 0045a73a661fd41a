//! The phone library's size: `fieldreport-ffi` built in the `mobile`
//! profile (opt-level z, LTO, one codegen unit, stripped, panics unwind),
//! for the host target; this machine has no Android or iOS toolchains.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

use crate::report::Row;

const GOAL_BYTES: u64 = 12 * 1024 * 1024;
const SCENARIO: &str = "stripped release library size, mobile profile";

pub fn run(quick: bool) -> anyhow::Result<Vec<Row>> {
    if quick {
        // The LTO build takes minutes; quick mode checks the harness only.
        return Ok(vec![Row::pending(
            SCENARIO,
            "quick mode skips the LTO build (`run size` measures it)",
            "≤ 12 MB",
        )]);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "-q",
            "-p",
            "fieldreport-ffi",
            "--lib",
            "--profile",
            "mobile",
        ])
        .status()
        .context("running cargo build --profile mobile")?;
    anyhow::ensure!(status.success(), "the mobile build failed");
    let so = root.join("target/mobile/libfieldreport_ffi.so");
    let bytes = std::fs::metadata(&so)
        .with_context(|| format!("{} after the build", so.display()))?
        .len();
    Ok(vec![Row::absolute(
        format!("{SCENARIO} ({} .so)", std::env::consts::ARCH),
        format!("{:.2} MB", bytes as f64 / (1024.0 * 1024.0)),
        "≤ 12 MB",
        bytes <= GOAL_BYTES,
    )])
}
