//! Station-day simulation on loopback: N devices × R reports × E edits plus
//! P photos of 2 MB each per device, pushed concurrently, then pulled by 10
//! supervisors. The station runs in a child process (this binary in serve
//! mode) so its peak RSS is its own. Also measures the wire bytes of a
//! one-field edit against the whole report as JSON.
//!
//! Run by `fieldreport-bench` (`station-day`, `wire`).

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use fieldreport_core::crdt::{Action, ChangeBody, Hlc, OpId, Operation, Target};
use fieldreport_core::evidence::DeviceIdentity;
use fieldreport_core::sync::wire::*;
use fieldreport_core::{Change, Person, Role, Value};
use fieldreport_station::storage::postgres::PostgresStorage;
use fieldreport_station::{SqliteStorage, StationStorage};
use sha2::Digest;
use uuid::Uuid;

use crate::report::Row;

const SERVE_ENV: &str = "FR_STATION_DAY_SERVE";
/// The child's PostgreSQL database, when the day runs on that engine.
const DATABASE_ENV: &str = "FR_STATION_DAY_DATABASE";

/// The child's log switch: `off` runs the baseline without the
/// transparency log.
const LOG_ENV: &str = "FR_STATION_DAY_LOG";

/// Opens the engine (blocking: outside the async workers).
fn open(
    dir: &std::path::Path,
    database: Option<&str>,
    log_on: bool,
) -> anyhow::Result<Arc<dyn StationStorage>> {
    Ok(match (database, log_on) {
        (Some(url), true) => Arc::new(PostgresStorage::open(url, dir)?),
        (Some(url), false) => {
            Arc::new(PostgresStorage::open(url, dir)?.without_log_for_benchmark())
        }
        (None, true) => Arc::new(SqliteStorage::open(dir)?),
        (None, false) => Arc::new(SqliteStorage::open(dir)?.without_log_for_benchmark()),
    })
}

/// A fresh database on the server of `admin_url`.
pub fn fresh_database(admin_url: &str) -> anyhow::Result<String> {
    let name = format!("fr_bench_{}", Uuid::new_v4().simple());
    let mut c = postgres::Client::connect(admin_url, postgres::NoTls)?;
    c.batch_execute(&format!("CREATE DATABASE {name}"))?;
    let (server, _) = admin_url
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("the database URL must end with /<database>"))?;
    Ok(format!("{server}/{name}"))
}
const UNIT: &str = "District 1";

struct Sizes {
    devices: usize,
    reports: usize,
    edits: usize,
    photos: usize,
    photo_bytes: usize,
    supervisors: usize,
}

fn serve(dir: &str) -> anyhow::Result<()> {
    let database = std::env::var(DATABASE_ENV).ok();
    let log_on = std::env::var(LOG_ENV).as_deref() != Ok("off");
    let storage = open(std::path::Path::new(dir), database.as_deref(), log_on)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        // Plain HTTP: this row compares the storage engines, and its
        // figures stay comparable with the runs before TLS.
        let st = fieldreport_station::spawn(l, storage, fieldreport_station::Transport::PlainHttp)
            .await?;
        println!("{}", st.url());
        // Serve until the parent closes our stdin.
        tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
        })
        .await?;
        st.stop().await;
        Ok(())
    })
}

fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn signed(
    id: &DeviceIdentity,
    report: Uuid,
    seq: u64,
    prev: Option<[u8; 32]>,
    ops: Vec<Operation>,
) -> Change {
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
        ops,
    };
    Change::sign(body, &id.signing_key).expect("valid generated change")
}

