//! Power loss at the station: a `serve` process on its embedded SQLite,
//! with its media, on a file system that keeps only what was synced
//! (`lazyfs`, the core's power-loss test's FUSE file system), while three
//! phones push edits and photos. The power is cut at random moments and
//! at chosen fsyncs, the station killed, the disk as it then was mounted
//! again, and checked: the database opens and its log checks
//! (`log-check`), every change a phone was given a receipt for is there,
//! and every photo the station holds as complete is whole. Then the
//! station serves again from that disk and the phones finish.
//!
//! `FR_POWER_ROUNDS` sets the rounds (default 200), `FR_POWER_SEED` the
//! seed. Needs root and /dev/fuse (skipped with a message otherwise,
//! failed when `FR_REQUIRE_TOOLS` is set). SQLite only.

#[path = "../../core/tests/lazyfs/mod.rs"]
mod lazyfs;

use lazyfs::{skip, Rng};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fieldreport_core::store::{Store, StoreOptions};
use fieldreport_core::sync::{NoProgress, StationPin, SyncClient};
use fieldreport_core::{Change, Role, Value};
use fieldreport_e2e::*;
use fieldreport_station::storage::StationStorage;
use fieldreport_station::SqliteStorage;
use sha2::Digest;

const CLI: &str = env!("CARGO_BIN_EXE_station-cli");

/// A `serve` process, killed when dropped (a failing round leaves no
/// station behind holding the mount).
struct Station(Child);

impl Station {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Station {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `serve` on `data`, at `port`; its key pin.
fn serve(data: &Path, port: u16) -> (Station, StationPin) {
    let mut child = Command::new(CLI)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pin = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        match line {
            Ok(l) if l.starts_with("serving on") => {
                return (Station(child), pin.expect("the station prints its pin"));
            }
            Ok(l) => {
                if let Some(p) = l.strip_prefix("station pin: ") {
                    pin = Some(StationPin::parse(p.trim()).unwrap());
                }
            }
            Err(e) => panic!("the station did not start: {e}"),
        }
    }
    panic!("the station did not start");
}

/// The station's data on the disk the power cut left: its keys are the
/// ones it started with, it opens, its log checks, it holds every change
/// `acked` lists, and every photo those attach is complete and whole, as
/// is every photo it holds as complete. Returns the photos checked.
fn check(data: &Path, keys: &[(String, Vec<u8>)], acked: &[Change], round: u32) -> usize {
    for (file, bytes) in keys {
        assert_eq!(
            std::fs::read(data.join(file)).ok().as_ref(),
            Some(bytes),
            "round {round}: {file} lost or changed"
        );
    }
    let storage = SqliteStorage::open(data)
        .unwrap_or_else(|e| panic!("round {round}: the station does not open: {e}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let found = rt.block_on(storage.check_log()).unwrap();
    assert!(found.ok(), "round {round}: {:?}", found.problems);
    drop(storage);
    let db = rusqlite::Connection::open(data.join("station.db")).unwrap();
    for c in acked {
        let held: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM changes WHERE device_id = ?1 AND seq = ?2",
                rusqlite::params![c.device().as_bytes().as_slice(), c.body().seq as i64],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            held,
            1,
            "round {round}: acknowledged change {} lost",
            c.id()
        );
    }
    let mut complete: std::collections::BTreeSet<String> = db
        .prepare("SELECT sha256 FROM media WHERE complete = 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for sha in fieldreport_core::model::media_refs(acked) {
        assert!(
            complete.contains(&sha),
            "round {round}: photo {sha} of an acknowledged change not complete"
        );
    }
    let photos = complete.len();
    for sha in std::mem::take(&mut complete) {
        let path = data.join("media").join(&sha[..2]).join(&sha);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("round {round}: complete photo {sha} missing: {e}"));
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            sha,
            "round {round}: photo {sha} torn"
        );
    }
    photos
}

/// Every change a phone has had acknowledged (its own; a phone here holds
/// only its own).
fn acknowledged(phones: &[(Store, tempfile::TempDir)]) -> Vec<Change> {
    let mut out = Vec::new();
    for (s, _) in phones {
        let waiting: std::collections::HashSet<_> =
            s.outbox(10_000).unwrap().iter().map(Change::id).collect();
        for r in s.list_reports(&Default::default()).unwrap() {
            out.extend(
                s.report_changes(r.id)
                    .unwrap()
                    .into_iter()
                    .filter(|c| !waiting.contains(&c.id())),
            );
        }
    }
    out
}

