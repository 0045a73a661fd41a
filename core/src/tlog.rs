//! The station's transparency log, as both sides read it: what a leaf
//! commits to, the signed checkpoint (C2SP `tlog-checkpoint` inside a C2SP
//! `signed-note`, Ed25519), and checking inclusion and consistency proofs
//! (RFC 6962 hashing). The tree math and the checkpoint text are the
//! `tlog_tiles` crate's (a port of Go's `golang.org/x/mod/sumdb/tlog`); the
//! note signature is ed25519-dalek's. The station keeps the tree
//! (`fieldreport-station`'s `transparency` module); phones and `verify`
//! only check.
//!
//! Proofs come from a station that may lie: every check here returns a
//! typed error, never panics (the crate's own checks are run under
//! `catch_unwind` as a second guard).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use tlog_tiles::stored_hash_index;
pub use tlog_tiles::Hash as TreeHash;

/// Why a checkpoint, note or proof is refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LogError {
    #[error("malformed signed note: {0}")]
    MalformedNote(&'static str),
    #[error("malformed checkpoint")]
    MalformedCheckpoint,
    #[error("the checkpoint is not signed by the log key {0}")]
    NotSignedByLog(String),
    #[error("the checkpoint is for log {found:?}, not {expected:?}")]
    WrongOrigin { expected: String, found: String },
    #[error("malformed verifier key")]
    MalformedKey,
    #[error("the inclusion proof does not verify")]
    BadInclusion,
    #[error("the consistency proof does not verify")]
    BadConsistency,
    #[error("the log shrank from {seen} to {presented} entries")]
    Shrunk { seen: u64, presented: u64 },
    /// Two checkpoints the log key signed, of one size and different
    /// roots: the log showed two histories.
    #[error("the log signed two different trees of size {size}")]
    Forked { size: u64 },
    /// A push's answer left changes without a receipt.
    #[error("the station's answer has no log receipt for {missing} of the changes pushed")]
    MissingReceipts { missing: u64 },
    /// The log has no consistency proof between two sizes it signed
    /// checkpoints of: it no longer has one of those trees.
    #[error("the log no longer has a tree it signed (asked for sizes {old} and {new})")]
    Forgotten { old: u64, new: u64 },
    #[error("malformed leaf")]
    MalformedLeaf,
}

impl LogError {
    /// The log shows another history than one it signed before: smaller,
    /// forked, not provably extending it, or without a tree it signed (a
    /// rollback, unless a restore in the log explains it).
    pub fn is_history(&self) -> bool {
        matches!(
            self,
            LogError::Shrunk { .. }
                | LogError::Forked { .. }
                | LogError::BadConsistency
                | LogError::Forgotten { .. }
        )
    }
}

/// The longest note this module reads (a checkpoint is a few hundred bytes).
pub const MAX_NOTE_LEN: usize = 64 * 1024;
/// Signature lines read from one note at most.
pub const MAX_SIGNATURES: usize = 100;

const CHANGE_LEAF_TAG: &[u8] = b"fieldreport/change/v1\n";
const AUDIT_LEAF_TAG: &[u8] = b"fieldreport/audit/v1\n";
const RESTORE_LEAF_TAG: &[u8] = b"fieldreport/restore/v1\n";
const REPORT_COMMIT_TAG: &[u8] = b"fieldreport/report/v1\n";
const CHANGE_COMMIT_TAG: &[u8] = b"fieldreport/change-body/v1\n";

/// One entry of the log. A change's leaf names what the station accepted
/// (the change's hash, its author, sequence number and report) and when it
/// received it; an audit leaf seals a batch of audit rows by their count,
/// id range and SHA-256 over their canonical bytes; a restore leaf says
/// that the station was restored from a backup whose log ended at the
/// tree of `restored_size` and `restored_root` (it is the first entry
/// after it): what phones holding a larger tree accept instead of a
/// rollback, and send again what the station lost (docs/log.md).
///
/// A change leaf's bytes hold only two commitments: one to its report
/// (the same for every change of the report) and one to the rest. So a
/// bag can carry every leaf of the log, which proves which entries belong
/// to its report, without showing who wrote what in any other report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leaf {
    Change {
        hash: [u8; 32],
        device: Uuid,
        seq: u64,
        report: Uuid,
        received_at_ms: i64,
    },
    Audit {
        count: u64,
        first_id: i64,
        last_id: i64,
        digest: [u8; 32],
    },
    Restore {
        restored_size: u64,
        restored_root: [u8; 32],
        /// When the backup was made (the station's clock), ms.
        backup_at_ms: i64,
    },
}