fn changes_for(id: &DeviceIdentity, d: usize, s: &Sizes, photos: &[(String, u64)]) -> Vec<Change> {
    let mut out = Vec::with_capacity(s.reports * s.edits);
    let mut seq = 0u64;
    let dev = id.device_id();
    for r in 0..s.reports {
        let report = Uuid::from_u128(((d as u128 + 1) << 64) | r as u128);
        let mut prev = None;
        let mut last_narrative: Option<OpId> = None;
        for e in 0..s.edits {
            seq += 1;
            let op = if e == 0 {
                // The creation: the draft and its reporting officer, as
                // the directory has this device's person.
                let p = &id.record.person;
                let set = |path: &str, v: &str| Operation {
                    target: Target::Field(path.into()),
                    action: Action::Set(Value::Text(v.into())),
                    pred: vec![],
                };
                let c = signed(
                    id,
                    report,
                    seq,
                    prev,
                    vec![
                        set("lifecycle.state", "draft"),
                        set("reporting_officer.name", &p.name),
                        set("reporting_officer.star_number", &p.star_number),
                        set("reporting_officer.unit", &p.unit),
                    ],
                );
                prev = Some(*c.hash());
                out.push(c);
                continue;
            } else if r == 0 && e <= photos.len() {
                let (sha, size) = &photos[e - 1];
                let entry = Uuid::from_u128(((d as u128 + 1) << 64) | (1 << 32) | e as u128);
                // One change: the entry, its hash and its size.
                let c = signed(
                    id,
                    report,
                    seq,
                    prev,
                    vec![
                        Operation {
                            target: Target::Entry {
                                collection: "media".into(),
                                entry,
                            },
                            action: Action::Add,
                            pred: vec![],
                        },
                        Operation {
                            target: Target::EntryField {
                                collection: "media".into(),
                                entry,
                                field: "sha256".into(),
                            },
                            action: Action::Set(Value::Text(sha.clone())),
                            pred: vec![],
                        },
                        Operation {
                            target: Target::EntryField {
                                collection: "media".into(),
                                entry,
                                field: "size".into(),
                            },
                            action: Action::Set(Value::Int(*size as i64)),
                            pred: vec![],
                        },
                    ],
                );
                prev = Some(*c.hash());
                out.push(c);
                continue;
            } else {
                let op = Operation {
                    target: Target::Field("narrative".into()),
                    action: Action::Set(Value::Text(format!("Narrative revision {e} of report {r}: agents arrived in two unmarked vehicles."))),
                    pred: last_narrative.into_iter().collect(),
                };
                last_narrative = Some(OpId {
                    device: dev,
                    seq,
                    index: 0,
                });
                op
            };
            let c = signed(id, report, seq, prev, vec![op]);
            prev = Some(*c.hash());
            out.push(c);
        }
    }
    out
}

async fn enroll(
    http: &reqwest::Client,
    url: &str,
    code: &str,
    id: &DeviceIdentity,
) -> anyhow::Result<String> {
    let resp: EnrollResponse = http
        .post(format!("{url}/v1/enroll"))
        .json(&EnrollRequest {
            code: code.into(),
            device_id: id.device_id(),
            public_key: hex::encode(id.record.public_key),
        })
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(resp.credential)
}

fn photo_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// In the child process: serve, and return true.
pub fn serve_if_child() -> anyhow::Result<bool> {
    match std::env::var(SERVE_ENV) {
        Ok(dir) => serve(&dir).map(|_| true),
        Err(_) => Ok(false),
    }
}

/// The day on SQLite (`database: None`) or on a PostgreSQL database.
pub fn run(
    target: &std::path::Path,
    quick: bool,
    database: Option<&str>,
) -> anyhow::Result<Vec<Row>> {
    Ok(day(target, quick, database, true)?.rows)
}

/// One day's figures.
struct Day {
    rows: Vec<Row>,
    push: std::time::Duration,
    total: std::time::Duration,
}

/// The log's cost: the SQLite day with the log, against the same day with
/// it off, in this run (the better of two days each, alternating, on the
/// full sizes; one each on the quick ones).
pub fn log_overhead(target: &std::path::Path, quick: bool) -> anyhow::Result<Vec<Row>> {
    let rounds = if quick { 1 } else { 2 };
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        off.push(day(target, quick, None, false)?);
        on.push(day(target, quick, None, true)?);
    }
    let best = |v: &[Day], f: fn(&Day) -> std::time::Duration| {
        v.iter().map(f).min().unwrap_or_default().as_secs_f64()
    };
    let mut rows = Vec::new();
    for (what, f) in [
        (
            "push phase",
            (|d: &Day| d.push) as fn(&Day) -> std::time::Duration,
        ),
        ("whole day", |d: &Day| d.total),
    ] {
        let (with, without) = (best(&on, f), best(&off, f));
        rows.push(Row::ratio(
            format!("station day (SQLite), {what}: transparency log on vs off"),
            format!("{with:.2} s"),
            format!("{without:.2} s"),
            with / without.max(1e-9),
            1.10,
        ));
    }
    Ok(rows)
}

