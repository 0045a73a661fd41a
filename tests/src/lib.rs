//! End-to-end test harness: a station serving HTTPS on a random loopback
//! port, device stores enrolled with its key pin, and a fault-injecting TCP
//! proxy.
//!
//! The station runs on SQLite, or on PostgreSQL when `FR_TEST_ENGINE=postgres`
//! (each station gets a fresh database on the server `FR_TEST_DATABASE_URL`
//! names). `scripts/test.sh` runs the suite both ways.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use fieldreport_core::store::{Store, StoreOptions, WallClock};
use fieldreport_core::sync::{StationPin, SyncClient};
use fieldreport_core::{Person, Role};
use fieldreport_station::clock::{Clock, SystemClock};
use fieldreport_station::storage::postgres::PostgresStorage;
use fieldreport_station::storage::Counts;
use fieldreport_station::tls::StationTls;
use fieldreport_station::{RunningStation, SqliteStorage, StationStorage, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod tsa;

/// The PostgreSQL server for tests, from `FR_TEST_DATABASE_URL`. `None`
/// (the caller skips, with a message) when unset, unless
/// `FR_REQUIRE_POSTGRES` is set: then a missing server fails the test.
pub fn postgres_url() -> Option<String> {
    match std::env::var("FR_TEST_DATABASE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var_os("FR_REQUIRE_POSTGRES").is_some() {
                panic!("FR_REQUIRE_POSTGRES is set but FR_TEST_DATABASE_URL is not; scripts/test.sh starts a cluster");
            }
            eprintln!("SKIPPED: no PostgreSQL (set FR_TEST_DATABASE_URL; scripts/test.sh does)");
            None
        }
    }
}

/// A new, empty database on the server of `admin_url`; returns its URL.
pub fn fresh_database(admin_url: &str) -> String {
    let name = format!("fr_{}", uuid::Uuid::new_v4().simple());
    let mut c = postgres::Client::connect(admin_url, postgres::NoTls)
        .expect("connect to the test PostgreSQL server");
    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    match admin_url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("FR_TEST_DATABASE_URL must end with /<database>"),
    }
}

/// Whether the tests' stations run on PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var("FR_TEST_ENGINE").as_deref() == Ok("postgres")
}

pub struct TestStation {
    pub url: String,
    pub storage: Arc<dyn StationStorage>,
    /// The station's PostgreSQL database, when on that engine.
    pub database: Option<String>,
    pub rt: tokio::runtime::Runtime,
    /// The station's TLS certificate (self-signed, made for this test).
    pub tls: Arc<StationTls>,
    station: Option<RunningStation>,
    pub dir: tempfile::TempDir,
    /// The station's clock, which its devices share (so a whole test can
    /// run at a fixed time, or shifted by `FIELDREPORT_CLOCK_OFFSET_MS`).
    pub clock: Arc<dyn Clock>,
}

/// What [`TestStation::start_prepared`] hands its `prepare` step.
pub struct Prepared<'a> {
    pub data: &'a std::path::Path,
    pub database: Option<&'a str>,
    pub rt: &'a tokio::runtime::Runtime,
    pub clock: Arc<dyn Clock>,
}

impl Prepared<'_> {
    /// The station's storage, opened (and closed when dropped) before the
    /// station itself opens it.
    pub fn open_storage(&self) -> Arc<dyn StationStorage> {
        open_storage(self.data, self.database, self.clock.clone())
    }
}

fn open_storage(
    data: &std::path::Path,
    database: Option<&str>,
    clock: Arc<dyn Clock>,
) -> Arc<dyn StationStorage> {
    match database {
        Some(url) => Arc::new(PostgresStorage::open_with_clock(url, data, clock).unwrap()),
        None => Arc::new(SqliteStorage::open_with_clock(data, clock).unwrap()),
    }
}

/// A device store's wall clock reading a station clock.
pub struct SharedClock(pub Arc<dyn Clock>);