/// What a leaf's bytes show (see [`Leaf`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafView {
    /// `report` is [`report_commitment`] of the change's report; `body`
    /// commits to its hash, author, sequence number and receipt time.
    Change { report: [u8; 32], body: [u8; 32] },
    Audit {
        count: u64,
        first_id: i64,
        last_id: i64,
        digest: [u8; 32],
    },
    Restore {
        restored_size: u64,
        restored_root: [u8; 32],
        backup_at_ms: i64,
    },
}

/// The commitment every change leaf of `report` carries: SHA-256 of a tag
/// and the report id (random, so the commitment does not tell the report
/// to whoever does not know it).
pub fn report_commitment(report: Uuid) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(REPORT_COMMIT_TAG);
    h.update(report.as_bytes());
    h.finalize().into()
}

impl Leaf {
    /// What the leaf's bytes show.
    pub fn view(&self) -> LeafView {
        match *self {
            Leaf::Change {
                hash,
                device,
                seq,
                report,
                received_at_ms,
            } => {
                let mut h = Sha256::new();
                h.update(CHANGE_COMMIT_TAG);
                h.update(hash);
                h.update(device.as_bytes());
                h.update(seq.to_be_bytes());
                h.update(received_at_ms.to_be_bytes());
                LeafView::Change {
                    report: report_commitment(report),
                    body: h.finalize().into(),
                }
            }
            Leaf::Audit {
                count,
                first_id,
                last_id,
                digest,
            } => LeafView::Audit {
                count,
                first_id,
                last_id,
                digest,
            },
            Leaf::Restore {
                restored_size,
                restored_root,
                backup_at_ms,
            } => LeafView::Restore {
                restored_size,
                restored_root,
                backup_at_ms,
            },
        }
    }

    /// The leaf's bytes, as hashed into the tree.
    pub fn encode(&self) -> Vec<u8> {
        self.view().encode()
    }

    /// What a leaf's bytes show; anything else is
    /// [`LogError::MalformedLeaf`].
    pub fn decode(bytes: &[u8]) -> Result<LeafView, LogError> {
        LeafView::decode(bytes)
    }

    /// The RFC 6962 leaf hash.
    pub fn hash(&self) -> TreeHash {
        tlog_tiles::record_hash(&self.encode())
    }
}

impl LeafView {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        match self {
            LeafView::Change { report, body } => {
                out.extend_from_slice(CHANGE_LEAF_TAG);
                out.extend_from_slice(report);
                out.extend_from_slice(body);
            }
            LeafView::Audit {
                count,
                first_id,
                last_id,
                digest,
            } => {
                out.extend_from_slice(AUDIT_LEAF_TAG);
                out.extend_from_slice(&count.to_be_bytes());
                out.extend_from_slice(&first_id.to_be_bytes());
                out.extend_from_slice(&last_id.to_be_bytes());
                out.extend_from_slice(digest);
            }
            LeafView::Restore {
                restored_size,
                restored_root,
                backup_at_ms,
            } => {
                out.extend_from_slice(RESTORE_LEAF_TAG);
                out.extend_from_slice(&restored_size.to_be_bytes());
                out.extend_from_slice(restored_root);
                out.extend_from_slice(&backup_at_ms.to_be_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<LeafView, LogError> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], LogError> {
            if b.len() < n {
                return Err(LogError::MalformedLeaf);
            }
            let (head, rest) = b.split_at(n);
            *b = rest;
            Ok(head)
        }
        fn arr<const N: usize>(b: &mut &[u8]) -> Result<[u8; N], LogError> {
            take(b, N)?.try_into().map_err(|_| LogError::MalformedLeaf)
        }
        let leaf = if let Some(mut b) = bytes.strip_prefix(CHANGE_LEAF_TAG) {
            let leaf = LeafView::Change {
                report: arr(&mut b)?,
                body: arr(&mut b)?,
            };
            (leaf, b)
        } else if let Some(mut b) = bytes.strip_prefix(AUDIT_LEAF_TAG) {
            let leaf = LeafView::Audit {
                count: u64::from_be_bytes(arr(&mut b)?),
                first_id: i64::from_be_bytes(arr(&mut b)?),
                last_id: i64::from_be_bytes(arr(&mut b)?),
                digest: arr(&mut b)?,
            };
            (leaf, b)
        } else if let Some(mut b) = bytes.strip_prefix(RESTORE_LEAF_TAG) {
            let leaf = LeafView::Restore {
                restored_size: u64::from_be_bytes(arr(&mut b)?),
                restored_root: arr(&mut b)?,
                backup_at_ms: i64::from_be_bytes(arr(&mut b)?),
            };
            (leaf, b)
        } else {
            return Err(LogError::MalformedLeaf);
        };
        match leaf {
            (leaf, []) => Ok(leaf),
            _ => Err(LogError::MalformedLeaf),
        }
    }

