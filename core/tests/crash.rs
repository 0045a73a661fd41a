//! Crash test: a child process capturing into a store is SIGKILLed at random
//! moments, many times. After each kill the store opens, every change that
//! was acknowledged to the caller is there, the log verifies (signatures,
//! chains, sequence numbers) and the materialised reports equal a rebuild
//! from the log: no partial change exists.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use fieldreport_core::store::{MediaMeta, Store};
use fieldreport_core::{ChangeId, ListQuery, Role, Value};
use uuid::Uuid;

const CHILD_ENV: &str = "FR_CRASH_CHILD_DIR";

/// The child: captures forever, printing each acknowledged change id.
#[test]
#[ignore = "run by crash_loop as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let s = Store::open(&dir).unwrap();
    if s.identity().is_none() {
        s.create_identity(person("Child", Role::Officer)).unwrap();
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut ack = |id: ChangeId| {
        writeln!(out, "ACK {} {}", id.device, id.seq).unwrap();
        out.flush().unwrap();
    };
    let photo = dir.join("photo.bin");
    std::fs::write(&photo, vec![7u8; 300_000]).unwrap();
    let mut i = 0u64;
    loop {
        let report = match s
            .list_reports(&ListQuery {
                limit: 1,
                ..Default::default()
            })
            .unwrap()
            .first()
        {
            Some(r) if !i.is_multiple_of(40) => r.id,
            _ => {
                let r = s.create_report().unwrap();
                let c = s.report_changes(r).unwrap();
                ack(c[0].id());
                r
            }
        };
        i += 1;
        let id = match i % 5 {
            0 => {
                let m = s
                    .attach_media(
                        report,
                        &photo,
                        MediaMeta {
                            mime_type: "image/jpeg".into(),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                let r = s.report_changes(report).unwrap();
                let c = r
                    .iter()
                    .find(|c| {
                        c.body()
                            .ops
                            .iter()
                            .any(|o| o.target.path().ends_with(&m.entry.to_string()))
                    })
                    .unwrap();
                c.id()
            }
            1 => {
                let e = s
                    .add_entry(
                        report,
                        "force",
                        vec![("description".into(), Value::Text(format!("d{i}")))],
                    )
                    .unwrap();
                let r = s.report_changes(report).unwrap();
                r.iter()
                    .find(|c| {
                        c.body()
                            .ops
                            .iter()
                            .any(|o| o.target.path().contains(&e.to_string()))
                    })
                    .unwrap()
                    .id()
            }
            _ => s
                .set_field(report, "narrative", Value::Text(format!("edit {i}")))
                .unwrap(),
        };
        ack(id);
    }
}

#[test]
fn crash_loop() {
    let rounds: u32 = std::env::var("FR_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let d = tempfile::tempdir().unwrap(); // a real disk: fsync matters here
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<ChangeId> = Vec::new();
    let mut seed = 0x9e3779b97f4a7c15u64;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, d.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The test runner may print `test … ` before the first
                // line on the same line.
                let Some(at) = line.find("ACK ") else {
                    continue;
                };
                let parts: Vec<&str> = line[at..].split_whitespace().collect();
                if let ["ACK", dev, seq] = parts.as_slice() {
                    let _ = tx.send(ChangeId {
                        device: Uuid::parse_str(dev).unwrap(),
                        seq: seq.parse().unwrap(),
                    });
                }
            }
        });
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait_ms = 5 + (seed >> 33) % 120;
        std::thread::sleep(Duration::from_millis(wait_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        acked.extend(rx.try_iter());

        let s = Store::open(d.path())
            .unwrap_or_else(|e| panic!("round {round}: store does not open: {e}"));
        let count = s
            .verify_integrity()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        for id in &acked {
            assert!(
                s.has_change(*id).unwrap(),
                "round {round}: acknowledged change {id} lost"
            );
        }
        assert!(count >= acked.len() as u64);
    }
    assert!(
        acked.len() > rounds as usize,
        "the child made progress ({} changes)",
        acked.len()
    );
    eprintln!(
        "crash_loop: {rounds} kills, {} acknowledged changes, 0 lost",
        acked.len()
    );
}
