//! The storage rules' building blocks, free of I/O: tokens and hashes,
//! request checks, row decoding, directory entries, revocation and
//! authorization of a push. Used by [`super::service`] (and by the
//! engines' migrations: `with_person_secret`).

use fieldreport_core::evidence::{DeviceRecord, Person};
use fieldreport_core::Role;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Enrolled;
use crate::error::{Result, StationError};

/// Runs blocking work (files, hashing, signatures) off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| StationError::Internal("blocking task failed".into()))?
}

/// Largest media file accepted.
pub const MAX_MEDIA_BYTES: u64 = 4 << 30;

pub fn random_token(bytes: usize) -> Result<String> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|_| StationError::Internal("random source".into()))?;
    Ok(hex::encode(b))
}

pub fn digest(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

/// Person identity across devices: a person may enroll several phones.
pub fn person_key(p: &Person) -> String {
    format!("star:{}", p.star_number)
}

pub fn valid_sha(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn enrolled_from_row(
    record: String,
    revoked: Option<i64>,
    credential_expires_at: Option<i64>,
) -> Result<Enrolled> {
    let record: DeviceRecord = serde_json::from_str(&record)
        .map_err(|_| StationError::Internal("device record".into()))?;
    Ok(Enrolled {
        // The person secret goes to the device alone (`directory_entry`).
        record: record.without_secret(),
        revoked: revoked.is_some(),
        credential_expires_at,
    })
}

/// One device's entry in the directory `receiver` gets: its own record
/// whole; the record without the person secret when `named` (the author of
/// a change the receiver may see); else only what verifying and
/// authorizing its changes needs (id, public key, role and unit, and a
/// digest of the person keyed with the secret, which the device's creations
/// reveal), with name and star number left empty, so a lost phone does not
/// hold the department's roster, nor anything to test a roster against.
pub fn directory_entry(record: &str, named: bool, receiver: Uuid) -> Result<DeviceRecord> {
    let record: DeviceRecord =
        serde_json::from_str(record).map_err(|_| StationError::Internal("device record".into()))?;
    Ok(if record.device_id == receiver {
        record // with its person secret, which only it holds
    } else if named {
        record.without_secret()
    } else {
        record.without_name()
    })
}

/// A device record (JSON) given a person secret, if it has none yet (a
/// device enrolled before person secrets): run once after migrations, so
/// the directory can publish its keyed digest and the device learns its
/// secret at its next sync.
pub fn with_person_secret(record: &str) -> Result<Option<String>> {
    let Ok(mut record) = serde_json::from_str::<DeviceRecord>(record) else {
        // Not this step's to judge: the paths that read the record say so.
        tracing::warn!("a device record does not parse; left without a person secret");
        return Ok(None);
    };
    if record.person_secret.is_some() {
        return Ok(None);
    }
    record.person_secret =
        Some(fieldreport_core::evidence::new_person_secret().map_err(StationError::Core)?);
    serde_json::to_string(&record)
        .map(Some)
        .map_err(|_| StationError::Internal("device record".into()))
}

pub fn ed25519_key(bytes: &[u8; 32]) -> Result<[u8; 32]> {
    let rec = DeviceRecord {
        device_id: Uuid::nil(),
        public_key: *bytes,
        person_digest: None,
        person_secret: None,
        person: Person {
            name: String::new(),
            star_number: String::new(),
            role: Role::Officer,
            unit: String::new(),
        },
    };
    // 64 hex characters that are no usable key: well-formed, unprocessable.
    let key = rec
        .verifying_key()
        .map_err(|_| StationError::Unprocessable("bad_key", "not an Ed25519 public key".into()))?;
    if key.is_weak() {
        return Err(StationError::Unprocessable(
            "bad_key",
            "weak public key".into(),
        ));
    }
    Ok(*bytes)
}

/// Checks a media chunk's arguments before anything is written.
pub fn check_chunk(sha256: &str, offset: u64, total: u64, len: usize) -> Result<()> {
    if !valid_sha(sha256) {
        return Err(bad_hash());
    }
    if total > MAX_MEDIA_BYTES {
        return Err(StationError::TooLarge(format!(
            "media larger than {MAX_MEDIA_BYTES} bytes"
        )));
    }
    // Offset and total come from the request: overflow is refused, not wrapped.
    let end = u64::try_from(len)
        .ok()
        .and_then(|len| offset.checked_add(len));
    if end.is_none_or(|end| end > total) {
        return Err(StationError::BadRequest(
            "beyond_total",
            "chunk goes past the declared total".into(),
        ));
    }
    Ok(())
}

pub fn bad_hash() -> StationError {
    StationError::BadRequest("bad_hash", "not a lowercase sha256 hex digest".into())
}

/// A change's receipt time (ms since epoch, as stored) as a time.
pub fn receipt_time(ms: i64) -> Result<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StationError::Internal("receipt time out of range".into()))
}

