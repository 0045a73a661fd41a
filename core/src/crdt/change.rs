//! Changes and operations: the signed unit of replication.
//!
//! A change is one user action. Its body is encoded canonically with
//! `postcard` (a fixed, documented wire format: varints, length-prefixed
//! strings, no maps), signed with the device's Ed25519 key over a
//! domain-separated message, and identified by the SHA-256 of the body.
//! Decoding re-encodes the body and refuses any byte string that is not the
//! canonical encoding, so one change has exactly one byte form.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::hlc::Hlc;
use crate::error::Error;
use crate::model::schema;
use crate::model::value::Value;

pub const FORMAT_VERSION: u8 = 1;
/// Prefixed to the body bytes before signing (domain separation).
pub const SIGNING_CONTEXT: &[u8] = b"fieldreport/change/v1\0";
/// A change larger than this is refused when decoding (a narrative is at
/// most 64 KiB; media bytes never travel inside a change).
pub const MAX_CHANGE_BYTES: usize = 256 * 1024;
pub const MAX_OPS_PER_CHANGE: usize = 512;
pub const MAX_PRED_PER_OP: usize = 256;

pub type Hash = [u8; 32];

/// Identifies one operation: the change (device, seq) and its index in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpId {
    pub device: Uuid,
    pub seq: u64,
    pub index: u32,
}

/// Identifies one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChangeId {
    pub device: Uuid,
    pub seq: u64,
}

impl std::fmt::Display for ChangeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.device, self.seq)
    }
}

/// What an operation acts on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Target {
    /// A scalar field of the report (`narrative`, `supervisory_federal_officer.badge_number`).
    Field(String),
    /// The existence of an entry in a collection.
    Entry { collection: String, entry: Uuid },
    /// A field of an entry.
    EntryField {
        collection: String,
        entry: Uuid,
        field: String,
    },
}

impl Target {
    /// The path form used by the API: `narrative`, `force/<uuid>`,
    /// `force/<uuid>/type`.
    pub fn path(&self) -> String {
        match self {
            Target::Field(p) => p.clone(),
            Target::Entry { collection, entry } => format!("{collection}/{entry}"),
            Target::EntryField {
                collection,
                entry,
                field,
            } => format!("{collection}/{entry}/{field}"),
        }
    }