impl WallClock for SharedClock {
    fn now_ms(&self) -> i64 {
        self.0.now_ms()
    }
}

/// "Now" for tests that run on the system clock: shifted like the
/// stations' by `FIELDREPORT_CLOCK_OFFSET_MS`.
pub fn now_ms() -> i64 {
    SystemClock::from_env().expect("the test clock").now_ms()
}

impl TestStation {
    pub fn start() -> TestStation {
        TestStation::start_with_clock(SystemClock::shared().expect("the test clock"))
    }

    /// A station (and its devices) judging time by `clock`.
    pub fn start_with_clock(clock: Arc<dyn Clock>) -> TestStation {
        TestStation::start_prepared(clock, |_| {})
    }

    /// A station whose data directory (and database) `prepare` fills
    /// first, as an earlier build would have left them; the station then
    /// opens them as `serve` would.
    pub fn start_prepared(clock: Arc<dyn Clock>, prepare: impl FnOnce(&Prepared)) -> TestStation {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("station");
        let database = on_postgres().then(|| {
            let admin = std::env::var("FR_TEST_DATABASE_URL")
                .expect("FR_TEST_ENGINE=postgres needs FR_TEST_DATABASE_URL");
            fresh_database(&admin)
        });
        prepare(&Prepared {
            data: &data,
            database: database.as_deref(),
            rt: &rt,
            clock: clock.clone(),
        });
        let storage = open_storage(&data, database.as_deref(), clock.clone());
        // In the data directory's development pair, so that `serve`
        // processes on the same data (kill and cluster tests) present the
        // same key.
        let tls = Arc::new(StationTls::load_or_generate_dev(&data, &[]).unwrap().0);
        let station = rt.block_on(async {
            let l = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                .await
                .unwrap();
            fieldreport_station::spawn(l, storage.clone(), Transport::Tls(tls.clone()))
                .await
                .unwrap()
        });
        TestStation {
            url: station.url(),
            storage,
            database,
            rt,
            tls,
            station: Some(station),
            dir,
            clock,
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The station key that seals the dashboard's secrets.
    pub fn station_key(&self) -> Arc<fieldreport_station::keys::StationKey> {
        self.station.as_ref().unwrap().state.station_key.clone()
    }

    /// Store options whose wall clock is this station's.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            clock: Arc::new(SharedClock(self.clock.clone())),
            ..Default::default()
        }
    }

    /// Command-line arguments that open this station's storage.
    pub fn cli_args(&self) -> Vec<String> {
        let mut a = vec![
            "--data".to_string(),
            self.dir
                .path()
                .join("station")
                .to_string_lossy()
                .into_owned(),
        ];
        if let Some(db) = &self.database {
            a.push("--database".into());
            a.push(db.clone());
        }
        a
    }

    /// The key pin devices hold for this station.
    pub fn pin(&self) -> StationPin {
        self.tls.pin
    }

    /// A client that trusts this station's certificate (and no other).
    pub fn http_builder(&self) -> reqwest::blocking::ClientBuilder {
        let cert = reqwest::Certificate::from_der(self.tls.chain()[0].as_ref()).unwrap();
        reqwest::blocking::Client::builder().tls_certs_only([cert])
    }

    pub fn http(&self) -> reqwest::blocking::Client {
        self.http_builder().build().unwrap()
    }

    /// Stops the station and serves the same storage again on the same
    /// address with `tls` (a new certificate, as after a key change).
    pub fn restart_with(&mut self, tls: Arc<StationTls>) {
        let addr = self.addr();
        if let Some(s) = self.station.take() {
            self.rt.block_on(s.stop());
        }
        let storage = self.storage.clone();
        let station = self.rt.block_on(async {
            let l = tokio::net::TcpListener::bind(addr).await.unwrap();
            fieldreport_station::spawn(l, storage, Transport::Tls(tls.clone()))
                .await
                .unwrap()
        });
        self.tls = tls;
        self.station = Some(station);
    }

