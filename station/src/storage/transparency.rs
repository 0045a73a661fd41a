//! The station's side of the transparency log (docs/log.md): the log key,
//! extending the tree inside the transaction that stores what it logs, the
//! signed checkpoints, inclusion and consistency proofs, and checking a
//! database against its own log. Formats and checks are
//! `fieldreport_core::tlog`'s; the tree's stored hashes and the proofs are
//! `tlog_tiles`'s (Go's `sumdb/tlog` numbering), read through the engine.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;

use ed25519_dalek::SigningKey;
use fieldreport_core::tlog::{
    audit_digest, Leaf, LeafView, LogError, NoteVerifier, SignedCheckpoint, TreeHash,
};
use tlog_tiles::HashReader;
use zeroize::Zeroizing;

use crate::error::{Result, StationError};
use crate::storage::engine::{Engine, LogAppend, StoredChange, WriteTx};
use crate::storage::AuditEntry;

/// The log key's file in the data directory: the 32-byte Ed25519 seed,
/// `0600`, apart from the TLS key and the station key.
pub const LOG_KEY_FILE: &str = "log.key";

/// The key that signs checkpoints, and the log's name (the checkpoint's
/// origin line and the note signer's name).
pub struct LogSigner {
    key: SigningKey,
    origin: String,
}

impl std::fmt::Debug for LogSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSigner")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl LogSigner {
    /// The log key at `path`, made (`0600`) if there is none. The origin
    /// is `fieldreport/` and the first 8 bytes of the key's SHA-256, in
    /// hex, unless `origin` names it.
    pub fn load_or_create(path: &Path, origin: Option<&str>) -> Result<LogSigner> {
        let seed = load_or_create_seed(path)?;
        let key = SigningKey::from_bytes(&seed);
        let origin = match origin {
            Some(o) => o.to_string(),
            None => {
                use sha2::Digest;
                let d = sha2::Sha256::digest(key.verifying_key().as_bytes());
                format!("fieldreport/{}", hex::encode(&d[..8]))
            }
        };
        NoteVerifier::new(&origin, key.verifying_key()).map_err(|_| {
            StationError::Internal("the log origin may hold no space or '+'".into())
        })?;
        Ok(LogSigner { key, origin })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Signs the checkpoint of a tree (the station signs only trees it
    /// computed from its own log, in `extend`).
    pub fn sign(&self, size: u64, root: TreeHash) -> Result<SignedCheckpoint> {
        SignedCheckpoint::sign(&self.origin, size, root, &self.key)
            .map_err(|e| StationError::Internal(format!("checkpoint: {e}")))
    }

    /// The published verifier key (`name+id+key`), what phones, witnesses
    /// and `verify` are given.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.origin.clone(),
            key: self.key.verifying_key(),
        }
    }
}

/// An Ed25519 seed kept in a `0600` file of its own (the log key, a
/// witness key), made if there is none.
pub(crate) fn load_or_create_seed(path: &Path) -> Result<Zeroizing<[u8; 32]>> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => read_seed(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_seed(path),
        Err(e) => Err(e.into()),
    }
}

fn read_seed(path: &Path) -> Result<Zeroizing<[u8; 32]>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StationError::Unavailable(format!(
                "the key file {} is readable by others (mode {mode:o}): chmod 600 it",
                path.display()
            )));
        }
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
        StationError::Unavailable(format!("cannot read the key file {}: {e}", path.display()))
    })?);
    let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        StationError::Unavailable(format!("the key file {} is not 32 bytes", path.display()))
    })?;
    Ok(Zeroizing::new(seed))
}

/// Makes the key file; several processes starting together agree on one
/// key (written aside, linked into place only if none appeared).
fn create_seed(path: &Path) -> Result<Zeroizing<[u8; 32]>> {
    let dir = path
        .parent()
        .ok_or_else(|| StationError::Internal("log key path".into()))?;
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).map_err(|_| StationError::Internal("no randomness".into()))?;
    let tmp = dir.join(format!(".log-key-{}", uuid::Uuid::new_v4().simple()));
    crate::files::write_new_private(&tmp, seed.as_ref())?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            std::fs::File::open(dir)?.sync_all()?;
            tracing::info!(path = %path.display(), "key made");
            Ok(seed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_seed(path),
        Err(e) => Err(e.into()),
    }
}