    /// The RFC 6962 leaf hash.
    pub fn hash(&self) -> TreeHash {
        tlog_tiles::record_hash(&self.encode())
    }
}

/// The SHA-256 an audit leaf holds over its rows, each given as its
/// canonical bytes, in id order: each row's length (u64, big-endian) and
/// then its bytes.
pub fn audit_digest<'a>(rows: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for row in rows {
        h.update((row.len() as u64).to_be_bytes());
        h.update(row);
    }
    h.finalize().into()
}

/// A log's public key as C2SP `signed-note` writes it: `name+hash+key`,
/// the key being base64 of the algorithm byte (1, Ed25519) and the 32 key
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    pub name: String,
    pub key: VerifyingKey,
}

const ALG_ED25519: u8 = 1;

fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

impl NoteVerifier {
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, LogError> {
        if !valid_name(name) || key.is_weak() {
            return Err(LogError::MalformedKey);
        }
        Ok(NoteVerifier {
            name: name.to_string(),
            key,
        })
    }

    /// The 4-byte key id of the spec.
    pub fn key_id(&self) -> [u8; 4] {
        key_id(&self.name, &self.key)
    }

    /// `name+hex(key id)+base64(1 ‖ key)`.
    pub fn encode(&self) -> String {
        let mut k = vec![ALG_ED25519];
        k.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id()),
            B64.encode(k)
        )
    }

    pub fn parse(text: &str) -> Result<Self, LogError> {
        // The base64 key may hold '+' itself: name and id first.
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(LogError::MalformedKey);
        };
        let raw = B64.decode(key).map_err(|_| LogError::MalformedKey)?;
        let [ALG_ED25519, key @ ..] = raw.as_slice() else {
            return Err(LogError::MalformedKey);
        };
        let key: [u8; 32] = key.try_into().map_err(|_| LogError::MalformedKey)?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| LogError::MalformedKey)?;
        let v = NoteVerifier::new(name, key)?;
        if hex::encode(v.key_id()) != id {
            return Err(LogError::MalformedKey);
        }
        Ok(v)
    }
}

/// A signed note: its text (ending in a newline) and its signature lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote {
    pub text: String,
    /// (name, key id, signature bytes after the key id).
    pub signatures: Vec<(String, [u8; 4], Vec<u8>)>,
}

impl SignedNote {
    /// Signs `text` (which must end in a newline) as `name`.
    pub fn sign(text: &str, name: &str, key: &SigningKey) -> Result<Self, LogError> {
        if !text.ends_with('\n') || text.contains("\n\n") || !valid_name(name) {
            return Err(LogError::MalformedNote("text or name"));
        }
        let sig = key.sign(text.as_bytes()).to_bytes().to_vec();
        Ok(SignedNote {
            text: text.to_string(),
            signatures: vec![(name.to_string(), key_id(name, &key.verifying_key()), sig)],
        })
    }

    pub fn encode(&self) -> String {
        let mut out = self.text.clone();
        out.push('\n');
        for (name, id, sig) in &self.signatures {
            let mut b = id.to_vec();
            b.extend_from_slice(sig);
            out.push_str(&format!("\u{2014} {name} {}\n", B64.encode(b)));
        }
        out
    }