    /// Parses the path form; checks it against the schema.
    pub fn parse_path(path: &str) -> Result<Target, Error> {
        let parts: Vec<&str> = path.split('/').collect();
        let entry_id = |s: &str| {
            Uuid::parse_str(s).map_err(|_| Error::UnknownField(path.chars().take(64).collect()))
        };
        match parts.as_slice() {
            [field] => {
                schema::report_field(field)?;
                Ok(Target::Field(field.to_string()))
            }
            [coll, entry] => {
                schema::collection(coll)?;
                Ok(Target::Entry {
                    collection: coll.to_string(),
                    entry: entry_id(entry)?,
                })
            }
            [coll, entry, field] => {
                schema::entry_field(coll, field)?;
                Ok(Target::EntryField {
                    collection: coll.to_string(),
                    entry: entry_id(entry)?,
                    field: field.to_string(),
                })
            }
            _ => Err(Error::UnknownField(path.chars().take(64).collect())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Set a register (a field or an entry's field).
    Set(Value),
    /// Add (or restore) an entry.
    Add,
    /// Remove an entry; `pred` names the additions and field values seen.
    Remove,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub target: Target,
    pub action: Action,
    /// The operations on this target the author had seen (for a removal:
    /// also the entry's field values it had seen).
    pub pred: Vec<OpId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeBody {
    pub format: u8,
    pub report: Uuid,
    pub device: Uuid,
    /// Per-device sequence number, over all reports, starting at 1.
    pub seq: u64,
    pub hlc: Hlc,
    /// The device's wall clock as read when the change was made.
    pub wall_clock_ms: i64,
    /// Hash of this device's previous change to this report.
    pub prev: Option<Hash>,
    pub ops: Vec<Operation>,
}

impl ChangeBody {
    pub fn id(&self) -> ChangeId {
        ChangeId {
            device: self.device,
            seq: self.seq,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs, enums, strings and integers into a Vec
        // cannot fail.
        postcard::to_allocvec(self).expect("postcard encoding of a change body")
    }

    /// Structural validity: format, sizes, and every operation against the
    /// schema. Used on local authoring and on every change from a peer.
    pub fn validate(&self) -> Result<(), Error> {
        let id = self.id();
        let malformed = |reason: String| Error::MalformedChange {
            change: id.to_string(),
            reason,
        };
        if self.format != FORMAT_VERSION {
            return Err(malformed(format!("unsupported format {}", self.format)));
        }
        if self.seq == 0 {
            return Err(malformed("seq must start at 1".into()));
        }
        if self.ops.is_empty() || self.ops.len() > MAX_OPS_PER_CHANGE {
            return Err(malformed("operation count out of range".into()));
        }
        for op in &self.ops {
            if op.pred.len() > MAX_PRED_PER_OP {
                return Err(malformed("too many predecessors".into()));
            }
            if op
                .pred
                .iter()
                .any(|p| p.device == self.device && p.seq >= self.seq)
            {
                return Err(malformed("predecessor is not earlier".into()));
            }
            validate_op(op).map_err(|e| Error::InvalidOperation {
                change: id.to_string(),
                source: Box::new(e),
            })?;
        }
        Ok(())
    }
}

fn validate_op(op: &Operation) -> Result<(), Error> {
    match (&op.target, &op.action) {
        (Target::Field(path), Action::Set(v)) => {
            schema::validate(path, schema::report_field(path)?, v)
        }
        (Target::Entry { collection, .. }, Action::Add | Action::Remove) => {
            schema::collection(collection).map(|_| ())
        }
        (
            Target::EntryField {
                collection, field, ..
            },
            Action::Set(v),
        ) => schema::validate(
            &format!("{collection}.{field}"),
            schema::entry_field(collection, field)?,
            v,
        ),
        _ => Err(Error::InvalidValue {
            path: op.target.path(),
            reason: "action does not apply to this target",
        }),
    }
}

/// A signed change, with its canonical bytes and hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    body: ChangeBody,
    bytes: Vec<u8>,
    signature: [u8; 64],
    hash: Hash,
}

pub fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

fn signed_message(bytes: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + bytes.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(bytes);
    m
}

impl Change {
    /// Validates, encodes and signs a body.
    pub fn sign(body: ChangeBody, key: &SigningKey) -> Result<Change, Error> {
        body.validate()?;
        let bytes = body.encode();
        if bytes.len() > MAX_CHANGE_BYTES {
            return Err(Error::MalformedChange {
                change: body.id().to_string(),
                reason: "change too large".into(),
            });
        }
        let signature = key.sign(&signed_message(&bytes)).to_bytes();
        let hash = sha256(&bytes);
        Ok(Change {
            body,
            bytes,
            signature,
            hash,
        })
    }

    /// Decodes a change received from outside. Checks that the bytes are the
    /// canonical encoding and that the body is structurally valid; the
    /// signature is checked separately (`verify`), against the device
    /// directory.
    pub fn from_parts(bytes: Vec<u8>, signature: [u8; 64]) -> Result<Change, Error> {
        let malformed = |reason: &str| Error::MalformedChange {
            change: "?".into(),
            reason: reason.into(),
        };
        if bytes.len() > MAX_CHANGE_BYTES {
            return Err(malformed("change too large"));
        }
        let body: ChangeBody =
            postcard::from_bytes(&bytes).map_err(|_| malformed("undecodable bytes"))?;
        if body.encode() != bytes {
            return Err(Error::MalformedChange {
                change: body.id().to_string(),
                reason: "not the canonical encoding".into(),
            });
        }
        body.validate()?;
        let hash = sha256(&bytes);
        Ok(Change {
            body,
            bytes,
            signature,
            hash,
        })
    }

    pub fn verify(&self, key: &VerifyingKey) -> Result<(), Error> {
        key.verify_strict(
            &signed_message(&self.bytes),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| Error::BadSignature {
            change: self.id().to_string(),
        })
    }

    pub fn body(&self) -> &ChangeBody {
        &self.body
    }
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
    pub fn hash(&self) -> &Hash {
        &self.hash
    }
    pub fn id(&self) -> ChangeId {
        self.body.id()
    }
    pub fn report(&self) -> Uuid {
        self.body.report
    }
    pub fn device(&self) -> Uuid {
        self.body.device
    }

    /// Message bytes that the signature covers (for batch verification).
    pub fn signed_message(&self) -> Vec<u8> {
        signed_message(&self.bytes)
    }
}
