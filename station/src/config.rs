//! Station configuration: defaults, then a TOML file (`--config`), then the
//! environment (`FIELDREPORT_LISTEN`, `FIELDREPORT_DATA`), then the command
//! line; later sources win.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            data: PathBuf::from("./station-data"),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
}

impl Config {
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
        }
        if let Some(v) = env("FIELDREPORT_LISTEN") {
            c.listen = v
                .parse()
                .map_err(|_| anyhow::anyhow!("FIELDREPORT_LISTEN is not an address:port"))?;
        }
        if let Some(v) = env("FIELDREPORT_DATA") {
            c.data = PathBuf::from(v);
        }
        c.listen = listen.unwrap_or(c.listen);
        c.data = data.unwrap_or(c.data);
        Ok(c)
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
    fn bad_config_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("station.toml");
        std::fs::write(&f, "listen = 12\n").unwrap();
        assert!(Config::load(Some(&f), |_| None, None, None).is_err());
        std::fs::write(&f, "colour = \"blue\"\n").unwrap();
        assert!(Config::load(Some(&f), |_| None, None, None).is_err());
        let env = |_: &str| Some("not-an-address".to_string());
        assert!(Config::load(None, env, None, None).is_err());
    }
}
