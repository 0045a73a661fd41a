//! Verification of a batch of changes from a peer: known device, valid
//! signature, intact per-device-per-report hash chain, no equivocation.
//! The batch is accepted whole or refused whole.

use std::collections::{HashMap, HashSet};

use ed25519_dalek::{Signature, VerifyingKey};
use rayon::prelude::*;
use uuid::Uuid;

use crate::crdt::{Change, ChangeId, Hash};
use crate::error::{Error, Result};

/// What the verifier needs to know of the changes already stored.
pub trait ChainLookup {
    /// Hash and signature of the stored change with this id.
    fn stored(&self, id: ChangeId) -> Result<Option<(Hash, [u8; 64])>>;
    /// (device, report, seq) of the stored change with this hash.
    fn stored_by_hash(&self, hash: &Hash) -> Result<Option<(Uuid, Uuid, u64)>>;
    /// Whether a stored change of `device` on `report` has this `prev`
    /// (`None`: is a chain root).
    fn has_stored_child(&self, device: Uuid, report: Uuid, prev: Option<&Hash>) -> Result<bool>;
    /// Public key of a known device.
    fn device_key(&self, device: Uuid) -> Result<Option<VerifyingKey>>;
}

#[derive(Debug)]
pub struct VerifiedBatch {
    /// New changes, ordered by (device, seq): chain order.
    pub new: Vec<Change>,
    /// Changes that were already stored (byte-identical).
    pub duplicates: usize,
    /// Hashes of the changes already stored.
    pub duplicate_hashes: Vec<Hash>,
}

const SIGNATURE_CHUNK: usize = 128;

pub fn verify_batch(batch: Vec<Change>, lookup: &impl ChainLookup) -> Result<VerifiedBatch> {
    // 1. Duplicates and equivocation, inside the batch and against the store.
    let mut seen: HashMap<ChangeId, Hash> = HashMap::with_capacity(batch.len());
    let mut new = Vec::with_capacity(batch.len());
    let mut duplicates = 0;
    let mut duplicate_hashes = Vec::new();
    for change in batch {
        let id = change.id();
        let equivocation = || Error::Equivocation {
            change: id.to_string(),
        };
        match seen.get(&id) {
            Some(h) if h == change.hash() => {
                duplicates += 1;
                continue;
            }
            Some(_) => return Err(equivocation()),
            None => {}
        }
        seen.insert(id, *change.hash());
        match lookup.stored(id)? {
            // Ed25519 signatures are deterministic: an honest re-send is
            // byte-identical, signature included.
            Some((h, sig)) if &h == change.hash() && &sig == change.signature() => {
                duplicates += 1;
                duplicate_hashes.push(h);
            }
            Some((h, _)) if &h == change.hash() => {
                return Err(Error::BadSignature {
                    change: id.to_string(),
                })
            }
            Some(_) => return Err(equivocation()),
            None => new.push(change),
        }
    }
    new.sort_by_key(|c| c.id());

    // 2. Known devices.
    let mut keys: HashMap<Uuid, VerifyingKey> = HashMap::new();
    for c in &new {
        if let std::collections::hash_map::Entry::Vacant(slot) = keys.entry(c.device()) {
            let key = lookup.device_key(c.device())?.ok_or(Error::UnknownDevice {
                change: c.id().to_string(),
            })?;
            slot.insert(key);
        }
    }

    // 3. Signatures, batched and on every core; a failing chunk is checked
    //    one by one (strictly) to name the bad change.
    new.par_chunks(SIGNATURE_CHUNK)
        .try_for_each(|chunk| verify_chunk(chunk, &keys))?;

    // 4. Hash chains, in chain order.
    let mut in_batch: HashMap<Hash, (Uuid, Uuid, u64)> = HashMap::new();
    let mut children: HashSet<(Uuid, Uuid, Option<Hash>)> = HashSet::new();
    for c in &new {
        let b = c.body();
        let broken = |reason| Error::BrokenChain {
            change: c.id().to_string(),
            reason,
        };
        if let Some(prev) = &b.prev {
            let (dev, rep, seq) = match in_batch.get(prev) {
                Some(x) => *x,
                None => lookup
                    .stored_by_hash(prev)?
                    .ok_or_else(|| broken("previous change missing"))?,
            };
            if dev != b.device || rep != b.report {
                return Err(broken("previous change is of another device or report"));
            }
            if seq >= b.seq {
                return Err(broken("previous change is not earlier"));
            }
        }
        let link = (b.device, b.report, b.prev);
        if children.contains(&link)
            || lookup.has_stored_child(b.device, b.report, b.prev.as_ref())?
        {
            return Err(broken(
                "fork: another change already follows the same previous change",
            ));
        }
        children.insert(link);
        in_batch.insert(*c.hash(), (b.device, b.report, b.seq));
    }
    Ok(VerifiedBatch {
        new,
        duplicates,
        duplicate_hashes,
    })
}

fn verify_chunk(chunk: &[Change], keys: &HashMap<Uuid, VerifyingKey>) -> Result<()> {
    let messages: Vec<Vec<u8>> = chunk.iter().map(Change::signed_message).collect();
    let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let sigs: Vec<Signature> = chunk
        .iter()
        .map(|c| Signature::from_bytes(c.signature()))
        .collect();
    let vks: Vec<VerifyingKey> = chunk.iter().map(|c| keys[&c.device()]).collect();
    if ed25519_dalek::verify_batch(&refs, &sigs, &vks).is_ok() {
        return Ok(());
    }
    for c in chunk {
        c.verify(&keys[&c.device()])?;
    }
    // The batch equation failed but each signature verifies: refuse anyway
    // (cannot happen for honest signers).
    Err(Error::BadSignature {
        change: chunk[0].id().to_string(),
    })
}