    /// Stops the station and serves the station in `data` (and
    /// `database`, on PostgreSQL; a restored copy, say) on the same
    /// address, with the TLS pair in `data`.
    pub fn restart_on(&mut self, data: &std::path::Path, database: Option<String>) {
        let addr = self.addr();
        if let Some(s) = self.station.take() {
            self.rt.block_on(s.stop());
        }
        let storage = open_storage(data, database.as_deref(), self.clock.clone());
        self.database = database;
        let tls = Arc::new(StationTls::load_or_generate_dev(data, &[]).unwrap().0);
        let station = self.rt.block_on(async {
            let l = tokio::net::TcpListener::bind(addr).await.unwrap();
            fieldreport_station::spawn(l, storage.clone(), Transport::Tls(tls.clone()))
                .await
                .unwrap()
        });
        self.storage = storage;
        self.tls = tls;
        self.station = Some(station);
    }

    /// The body of a GET of `path` (no credential), refused statuses failing.
    pub fn get_text(&self, path: &str) -> String {
        self.http()
            .get(format!("{}{path}", self.url))
            .send()
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .unwrap()
    }

    pub fn addr(&self) -> SocketAddr {
        self.station.as_ref().unwrap().addr
    }

    pub fn code(&self, person: &Person, ttl_ms: i64) -> String {
        self.rt
            .block_on(self.storage.create_enrollment(person.clone(), ttl_ms))
            .unwrap()
            .0
    }

    pub fn counts(&self) -> Counts {
        self.rt.block_on(self.storage.counts()).unwrap()
    }

    /// A new device store enrolled as `person` (through `url`, default the station).
    pub fn device(&self, person: &Person, url: Option<&str>) -> Device {
        self.device_with(person, url, self.store_options())
    }

    /// `n` officers of `unit`, named O0, O1, … with stars 100, 101, ….
    pub fn officers(&self, n: usize, unit: &str) -> Vec<Device> {
        (0..n)
            .map(|i| {
                let p = person(
                    &format!("O{i}"),
                    &(100 + i).to_string(),
                    Role::Officer,
                    unit,
                );
                self.device(&p, None)
            })
            .collect()
    }

    /// Like [`TestStation::device`], with store options (a skewed clock).
    pub fn device_with(&self, person: &Person, url: Option<&str>, options: StoreOptions) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), options).unwrap();
        let code = self.code(person, 600_000);
        let client =
            SyncClient::enroll_pinned(&store, url.unwrap_or(&self.url), &code, Some(self.pin()))
                .unwrap();
        Device {
            store,
            client,
            _dir: dir,
        }
    }
}

impl Drop for TestStation {
    fn drop(&mut self) {
        if let Some(s) = self.station.take() {
            self.rt.block_on(s.stop());
        }
    }
}

pub struct Device {
    pub store: Store,
    pub client: SyncClient,
    _dir: tempfile::TempDir,
}

impl Device {
    /// Hands every change `to` lacks over phone to phone (as a peer would).
    pub fn hand_over_to(&self, to: &Device) -> fieldreport_core::store::ApplyOutcome {
        to.store
            .apply_changes(
                self.store
                    .changes_missing_from(&to.store.heads().unwrap())
                    .unwrap(),
                fieldreport_core::store::Origin::Peer,
            )
            .unwrap()
    }

