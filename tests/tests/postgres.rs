//! Several station processes on one PostgreSQL database: devices sync with
//! either at random and converge; a supervisor connected to one hears of
//! reports pushed to the other; under many simultaneous pushes and pulls no
//! pull ever misses a change.
//!
//! Needs `FR_TEST_DATABASE_URL` (scripts/test.sh starts a throwaway
//! cluster); skips with a message without it, fails without it when
//! `FR_REQUIRE_POSTGRES` is set.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use fieldreport_core::store::{MediaMeta, Store};
use fieldreport_core::sync::{NoProgress, SyncClient};
use fieldreport_core::{Person, Role, Value};
use fieldreport_e2e::{fresh_database, person, pin_of, postgres_url};
use fieldreport_station::storage::postgres::PostgresStorage;
use fieldreport_station::StationStorage;
use uuid::Uuid;

const CLI: &str = env!("CARGO_BIN_EXE_station-cli");

/// A `fieldreport-station serve` process on the shared database.
struct StationProc {
    child: Child,
    url: String,
}

impl StationProc {
    fn start(database: &str, data: &Path) -> StationProc {
        let mut child = Command::new(CLI)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database",
                database,
                "--data",
            ])
            .arg(data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("the station exited").unwrap();
            if let Some(rest) = line.strip_prefix("serving on ") {
                break rest.trim().to_string();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        StationProc { child, url }
    }
}

impl Drop for StationProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Phone {
    store: Store,
    credential: String,
    _dir: tempfile::TempDir,
}

impl Phone {
    fn enroll(url: &str, code: &str) -> Phone {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        SyncClient::enroll(&store, url, code).unwrap();
        let credential = store.sync_value("station_credential").unwrap().unwrap();
        Phone {
            store,
            credential,
            _dir: dir,
        }
    }

    fn sync_with(&self, url: &str) {
        SyncClient::new(url, &self.credential, pin_of(&self.store))
            .unwrap()
            .sync(&self.store, &NoProgress, &Default::default())
            .unwrap();
    }
}

struct Cluster {
    stations: Vec<StationProc>,
    admin: PostgresStorage,
    rt: tokio::runtime::Runtime,
    _data: tempfile::TempDir,
}

impl Cluster {
    fn start(processes: usize) -> Option<Cluster> {
        let server = postgres_url()?;
        let db = fresh_database(&server);
        let data = tempfile::tempdir().unwrap();
        let shared = data.path().join("shared");
        // The schema first, so the processes start on a ready database.
        let admin = PostgresStorage::open(&db, &shared).unwrap();
        let stations = (0..processes)
            .map(|_| StationProc::start(&db, &shared))
            .collect();
        Some(Cluster {
            stations,
            admin,
            rt: tokio::runtime::Runtime::new().unwrap(),
            _data: data,
        })
    }

    fn code(&self, p: &Person) -> String {
        self.rt
            .block_on(self.admin.create_enrollment(p.clone(), 600_000))
            .unwrap()
            .0
    }

    fn url(&self, i: usize) -> &str {
        &self.stations[i % self.stations.len()].url
    }
}