pub fn ms_time(ms: Option<i64>) -> Option<chrono::DateTime<chrono::Utc>> {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
}

/// Writes an upload chunk at `offset` of the partial file (cutting anything
/// after it, from an interrupted earlier try) and syncs it; returns the
/// bytes now held.
pub fn write_chunk(partial: &std::path::Path, offset: u64, bytes: &[u8]) -> Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    // A first chunk (or one at 0 again) makes the file's name durable too.
    let new = offset == 0 || !partial.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(partial)?;
    f.set_len(offset)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(bytes)?;
    f.sync_data()?;
    // A new partial file's name survives a power cut with its bytes: the
    // database will say how much of it the station holds.
    if new {
        if let Some(dir) = partial.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    u64::try_from(bytes.len())
        .ok()
        .and_then(|n| offset.checked_add(n))
        .ok_or_else(|| StationError::BadRequest("beyond_total", "chunk end overflows".into()))
}

/// Refuses a batch holding a new change signed by a revoked device, whoever
/// pushes it (the device itself, a partner's phone forwarding it, the
/// dashboard's signing store). `revoked` holds the authors of `changes`
/// that are revoked now, read inside the push's write transaction, so a
/// revocation is ordered before or after every push. Changes the station
/// already holds are not in `changes` (they are duplicates) and stay valid.
pub fn refuse_revoked(
    changes: &[fieldreport_core::Change],
    revoked: &std::collections::HashSet<Uuid>,
) -> Result<()> {
    match changes.iter().find(|c| revoked.contains(&c.device())) {
        Some(c) => Err(StationError::DeviceRevoked {
            device: c.device(),
            change: c.id().to_string(),
        }),
        None => Ok(()),
    }
}

/// What the station knows of a report while it authorizes a push: its
/// unit (the creating device's) and its creation changes, the push's
/// included.
#[derive(Debug, Clone, Default)]
pub struct ReportFacts {
    pub unit: String,
    pub creations: Vec<fieldreport_core::ChangeId>,
}

/// Who may have made each change (the core's rule, the one phones apply);
/// one refused change refuses the push. `people` holds each author device's
/// person, `reports` each touched report's facts (unit empty when unknown).
pub fn authorize_changes(
    changes: &[fieldreport_core::Change],
    people: &std::collections::HashMap<uuid::Uuid, DeviceRecord>,
    reports: &std::collections::HashMap<uuid::Uuid, ReportFacts>,
) -> crate::error::Result<()> {
    use fieldreport_core::model::workflow;
    for c in changes {
        let record = people.get(&c.device()).ok_or_else(|| {
            crate::error::StationError::Core(fieldreport_core::Error::UnknownDevice {
                change: c.id().to_string(),
            })
        })?;
        let facts = reports.get(&c.report());
        let unit = facts
            .map(|f| f.unit.as_str())
            .filter(|u| !u.is_empty())
            .unwrap_or(&record.person.unit);
        workflow::authorize(c.body(), record, unit)?;
        workflow::authorize_one_creation(
            c.body(),
            facts.map(|f| f.creations.as_slice()).unwrap_or(&[]),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn chunk_arguments_that_overflow_are_refused_not_wrapped() {
        for (offset, total, len) in [
            (u64::MAX, 10, 5),
            (u64::MAX - 2, MAX_MEDIA_BYTES, 3),
            (u64::MAX, u64::MAX, 1),
            (1 << 63, MAX_MEDIA_BYTES, usize::MAX),
        ] {
            let e = check_chunk(SHA, offset, total, len).unwrap_err();
            assert!(e.is_client_error(), "{offset} {total} {len}: {e:?}");
        }
        assert!(check_chunk(SHA, 5, 10, 5).is_ok());
        assert!(check_chunk(SHA, 6, 10, 5).is_err());
        assert!(check_chunk(SHA, 0, 0, 0).is_ok());
    }
}