/// Canonical bytes of an audit row, as an audit leaf's digest covers them.
pub fn audit_bytes(e: &AuditEntry) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&e.id.to_be_bytes());
    out.extend_from_slice(&e.at_ms.to_be_bytes());
    for field in [&e.actor, &e.action, &e.target, &e.outcome] {
        out.extend_from_slice(&(field.len() as u64).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

/// The audit leaf that seals `rows` (id order, not empty).
pub fn audit_leaf(rows: &[AuditEntry]) -> Option<Leaf> {
    let (first, last) = (rows.first()?, rows.last()?);
    let bytes: Vec<Vec<u8>> = rows.iter().map(audit_bytes).collect();
    Some(Leaf::Audit {
        count: rows.len() as u64,
        first_id: first.id,
        last_id: last.id,
        digest: audit_digest(bytes.iter().map(|b| b.as_slice())),
    })
}

/// A hash reader over a map filled before the tree math runs, recording
/// what it was asked for that it lacks. `tlog_tiles` reads synchronously
/// and the engines are async, but which hashes an operation reads depends
/// only on the tree sizes: a first pass over an empty map learns the
/// indexes, they are fetched, a second pass computes.
#[derive(Default)]
struct Prefetched {
    known: HashMap<u64, TreeHash>,
    missing: Mutex<BTreeSet<u64>>,
}

impl HashReader for Prefetched {
    fn read_hashes(
        &self,
        indexes: &[u64],
    ) -> std::result::Result<Vec<TreeHash>, tlog_tiles::Error> {
        let mut missing = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        Ok(indexes
            .iter()
            .map(|i| match self.known.get(i) {
                Some(h) => *h,
                None => {
                    missing.insert(*i);
                    TreeHash([0; 32])
                }
            })
            .collect())
    }
}

impl Prefetched {
    fn take_missing(&self) -> Vec<u64> {
        std::mem::take(&mut *self.missing.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .collect()
    }
}

fn tlog_error(e: tlog_tiles::Error) -> StationError {
    match e {
        tlog_tiles::Error::InvalidInput(_) | tlog_tiles::Error::IndexesNotInTree => {
            StationError::BadRequest("bad_query", "no such entry or tree size in the log".into())
        }
        other => StationError::Internal(format!("log tree: {other}")),
    }
}

/// Runs `f` over hashes fetched by `fetch`, in the two passes described at
/// [`Prefetched`].
async fn with_hashes<T, F, Fut>(
    mut known: Prefetched,
    fetch: F,
    f: impl Fn(&Prefetched) -> std::result::Result<T, tlog_tiles::Error>,
) -> Result<T>
where
    F: FnOnce(Vec<u64>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<[u8; 32]>>>,
{
    f(&known).map_err(tlog_error)?;
    let missing = known.take_missing();
    if !missing.is_empty() {
        let got = fetch(missing.clone()).await?;
        known
            .known
            .extend(missing.into_iter().zip(got.into_iter().map(TreeHash)));
    }
    let out = f(&known).map_err(tlog_error)?;
    if !known.take_missing().is_empty() {
        return Err(StationError::Internal(
            "log tree read twice differently".into(),
        ));
    }
    Ok(out)
}

/// What one extension of the log added.
#[derive(Debug, Clone)]
pub struct Extended {
    pub checkpoint: SignedCheckpoint,
    /// The change leaves logged, with their indexes.
    pub changes: Vec<(u64, Leaf)>,
}

/// Appends to the log, in `tx` (which holds the log lock): `new`, the
/// changes this transaction stored, by id; then a seal of the audit rows
/// after the last sealed one; and signs a checkpoint. `None` when there
/// was nothing to add. See [`crate::storage::engine::LogBacklog`] for the
/// one-time backfill of an upgraded station.
pub async fn extend(
    tx: &mut dyn WriteTx,
    signer: &LogSigner,
    new: Vec<(i64, StoredChange)>,
) -> Result<Option<Extended>> {
    extend_with(tx, signer, None, new).await
}

/// [`extend`], with `first` (a restore leaf) as the first new entry.
pub async fn extend_with(
    tx: &mut dyn WriteTx,
    signer: &LogSigner,
    first: Option<Leaf>,
    new: Vec<(i64, StoredChange)>,
) -> Result<Option<Extended>> {
    let backlog = tx.log_backlog().await?;
    let mut leaves: Vec<(Option<i64>, Option<i64>, Leaf)> =
        first.into_iter().map(|leaf| (None, None, leaf)).collect();
    leaves.extend(
        backlog
            .backfill
            .iter()
            .filter(|(id, _)| !new.iter().any(|(n, _)| n == id))
            .chain(new.iter())
            .map(|(id, s)| {
                (
                    Some(*id),
                    None,
                    Leaf::Change {
                        hash: *s.change.hash(),
                        device: s.change.device(),
                        seq: s.change.body().seq,
                        report: s.change.report(),
                        received_at_ms: s.received_at,
                    },
                )
            }),
    );
    if let Some(seal) = audit_leaf(&backlog.audit) {
        leaves.push((None, backlog.audit.last().map(|e| e.id), seal));
    }
    if leaves.is_empty() {
        return Ok(None);
    }
    let start = backlog.size;
    let encoded: Vec<Vec<u8>> = leaves.iter().map(|l| l.2.encode()).collect();
    let compute = |r: &Prefetched| {
        // Hashes this batch stores are read back by its later leaves.
        let mut overlay = Prefetched {
            known: r.known.clone(),
            missing: Mutex::new(BTreeSet::new()),
        };
        let mut stored = Vec::new();
        for (k, data) in encoded.iter().enumerate() {
            let n = start + k as u64;
            let hs = tlog_tiles::stored_hashes(n, data, &overlay)?;
            let base = tlog_tiles::stored_hash_index(0, n);
            for (j, h) in hs.into_iter().enumerate() {
                overlay.known.insert(base + j as u64, h);
                stored.push((base + j as u64, h));
            }
        }
        let root = tlog_tiles::tree_hash(start + encoded.len() as u64, &overlay)?;
        // What the overlay lacked, below this batch's own hashes, the
        // database has.
        let first_new = tlog_tiles::stored_hash_index(0, start);
        let lacked: Vec<u64> = overlay
            .take_missing()
            .into_iter()
            .filter(|i| *i < first_new)
            .collect();
        r.missing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(lacked);
        Ok((stored, root))
    };
    let mut known = Prefetched::default();
    compute(&known).map_err(tlog_error)?;
    let missing = known.take_missing();
    if !missing.is_empty() {
        let got = tx.log_hashes(&missing).await?;
        known
            .known
            .extend(missing.into_iter().zip(got.into_iter().map(TreeHash)));
    }
    let (stored, root) = compute(&known).map_err(tlog_error)?;
    if !known.take_missing().is_empty() {
        return Err(StationError::Internal(
            "log tree read twice differently".into(),
        ));
    }
    let size = start + encoded.len() as u64;
    let checkpoint = signer.sign(size, root)?;
    let mut changes = Vec::new();
    let mut rows = Vec::new();
    for (k, ((change, audit, leaf), data)) in leaves.into_iter().zip(encoded).enumerate() {
        let idx = start + k as u64;
        if change.is_some() {
            changes.push((idx, leaf));
        }
        rows.push((idx, change, audit, data));
    }
    tx.append_log(LogAppend {
        leaves: rows,
        hashes: stored.into_iter().map(|(i, h)| (i, h.0)).collect(),
        checkpoint: (size, checkpoint.note.clone()),
    })
    .await?;
    Ok(Some(Extended {
        checkpoint,
        changes,
    }))
}

/// The inclusion proof of entry `index` in the tree of `size`.
pub async fn inclusion_proof<E: Engine>(
    engine: &E,
    index: u64,
    size: u64,
) -> Result<Vec<TreeHash>> {
    if index >= size {
        return Err(StationError::BadRequest(
            "bad_query",
            "index must be below the tree size".into(),
        ));
    }
    with_hashes(
        Prefetched::default(),
        |idx| async move { engine.log_hashes(&idx).await },
        |r| tlog_tiles::prove_record(size, index, r),
    )
    .await
}

/// Inclusion proofs of `indexes` in the tree of `size`, read in one go.
pub async fn inclusion_proofs<E: Engine>(
    engine: &E,
    indexes: &[u64],
    size: u64,
) -> Result<Vec<Vec<TreeHash>>> {
    if indexes.iter().any(|i| *i >= size) {
        return Err(StationError::BadRequest(
            "bad_query",
            "index must be below the tree size".into(),
        ));
    }
    with_hashes(
        Prefetched::default(),
        |idx| async move { engine.log_hashes(&idx).await },
        |r| {
            indexes
                .iter()
                .map(|i| tlog_tiles::prove_record(size, *i, r))
                .collect()
        },
    )
    .await
}

/// The consistency proof from the tree of `old` to the tree of `new`.
pub async fn consistency_proof<E: Engine>(engine: &E, old: u64, new: u64) -> Result<Vec<TreeHash>> {
    if old > new {
        return Err(StationError::BadRequest(
            "bad_query",
            "the old size must not exceed the new one".into(),
        ));
    }
    if old == 0 || old == new {
        return Ok(Vec::new());
    }
    with_hashes(
        Prefetched::default(),
        |idx| async move { engine.log_hashes(&idx).await },
        |r| tlog_tiles::prove_tree(new, old, r),
    )
    .await
}

/// The root of the stored tree of `size`.
pub async fn tree_root<E: Engine>(engine: &E, size: u64) -> Result<TreeHash> {
    with_hashes(
        Prefetched::default(),
        |idx| async move { engine.log_hashes(&idx).await },
        |r| tlog_tiles::tree_hash(size, r),
    )
    .await
}

/// What checking a database against its own log found. Each list names
/// ids and indexes only.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogCheck {
    pub size: u64,
    pub changes: u64,
    pub audit_rows: u64,
    pub problems: Vec<String>,
}

impl LogCheck {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn change_leaf(s: &StoredChange) -> Leaf {
    Leaf::Change {
        hash: *s.change.hash(),
        device: s.change.device(),
        seq: s.change.body().seq,
        report: s.change.report(),
        received_at_ms: s.received_at,
    }
}

struct MapReader<'a>(&'a HashMap<u64, TreeHash>);

impl HashReader for MapReader<'_> {
    fn read_hashes(&self, idx: &[u64]) -> std::result::Result<Vec<TreeHash>, tlog_tiles::Error> {
        idx.iter()
            .map(|i| {
                self.0
                    .get(i)
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// Checks the database against its log: the newest checkpoint is signed by
/// `verifier`, and both the stored leaves and the stored tree hashes give
/// its root; every stored change, rebuilt from its row (body, signature,
/// receipt time), is the logged leaf of its id, in order, and every change
/// leaf a stored change; every sealed audit row is there, unaltered, and
/// none was added inside a sealed range. Reads the whole log. A station
/// that keeps serving meanwhile is fine: changes logged after the
/// checkpoint read first are recognised by their leaves.
pub async fn check<E: Engine>(engine: &E, verifier: &NoteVerifier) -> Result<LogCheck> {
    let mut out = LogCheck::default();
    let Some((size, note)) = engine.checkpoint(None).await? else {
        if !engine.changes_after(i64::MIN, 1).await?.is_empty() {
            out.problems
                .push("changes are stored but the log has no checkpoint".into());
        }
        return Ok(out);
    };
    out.size = size;
    let cp = match SignedCheckpoint::verify(note.as_bytes(), verifier) {
        Ok(cp) => Some(cp),
        Err(e) => {
            out.problems.push(format!("checkpoint {size}: {e}"));
            None
        }
    };
    let mut recomputed: HashMap<u64, TreeHash> = HashMap::new();
    // Cursors start below any id a row could be given.
    let mut changes_after = i64::MIN;
    let mut audit_after = i64::MIN;
    let mut from = 0u64;
    const PAGE: u64 = 10_000;
    let mut expected_index = 0u64;
    while from < size {
        let page = engine.log_leaves(from, (from + PAGE).min(size)).await?;
        if page.is_empty() {
            break;
        }
        for (idx, change_id, _audit_last, bytes) in page {
            if idx != expected_index {
                out.problems
                    .push(format!("log entry {expected_index} is missing"));
                break;
            }
            expected_index += 1;
            let hs = tlog_tiles::stored_hashes(idx, &bytes, &MapReader(&recomputed))
                .map_err(|e| StationError::Internal(format!("log tree: {e}")))?;
            let base = tlog_tiles::stored_hash_index(0, idx);
            for (j, h) in hs.into_iter().enumerate() {
                recomputed.insert(base + j as u64, h);
            }
            match Leaf::decode(&bytes) {
                Ok(leaf @ LeafView::Change { .. }) => {
                    out.changes += 1;
                    let Some(id) = change_id else {
                        out.problems
                            .push(format!("log entry {idx}: a change without its id"));
                        continue;
                    };
                    // Stored rows before this id are ones the log never had.
                    loop {
                        let next = engine.changes_after(changes_after, 1).await?;
                        match next.first() {
                            Some((sid, _)) if *sid < id => {
                                out.problems.push(format!(
                                    "change {sid} is stored but not in the log (inserted?)"
                                ));
                                changes_after = *sid;
                            }
                            Some((sid, stored)) if *sid == id => {
                                if change_leaf(stored).view() != leaf {
                                    out.problems.push(format!(
                                        "change {id} differs from log entry {idx} (rewritten)"
                                    ));
                                }
                                break;
                            }
                            _ => {
                                out.problems.push(format!(
                                    "log entry {idx}: change {id} is no longer stored (deleted)"
                                ));
                                break;
                            }
                        }
                    }
                    changes_after = id;
                }
                Ok(LeafView::Audit {
                    count,
                    first_id,
                    last_id,
                    digest,
                }) => {
                    let rows = engine
                        .audit_range(audit_after.saturating_add(1), last_id)
                        .await?;
                    out.audit_rows += rows.len() as u64;
                    let bytes: Vec<Vec<u8>> = rows.iter().map(audit_bytes).collect();
                    let first_ok = rows.first().map(|r| r.id) == Some(first_id);
                    if rows.len() as u64 != count
                        || !first_ok
                        || audit_digest(bytes.iter().map(|b| b.as_slice())) != digest
                    {
                        out.problems.push(format!(
                            "audit rows {first_id}..={last_id} sealed by log entry {idx} were deleted, added or altered ({} found, {count} sealed)",
                            rows.len()
                        ));
                    }
                    audit_after = last_id;
                }
                // Says where a restored history starts; nothing stored
                // stands for it.
                Ok(LeafView::Restore { .. }) => {}
                Err(_) => out.problems.push(format!("log entry {idx} is malformed")),
            }
        }
        if expected_index == from {
            break;
        }
        from = expected_index;
    }
    if expected_index < size {
        out.problems.push(format!(
            "the log holds {expected_index} entries, its checkpoint {size}"
        ));
    }
    // Stored changes after the last one checked: logged since the
    // checkpoint was read (a running station), or never logged.
    let newer = match engine.checkpoint(None).await? {
        Some((now, _)) if now > size => engine.log_leaves(size, now).await?,
        _ => Vec::new(),
    };
    let logged_since: std::collections::HashSet<i64> =
        newer.iter().filter_map(|(_, id, _, _)| *id).collect();
    loop {
        let rest = engine.changes_after(changes_after, 1000).await?;
        let Some((last, _)) = rest.last() else { break };
        let last = *last;
        for (id, _) in &rest {
            if !logged_since.contains(id) {
                out.problems.push(format!(
                    "change {id} is stored but not in the log (inserted?)"
                ));
            }
        }
        changes_after = last;
        if out.problems.len() > 10_000 {
            break;
        }
    }
    if let Some(cp) = cp {
        let root = tlog_tiles::tree_hash(expected_index.min(size), &MapReader(&recomputed));
        if root.ok() != Some(cp.root) {
            out.problems.push(format!(
                "the log's entries do not hash to checkpoint {size}'s root (rewritten)"
            ));
        }
        // The stored hashes serve every proof: they must agree too.
        if tree_root(engine, size).await.ok() != Some(cp.root) {
            out.problems.push(format!(
                "the stored tree hashes do not give checkpoint {size}'s root (rewritten)"
            ));
        }
    }
    Ok(out)
}

/// The error a client gets for a proof request on a tree this station
/// never signed: 404, as for any entry the log does not hold.
pub fn unknown_size(_size: u64) -> StationError {
    StationError::NotFound
}

/// Maps a checkpoint that fails to verify with the station's own key: it
/// never should (the station signed it), so this is internal.
pub fn own_checkpoint(e: LogError) -> StationError {
    StationError::Internal(format!("own checkpoint: {e}"))
}
