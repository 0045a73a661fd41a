//! A witness (C2SP `tlog-witness`, `cosignature/v1`): the service an
//! outside office (the State's Attorney, the Inspector General) runs so
//! that a station cannot show two histories. It cosigns a log's
//! checkpoint only after checking that it extends the last checkpoint it
//! cosigned for that log, and it records that checkpoint before it
//! answers. Run by `fieldreport-station witness`; its key and its state
//! live in its own directory, apart from any station's (docs/log.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use fieldreport_core::tlog::{
    check_consistency, cosign, CosignerKey, LogError, NoteVerifier, SignedCheckpoint, SignedNote,
    TreeHash,
};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::error::{Result, StationError};
use crate::storage::transparency::load_or_create_seed;

/// The witness key's file in the witness directory (an Ed25519 seed,
/// `0600`).
pub const WITNESS_KEY_FILE: &str = "witness.key";
/// The last checkpoint cosigned per log, rewritten whole (atomically)
/// before each cosignature is returned.
pub const WITNESS_STATE_FILE: &str = "witness-state.json";
/// Held while a witness runs on the directory: one process per state.
pub const WITNESS_LOCK_FILE: &str = "witness.lock";
/// Checkpoints the log key signed that the witness refused as another
/// history (the evidence of a fork), one file each.
pub const WITNESS_REFUSED_DIR: &str = "refused";
/// A request is an old size, at most 63 proof lines and a checkpoint.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
const MAX_PROOF_LINES: usize = 63;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct WitnessState {
    /// By log origin.
    logs: BTreeMap<String, Cosigned>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cosigned {
    size: u64,
    /// Base64 root hash.
    root: String,
}

/// Why a checkpoint was not cosigned; each is the spec's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("unknown log")]
    UnknownLog,
    #[error("the checkpoint is not signed by the log's key")]
    NotSigned,
    /// The old size is not the one last cosigned (which it names), or the
    /// same size with another root.
    #[error("the witness last cosigned size {0}")]
    Conflict(u64),
    #[error("the consistency proof does not verify")]
    Inconsistent,
    #[error("the witness cannot go on: {0}")]
    Internal(&'static str),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::UnknownLog => StatusCode::NOT_FOUND,
            Refusal::NotSigned => StatusCode::FORBIDDEN,
            Refusal::Conflict(_) => StatusCode::CONFLICT,
            Refusal::Inconsistent => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// One witness: its key, the logs it follows, its recorded state.
/// At most this many refused requests are kept in `refused/`.
pub const MAX_REFUSED: usize = 1000;

pub struct Witness {
    name: String,
    key: SigningKey,
    logs: Vec<NoteVerifier>,
    state_path: PathBuf,
    refused_dir: PathBuf,
    /// The directory's lock, held as long as this witness lives.
    _lock: std::fs::File,
    /// Checking the old size and recording the new checkpoint happen
    /// under this lock, so two requests cannot roll the state back.
    state: tokio::sync::Mutex<WitnessState>,
    clock: Arc<dyn Clock>,
}

impl Witness {
    /// The witness of directory `dir` (made `0700` if new): its key
    /// (made if there is none) and its state. `name` defaults to
    /// `fieldreport-witness/` and 8 bytes of the key's SHA-256 in hex.
    pub fn open(
        dir: &Path,
        name: Option<&str>,
        logs: Vec<NoteVerifier>,
        clock: Arc<dyn Clock>,
    ) -> Result<Witness> {
        if logs.is_empty() {
            return Err(StationError::BadRequest(
                "no_log",
                "a witness needs at least one log key to follow".into(),
            ));
        }
        crate::files::private_dir(dir)?;
        let mut open = std::fs::OpenOptions::new();
        open.create(true).truncate(false).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        let lock = open.open(dir.join(WITNESS_LOCK_FILE))?;
        if let Err(e) = lock.try_lock() {
            return Err(StationError::Unavailable(match e {
                std::fs::TryLockError::WouldBlock => format!(
                    "another witness runs on {}: one process per witness directory",
                    dir.display()
                ),
                std::fs::TryLockError::Error(e) => format!("cannot lock {}: {e}", dir.display()),
            }));
        }
        let key_path = dir.join(WITNESS_KEY_FILE);
        let state_path = dir.join(WITNESS_STATE_FILE);
        let new_key = !key_path.exists();
        let seed = load_or_create_seed(&key_path)?;
        if new_key {
            persist(&state_path, &WitnessState::default())?;
        } else if !state_path.exists() {
            // A key without its state would cosign any history from size 0.
            return Err(StationError::Unavailable(format!(
                "the witness key is there but its state {} is not: a witness that forgot what it cosigned must not go on with that key; retire it and start a new witness directory (a new key, announced anew)",
                state_path.display()
            )));
        }
        let key = SigningKey::from_bytes(&seed);
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                use sha2::Digest;
                let d = sha2::Sha256::digest(key.verifying_key().as_bytes());
                format!("fieldreport-witness/{}", hex::encode(&d[..8]))
            }
        };
        CosignerKey::new(&name, key.verifying_key()).map_err(|_| {
            StationError::BadRequest("bad_name", "a witness name may hold no space or '+'".into())
        })?;
        let state = match std::fs::read(&state_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|_| {
                StationError::Unavailable(format!(
                    "the witness state {} is not readable JSON: do not restore an older copy (it would let the witness cosign a rolled-back log); retire the key and start a new witness directory",
                    state_path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => WitnessState::default(),
            Err(e) => return Err(e.into()),
        };
        Ok(Witness {
            name,
            key,
            logs,
            state_path,
            refused_dir: dir.join(WITNESS_REFUSED_DIR),
            _lock: lock,
            state: tokio::sync::Mutex::new(state),
            clock,
        })
    }

    /// The witness's public key, what stations, phones and `verify` are
    /// given.
    pub fn key(&self) -> CosignerKey {
        CosignerKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Handles one `add-checkpoint` body: the cosignature line, or why not.
    pub async fn add_checkpoint(&self, body: &[u8]) -> std::result::Result<String, Refusal> {
        let req = parse_request(body)?;
        let note = SignedNote::parse(req.checkpoint).map_err(|_| Refusal::BadRequest("note"))?;
        let origin = note
            .text
            .split('\n')
            .next()
            .ok_or(Refusal::BadRequest("checkpoint"))?;
        // Any of the log's trusted keys (a log rotating its key has two).
        let keys: Vec<&NoteVerifier> = self.logs.iter().filter(|l| l.name == origin).collect();
        if keys.is_empty() {
            return Err(Refusal::UnknownLog);
        }
        let mut verified = None;
        for key in keys {
            match SignedCheckpoint::verify(req.checkpoint, key) {
                Ok(cp) => {
                    verified = Some(cp);
                    break;
                }
                Err(LogError::NotSignedByLog(_)) => {}
                Err(_) => return Err(Refusal::BadRequest("checkpoint")),
            }
        }
        let cp = verified.ok_or(Refusal::NotSigned)?;
        if req.old > cp.size {
            return Err(Refusal::BadRequest("old size above the checkpoint's"));
        }
        if (req.old == 0 || req.old == cp.size) && !req.proof.is_empty() {
            return Err(Refusal::BadRequest("a proof where none is due"));
        }
        let mut state = self.state.lock().await;
        let seen = state.logs.get(&cp.origin).cloned();
        let (seen_size, seen_root) = match &seen {
            Some(s) => (s.size, Some(decode_root(&s.root)?)),
            None => (0, None),
        };
        if req.old != seen_size {
            return Err(Refusal::Conflict(seen_size));
        }
        match seen_root {
            Some(root) if seen_size == cp.size && root != cp.root => {
                tracing::error!(origin = %cp.origin, size = cp.size, "a log showed two trees of one size");
                self.keep_refused(body, req.checkpoint, "two-trees");
                return Err(Refusal::Conflict(seen_size));
            }
            Some(root)
                if seen_size < cp.size
                    && check_consistency(&req.proof, seen_size, root, cp.size, cp.root)
                        .is_err() =>
            {
                // A fork, or a made-up proof for a real checkpoint: kept
                // for the office to look at (the proof is in the file).
                tracing::warn!(origin = %cp.origin, old = seen_size, new = cp.size, "a consistency proof from the tree cosigned does not verify");
                self.keep_refused(body, req.checkpoint, "inconsistent");
                return Err(Refusal::Inconsistent);
            }
            _ => {}
        }
        let time = u64::try_from(self.clock.now_ms() / 1000).unwrap_or(0);
        let line = cosign(&cp.text, &self.name, &self.key, time)
            .map_err(|_| Refusal::BadRequest("checkpoint"))?;
        let mut next = state.clone();
        next.logs.insert(
            cp.origin.clone(),
            Cosigned {
                size: cp.size,
                root: B64.encode(cp.root.0),
            },
        );
        // Recorded before the cosignature leaves: a witness restarted
        // after answering never cosigns a smaller tree.
        let (path, record) = (self.state_path.clone(), next.clone());
        tokio::task::spawn_blocking(move || persist(&path, &record))
            .await
            .map_err(|_| Refusal::Internal("its state cannot be written"))?
            .map_err(|e| {
                tracing::error!(error = %e, "witness state not written");
                Refusal::Internal("its state cannot be written")
            })?;
        *state = next;
        Ok(line)
    }
}

impl Witness {
    /// Keeps a request whose checkpoint the log key signed and that tells
    /// another history: what the office shows when it reports the fork.
    /// Best effort (the refusal stands either way).
    /// Keeps a refused request whose checkpoint the log key signed: one
    /// file per checkpoint (named by its digest), so that replaying a
    /// public checkpoint with made-up proofs fills nothing, and at most
    /// [`MAX_REFUSED`] files.
    fn keep_refused(&self, body: &[u8], checkpoint: &[u8], why: &str) {
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(checkpoint));
        let name = format!("{why}-{digest}.txt");
        let path = self.refused_dir.join(&name);
        let kept = crate::files::private_dir(&self.refused_dir).and_then(|()| {
            if path.exists() {
                return Ok(());
            }
            let held = std::fs::read_dir(&self.refused_dir)?.count();
            if held >= MAX_REFUSED {
                tracing::error!(
                    checkpoint = %digest,
                    "refused/ holds {MAX_REFUSED} files: this refusal is not kept"
                );
                return Ok(());
            }
            crate::files::write_new_private(&path, body)
        });
        match kept {
            Ok(()) => tracing::info!(checkpoint = %digest, file = %name, "refused checkpoint kept"),
            Err(e) => tracing::error!(error = %e, "a refused checkpoint could not be kept"),
        }
    }
}

struct Request<'a> {
    old: u64,
    proof: Vec<TreeHash>,
    checkpoint: &'a [u8],
}

fn parse_request(body: &[u8]) -> std::result::Result<Request<'_>, Refusal> {
    let bad = Refusal::BadRequest;
    let text = std::str::from_utf8(body).map_err(|_| bad("not UTF-8"))?;
    let (head, checkpoint) = text.split_once("\n\n").ok_or(bad("no blank line"))?;
    let mut lines = head.split('\n');
    let old = lines
        .next()
        .and_then(|l| l.strip_prefix("old "))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .filter(|n| *n == "0" || !n.starts_with('0'))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or(bad("old size line"))?;
    let mut proof = Vec::new();
    for line in lines {
        if proof.len() == MAX_PROOF_LINES {
            return Err(bad("more than 63 proof lines"));
        }
        let raw = B64.decode(line).map_err(|_| bad("proof line"))?;
        let h: [u8; 32] = raw.try_into().map_err(|_| bad("proof line"))?;
        proof.push(TreeHash(h));
    }
    Ok(Request {
        old,
        proof,
        checkpoint: checkpoint.as_bytes(),
    })
}

fn decode_root(b64: &str) -> std::result::Result<TreeHash, Refusal> {
    B64.decode(b64)
        .ok()
        .and_then(|r| <[u8; 32]>::try_from(r).ok())
        .map(TreeHash)
        .ok_or(Refusal::Internal("its state is corrupt"))
}

/// Writes the state aside, synced, and renames it into place.
fn persist(path: &Path, state: &WitnessState) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| StationError::Internal("witness state path".into()))?;
    let tmp = dir.join(format!(
        ".{WITNESS_STATE_FILE}.{}",
        uuid::Uuid::new_v4().simple()
    ));
    let bytes = serde_json::to_vec_pretty(state)
        .map_err(|_| StationError::Internal("witness state".into()))?;
    crate::files::write_new_private(&tmp, &bytes)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The witness's HTTP interface: `POST /add-checkpoint` (the spec's) and
/// `GET /` (its key).
pub fn router(witness: Arc<Witness>) -> Router {
    Router::new()
        .route("/", get(key))
        .route(
            "/add-checkpoint",
            post(add_checkpoint).layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES)),
        )
        .with_state(witness)
}

async fn key(State(w): State<Arc<Witness>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", w.key().encode()),
    )
        .into_response()
}

async fn add_checkpoint(State(w): State<Arc<Witness>>, body: Bytes) -> Response {
    match w.add_checkpoint(&body).await {
        Ok(line) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], line).into_response(),
        Err(Refusal::Conflict(size)) => (
            StatusCode::CONFLICT,
            [(header::CONTENT_TYPE, "text/x.tlog.size")],
            format!("{size}\n"),
        )
            .into_response(),
        Err(r) => (r.status(), format!("{r}\n")).into_response(),
    }
}