/// A small deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[test]
fn two_station_processes_on_one_database_converge_and_share_events() {
    let Some(c) = Cluster::start(2) else { return };
    let mut rng = Rng(0x5eed_1234);
    let officers: Vec<Phone> = (0..3)
        .map(|i| {
            let p = person(
                &format!("O{i}"),
                &format!("{}", 100 + i),
                Role::Officer,
                "D9",
            );
            Phone::enroll(c.url(rng.next(2)), &c.code(&p))
        })
        .collect();
    let sup = Phone::enroll(
        c.url(0),
        &c.code(&person("S", "900", Role::Supervisor, "D9")),
    );

    // The supervisor listens on process B (index 1).
    let (tx, rx) = mpsc::channel();
    let listener = SyncClient::new(c.url(1), &sup.credential, pin_of(&sup.store)).unwrap();
    std::thread::spawn(move || {
        let _ = listener.listen_events(|ev| tx.send(ev.report_id).is_ok());
    });
    std::thread::sleep(Duration::from_millis(300));

    let mut reports = BTreeSet::new();
    let mut pushed_to_a = BTreeSet::new();
    for round in 0..3 {
        for (i, o) in officers.iter().enumerate() {
            let r = o.store.create_report().unwrap();
            o.store
                .set_field(
                    r,
                    "narrative",
                    Value::Text(format!("round {round} officer {i}")),
                )
                .unwrap();
            let photo = o._dir.path().join(format!("p{round}.jpg"));
            std::fs::write(&photo, vec![round as u8 + i as u8; 50_000 + i]).unwrap();
            o.store
                .attach_media(
                    r,
                    &photo,
                    MediaMeta {
                        mime_type: "image/jpeg".into(),
                        ..Default::default()
                    },
                )
                .unwrap();
            reports.insert(r);
            let which = rng.next(2);
            if which == 0 {
                pushed_to_a.insert(r);
            }
            o.sync_with(c.url(which));
        }
    }
    assert!(!pushed_to_a.is_empty(), "some pushes went to process A");

    // Every report was announced on B, including those pushed to A.
    let mut heard = BTreeSet::new();
    while heard.len() < reports.len() {
        let id = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("heard {} of {} reports on B", heard.len(), reports.len()));
        heard.insert(id);
    }
    assert_eq!(heard, reports);

    // Everyone converges, whichever process they talk to.
    sup.sync_with(c.url(1));
    for o in &officers {
        o.sync_with(c.url(rng.next(2)));
    }
    let counts = c.rt.block_on(c.admin.counts()).unwrap();
    assert_eq!(counts.reports, reports.len() as u64);
    assert_eq!(counts.media_complete, reports.len() as u64);
    assert_eq!(sup.store.change_count().unwrap(), counts.changes);
    for r in &reports {
        let author = officers
            .iter()
            .find(|o| o.store.report(*r).is_ok())
            .unwrap();
        assert_eq!(
            sup.store.report_json(*r).unwrap(),
            author.store.report_json(*r).unwrap()
        );
    }
    // The supervisor's phone holds every photo.
    assert!(sup.store.pending_media().unwrap().is_empty());
}

#[test]
fn concurrent_pushes_and_pulls_never_skip_a_change() {
    let Some(c) = Cluster::start(2) else { return };
    let c = Arc::new(c);
    let devices = 10;
    let edits = 12;
    let officers: Vec<Arc<Phone>> = (0..devices)
        .map(|i| {
            let p = person(
                &format!("O{i}"),
                &format!("{}", 100 + i),
                Role::Officer,
                "D9",
            );
            Arc::new(Phone::enroll(c.url(i), &c.code(&p)))
        })
        .collect();
    let sups: Vec<Arc<Phone>> = (0..3)
        .map(|i| {
            let p = person(
                &format!("S{i}"),
                &format!("{}", 900 + i),
                Role::Supervisor,
                "D9",
            );
            Arc::new(Phone::enroll(c.url(i), &c.code(&p)))
        })
        .collect();

    let done = Arc::new(AtomicBool::new(false));
    // Supervisors pull in a loop, from either process, while pushes land.
    let pullers: Vec<_> = sups
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (s, c, done) = (s.clone(), c.clone(), done.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0xabc + i as u64);
                let mut pulls = 0;
                while !done.load(Ordering::Relaxed) {
                    s.sync_with(c.url(rng.next(2)));
                    pulls += 1;
                }
                pulls
            })
        })
        .collect();
    // Officers push small batches, each to a random process.
    let pushers: Vec<_> = officers
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let (o, c) = (o.clone(), c.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x77 + i as u64);
                let r = o.store.create_report().unwrap();
                for e in 0..edits {
                    o.store
                        .set_field(r, "narrative", Value::Text(format!("edit {e} by {i}")))
                        .unwrap();
                    o.store
                        .set_field(r, "location.beat", Value::Text(format!("{e}")))
                        .unwrap();
                    o.sync_with(c.url(rng.next(2)));
                }
                r
            })
        })
        .collect();
    let reports: Vec<Uuid> = pushers.into_iter().map(|t| t.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    let pulls: usize = pullers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(
        pulls > devices,
        "the pulls ran alongside the pushes ({pulls})"
    );

    // One last pull each, from the cursor they reached: a change skipped
    // by an earlier page would never arrive.
    let total = c.rt.block_on(c.admin.counts()).unwrap().changes;
    let pushed: u64 = officers
        .iter()
        .map(|o| o.store.change_count().unwrap())
        .sum();
    assert_eq!(total, pushed, "every pushed change is stored once");
    for (i, s) in sups.iter().enumerate() {
        s.sync_with(c.url(i));
        assert_eq!(s.store.change_count().unwrap(), total, "supervisor {i}");
        for (r, o) in reports.iter().zip(&officers) {
            assert_eq!(
                s.store.report_json(*r).unwrap(),
                o.store.report_json(*r).unwrap()
            );
        }
    }
}