    pub fn parse(note: &[u8]) -> Result<Self, LogError> {
        if note.len() > MAX_NOTE_LEN {
            return Err(LogError::MalformedNote("too long"));
        }
        let note = std::str::from_utf8(note).map_err(|_| LogError::MalformedNote("not UTF-8"))?;
        if note.contains('\r') || note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(LogError::MalformedNote("control character"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or(LogError::MalformedNote("no signature block"))?;
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        if !sigs.ends_with('\n') {
            return Err(LogError::MalformedNote("unterminated signature line"));
        }
        let mut signatures = Vec::new();
        for line in sigs[..sigs.len() - 1].split('\n') {
            if signatures.len() >= MAX_SIGNATURES {
                return Err(LogError::MalformedNote("too many signatures"));
            }
            let rest = line
                .strip_prefix("\u{2014} ")
                .ok_or(LogError::MalformedNote("signature line"))?;
            let (name, b) = rest
                .split_once(' ')
                .ok_or(LogError::MalformedNote("signature line"))?;
            if !valid_name(name) {
                return Err(LogError::MalformedNote("signer name"));
            }
            let raw = B64
                .decode(b)
                .map_err(|_| LogError::MalformedNote("signature base64"))?;
            if raw.len() < 5 {
                return Err(LogError::MalformedNote("short signature"));
            }
            let id: [u8; 4] = [raw[0], raw[1], raw[2], raw[3]];
            signatures.push((name.to_string(), id, raw[4..].to_vec()));
        }
        if signatures.is_empty() {
            return Err(LogError::MalformedNote("no signature"));
        }
        Ok(SignedNote {
            text: text.to_string(),
            signatures,
        })
    }

    /// Whether `v` signed this note.
    pub fn signed_by(&self, v: &NoteVerifier) -> bool {
        let id = v.key_id();
        self.signatures.iter().any(|(name, sid, sig)| {
            name == &v.name
                && sid == &id
                && <[u8; 64]>::try_from(sig.as_slice())
                    .map(|s| {
                        v.key
                            .verify(self.text.as_bytes(), &Signature::from_bytes(&s))
                    })
                    .is_ok_and(|r| r.is_ok())
        })
    }
}

/// The vkey type of an Ed25519 `cosignature/v1` key (C2SP
/// `tlog-cosignature`).
const ALG_COSIGNATURE_V1: u8 = 4;
/// A cosignature's bytes after the key id: the timestamp (u64 BE) and the
/// Ed25519 signature.
const COSIGNATURE_LEN: usize = 8 + 64;

fn cosigner_key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_COSIGNATURE_V1]);
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The message a `cosignature/v1` signs: the header line, the time line
/// and the checkpoint's note text.
fn cosignature_message(text: &str, time: u64) -> Vec<u8> {
    format!("cosignature/v1\ntime {time}\n{text}").into_bytes()
}

/// A witness's public key, as C2SP `tlog-cosignature` writes it: a vkey
/// of type 4 (Ed25519 `cosignature/v1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignerKey {
    pub name: String,
    pub key: VerifyingKey,
}

impl CosignerKey {
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, LogError> {
        if !valid_name(name) || key.is_weak() {
            return Err(LogError::MalformedKey);
        }
        Ok(CosignerKey {
            name: name.to_string(),
            key,
        })
    }

    pub fn key_id(&self) -> [u8; 4] {
        cosigner_key_id(&self.name, &self.key)
    }

    /// `name+hex(key id)+base64(4 ‖ key)`.
    pub fn encode(&self) -> String {
        let mut k = vec![ALG_COSIGNATURE_V1];
        k.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id()),
            B64.encode(k)
        )
    }

    pub fn parse(text: &str) -> Result<Self, LogError> {
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(LogError::MalformedKey);
        };
        let raw = B64.decode(key).map_err(|_| LogError::MalformedKey)?;
        let [ALG_COSIGNATURE_V1, key @ ..] = raw.as_slice() else {
            return Err(LogError::MalformedKey);
        };
        let key: [u8; 32] = key.try_into().map_err(|_| LogError::MalformedKey)?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| LogError::MalformedKey)?;
        let v = CosignerKey::new(name, key)?;
        if hex::encode(v.key_id()) != id {
            return Err(LogError::MalformedKey);
        }
        Ok(v)
    }
}