fn day(
    target: &std::path::Path,
    quick: bool,
    database: Option<&str>,
    log_on: bool,
) -> anyhow::Result<Day> {
    let engine = if database.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let s = if quick {
        Sizes {
            devices: 20,
            reports: 5,
            edits: 10,
            photos: 1,
            photo_bytes: 2 << 20,
            supervisors: 3,
        }
    } else {
        Sizes {
            devices: 200,
            reports: 20,
            edits: 30,
            photos: 3,
            photo_bytes: 2 << 20,
            supervisors: 10,
        }
    };
    let data = tempfile::tempdir_in(target)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    if let Some(db) = database {
        cmd.env(DATABASE_ENV, db);
    }
    if !log_on {
        cmd.env(LOG_ENV, "off");
    }
    let mut child = cmd
        .env(SERVE_ENV, data.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    let url = line.trim().to_string();

    let admin = open(data.path(), database, log_on)?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let http = reqwest::Client::new();
        let person = |i: usize, role| Person {
            name: format!("P{i}"),
            star_number: format!("{i}"),
            role,
            unit: UNIT.into(),
        };
        let mut devices = Vec::new();
        for d in 0..s.devices {
            let id = DeviceIdentity::generate(person(d, Role::Officer))?;
            let (code, _) = admin
                .create_enrollment(id.record.person.clone(), 600_000)
                .await?;
            let cred = enroll(&http, &url, &code, &id).await?;
            devices.push((id, cred));
        }
        let mut sups = Vec::new();
        for i in 0..s.supervisors {
            let id = DeviceIdentity::generate(person(100_000 + i, Role::Supervisor))?;
            let (code, _) = admin
                .create_enrollment(id.record.person.clone(), 600_000)
                .await?;
            sups.push(enroll(&http, &url, &code, &id).await?);
        }

        // Push phase: every device at once.
        let t = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        for (d, (id, cred)) in devices.into_iter().enumerate() {
            let (http, url, sem) = (http.clone(), url.clone(), sem.clone());
            let sizes = Sizes {
                devices: s.devices,
                reports: s.reports,
                edits: s.edits,
                photos: s.photos,
                photo_bytes: s.photo_bytes,
                supervisors: s.supervisors,
            };
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire().await?;
                let mut photos = Vec::new();
                for p in 0..sizes.photos {
                    let bytes = photo_bytes((d * 10 + p) as u64 + 1, sizes.photo_bytes);
                    let sha = hex::encode(sha2::Sha256::digest(&bytes));
                    for (i, chunk) in bytes.chunks(1 << 20).enumerate() {
                        http.put(format!(
                            "{url}/v1/media/{sha}?offset={}&total={}",
                            i << 20,
                            bytes.len()
                        ))
                        .bearer_auth(&cred)
                        .body(chunk.to_vec())
                        .send()
                        .await?
                        .error_for_status()?;
                    }
                    photos.push((sha, bytes.len() as u64));
                }
                let changes =
                    tokio::task::spawn_blocking(move || changes_for(&id, d, &sizes, &photos))
                        .await?;
                for batch in changes.chunks(500) {
                    let body = PushRequest {
                        changes: batch.iter().map(WireChange::from_change).collect(),
                    };
                    http.post(format!("{url}/v1/changes"))
                        .bearer_auth(&cred)
                        .json(&body)
                        .send()
                        .await?
                        .error_for_status()?;
                }
                anyhow::Ok(changes.len())
            }));
        }
        let mut pushed = 0;
        for t in tasks {
            pushed += t.await??;
        }
        let push_time = t.elapsed();

        // Pull phase: every supervisor pulls the unit's whole log.
        let t = Instant::now();
        let mut tasks = Vec::new();
        for cred in sups {
            let (http, url) = (http.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let (mut after, mut n) = (0i64, 0usize);
                loop {
                    let page: PullResponse = http
                        .get(format!("{url}/v1/changes?after={after}&limit=1000"))
                        .bearer_auth(&cred)
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    n += page.changes.len();
                    after = page.next;
                    if !page.more {
                        return anyhow::Ok(n);
                    }
                }
            }));
        }
        let mut pulled = Vec::new();
        for t in tasks {
            pulled.push(t.await??);
        }
        let pull_time = t.elapsed();
        anyhow::Ok((pushed, push_time, pulled, pull_time))
    });
    let rss_kb = peak_rss_kb(pid);
    drop(child.stdin.take());
    let _ = child.wait();
    let (pushed, push_time, pulled, pull_time) = result?;
    assert!(
        pulled.iter().all(|&n| n == pushed),
        "every supervisor pulled every change: {pulled:?} of {pushed}"
    );

    let total = push_time + pull_time;
    println!(
        "  ({pushed} changes pushed; each supervisor pulled {})",
        pulled[0]
    );
    let rows = vec![
        Row::absolute(
            format!(
                "station day, {engine}: {} devices × {} reports × {} edits + {} × {} MB photos, pushed concurrently; pulled by {} supervisors",
                s.devices, s.reports, s.edits, s.photos, s.photo_bytes >> 20, s.supervisors
            ),
            format!(
                "{:.1} s (push {:.1} s, pull {:.1} s)",
                total.as_secs_f64(),
                push_time.as_secs_f64(),
                pull_time.as_secs_f64()
            ),
            "< 5 min",
            total.as_secs() < 300,
        ),
        Row::absolute(
            format!("station day, {engine}: station peak RSS (VmHWM of the station process)"),
            format!("{:.0} MB", rss_kb as f64 / 1024.0),
            "< 500 MB",
            rss_kb < 500 * 1024,
        ),
    ];
    Ok(Day {
        rows,
        push: push_time,
        total,
    })
}