/// A PostgreSQL cluster of this test's own (the shared one must not
/// restart under the other tests), stopped when dropped.
struct OwnCluster {
    dir: std::path::PathBuf,
    port: u16,
    settings: Vec<String>,
}

impl OwnCluster {
    const SCRIPT: &'static str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg-cluster.sh");

    fn start() -> (OwnCluster, String) {
        Self::start_with(&["fsync=off".to_string()])
    }

    /// Starts it with these settings (`name=value`).
    fn start_with(settings: &[String]) -> (OwnCluster, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Not under a private temporary directory: the server runs as the
        // `postgres` user when the tests run as root.
        let dir = std::env::temp_dir().join(format!("fr-pg-restart-{}", Uuid::new_v4().simple()));
        let c = OwnCluster {
            dir,
            port,
            settings: settings.to_vec(),
        };
        let url = c.run("start");
        (c, url.trim().to_string())
    }

    fn run(&self, what: &str) -> String {
        let out = Command::new("bash")
            .arg(Self::SCRIPT)
            .arg(what)
            .arg(&self.dir)
            .arg(self.port.to_string())
            .args(&self.settings)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg-cluster.sh {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The database restarts while officers push: requests in the gap are
/// answered 503 (which devices retry), the same station process serves
/// again once the database is back, and every change pushed is stored.
#[test]
fn a_database_restart_mid_load_loses_nothing_and_needs_no_station_restart() {
    if postgres_url().is_none() {
        return;
    }
    let (cluster, url) = OwnCluster::start();
    let data = tempfile::tempdir().unwrap();
    let admin = PostgresStorage::open(&url, data.path()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut station = StationProc::start(&url, data.path());
    let pid = station.child.id();
    let officers: Vec<Arc<Phone>> = (0..3)
        .map(|i| {
            let p = person(
                &format!("O{i}"),
                &format!("{}", 300 + i),
                Role::Officer,
                "D9",
            );
            let (code, _) = rt.block_on(admin.create_enrollment(p, 600_000)).unwrap();
            Arc::new(Phone::enroll(&station.url, &code))
        })
        .collect();

    let restarted = Arc::new(AtomicBool::new(false));
    let pushers: Vec<_> = officers
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let (o, url, restarted) = (o.clone(), station.url.clone(), restarted.clone());
            std::thread::spawn(move || {
                let r = o.store.create_report().unwrap();
                let mut failed_syncs = 0;
                let mut e = 0;
                // Edits before, during and after the restart; a sync that
                // gives up (the database away longer than its retries) is
                // simply tried again, as the app does.
                while e < 8 || !restarted.load(Ordering::Relaxed) {
                    o.store
                        .set_field(r, "narrative", Value::Text(format!("edit {e} by {i}")))
                        .unwrap();
                    let synced = SyncClient::new(&url, &o.credential, pin_of(&o.store))
                        .unwrap()
                        .sync(&o.store, &NoProgress, &Default::default());
                    if synced.is_err() {
                        failed_syncs += 1;
                    }
                    e += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                for _ in 0..20 {
                    let synced = SyncClient::new(&url, &o.credential, pin_of(&o.store))
                        .unwrap()
                        .sync(&o.store, &NoProgress, &Default::default());
                    if synced.is_ok() && o.store.outbox_len().unwrap() == 0 {
                        return failed_syncs;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                panic!("officer {i} could not sync after the restart");
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(500));
    cluster.run("stop");
    // While the database is away: a request is answered 503, retryable.
    let http = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let away = http
        .get(format!("{}/v1/devices", station.url))
        .bearer_auth(&officers[0].credential)
        .send()
        .unwrap();
    assert_eq!(away.status().as_u16(), 503, "{}", away.text().unwrap());
    std::thread::sleep(Duration::from_millis(1500));
    cluster.run("start");
    restarted.store(true, Ordering::Relaxed);
    let failed: usize = pushers.into_iter().map(|t| t.join().unwrap()).sum();

    assert!(
        station.child.try_wait().unwrap().is_none() && station.child.id() == pid,
        "the same station process served throughout"
    );
    let back = http
        .get(format!("{}/v1/devices", station.url))
        .bearer_auth(&officers[0].credential)
        .send()
        .unwrap();
    assert_eq!(back.status().as_u16(), 200);
    let stored = rt.block_on(admin.counts()).unwrap().changes;
    let pushed: u64 = officers
        .iter()
        .map(|o| o.store.change_count().unwrap())
        .sum();
    assert_eq!(stored, pushed, "every change pushed is stored, once");
    eprintln!("{failed} syncs gave up during the restart and were tried again");
}

/// Runs a command, failing the test with its stderr if it fails.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with
/// `openssl` in `dir`: (ca.pem, server.pem, server.key).
fn make_certificates(
    dir: &Path,
    ca_name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |f: &str| dir.join(f);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem"))
        .args(["-subj", &format!("/CN={ca_name}"), "-days", "2"]));
    run(Command::new("openssl")
        .arg("req")
        .args(ec)
        .arg("-keyout")
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr"))
        .args(["-subj", "/CN=127.0.0.1"]));
    std::fs::write(p("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("server.pem"))
        .arg("-extfile")
        .arg(p("ext.cnf")));
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

/// With the database's CA (`database_ca`) the station's connections are
/// TLS, checked against that CA; `sslmode=require` without a CA, or with
/// a CA that did not sign the server's certificate, is refused.
#[test]
fn the_station_speaks_tls_to_postgres_when_given_its_ca() {
    if postgres_url().is_none() {
        return;
    }
    // Readable by the `postgres` user, which runs the server.
    let certs = std::env::temp_dir().join(format!("fr-pg-tls-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&certs).unwrap();
    let (ca, server_cert, server_key) = make_certificates(&certs, "fr-test-ca");
    let other = certs.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (other_ca, _, _) = make_certificates(&other, "someone-else");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&server_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").unwrap().uid() == 0 {
        run(Command::new("chown").arg("postgres").arg(&server_key));
    }
    let (cluster, url) = OwnCluster::start_with(&[
        "ssl=on".into(),
        format!("ssl_cert_file={}", server_cert.display()),
        format!("ssl_key_file={}", server_key.display()),
    ]);
    let data = tempfile::tempdir().unwrap();
    let clock = fieldreport_station::clock::SystemClock::shared().unwrap();
    let tls_url = format!("{url}?sslmode=require&application_name=fr-tls-test");

    let refused = PostgresStorage::open_with(&tls_url, data.path(), clock.clone(), None);
    assert!(refused.is_err(), "sslmode=require without a CA is refused");
    let untrusted =
        PostgresStorage::open_with(&tls_url, data.path(), clock.clone(), Some(&other_ca));
    assert!(
        untrusted.is_err(),
        "a CA that did not sign the server's certificate is refused"
    );

    let storage = PostgresStorage::open_with(&tls_url, data.path(), clock, Some(&ca)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let counts = rt.block_on(storage.counts()).unwrap();
    assert_eq!(counts.changes, 0);
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let row = admin
        .query_one(
            "SELECT COUNT(*), COALESCE(bool_and(s.ssl), false) FROM pg_stat_ssl s
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'fr-tls-test'",
            &[],
        )
        .unwrap();
    let (connections, all_tls): (i64, bool) = (row.get(0), row.get(1));
    assert!(connections >= 1, "the station is connected");
    assert!(all_tls, "every station connection is TLS");
    drop(storage);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&certs);
}
