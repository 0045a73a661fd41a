//! Core benchmarks, each beside its baseline measured in the same run:
//!
//! - one durable local edit vs a raw rusqlite INSERT of the same bytes with
//!   the same pragmas (goal ≤ 2×), median and p99;
//! - applying 100k remote changes (decode + verify + merge + store) vs
//!   Ed25519 verification of the same changes alone (goal ≤ 1.5×);
//! - media ingest of a 200 MB file vs `openssl dgst -sha256` + `cp` + `sync`
//!   (goal ≤ 1× their sum).
//!
//! Run by `fieldreport-bench` (`edit`, `apply`, `media`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fieldreport_core::crdt::{Action, ChangeBody, Hlc, Operation, Target};
use fieldreport_core::evidence::DeviceIdentity;
use fieldreport_core::store::{MediaMeta, Store};
use fieldreport_core::{Change, Origin, Person, Role, Value};
use rusqlite::{params, Connection};
use uuid::Uuid;

use crate::report::Row;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn person(i: usize) -> Person {
    Person {
        name: format!("Officer {i}"),
        star_number: format!("{i}"),
        role: Role::Officer,
        unit: "D9".into(),
    }
}

fn bench_local_edit(dir: &Path, n: usize) -> Vec<Row> {
    let store = Store::open(dir.join("edit-store")).unwrap();
    store.create_identity(person(0)).unwrap();
    let reports: Vec<Uuid> = (0..50).map(|_| store.create_report().unwrap()).collect();
    // The raw baseline: the same bytes (an encoded change + signature),
    // same pragmas, one INSERT per transaction.
    let sample = store.report_changes(reports[0]).unwrap();
    let bytes: Vec<u8> = [sample[0].bytes(), sample[0].signature().as_slice()].concat();
    let conn = Connection::open(dir.join("raw.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.pragma_update(None, "temp_store", "MEMORY").unwrap();
    conn.pragma_update(None, "foreign_keys", "ON").unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        .unwrap();
    let text = "The supervising agent refused to give a name; badge seen partially. ".repeat(3);
    let mut ours = Vec::with_capacity(n);
    let mut raw = Vec::with_capacity(n);
    let mut change_len = 0;
    // Interleaved, so both see the same disk conditions.
    for i in 0..n {
        let r = reports[i % reports.len()];
        let value = format!("{text}{i}");
        let t = Instant::now();
        store
            .set_field(r, "narrative", Value::Text(value.clone()))
            .unwrap();
        ours.push(t.elapsed());
        change_len = bytes.len().max(value.len() + 100);
        let t = Instant::now();
        conn.execute(
            "INSERT INTO t (body) VALUES (?1)",
            params![[bytes.as_slice(), value.as_bytes()].concat()],
        )
        .unwrap();
        raw.push(t.elapsed());
    }
    ours.sort();
    raw.sort();
    let mut rows = Vec::new();
    for (label, p) in [("median", 0.5), ("p99", 0.99)] {
        let (o, b) = (percentile(&ours, p), percentile(&raw, p));
        rows.push(Row::ratio(
            format!("one durable local edit, {label} ({n} edits, ~{change_len} B)"),
            us(o),
            format!("{} raw INSERT", us(b)),
            o.as_secs_f64() / b.as_secs_f64(),
            2.0,
        ));
    }
    rows
}

/// A change as it travels: canonical body bytes and signature.
pub(crate) type WireChange = (Vec<u8>, [u8; 64]);

/// `devices` devices × `reports` reports × `edits` changes, signed, chained.
pub(crate) fn remote_changes(
    devices: usize,
    reports: usize,
    edits: usize,
) -> (Vec<DeviceIdentity>, Vec<WireChange>) {
    let ids: Vec<DeviceIdentity> = (0..devices)
        .map(|i| {
            let mut secret = [0u8; 32];
            secret[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            DeviceIdentity::from_secret(Uuid::from_u128(i as u128 + 1), secret, person(i))
        })
        .collect();
    let mut out = Vec::with_capacity(devices * reports * edits);
    for id in &ids {
        let mut seq = 0;
        for r in 0..reports {
            let report = Uuid::from_u128(((id.device_id().as_u128()) << 32) | r as u128);
            let mut prev = None;
            for e in 0..edits {
                seq += 1;
                let body = ChangeBody {
                    format: 1,
                    report,
                    device: id.device_id(),
                    seq,
                    hlc: Hlc {
                        wall_ms: 1_764_000_000_000 + seq,
                        counter: 0,
                    },
                    wall_clock_ms: 1_764_000_000_000 + seq as i64,
                    prev,
                    ops: vec![Operation {
                        target: Target::Field(
                            if e % 2 == 0 {
                                "narrative"
                            } else {
                                "location.district"
                            }
                            .into(),
                        ),
                        action: Action::Set(Value::Text(format!("edit {e} of report {r}"))),
                        pred: if e >= 2 {
                            vec![fieldreport_core::crdt::OpId {
                                device: id.device_id(),
                                seq: seq - 2,
                                index: 0,
                            }]
                        } else {
                            vec![]
                        },
                    }],
                };
                let c = Change::sign(body, &id.signing_key).unwrap();
                prev = Some(*c.hash());
                out.push((c.bytes().to_vec(), *c.signature()));
            }
        }
    }
    (ids, out)
}

fn bench_apply(dir: &Path, devices: usize, reports: usize, edits: usize) -> Vec<Row> {
    let (ids, wire) = remote_changes(devices, reports, edits);
    let n = wire.len();
    // Baseline: Ed25519 verification of the same changes, one by one, one core.
    let keys: Vec<_> = ids.iter().map(|i| i.signing_key.verifying_key()).collect();
    let mut msg = Vec::new();
    let t = Instant::now();
    for (k, (bytes, sig)) in wire.iter().enumerate() {
        msg.clear();
        msg.extend_from_slice(fieldreport_core::crdt::change::SIGNING_CONTEXT);
        msg.extend_from_slice(bytes);
        keys[k / (reports * edits)]
            .verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(sig))
            .unwrap();
    }
    let verify = t.elapsed();

    let store = Store::open(dir.join("apply-store")).unwrap();
    for id in &ids {
        store.add_known_device(&id.record).unwrap();
    }
    let t = Instant::now();
    for batch in wire.chunks(1000) {
        let changes: Vec<Change> = batch
            .iter()
            .map(|(b, s)| Change::from_parts(b.clone(), *s).unwrap())
            .collect();
        store.apply_changes(changes, Origin::Station).unwrap();
    }
    let apply = t.elapsed();
    assert_eq!(store.change_count().unwrap(), n as u64);
    vec![Row::ratio(
        format!("apply {n} remote changes (decode+verify+merge+store, batches of 1000)"),
        format!(
            "{:.2} s ({:.0}/s)",
            apply.as_secs_f64(),
            n as f64 / apply.as_secs_f64()
        ),
        format!(
            "{:.2} s Ed25519 verify_strict alone, 1 core ({:.0}/s)",
            verify.as_secs_f64(),
            n as f64 / verify.as_secs_f64()
        ),
        apply.as_secs_f64() / verify.as_secs_f64(),
        1.5,
    )]
}

fn run(cmd: &str, args: &[&str]) {
    let ok = Command::new(cmd)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success());
    assert!(matches!(ok, Ok(true)), "{cmd} failed");
}

fn bench_media(dir: &Path, mb: usize) -> Vec<Row> {
    let src = dir.join("big.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        let mut x = 0x12345678u64;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mb {
            for chunk in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf).unwrap();
        }
    }
    run("sync", &[]);
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let rounds = 5;
    for round in 0..rounds {
        let mut measure_ours = || {
            let store = Store::open(dir.join(format!("media-store-{round}"))).unwrap();
            store.create_identity(person(0)).unwrap();
            let r = store.create_report().unwrap();
            let t = Instant::now();
            store
                .attach_media(
                    r,
                    &src,
                    MediaMeta {
                        mime_type: "video/mp4".into(),
                        ..Default::default()
                    },
                )
                .unwrap();
            ours.push(t.elapsed());
        };
        let mut measure_base = || {
            let dest = dir.join(format!("copy-{round}.bin"));
            let t = Instant::now();
            run("openssl", &["dgst", "-sha256", src.to_str().unwrap()]);
            run("cp", &[src.to_str().unwrap(), dest.to_str().unwrap()]);
            run("sync", &[]);
            base.push(t.elapsed());
        };
        // Alternate who goes first, so neither always meets a busier disk.
        if round % 2 == 0 {
            measure_ours();
            measure_base();
        } else {
            measure_base();
            measure_ours();
        }
        run("sync", &[]);
    }
    ours.sort();
    base.sort();
    let (o, b) = (ours[rounds / 2], base[rounds / 2]);
    vec![Row::ratio(
        format!("media ingest of a {mb} MB file (hash + durable copy, not yet encrypted: issue 7), median of 5"),
        format!(
            "{:.2} s ({:.0} MB/s)",
            o.as_secs_f64(),
            mb as f64 / o.as_secs_f64()
        ),
        format!("{:.2} s openssl dgst + cp + sync", b.as_secs_f64()),
        o.as_secs_f64() / b.as_secs_f64(),
        1.0,
    )]
}

/// Edit, apply and media rows.
pub fn rows(dir: &Path, quick: bool, only: &dyn Fn(&str) -> bool) -> Vec<Row> {
    let mut rows = Vec::new();
    if only("edit") {
        rows.extend(bench_local_edit(dir, if quick { 300 } else { 2000 }));
    }
    if only("apply") {
        rows.extend(if quick {
            bench_apply(dir, 20, 10, 10)
        } else {
            bench_apply(dir, 100, 50, 20)
        });
    }
    if only("media") {
        rows.extend(bench_media(dir, if quick { 20 } else { 200 }));
    }
    rows
}
