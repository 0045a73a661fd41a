//! TLS for the station: its certificate and key (from the configuration,
//! or a self-signed development pair generated on the first `serve` and
//! kept in the data directory), and the listener that completes
//! handshakes off the accept loop and audits the ones a client refuses
//! (a device whose pinned key this station does not hold).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fieldreport_core::sync::StationPin;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::storage::{AuditEntry, StationStorage};

/// A client has this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The station's certificate chain and private key.
pub struct StationTls {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The key pin devices hold (`sha256//…`).
    pub pin: StationPin,
}

impl std::fmt::Debug for StationTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StationTls({})", self.pin)
    }
}

/// Where the development pair lives in a data directory.
pub fn dev_paths(data: &Path) -> (PathBuf, PathBuf) {
    let dir = data.join("tls");
    (dir.join("station-cert.pem"), dir.join("station-key.pem"))
}

impl StationTls {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key.
    pub fn from_files(cert: &Path, key: &Path) -> anyhow::Result<StationTls> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("TLS certificate {}", cert.display()))?;
        let leaf = chain
            .first()
            .with_context(|| format!("TLS certificate {}: no certificate in it", cert.display()))?;
        let pin = StationPin::of_certificate(leaf)
            .map_err(|e| anyhow::anyhow!("TLS certificate {}: {e}", cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("TLS key {}", key.display()))?;
        let tls = StationTls { chain, key, pin };
        // Refuse a key that does not belong to the certificate now, not
        // at the first handshake.
        tls.server_config()?;
        Ok(tls)
    }

    /// A new self-signed pair for this machine's loopback names and
    /// `extra_names` (e.g. the address the station listens on).
    pub fn generate(extra_names: &[String]) -> anyhow::Result<(StationTls, String, String)> {
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        for n in extra_names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let ck = rcgen::generate_simple_self_signed(names).context("generating a certificate")?;
        let cert_pem = ck.cert.pem();
        let key_pem = ck.signing_key.serialize_pem();
        let chain = vec![ck.cert.der().clone()];
        let pin = StationPin::of_certificate(&chain[0]).map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .map_err(|e| anyhow::anyhow!("generated key: {e}"))?;
        Ok((StationTls { chain, key, pin }, cert_pem, key_pem))
    }

    /// The development pair in `data/tls/`, generated (and written, the
    /// key readable by this user only) when it is not there yet. Returns
    /// whether it was generated now.
    pub fn load_or_generate_dev(
        data: &Path,
        extra_names: &[String],
    ) -> anyhow::Result<(StationTls, bool)> {
        let (cert, key) = dev_paths(data);
        // The key is written first: a key without its certificate is a
        // pair whose making was cut short (no phone can have pinned it).
        if cert.exists() {
            return Ok((StationTls::from_files(&cert, &key)?, false));
        }
        let (tls, cert_pem, key_pem) = StationTls::generate(extra_names)?;
        let dir = cert.parent().context("TLS directory")?;
        crate::files::private_dir(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        // Key first, then the certificate, each written whole and renamed
        // into place: a crash leaves either nothing or a usable pair.
        write_whole(&key, key_pem.as_bytes())?;
        write_whole(&cert, cert_pem.as_bytes())?;
        Ok((tls, true))
    }

    /// The certificate chain, leaf first (DER).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("TLS certificate and key do not match")?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Writes `bytes` whole to a temporary file (readable by this user only,
/// like every file in the data directory), syncs it and renames it into
/// place.
fn write_whole(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(crate::files::FILE_MODE);
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    // The new name survives a power cut: phones pin this key.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// A listener that hands axum only connections whose TLS handshake
/// succeeded. Handshakes run in their own tasks, so one slow client does
/// not hold up the others.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp`; the returned task owns the socket and
    /// ends (closing it) once `stop` is cancelled or the listener dropped.
    pub fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        storage: Arc<dyn StationStorage>,
        stop: tokio_util::sync::CancellationToken,
    ) -> std::io::Result<(TlsListener, tokio::task::JoinHandle<()>)> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    // axum dropped the listener: the station stopped.
                    _ = tx.closed() => return,
                    r = tcp.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, as
                            // axum's own listener does.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let storage = storage.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => handshake_failed(&*storage, peer, &e).await,
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok((TlsListener { ready, local }, task))
    }
}

/// Why a handshake failed, when a client or its bytes said so (a client
/// that just hangs up is not worth an audit entry).
fn refusal(e: &std::io::Error) -> Option<String> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::AlertReceived(alert) => {
            format!("refused: TLS handshake, the client rejected this station's certificate ({alert:?})")
        }
        other => format!("refused: TLS handshake failed ({other})"),
    })
}

async fn handshake_failed(storage: &dyn StationStorage, peer: SocketAddr, e: &std::io::Error) {
    let Some(outcome) = refusal(e) else {
        tracing::debug!(%peer, error = %e, "TLS handshake ended");
        return;
    };
    tracing::warn!(%peer, "{outcome}");
    let entry = AuditEntry {
        id: 0,
        at_ms: storage.clock().now_ms(),
        actor: "anonymous".into(),
        action: "TLS handshake".into(),
        target: peer.ip().to_string(),
        outcome,
    };
    if let Err(e) = storage.audit(entry).await {
        tracing::error!(error = %e, "audit log write failed");
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task only ends once this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_development_pair_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (a, made) = StationTls::load_or_generate_dev(dir.path(), &[]).unwrap();
        assert!(made);
        let (b, made) = StationTls::load_or_generate_dev(dir.path(), &[]).unwrap();
        assert!(!made);
        assert_eq!(a.pin, b.pin);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dev_paths(dir.path()).1)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        }
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert_a, _) = StationTls::generate(&[]).unwrap();
        let (_, _, key_b) = StationTls::generate(&[]).unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, cert_a).unwrap();
        std::fs::write(&k, key_b).unwrap();
        let err = StationTls::from_files(&c, &k).unwrap_err();
        assert!(format!("{err:#}").contains("do not match"), "{err:#}");
        std::fs::write(&c, "not pem").unwrap();
        assert!(StationTls::from_files(&c, &k).is_err());
    }
}
