//! Station configuration: defaults, then a TOML file (`--config`), then the
//! environment (`FIELDREPORT_LISTEN`, `FIELDREPORT_DATA`,
//! `FIELDREPORT_DATABASE`), then the command line; later sources win.
//!
//! TLS: `tls_cert` and `tls_key` (PEM files; env `FIELDREPORT_TLS_CERT`,
//! `FIELDREPORT_TLS_KEY`). Without them `serve` uses a self-signed pair it
//! generates once in `data/tls/`. `plain_http = true` serves plain HTTP,
//! only for a station behind a TLS proxy on the same machine.
//!
//! `station_key` (env `FIELDREPORT_STATION_KEY`): the file holding the
//! station key that seals the dashboard's secrets (it must exist); absent,
//! `data/keys/station.key`, made on first use. Keep it off the database's
//! backups, or the backups hold what it protects.
//!
//! `database` selects the engine: absent, the embedded SQLite file in
//! `data`; `postgres://…`, PostgreSQL (media files stay under `data`, which
//! every station process on that database must share). `database_ca`
//! (env `FIELDREPORT_DATABASE_CA`): a PEM file of the CA certificates the
//! database's TLS certificate must chain to; with it the station speaks TLS
//! to PostgreSQL and refuses a database (or a path) that offers none.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data: PathBuf,
    /// `postgres://…` URL; `None`: SQLite in `data`.
    pub database: Option<String>,
    /// PEM certificate chain and key; `None`: the development pair.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub plain_http: bool,
    /// The station key file; `None`: `data/keys/station.key`.
    pub station_key: Option<PathBuf>,
    /// CA certificates (PEM) for TLS to PostgreSQL; `None`: no TLS.
    pub database_ca: Option<PathBuf>,
    /// The RFC 3161 time-stamp authority that stamps the log's
    /// checkpoints (docs/log.md); `None`: no time-stamps.
    pub timestamp_url: Option<String>,
    /// PEM certificate(s) the authority's signer must chain to.
    pub timestamp_ca: Option<PathBuf>,
    /// Witnesses the station submits its checkpoints to.
    pub witnesses: Vec<WitnessConfig>,
    /// How often the newest checkpoint is attested.
    pub attest_interval_seconds: u64,
}

/// One `[[witness]]` of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// Its tlog-witness URL (the station posts to `URL/add-checkpoint`).
    pub url: String,
    /// Its cosigner key, `name+id+key`, as the witness prints it.
    pub key: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            data: PathBuf::from("./station-data"),
            database: None,
            tls_cert: None,
            tls_key: None,
            plain_http: false,
            station_key: None,
            database_ca: None,
            timestamp_url: None,
            timestamp_ca: None,
            witnesses: Vec::new(),
            attest_interval_seconds: 60,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
    database: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    plain_http: Option<bool>,
    station_key: Option<PathBuf>,
    database_ca: Option<PathBuf>,
    timestamp_url: Option<String>,
    timestamp_ca: Option<PathBuf>,
    attest_interval_seconds: Option<u64>,
    #[serde(default)]
    witness: Vec<WitnessConfig>,
}