    /// Hands every change `to` lacks over phone to phone, with the media
    /// this phone holds that `to` lacks; how many media files went over.
    pub fn hand_over_with_media_to(&self, to: &Device) -> usize {
        let changes = self
            .store
            .changes_missing_from(&to.store.heads().unwrap())
            .unwrap();
        // Every photo this phone holds that the partner lacks, of any
        // change (an earlier hand-over may have left one behind).
        let all = self
            .store
            .changes_missing_from(&Default::default())
            .unwrap();
        let mut media = self.store.media_for(&all);
        media.retain(|sha| !to.store.media().contains(sha));
        to.store
            .apply_changes(changes, fieldreport_core::store::Origin::Peer)
            .unwrap();
        for sha in &media {
            let mut file = self.store.media().open_reader(sha).unwrap();
            let mut read = |buf: &mut [u8]| {
                std::io::Read::read(&mut file, buf)
                    .map_err(|e| fieldreport_core::Error::Io(e.kind()))
            };
            to.store.receive_peer_media(sha, &mut read).unwrap();
        }
        media.len()
    }

    pub fn sync(&self) -> fieldreport_core::sync::SyncReport {
        self.client
            .sync(
                &self.store,
                &fieldreport_core::sync::NoProgress,
                &Default::default(),
            )
            .unwrap()
    }

    pub fn credential(&self) -> String {
        self.store
            .sync_value("station_credential")
            .unwrap()
            .unwrap()
    }

    pub fn dir(&self) -> PathBuf {
        self.store.dir().to_path_buf()
    }

    /// Attaches a JPEG of `bytes` to `report`; its SHA-256.
    pub fn attach_photo(&self, report: uuid::Uuid, name: &str, bytes: Vec<u8>) -> String {
        let photo = self.dir().join(name);
        std::fs::write(&photo, bytes).unwrap();
        self.store
            .attach_media(
                report,
                &photo,
                fieldreport_core::store::MediaMeta {
                    mime_type: "image/jpeg".into(),
                    ..Default::default()
                },
            )
            .unwrap()
            .sha256
    }
}

/// The station key pin a store holds since enrollment.
pub fn pin_of(store: &Store) -> Option<StationPin> {
    store
        .sync_value("station_pin")
        .unwrap()
        .map(|p| StationPin::parse(&p).unwrap())
}

pub fn person(name: &str, star: &str, role: Role, unit: &str) -> Person {
    Person {
        name: name.into(),
        star_number: star.into(),
        role,
        unit: unit.into(),
    }
}