/// Wire bytes of a one-field edit vs the whole report as JSON.
pub fn wire() -> anyhow::Result<Vec<Row>> {
    let id = DeviceIdentity::generate(Person {
        name: "W".into(),
        star_number: "w".into(),
        role: Role::Officer,
        unit: UNIT.into(),
    })?;
    let edit = Change::sign(
        ChangeBody {
            format: 1,
            report: Uuid::new_v4(),
            device: id.device_id(),
            seq: 31,
            hlc: Hlc {
                wall_ms: 1_764_000_000_000,
                counter: 0,
            },
            wall_clock_ms: 1_764_000_000_000,
            prev: Some([7; 32]),
            ops: vec![Operation {
                target: Target::Field("supervisory_federal_officer.badge_number".into()),
                action: Action::Set(Value::Text("CBP 4471".into())),
                pred: vec![OpId {
                    device: id.device_id(),
                    seq: 30,
                    index: 0,
                }],
            }],
        },
        &id.signing_key,
    )?;
    let body = serde_json::to_vec(&PushRequest {
        changes: vec![WireChange::from_change(&edit)],
    })?;
    let headers = format!(
        "POST /v1/changes HTTP/1.1\r\nhost: 127.0.0.1:8787\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\naccept: */*\r\n\r\n",
        "0".repeat(64),
        body.len()
    );
    let edit_wire = headers.len() + body.len();
    let dir = tempfile::tempdir()?;
    let demo_store = fieldreport_core::Store::open(dir.path())?;
    demo_store.install_identity(id)?;
    let r = demo_store.create_report()?;
    for (p, v) in [
        ("narrative", Value::Text("Agents arrived in two unmarked vehicles and detained a resident outside the store. ".repeat(20))),
        ("location.address", Value::Text("1800 block of S Blue Island Ave".into())),
        ("supervisory_federal_officer.badge_number", Value::Text("CBP 4471".into())),
    ] {
        demo_store.set_field(r, p, v)?;
    }
    let whole = demo_store.report_json(r)?.len();

    Ok(vec![Row::ratio(
        "bytes on the wire for a one-field edit (whole HTTP request)".into(),
        format!("{edit_wire} B"),
        format!("{whole} B: the whole report as JSON"),
        edit_wire as f64 / whole as f64,
        1.0,
    )
    .with_goal("≤ 2 KB", edit_wire <= 2048)])
}