/// A `cosignature/v1` signature line over a checkpoint's note text, made
/// at `time` (POSIX seconds) by the witness `name`.
pub fn cosign(text: &str, name: &str, key: &SigningKey, time: u64) -> Result<String, LogError> {
    if !text.ends_with('\n') || !valid_name(name) || time > i64::MAX as u64 {
        return Err(LogError::MalformedNote("text, name or time"));
    }
    let sig = key.sign(&cosignature_message(text, time));
    let mut b = cosigner_key_id(name, &key.verifying_key()).to_vec();
    b.extend_from_slice(&time.to_be_bytes());
    b.extend_from_slice(&sig.to_bytes());
    Ok(format!("\u{2014} {name} {}\n", B64.encode(b)))
}

impl SignedNote {
    /// The time of `witness`'s valid cosignature on this note, if it has
    /// one.
    pub fn cosigned_by(&self, witness: &CosignerKey) -> Option<u64> {
        let id = witness.key_id();
        self.signatures.iter().find_map(|(name, sid, sig)| {
            if name != &witness.name || sid != &id || sig.len() != COSIGNATURE_LEN {
                return None;
            }
            let time = u64::from_be_bytes(sig[..8].try_into().ok()?);
            let s: [u8; 64] = sig[8..].try_into().ok()?;
            witness
                .key
                .verify(
                    &cosignature_message(&self.text, time),
                    &Signature::from_bytes(&s),
                )
                .ok()
                .map(|()| time)
        })
    }
}

/// A checkpoint the log key signed: origin, tree size and root hash.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedCheckpoint {
    pub origin: String,
    pub size: u64,
    pub root: TreeHash,
    /// The whole signed note, as served.
    pub note: String,
    /// The note's text (the checkpoint lines, what the log key and any
    /// cosigner signed).
    pub text: String,
}

impl SignedCheckpoint {
    /// Signs a checkpoint of `size` and `root` for the log `origin`.
    pub fn sign(
        origin: &str,
        size: u64,
        root: TreeHash,
        key: &SigningKey,
    ) -> Result<Self, LogError> {
        let cp = tlog_tiles::Checkpoint::new(origin, size, root, "")
            .map_err(|_| LogError::MalformedCheckpoint)?;
        let text = String::from_utf8(cp.to_bytes()).map_err(|_| LogError::MalformedCheckpoint)?;
        let note = SignedNote::sign(&text, origin, key)?;
        Ok(SignedCheckpoint {
            origin: origin.to_string(),
            size,
            root,
            note: note.encode(),
            text,
        })
    }

    /// Parses `note` and checks that `log` signed it and that it is for
    /// `log`'s origin (the key's name is the origin).
    pub fn verify(note: &[u8], log: &NoteVerifier) -> Result<Self, LogError> {
        let signed = SignedNote::parse(note)?;
        let cp = tlog_tiles::Checkpoint::from_bytes(signed.text.as_bytes())
            .map_err(|_| LogError::MalformedCheckpoint)?;
        if cp.origin() != log.name {
            return Err(LogError::WrongOrigin {
                expected: log.name.clone(),
                found: cp.origin().to_string(),
            });
        }
        if !signed.signed_by(log) {
            return Err(LogError::NotSignedByLog(log.name.clone()));
        }
        Ok(SignedCheckpoint {
            origin: cp.origin().to_string(),
            size: cp.size(),
            root: *cp.hash(),
            note: signed.encode(),
            text: signed.text,
        })
    }
}

fn guarded(f: impl FnOnce() -> bool) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(false)
}

/// Builds the log's tree leaf by leaf (what a verifier holding the leaves
/// does), keeping only the stored hashes (about two per leaf).
#[derive(Debug, Default)]
pub struct TreeBuilder {
    stored: Vec<TreeHash>,
    size: u64,
}

