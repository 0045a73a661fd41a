//! Batch verification of changes from a peer: any sequence of decodable
//! changes is accepted or refused whole, never a panic.
#![no_main]
use ed25519_dalek::VerifyingKey;
use fieldreport_core::crdt::{ChangeId, Hash};
use fieldreport_core::evidence::{verify_batch, ChainLookup};
use fieldreport_core::Change;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

/// An empty store that knows every device under one key.
struct Empty(VerifyingKey);
impl ChainLookup for Empty {
    fn stored(&self, _: ChangeId) -> fieldreport_core::Result<Option<(Hash, [u8; 64])>> {
        Ok(None)
    }
    fn stored_by_hash(&self, _: &Hash) -> fieldreport_core::Result<Option<(Uuid, Uuid, u64)>> {
        Ok(None)
    }
    fn has_stored_child(
        &self,
        _: Uuid,
        _: Uuid,
        _: Option<&Hash>,
    ) -> fieldreport_core::Result<bool> {
        Ok(false)
    }
    fn device_key(&self, _: Uuid) -> fieldreport_core::Result<Option<VerifyingKey>> {
        Ok(Some(self.0))
    }
}

fuzz_target!(|data: &[u8]| {
    // Records: u16 length, body, 64-byte signature.
    let mut changes = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let n = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        rest = &rest[2..];
        if rest.len() < n + 64 {
            break;
        }
        let mut sig = [0u8; 64];
        sig.copy_from_slice(&rest[n..n + 64]);
        if let Ok(c) = Change::from_parts(rest[..n].to_vec(), sig) {
            changes.push(c);
        }
        rest = &rest[n + 64..];
    }
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let _ = verify_batch(changes, &Empty(key));
});