#[test]
fn a_station_losing_power_keeps_every_change_and_photo_it_acknowledged() {
    if on_postgres() {
        return;
    }
    if !lazyfs::available() {
        return;
    }
    let rounds = lazyfs::rounds();
    let seed = test_seed("FR_POWER_SEED");
    let mut rng = Rng(seed);
    let mnt = tempfile::tempdir().unwrap();
    let data = mnt.path().join("station");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("https://127.0.0.1:{port}");

    // The station made, and three phones enrolled, on the lazy disk.
    let (fs, session) = match lazyfs::mount(mnt.path(), None) {
        Ok(m) => m,
        Err(e) => return skip(&format!("cannot mount the power-loss file system: {e}")),
    };
    let codes: Vec<String> = {
        let storage = SqliteStorage::open(&data).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        (0..3)
            .map(|i| {
                rt.block_on(storage.create_enrollment(
                    person(&format!("Pwr{i}"), &format!("9300{i}"), Role::Officer, "D9"),
                    600_000,
                ))
                .unwrap()
                .0
            })
            .collect()
    };
    let (mut station, pin) = serve(&data, port);
    let phones: Vec<(Store, tempfile::TempDir)> = codes
        .iter()
        .map(|code| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open_with(dir.path(), StoreOptions::default()).unwrap();
            SyncClient::enroll_pinned(&store, &url, code, Some(pin)).unwrap();
            (store, dir)
        })
        .collect();
    let reports: Vec<uuid::Uuid> = phones
        .iter()
        .map(|(s, _)| s.create_report().unwrap())
        .collect();
    // Everything so far made durable (a clean shutdown), then the rounds.
    station.kill();
    let mut disk = Some(fs.cut_power());
    drop(session);
    let _ = fs;
    // The keys as they are now, on the durable disk: every later round
    // must find them unchanged (phones pinned the TLS key).
    let keys: Vec<(String, Vec<u8>)> = {
        let (_fs, session) = lazyfs::mount(mnt.path(), disk.clone()).unwrap();
        let keys = [
            "log.key",
            "keys/station.key",
            "tls/station-cert.pem",
            "tls/station-key.pem",
        ]
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(data.join(f))
                .unwrap_or_else(|e| panic!("{f} lost at the first clean stop: {e}"));
            (f.to_string(), bytes)
        })
        .collect();
        drop(session);
        keys
    };

    let (mut at_sync, mut at_random, mut syncs, mut progressed) = (0u32, 0u32, 0u64, 0u32);
    let mut before: u64 = 0;
    let started = Instant::now();
    for round in 0..rounds {
        for (k, ((s, dir), r)) in phones.iter().zip(&reports).enumerate() {
            s.set_field(*r, "narrative", Value::Text(format!("round {round}")))
                .unwrap();
            if (round as usize + k).is_multiple_of(7) {
                let photo = dir.path().join("p.jpg");
                let bytes: Vec<u8> = (0..(300_000 + 1000 * round as usize))
                    .map(|i| {
                        (i as u8)
                            .wrapping_mul(13)
                            .wrapping_add(round as u8 + k as u8)
                    })
                    .collect();
                std::fs::write(&photo, bytes).unwrap();
                s.attach_media(
                    *r,
                    &photo,
                    fieldreport_core::store::MediaMeta {
                        mime_type: "image/jpeg".into(),
                        ..Default::default()
                    },
                )
                .unwrap();
            }
        }
        let (fs, session) = lazyfs::mount(mnt.path(), disk.take()).unwrap();
        let (mut station, pin) = serve(&data, port);
        assert_eq!(
            Some(pin),
            pin_of(&phones[0].0),
            "round {round}: a new TLS key"
        );
        let chosen = round.is_multiple_of(2);
        if chosen {
            fs.cut_at_sync(fs.syncs() + 1 + rng.next(30));
        }
        let wait = Duration::from_millis(rng.next(300));
        let cut = std::thread::scope(|sc| {
            for ((s, _), _) in phones.iter().zip(&reports) {
                let (url, pin) = (&url, pin);
                sc.spawn(move || {
                    let cred = s.sync_value("station_credential").unwrap().unwrap();
                    let mut client = SyncClient::new(url, &cred, Some(pin)).unwrap();
                    client.max_attempts = 1;
                    let _ = client.sync(s, &NoProgress, &Default::default());
                });
            }
            let cut = if chosen {
                let deadline = Instant::now() + wait + Duration::from_secs(5);
                loop {
                    if let Some(d) = fs.take_cut() {
                        break d;
                    }
                    if Instant::now() > deadline {
                        break fs.cut_power();
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            } else {
                std::thread::sleep(wait);
                fs.cut_power()
            };
            // The machine is off: the station goes with its disk, and the
            // phones' requests end.
            station.kill();
            cut
        });
        if chosen {
            at_sync += 1;
        } else {
            at_random += 1;
        }
        syncs += fs.syncs();
        drop(session);

        let acked = acknowledged(&phones);
        let now = acked.len() as u64;
        if now > before {
            progressed += 1;
        }
        before = now;
        let (_fs, session) = lazyfs::mount(mnt.path(), Some(cut.clone())).unwrap();
        check(&data, &keys, &acked, round);
        drop(session);
        disk = Some(cut);
    }

    // Served again from the last disk, the phones finish: nothing is left
    // behind, and the station holds each phone's every change.
    let (_fs, session) = lazyfs::mount(mnt.path(), disk.take()).unwrap();
    let (mut station, _) = serve(&data, port);
    for (s, _) in &phones {
        let cred = s.sync_value("station_credential").unwrap().unwrap();
        let client = SyncClient::new(&url, &cred, pin_of(s)).unwrap();
        let mut last = None;
        for _ in 0..20 {
            match client.sync(s, &NoProgress, &Default::default()) {
                Ok(_) if s.outbox_len().unwrap() == 0 && s.pending_media().unwrap().is_empty() => {
                    last = None;
                    break;
                }
                Ok(r) => last = Some(format!("{r:?}")),
                Err(e) => last = Some(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            last.is_none(),
            "a phone could not finish its sync: {last:?}"
        );
    }
    station.kill();
    let acked = acknowledged(&phones);
    let photos = check(&data, &keys, &acked, rounds);
    drop(session);
    let total = acked.len();
    eprintln!(
        "station power loss: {rounds} power cuts ({at_sync} at a chosen fsync, {at_random} at a random moment; {syncs} fsyncs seen), {progressed} rounds with pushes acknowledged, {total} changes and {photos} photos held, lost 0, torn 0, in {:.0?} (seed {seed})",
        started.elapsed()
    );
    assert!(photos > 0, "photos were uploaded");
    assert!(
        progressed >= rounds / 4,
        "pushes went through in {progressed} of {rounds} rounds: the rounds tested little"
    );
}