impl tlog_tiles::HashReader for TreeBuilder {
    fn read_hashes(&self, idx: &[u64]) -> Result<Vec<TreeHash>, tlog_tiles::Error> {
        idx.iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.stored.get(i).copied())
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

impl TreeBuilder {
    /// Appends the next leaf (its bytes).
    pub fn push(&mut self, leaf: &[u8]) -> Result<(), LogError> {
        let more = tlog_tiles::stored_hashes(self.size, leaf, self)
            .map_err(|_| LogError::MalformedLeaf)?;
        self.stored.extend(more);
        self.size += 1;
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the tree of the leaves pushed so far.
    pub fn root(&self) -> Result<TreeHash, LogError> {
        tlog_tiles::tree_hash(self.size, self).map_err(|_| LogError::MalformedLeaf)
    }
}

/// The size and root of the tree over `leaves` (their bytes, in log
/// order), computed the way the log computes it.
pub fn tree_of_leaves<'a>(
    leaves: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(u64, TreeHash), LogError> {
    let mut t = TreeBuilder::default();
    for leaf in leaves {
        t.push(leaf)?;
    }
    Ok((t.size(), t.root()?))
}

/// Checks that the leaf `leaf` is entry `index` of the tree of `size` with
/// `root`.
pub fn check_inclusion(
    proof: &[TreeHash],
    size: u64,
    root: TreeHash,
    index: u64,
    leaf: TreeHash,
) -> Result<(), LogError> {
    if index >= size || proof.len() > 64 {
        return Err(LogError::BadInclusion);
    }
    let proof = proof.to_vec();
    if guarded(|| tlog_tiles::check_record(&proof, size, root, index, leaf).is_ok()) {
        Ok(())
    } else {
        Err(LogError::BadInclusion)
    }
}

/// Checks that the tree of `old_size` and `old_root` is a prefix of the
/// tree of `new_size` and `new_root`. A smaller new tree is
/// [`LogError::Shrunk`]; equal sizes must have equal roots.
pub fn check_consistency(
    proof: &[TreeHash],
    old_size: u64,
    old_root: TreeHash,
    new_size: u64,
    new_root: TreeHash,
) -> Result<(), LogError> {
    if new_size < old_size {
        return Err(LogError::Shrunk {
            seen: old_size,
            presented: new_size,
        });
    }
    if old_size == new_size {
        return if old_root == new_root && proof.is_empty() {
            Ok(())
        } else {
            Err(LogError::BadConsistency)
        };
    }
    if old_size == 0 {
        // Every tree extends the empty one, whose root is fixed.
        return if old_root == tlog_tiles::EMPTY_HASH {
            Ok(())
        } else {
            Err(LogError::BadConsistency)
        };
    }
    if proof.len() > 128 {
        return Err(LogError::BadConsistency);
    }
    let proof = proof.to_vec();
    if guarded(|| tlog_tiles::check_tree(&proof, new_size, new_root, old_size, old_root).is_ok()) {
        Ok(())
    } else {
        Err(LogError::BadConsistency)
    }
}

/// Hashes as the wire carries them: base64, 32 bytes each.
pub fn decode_hashes(items: &[String]) -> Result<Vec<TreeHash>, LogError> {
    items
        .iter()
        .map(|s| {
            let b = B64.decode(s).map_err(|_| LogError::BadInclusion)?;
            let a: [u8; 32] = b.try_into().map_err(|_| LogError::BadInclusion)?;
            Ok(TreeHash(a))
        })
        .collect()
}

pub fn encode_hashes(items: &[TreeHash]) -> Vec<String> {
    items.iter().map(|h| B64.encode(h.0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use tlog_tiles::HashReader;

    struct Mem(Mutex<HashMap<u64, TreeHash>>);
    impl HashReader for Mem {
        fn read_hashes(&self, idx: &[u64]) -> Result<Vec<TreeHash>, tlog_tiles::Error> {
            let m = self.0.lock().unwrap();
            idx.iter()
                .map(|i| m.get(i).copied().ok_or(tlog_tiles::Error::IndexesNotInTree))
                .collect()
        }
    }

    fn tree(n: u64) -> Mem {
        let mem = Mem(Mutex::new(HashMap::new()));
        for i in 0..n {
            let hs = tlog_tiles::stored_hashes(i, format!("leaf {i}").as_bytes(), &mem).unwrap();
            let base = tlog_tiles::stored_hash_index(0, i);
            let mut m = mem.0.lock().unwrap();
            for (k, h) in hs.into_iter().enumerate() {
                m.insert(base + k as u64, h);
            }
        }
        mem
    }

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    #[test]
    fn a_checkpoint_verifies_with_its_log_key_only() {
        let origin = "station.example/log";
        let cp = SignedCheckpoint::sign(origin, 7, TreeHash([9; 32]), &key(1)).unwrap();
        let ok = NoteVerifier::new(origin, key(1).verifying_key()).unwrap();
        assert_eq!(
            SignedCheckpoint::verify(cp.note.as_bytes(), &ok).unwrap(),
            cp
        );
        let other = NoteVerifier::new(origin, key(2).verifying_key()).unwrap();
        assert_eq!(
            SignedCheckpoint::verify(cp.note.as_bytes(), &other),
            Err(LogError::NotSignedByLog(origin.into()))
        );
        let elsewhere = NoteVerifier::new("other/log", key(1).verifying_key()).unwrap();
        assert!(matches!(
            SignedCheckpoint::verify(cp.note.as_bytes(), &elsewhere),
            Err(LogError::WrongOrigin { .. })
        ));
        // One byte of the body changed: refused.
        let bent = cp.note.replacen("\n7\n", "\n8\n", 1);
        assert!(SignedCheckpoint::verify(bent.as_bytes(), &ok).is_err());
        assert_eq!(NoteVerifier::parse(&ok.encode()).unwrap(), ok);
        // Keys whose base64 holds '+' round-trip too.
        for b in 0..=255u8 {
            let v = NoteVerifier::new(origin, key(b).verifying_key()).unwrap();
            assert_eq!(NoteVerifier::parse(&v.encode()).unwrap(), v);
        }
    }

    #[test]
    fn the_note_matches_the_spec_example_layout() {
        let cp = SignedCheckpoint::sign("o", 1, TreeHash([0; 32]), &key(3)).unwrap();
        let lines: Vec<&str> = cp.note.lines().collect();
        assert_eq!(lines[0], "o");
        assert_eq!(lines[1], "1");
        assert_eq!(lines[2], B64.encode([0u8; 32]));
        assert_eq!(lines[3], "");
        assert!(lines[4].starts_with("\u{2014} o "));
        assert_eq!(lines.len(), 5);
    }

    /// Go's `golang.org/x/mod/sumdb/note` test vector: our parser and
    /// key-id agree with the reference implementation.
    #[test]
    fn the_go_note_package_vector_verifies() {
        let v = NoteVerifier::parse(
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        )
        .unwrap();
        let msg = "If you think cryptography is the answer to your problem,\n\
                   then you don't know what your problem is.\n\
                   \n\
                   \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let note = SignedNote::parse(msg.as_bytes()).unwrap();
        assert!(note.signed_by(&v));
        assert_eq!(note.encode(), msg);
        let bent = msg.replace("problem,", "problem;");
        assert!(!SignedNote::parse(bent.as_bytes()).unwrap().signed_by(&v));
    }

    #[test]
    fn inclusion_and_consistency_proofs_check_and_forgeries_do_not() {
        let mem = tree(23);
        for size in 1..=23u64 {
            let root = tlog_tiles::tree_hash(size, &mem).unwrap();
            for i in 0..size {
                let p = tlog_tiles::prove_record(size, i, &mem).unwrap();
                let leaf = tlog_tiles::record_hash(format!("leaf {i}").as_bytes());
                check_inclusion(&p, size, root, i, leaf).unwrap();
                let wrong = tlog_tiles::record_hash(b"inserted");
                assert_eq!(
                    check_inclusion(&p, size, root, i, wrong),
                    Err(LogError::BadInclusion)
                );
            }
            for old in 1..=size {
                let old_root = tlog_tiles::tree_hash(old, &mem).unwrap();
                let p = if old == size {
                    vec![]
                } else {
                    tlog_tiles::prove_tree(size, old, &mem).unwrap()
                };
                check_consistency(&p, old, old_root, size, root).unwrap();
                if old < size {
                    assert_eq!(
                        check_consistency(&p, old, TreeHash([1; 32]), size, root),
                        Err(LogError::BadConsistency)
                    );
                }
                assert!(matches!(
                    check_consistency(&[], size, root, old - 1, old_root),
                    Err(LogError::Shrunk { .. })
                ));
            }
        }
    }

    #[test]
    fn cosignatures_verify_and_follow_the_spec_layout() {
        // The C2SP tlog-cosignature example: a 72-byte signature whose
        // first 8 bytes are the time of the message it shows.
        let example = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n\u{2014} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n";
        let note = SignedNote::parse(example.as_bytes()).unwrap();
        let (_, _, sig) = &note.signatures[1];
        assert_eq!(sig.len(), COSIGNATURE_LEN);
        assert_eq!(
            u64::from_be_bytes(sig[..8].try_into().unwrap()),
            1_679_315_147
        );

        let log = SigningKey::from_bytes(&[3; 32]);
        let witness = SigningKey::from_bytes(&[5; 32]);
        let wkey = CosignerKey::new("da.example/witness", witness.verifying_key()).unwrap();
        assert_eq!(CosignerKey::parse(&wkey.encode()).unwrap(), wkey);
        // A log (type 1) key is not a cosigner (type 4) key.
        let as_log = NoteVerifier::new("da.example/witness", witness.verifying_key()).unwrap();
        assert!(CosignerKey::parse(&as_log.encode()).is_err());

        let cp = SignedCheckpoint::sign("example.org/log", 7, TreeHash([9; 32]), &log).unwrap();
        let line = cosign(&cp.text, &wkey.name, &witness, 1_800_000_000).unwrap();
        let cosigned = SignedNote::parse(format!("{}{line}", cp.note).as_bytes()).unwrap();
        assert_eq!(cosigned.cosigned_by(&wkey), Some(1_800_000_000));
        // The log's own signature still verifies beside it.
        let lv = NoteVerifier::new("example.org/log", log.verifying_key()).unwrap();
        assert!(SignedCheckpoint::verify(cosigned.encode().as_bytes(), &lv).is_ok());
        // Another time in the line, another checkpoint, another key: no.
        let mut raw = B64.decode(line.trim().rsplit(' ').next().unwrap()).unwrap();
        raw[11] ^= 1;
        let moved = format!("{}\u{2014} {} {}\n", cp.note, wkey.name, B64.encode(&raw));
        assert_eq!(
            SignedNote::parse(moved.as_bytes())
                .unwrap()
                .cosigned_by(&wkey),
            None
        );
        let other = SignedCheckpoint::sign("example.org/log", 8, TreeHash([9; 32]), &log).unwrap();
        let swapped = format!("{}{line}", other.note);
        assert_eq!(
            SignedNote::parse(swapped.as_bytes())
                .unwrap()
                .cosigned_by(&wkey),
            None
        );
        let stranger =
            CosignerKey::new(&wkey.name, SigningKey::from_bytes(&[6; 32]).verifying_key()).unwrap();
        assert_eq!(cosigned.cosigned_by(&stranger), None);
    }

    #[test]
    fn leaves_round_trip_and_junk_is_refused() {
        let leaves = [
            Leaf::Change {
                hash: [4; 32],
                device: Uuid::from_bytes([1; 16]),
                seq: 9,
                report: Uuid::from_bytes([2; 16]),
                received_at_ms: 1_700_000_000_000,
            },
            Leaf::Audit {
                count: 3,
                first_id: 1,
                last_id: 5,
                digest: [7; 32],
            },
            Leaf::Restore {
                restored_size: 41,
                restored_root: [8; 32],
                backup_at_ms: 1_800_000_000_000,
            },
        ];
        for leaf in leaves {
            let b = leaf.encode();
            assert_eq!(Leaf::decode(&b).unwrap(), leaf.view());
            assert_eq!(
                Leaf::decode(&b[..b.len() - 1]),
                Err(LogError::MalformedLeaf)
            );
            let mut longer = b.clone();
            longer.push(0);
            assert_eq!(Leaf::decode(&longer), Err(LogError::MalformedLeaf));
        }
    }

    #[test]
    fn garbage_notes_are_refused_not_panicked_on() {
        for junk in [
            &b""[..],
            b"\n\n",
            b"o\n1\nAAAA\n\n",
            b"o\n1\nAAAA\n\n\xe2\x80\x94 o !!!\n",
            b"o\n\n\xe2\x80\x94 o AAAAAAAA\n",
        ] {
            let v = NoteVerifier::new("o", key(1).verifying_key()).unwrap();
            assert!(SignedCheckpoint::verify(junk, &v).is_err());
        }
        // Forged proofs of silly lengths.
        let junk = vec![TreeHash([0; 32]); 64];
        assert!(check_inclusion(&junk, 5, TreeHash([0; 32]), 3, TreeHash([0; 32])).is_err());
        assert!(check_consistency(&junk, 3, TreeHash([0; 32]), 5, TreeHash([0; 32])).is_err());
    }
}
