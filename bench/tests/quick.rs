//! The harness must not rot: `all --quick` runs every scenario and writes
//! a row for each, with a ratio wherever there is a baseline.

use std::process::Command;

#[test]
fn all_quick_writes_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    // With a PostgreSQL server (scripts/test.sh starts one), the day runs
    // on that engine too; without, its row says so.
    let on_postgres = std::env::var_os("FR_TEST_DATABASE_URL").is_some();
    if !on_postgres && std::env::var_os("FR_REQUIRE_POSTGRES").is_some() {
        panic!("FR_REQUIRE_POSTGRES is set but FR_TEST_DATABASE_URL is not");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_fieldreport-bench"))
        .args(["all", "--quick", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| scenario | FieldReport | baseline (same run) |"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["quick"], true);
    let rows = v["rows"].as_array().unwrap();
    let has = |prefix: &str| {
        rows.iter()
            .any(|r| r["scenario"].as_str().unwrap().starts_with(prefix))
    };
    for prefix in [
        "one durable local edit, median",
        "one durable local edit, p99",
        "apply ",
        "merge only",
        "open a store holding",
        "media ingest",
        "station day, SQLite: ",
        "station day, SQLite: station peak RSS",
        "station day, PostgreSQL",
        "station day, PostgreSQL: station peak RSS",
        "station day (SQLite), push phase: transparency log on vs off",
        "station day (SQLite), whole day: transparency log on vs off",
        "log of 10000 leaves: inclusion proof size",
        "log of 10000 leaves: consistency proof",
        "sync of ",
        "bytes on the wire",
        "stripped release library size",
    ] {
        if prefix == "station day, PostgreSQL: station peak RSS" && !on_postgres {
            continue;
        }
        assert!(has(prefix), "no row `{prefix}…` in {v:#}");
    }
    for r in rows {
        let measured = !r["met"].is_null();
        let has_baseline = r["baseline"] != "—";
        if measured && has_baseline {
            let ratio = r["ratio"].as_f64().unwrap();
            assert!(ratio.is_finite() && ratio > 0.0, "{r}");
        }
        if !measured {
            assert!(
                r["ours"].as_str().unwrap().starts_with("not measured"),
                "{r}"
            );
        }
    }
}
