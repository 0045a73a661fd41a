//! A local RFC 3161 time-stamp authority for tests: OpenSSL's `ts -reply`
//! behind a small HTTP handler, with its own root and a time-stamping
//! certificate made for the test. It can be told to answer with garbage or
//! with another request's token, to show the station and `verify` refuse.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::routing::post;

/// How the authority answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TsaMode {
    Honest = 0,
    /// HTTP 503.
    Down = 1,
    /// A token over other bytes than asked.
    OtherData = 2,
}

pub struct LocalTsa {
    pub url: String,
    pub dir: tempfile::TempDir,
    mode: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a root and a TSA certificate in `dir`: `ca.pem`, `tsa.pem`,
/// `tsa.key`, and the `ts` config `tsa.cnf`.
pub fn make_authority(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "3650",
            "-subj",
            &format!("/CN={name} Root"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "tsa.key",
            "-out",
            "tsa.csr",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=critical,timeStamping\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "tsa.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "tsa.pem",
            "-days",
            "3650",
            "-extfile",
            "ext.cnf",
        ],
    );
    std::fs::write(dir.join("serial"), "01\n").unwrap();
    std::fs::write(
        dir.join("tsa.cnf"),
        format!(
            "[ tsa ]\ndefault_tsa = tsa1\n[ tsa1 ]\ndir = {}\nserial = $dir/serial\ncrypto_device = builtin\nsigner_cert = $dir/tsa.pem\nsigner_key = $dir/tsa.key\nsigner_digest = sha256\ndefault_policy = 1.2.3.4.1\ndigests = sha256\naccuracy = secs:1\nordering = no\ntsa_name = no\ness_cert_id_chain = no\ness_cert_id_alg = sha256\n",
            dir.display()
        ),
    )
    .unwrap();
}

/// OpenSSL's reply to the DER query `query`.
pub fn reply(dir: &Path, query: &[u8]) -> Vec<u8> {
    let q = tempfile::NamedTempFile::new_in(dir).unwrap();
    std::fs::write(q.path(), query).unwrap();
    let r = dir.join(format!("reply-{}.tsr", uuid::Uuid::new_v4()));
    let out = Command::new("openssl")
        .args(["ts", "-reply", "-config"])
        .arg(dir.join("tsa.cnf"))
        .arg("-queryfile")
        .arg(q.path())
        .arg("-out")
        .arg(&r)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = std::fs::read(&r).unwrap();
    let _ = std::fs::remove_file(&r);
    b
}

impl LocalTsa {
    /// An authority named `name`, served on `rt`.
    pub fn start(rt: &tokio::runtime::Runtime, name: &str) -> LocalTsa {
        let dir = tempfile::tempdir().unwrap();
        make_authority(dir.path(), name);
        let mode = Arc::new(AtomicU8::new(TsaMode::Honest as u8));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
        let url = format!("http://{}/tsr", listener.local_addr().unwrap());
        let root = dir.path().to_path_buf();
        let m = mode.clone();
        let app = axum::Router::new().route(
            "/tsr",
            post(move |body: Bytes| {
                let root = root.clone();
                let m = m.load(Ordering::SeqCst);
                async move {
                    if m == TsaMode::Down as u8 {
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, Vec::new());
                    }
                    let query = if m == TsaMode::OtherData as u8 {
                        fieldreport_core::timestamp::request(b"other bytes", [7; 8]).unwrap()
                    } else {
                        body.to_vec()
                    };
                    let out = tokio::task::spawn_blocking(move || reply(&root, &query))
                        .await
                        .unwrap();
                    (axum::http::StatusCode::OK, out)
                }
            }),
        );
        let task = rt.spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        LocalTsa {
            url,
            dir,
            mode,
            task,
        }
    }

    pub fn set_mode(&self, mode: TsaMode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// The root the authority's certificate chains to.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The root, as DER anchors for `verify`.
    pub fn anchors(&self) -> Vec<Vec<u8>> {
        fieldreport_core::timestamp::certificates_from_pem(
            &std::fs::read_to_string(self.ca_pem()).unwrap(),
        )
        .unwrap()
    }
}

impl Drop for LocalTsa {
    fn drop(&mut self) {
        self.task.abort();
    }
}