impl Config {
    /// [`Config::open_storage`] from async code.
    pub async fn open_storage_async(
        &self,
    ) -> anyhow::Result<std::sync::Arc<dyn crate::storage::StationStorage>> {
        let cfg = self.clone();
        tokio::task::spawn_blocking(move || cfg.open_storage()).await?
    }

    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        listen: Option<SocketAddr>,
        data: Option<PathBuf>,
    ) -> anyhow::Result<Config> {
        let mut c = Config::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
            let f: FileConfig = toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
            c.listen = f.listen.unwrap_or(c.listen);
            c.data = f.data.unwrap_or(c.data);
            c.database = f.database;
            c.tls_cert = f.tls_cert;
            c.tls_key = f.tls_key;
            c.plain_http = f.plain_http.unwrap_or(false);
            c.station_key = f.station_key;
            c.database_ca = f.database_ca;
            c.timestamp_url = f.timestamp_url;
            c.timestamp_ca = f.timestamp_ca;
            c.witnesses = f.witness;
            c.attest_interval_seconds = f.attest_interval_seconds.unwrap_or(60);
        }
        if let Some(v) = env("FIELDREPORT_DATABASE_CA") {
            c.database_ca = Some(PathBuf::from(v));
        }
        if let Some(v) = env("FIELDREPORT_STATION_KEY") {
            c.station_key = Some(PathBuf::from(v));
        }
        if let Some(v) = env("FIELDREPORT_TLS_CERT") {
            c.tls_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = env("FIELDREPORT_TLS_KEY") {
            c.tls_key = Some(PathBuf::from(v));
        }
        if let Some(v) = env("FIELDREPORT_LISTEN") {
            c.listen = v
                .parse()
                .map_err(|_| anyhow::anyhow!("FIELDREPORT_LISTEN is not an address:port"))?;
        }
        if let Some(v) = env("FIELDREPORT_DATA") {
            c.data = PathBuf::from(v);
        }
        if let Some(v) = env("FIELDREPORT_DATABASE") {
            c.database = Some(v);
        }
        c.listen = listen.unwrap_or(c.listen);
        c.data = data.unwrap_or(c.data);
        if let Some(url) = &c.database {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                anyhow::bail!("database must be a postgres:// URL (leave it out for SQLite)");
            }
        }
        Ok(c)
    }

    /// Who attests the log's checkpoints: the time-stamp authority and
    /// witnesses of the config file, checked.
    pub fn attestors(&self) -> anyhow::Result<std::sync::Arc<crate::attest::Attestors>> {
        let anchors = match &self.timestamp_ca {
            Some(path) => {
                let pem = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read timestamp_ca {}: {e}", path.display())
                })?;
                fieldreport_core::timestamp::certificates_from_pem(&pem)
                    .map_err(|e| anyhow::anyhow!("timestamp_ca {}: {e}", path.display()))?
            }
            None => Vec::new(),
        };
        let witnesses = self
            .witnesses
            .iter()
            .map(|w| {
                Ok(crate::attest::WitnessEndpoint {
                    url: w.url.clone(),
                    key: fieldreport_core::tlog::CosignerKey::parse(&w.key).map_err(|e| {
                        anyhow::anyhow!("the witness key for {} is not a cosigner key: {e}", w.url)
                    })?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(crate::attest::Attestors::new(
            self.timestamp_url.clone(),
            anchors,
            witnesses,
            std::time::Duration::from_secs(self.attest_interval_seconds),
        )?)
    }

    /// Applies the command line's TLS options and checks the combination.
    pub fn with_tls(
        mut self,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        plain_http: bool,
    ) -> anyhow::Result<Config> {
        self.tls_cert = cert.or(self.tls_cert);
        self.tls_key = key.or(self.tls_key);
        self.plain_http |= plain_http;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            anyhow::bail!("give both a TLS certificate and its key, or neither");
        }
        if self.plain_http && self.tls_cert.is_some() {
            anyhow::bail!("plain HTTP and a TLS certificate exclude each other");
        }
        Ok(self)
    }

    /// The station's certificate: the configured pair, or else the
    /// development pair in the data directory (generated the first time;
    /// the flag says so). `None` when serving plain HTTP.
    pub fn tls(&self) -> anyhow::Result<Option<(crate::tls::StationTls, bool)>> {
        if self.plain_http {
            return Ok(None);
        }
        Ok(Some(match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => (crate::tls::StationTls::from_files(c, k)?, false),
            _ => {
                let mut names = Vec::new();
                if !self.listen.ip().is_unspecified() {
                    names.push(self.listen.ip().to_string());
                }
                crate::tls::StationTls::load_or_generate_dev(&self.data, &names)?
            }
        }))
    }

    /// The station key of `storage`: the configured file (which must
    /// exist), or the data directory's, made the first time (never again
    /// once the database holds something sealed with it; see
    /// [`crate::keys::StationKey::open_for`]).
    pub async fn station_key(
        &self,
        storage: &dyn crate::storage::StationStorage,
    ) -> anyhow::Result<crate::keys::StationKey> {
        Ok(match &self.station_key {
            Some(path) => crate::keys::StationKey::open_for(path, false, storage).await?,
            None => {
                crate::files::open_data_dir(&self.data)?;
                let path = crate::keys::default_path(&self.data);
                crate::keys::StationKey::open_for(&path, true, storage).await?
            }
        })
    }

    /// Sets the database from the command line (it wins over the rest).
    pub fn with_database(mut self, database: Option<String>) -> anyhow::Result<Config> {
        if let Some(url) = database {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                anyhow::bail!("--database must be a postgres:// URL (leave it out for SQLite)");
            }
            self.database = Some(url);
        }
        Ok(self)
    }

    /// Opens the configured storage engine (blocking: call it off the async
    /// workers, e.g. in `spawn_blocking`).
    pub fn open_storage(
        &self,
    ) -> anyhow::Result<std::sync::Arc<dyn crate::storage::StationStorage>> {
        Ok(match &self.database {
            Some(url) => std::sync::Arc::new(
                crate::storage::postgres::PostgresStorage::open_with(
                    url,
                    &self.data,
                    crate::clock::SystemClock::shared()?,
                    self.database_ca.as_deref(),
                )
                .map_err(|e| anyhow::anyhow!("cannot open the PostgreSQL database: {e}"))?,
            ),
            None => std::sync::Arc::new(crate::SqliteStorage::open(&self.data)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_sources_win() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("station.toml");
        std::fs::write(&f, "listen = \"0.0.0.0:9000\"\ndata = \"/srv/a\"\n").unwrap();
        let env = |k: &str| (k == "FIELDREPORT_DATA").then(|| "/srv/b".to_string());
        let c = Config::load(Some(&f), env, None, None).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.data, PathBuf::from("/srv/b"));
        let c = Config::load(
            Some(&f),
            env,
            Some("127.0.0.1:1".parse().unwrap()),
            Some("/x".into()),
        )
        .unwrap();
        assert_eq!((c.listen.port(), c.data), (1, PathBuf::from("/x")));
    }

    #[test]
    fn tls_comes_from_the_file_the_environment_or_the_development_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, key) = crate::tls::StationTls::generate(&[]).unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        let f = dir.path().join("station.toml");
        std::fs::write(
            &f,
            format!(
                "data = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
                dir.path().join("data"),
                c,
                k
            ),
        )
        .unwrap();
        let cfg = Config::load(Some(&f), |_| None, None, None)
            .unwrap()
            .with_tls(None, None, false)
            .unwrap();
        let (tls, generated) = cfg.tls().unwrap().unwrap();
        assert!(!generated);
        let expected = crate::tls::StationTls::from_files(&c, &k).unwrap();
        assert_eq!(tls.pin, expected.pin);
        // A missing certificate file is a clear error, not a new pair.
        let env = |v: &str| (v == "FIELDREPORT_TLS_CERT").then(|| "/nonexistent.pem".to_string());
        let cfg = Config::load(Some(&f), env, None, None).unwrap();
        let err = cfg.tls().unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent.pem"), "{err:#}");
        // Neither given: the development pair in the data directory.
        let cfg = Config::load(None, |_| None, None, Some(dir.path().join("d")))
            .unwrap()
            .with_tls(None, None, false)
            .unwrap();
        assert!(cfg.tls().unwrap().unwrap().1);
        assert!(crate::tls::dev_paths(&dir.path().join("d")).0.exists());
    }

    #[tokio::test]
    async fn the_station_key_is_the_configured_file_or_the_data_directorys() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let cfg = Config::load(None, |_| None, None, Some(data.clone())).unwrap();
        let storage = cfg.open_storage_async().await.unwrap();
        cfg.station_key(storage.as_ref()).await.unwrap();
        assert!(
            crate::keys::default_path(&data).exists(),
            "made on first use"
        );
        // A configured key file must exist: a typo makes no new key.
        let named = dir.path().join("elsewhere.key");
        let env = |k: &str| {
            (k == "FIELDREPORT_STATION_KEY").then(|| named.to_string_lossy().into_owned())
        };
        let cfg = Config::load(None, env, None, Some(data.clone())).unwrap();
        assert_eq!(cfg.station_key.as_deref(), Some(named.as_path()));
        let err = cfg.station_key(storage.as_ref()).await.unwrap_err();
        assert!(format!("{err:#}").contains("elsewhere.key"), "{err:#}");
        assert!(!named.exists());
        // Another key than the one the database met first is refused.
        std::fs::write(&named, [3u8; 32]).unwrap();
        let err = cfg.station_key(storage.as_ref()).await.unwrap_err();
        assert!(format!("{err:#}").contains("not the one"), "{err:#}");
        std::fs::copy(crate::keys::default_path(&data), &named).unwrap();
        cfg.station_key(storage.as_ref()).await.unwrap();
        let f = dir.path().join("station.toml");
        std::fs::write(&f, format!("station_key = {named:?}\n")).unwrap();
        let cfg = Config::load(Some(&f), |_| None, None, None).unwrap();
        assert_eq!(cfg.station_key.as_deref(), Some(named.as_path()));
    }

    /// A database from before the key check is bound only to the key its
    /// accounts were sealed with: upgrading with a wrong key file is refused
    /// (and binds nothing), and the right file then opens it.
    #[tokio::test]
    async fn an_upgraded_database_is_bound_only_to_its_accounts_key() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let cfg = Config::load(None, |_| None, None, Some(data.clone())).unwrap();
        let storage = cfg.open_storage_async().await.unwrap();
        let key = std::sync::Arc::new(cfg.station_key(storage.as_ref()).await.unwrap());
        crate::accounts::create_account(
            storage.as_ref(),
            &key,
            "Sgt Upgrade",
            "76009",
            "D9",
            "a long dashboard password",
        )
        .await
        .unwrap();
        drop(storage);
        // As a database from before the check: no check value.
        rusqlite::Connection::open(data.join(crate::storage::sqlite::DB_FILE))
            .unwrap()
            .execute("DELETE FROM station_settings", [])
            .unwrap();
        let path = crate::keys::default_path(&data);
        let right = std::fs::read(&path).unwrap();
        std::fs::write(&path, [9u8; 32]).unwrap();
        let storage = cfg.open_storage_async().await.unwrap();
        let err = cfg.station_key(storage.as_ref()).await.unwrap_err();
        assert!(format!("{err:#}").contains("not the one"), "{err:#}");
        std::fs::write(&path, &right).unwrap();
        cfg.station_key(storage.as_ref()).await.unwrap();
    }

    /// A lost key file is not silently replaced once the database holds
    /// something sealed with it: the station refuses to start, names the
    /// file, and starts again once the file is restored.
    #[tokio::test]
    async fn a_lost_station_key_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let cfg = Config::load(None, |_| None, None, Some(data.clone())).unwrap();
        let storage = cfg.open_storage_async().await.unwrap();
        let key = cfg.station_key(storage.as_ref()).await.unwrap();
        let path = crate::keys::default_path(&data);
        let saved = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let err = cfg.station_key(storage.as_ref()).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("missing") && msg.contains("station.key"),
            "{msg}"
        );
        assert!(!path.exists(), "no new key was made");
        std::fs::write(&path, &saved).unwrap();
        let again = cfg.station_key(storage.as_ref()).await.unwrap();
        let sealed = key.seal(b"t", b"v").unwrap();
        assert_eq!(again.open(b"t", &sealed).unwrap().as_slice(), b"v");

        // With no copy of the file: `forget-station-key` deletes what the
        // lost key sealed, and the station starts with a new key.
        let account = crate::accounts::create_account(
            storage.as_ref(),
            &std::sync::Arc::new(again),
            "Sgt Lost",
            "77009",
            "D9",
            "a long dashboard password",
        )
        .await
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(cfg.station_key(storage.as_ref()).await.is_err());
        assert_eq!(
            storage.forget_sealed().await.unwrap(),
            vec![account.device_id]
        );
        assert!(storage.dashboard_accounts().await.unwrap().is_empty());
        let fresh = cfg.station_key(storage.as_ref()).await.unwrap();
        assert!(fresh.open(b"t", &sealed).is_err(), "a new key");
        assert!(path.exists());
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("station.toml");
        std::fs::write(&f, "listen = 12\n").unwrap();
        assert!(Config::load(Some(&f), |_| None, None, None).is_err());
        std::fs::write(&f, "colour = \"blue\"\n").unwrap();
        assert!(Config::load(Some(&f), |_| None, None, None).is_err());
        let env = |_: &str| Some("not-an-address".to_string());
        assert!(Config::load(None, env, None, None).is_err());
        let c = Config::default();
        assert!(c
            .clone()
            .with_tls(Some("c.pem".into()), None, false)
            .is_err());
        assert!(c
            .clone()
            .with_tls(Some("c.pem".into()), Some("k.pem".into()), true)
            .is_err());
        assert!(c
            .with_tls(None, None, true)
            .unwrap()
            .tls()
            .unwrap()
            .is_none());
    }
}