/// A TCP proxy in front of the station. Counts the bytes clients send and,
/// while `cut_after` is armed, drops the connection once that many bytes
/// have gone upstream (then disarms itself).
pub struct Proxy {
    pub url: String,
    pub upstream_bytes: Arc<AtomicU64>,
    pub cut_after: Arc<AtomicU64>,
    pub cuts: Arc<AtomicU64>,
    armed: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(rt: &tokio::runtime::Runtime, target: SocketAddr) -> Proxy {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let upstream_bytes = Arc::new(AtomicU64::new(0));
        let cut_after = Arc::new(AtomicU64::new(u64::MAX));
        let cuts = Arc::new(AtomicU64::new(0));
        let armed = Arc::new(AtomicBool::new(false));
        let (ub, ca, cu, ar) = (
            upstream_bytes.clone(),
            cut_after.clone(),
            cuts.clone(),
            armed.clone(),
        );
        rt.spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let (ub, ca, cu, ar) = (ub.clone(), ca.clone(), cu.clone(), ar.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let total = ub.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                            if ar.load(Ordering::SeqCst) && total >= ca.load(Ordering::SeqCst) {
                                ar.store(false, Ordering::SeqCst);
                                cu.fetch_add(1, Ordering::SeqCst);
                                return; // drop both directions
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        Proxy {
            url,
            upstream_bytes,
            cut_after,
            cuts,
            armed,
        }
    }

    /// Drops the connection once `bytes` more have gone upstream.
    pub fn cut_once_after(&self, bytes: u64) {
        self.cut_after.store(
            self.upstream_bytes.load(Ordering::SeqCst) + bytes,
            Ordering::SeqCst,
        );
        self.armed.store(true, Ordering::SeqCst);
    }

    pub fn sent(&self) -> u64 {
        self.upstream_bytes.load(Ordering::SeqCst)
    }
}

/// Faults a [`ChaosProxy`] injected, by kind.
#[derive(Debug, Default)]
pub struct Faults {
    pub connections: AtomicU64,
    pub dropped_upload: AtomicU64,
    pub truncated_response: AtomicU64,
    pub reset: AtomicU64,
    pub delayed: AtomicU64,
}

/// A TCP proxy that, per connection and at random (seeded), passes it
/// through, delays it, resets it at once, drops it after a random number of
/// upstream bytes (mid-upload), or truncates the response after a random
/// number of bytes. `fault_percent` of connections get a fault.
pub struct ChaosProxy {
    pub url: String,
    pub faults: Arc<Faults>,
    pub enabled: Arc<AtomicBool>,
}

impl ChaosProxy {
    pub fn start(
        rt: &tokio::runtime::Runtime,
        target: SocketAddr,
        seed: u64,
        fault_percent: u64,
    ) -> ChaosProxy {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let faults = Arc::new(Faults::default());
        let enabled = Arc::new(AtomicBool::new(true));
        let (f, en) = (faults.clone(), enabled.clone());
        let rng = Arc::new(std::sync::Mutex::new(seed | 1));
        rt.spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let next = || {
                    let mut x = rng.lock().unwrap();
                    *x ^= *x << 13;
                    *x ^= *x >> 7;
                    *x ^= *x << 17;
                    *x
                };
                f.connections.fetch_add(1, Ordering::Relaxed);
                let roll = next() % 100;
                let kind = if !en.load(Ordering::Relaxed) || roll >= fault_percent {
                    0
                } else {
                    1 + next() % 4
                };
                let limit = 200 + next() % 300_000;
                let delay = 20 + next() % 200;
                let f = f.clone();
                tokio::spawn(async move {
                    match kind {
                        1 => {
                            f.reset.fetch_add(1, Ordering::Relaxed);
                            return; // closed before a byte
                        }
                        2 => {
                            f.delayed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                        }
                        _ => {}
                    }
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let up_limit = if kind == 3 { limit } else { u64::MAX };
                    let down_limit = if kind == 4 {
                        50 + limit % 3000
                    } else {
                        u64::MAX
                    };
                    let up = async {
                        let mut sent = 0u64;
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let n = (n as u64).min(up_limit - sent) as usize;
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            sent += n as u64;
                            if sent >= up_limit {
                                f.dropped_upload.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    };
                    let down = async {
                        let mut sent = 0u64;
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let n = (n as u64).min(down_limit - sent) as usize;
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            sent += n as u64;
                            if sent >= down_limit {
                                f.truncated_response.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        ChaosProxy {
            url,
            faults,
            enabled,
        }
    }
}

/// An outside tool on PATH, or `None` (the caller skips) when it is absent
/// and `FR_REQUIRE_TOOLS` is not set; with it set, absence fails the test.
pub fn outside_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var_os("FR_REQUIRE_TOOLS").is_some() {
            panic!("{name} is required (FR_REQUIRE_TOOLS is set) but not on PATH; scripts/test.sh installs it");
        }
        eprintln!("SKIPPED: {name} is not installed; scripts/test.sh installs it");
    }
    found
}

/// A random test's seed: from the environment variable `var` (to replay a
/// run), else from the clock. Printed either way.
pub fn test_seed(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    eprintln!("seed {seed} ({var} to replay)");
    seed
}

/// Whether `text` holds `word` with no ASCII letter or digit right before
/// or after it. Checks that a name or star number is absent use it: a key,
/// a hex digest or a time in milliseconds may hold `81001` by chance.
pub fn holds_word(text: &str, word: &str) -> bool {
    let bytes = text.as_bytes();
    text.match_indices(word).any(|(at, _)| {
        let end = at + word.len();
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(end).copied();
        !before.is_some_and(|b| b.is_ascii_alphanumeric())
            && !after.is_some_and(|b| b.is_ascii_alphanumeric())
    })
}
