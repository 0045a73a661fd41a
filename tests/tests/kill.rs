//! Kill loops. A device process syncing a growing backlog (changes and
//! photos) is SIGKILLed at random points and restarted; a station process
//! is SIGKILLed and restarted while devices push concurrently. Afterwards
//! every change exists exactly once at the station and on the devices, and
//! every replica converges. `FR_KILL_ROUNDS` (default 200 each) and
//! `FR_KILL_SEED` (to replay) tune it; the counts are printed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fieldreport_core::store::{MediaMeta, Store};
use fieldreport_core::sync::{NoProgress, SyncClient};
use fieldreport_core::{Role, Value};
use fieldreport_e2e::*;

const DEVICE: &str = env!("CARGO_BIN_EXE_device-sync");
const CLI: &str = env!("CARGO_BIN_EXE_station-cli");

fn rounds() -> usize {
    std::env::var("FR_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

struct Rng(u64);
impl Rng {
    fn seeded() -> Rng {
        Rng(test_seed("FR_KILL_SEED"))
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn final_sync(store: &Store, url: &str, credential: &str) {
    let client = SyncClient::new(url, credential, pin_of(store)).unwrap();
    for _ in 0..50 {
        if client.sync(store, &NoProgress, &Default::default()).is_ok()
            && store.outbox_len().unwrap() == 0
            && store.pending_media().unwrap().is_empty()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the final sync did not complete");
}

#[test]
fn a_device_killed_mid_sync_loses_and_duplicates_nothing() {
    let mut rng = Rng::seeded();
    let st = TestStation::start();
    let sup = st.device(&person("S", "900", Role::Supervisor, "D9"), None);
    let phone = tempfile::tempdir().unwrap();
    let dir = phone.path().to_path_buf();
    let (cred, report) = {
        let store = Store::open(&dir).unwrap();
        let code = st.code(&person("O", "101", Role::Officer, "D9"), 600_000);
        SyncClient::enroll(&store, &st.url, &code).unwrap();
        let report = store.create_report().unwrap();
        let cred = store.sync_value("station_credential").unwrap().unwrap();
        (cred, report)
        // The store closes here: the child processes own it from now on.
    };
    let (mut killed, mut completed, mut photos) = (0, 0, 0);
    for round in 0..rounds() {
        // Between rounds the app captures more (the store is closed in between).
        {
            let s = Store::open(&dir).unwrap();
            for e in 0..5 {
                s.set_field(
                    report,
                    "narrative",
                    Value::Text(format!("round {round} edit {e}")),
                )
                .unwrap();
            }
            if round % 20 == 0 {
                let p = dir.join(format!("photo-{round}.jpg"));
                std::fs::write(&p, vec![(round % 251) as u8; 400_000 + round]).unwrap();
                s.attach_media(
                    report,
                    &p,
                    MediaMeta {
                        mime_type: "image/jpeg".into(),
                        ..Default::default()
                    },
                )
                .unwrap();
                photos += 1;
            }
        }
        let mut child = Command::new(DEVICE)
            .arg(&dir)
            .arg(&st.url)
            .arg(&cred)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(40)));
        match child.try_wait().unwrap() {
            Some(_) => completed += 1,
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                killed += 1;
            }
        }
    }
    let store = Store::open(&dir).unwrap();
    final_sync(&store, &st.url, &cred);
    final_sync(&sup.store, &st.url, &sup.credential());
    let counts = st.counts();
    let changes = store.change_count().unwrap();
    eprintln!(
        "device kill loop: rounds {}, killed mid-sync {killed}, completed {completed}, changes {changes}, photos {photos}, lost: {}, duplicated: {}",
        rounds(),
        changes.saturating_sub(counts.changes),
        counts.changes.saturating_sub(changes)
    );
    assert!(killed > 0, "some syncs were killed");
    assert_eq!(counts.changes, changes, "every change once at the station");
    assert_eq!(counts.media_complete, photos);
    assert!(store.verify_integrity().is_ok());
    assert_eq!(
        sup.store.report_json(report).unwrap(),
        store.report_json(report).unwrap()
    );
}

/// A `serve` process on a fixed port, on the test station's storage.
fn serve(st: &TestStation, port: u16) -> Child {
    let mut child = Command::new(CLI)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(st.cli_args())
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // "station pin: …", then "serving on …".
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        match line {
            Ok(l) if l.starts_with("serving on") => return child,
            Ok(l) if l.starts_with("station pin:") => continue,
            other => panic!("the station did not start: {other:?}"),
        }
    }
    panic!("the station did not start");
}

#[test]
fn a_station_killed_during_pushes_loses_and_duplicates_nothing() {
    let mut rng = Rng::seeded();
    // The station's storage is created here, then served by child processes.
    let st = TestStation::start();
    let devices = st.officers(3, "D9");
    let sup = st.device(&person("S", "900", Role::Supervisor, "D9"), None);
    let creds: Vec<String> = devices.iter().map(|d| d.credential()).collect();
    let reports: Vec<_> = devices
        .iter()
        .map(|d| d.store.create_report().unwrap())
        .collect();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("https://127.0.0.1:{port}");
    let in_process = st.counts();
    let (mut kills, mut acked_rounds) = (0, 0);
    let n = rounds();
    for round in 0..n {
        for (d, r) in devices.iter().zip(&reports) {
            d.store
                .set_field(*r, "location.beat", Value::Text(format!("{round}")))
                .unwrap();
        }
        let mut station = serve(&st, port);
        // Devices push side by side; the station dies at a random moment.
        let kill_after = Duration::from_millis(rng.below(80));
        std::thread::scope(|s| {
            for (d, c) in devices.iter().zip(&creds) {
                let (url, pin) = (&url, st.pin());
                s.spawn(move || {
                    let mut client = SyncClient::new(url, c, Some(pin)).unwrap();
                    client.max_attempts = 1;
                    let _ = client.sync(&d.store, &NoProgress, &Default::default());
                });
            }
            std::thread::sleep(kill_after);
            station.kill().unwrap();
            station.wait().unwrap();
            kills += 1;
        });
        if devices.iter().all(|d| d.store.outbox_len().unwrap() == 0) {
            acked_rounds += 1;
        }
    }
    let mut station = serve(&st, port);
    for (d, c) in devices.iter().zip(&creds) {
        final_sync(&d.store, &url, c);
    }
    final_sync(&sup.store, &url, &sup.credential());
    station.kill().unwrap();
    station.wait().unwrap();
    let counts = st.counts();
    // Officers hold their own reports; the supervisor holds the unit's.
    let changes: u64 = devices
        .iter()
        .map(|d| d.store.change_count().unwrap())
        .sum();
    eprintln!(
        "station kill loop: rounds {n}, station kills {kills}, rounds fully acknowledged {acked_rounds}, changes {changes} (at the station before: {}), lost: {}, duplicated: {}",
        in_process.changes,
        changes.saturating_sub(counts.changes),
        counts.changes.saturating_sub(changes)
    );
    assert!(changes > n as u64, "every round added changes");
    assert_eq!(counts.changes, changes, "every change once at the station");
    assert_eq!(sup.store.change_count().unwrap(), changes);
    for (d, r) in devices.iter().zip(&reports) {
        assert_eq!(
            sup.store.report_json(*r).unwrap(),
            d.store.report_json(*r).unwrap()
        );
    }
}
