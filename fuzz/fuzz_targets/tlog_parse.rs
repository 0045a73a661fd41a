//! The transparency log's parsers and proof checks (`fieldreport_core::tlog`):
//! a signed note, a checkpoint, a verifier key, a leaf and an inclusion or
//! consistency proof from a station that may lie are each accepted or
//! refused with a typed error; never a panic.
#![no_main]
use fieldreport_core::tlog::{
    check_consistency, check_inclusion, Leaf, NoteVerifier, SignedCheckpoint, SignedNote,
    TreeHash,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let v = NoteVerifier::new("fieldreport/fuzz", key).unwrap();
    if let Ok(note) = SignedNote::parse(data) {
        // What parses re-encodes to what parses the same.
        assert_eq!(SignedNote::parse(note.encode().as_bytes()).unwrap(), note);
        let _ = note.signed_by(&v);
    }
    let _ = SignedCheckpoint::verify(data, &v);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(parsed) = NoteVerifier::parse(text) {
            assert_eq!(NoteVerifier::parse(&parsed.encode()).unwrap(), parsed);
        }
    }
    if let Ok(leaf) = Leaf::decode(data) {
        assert_eq!(leaf.encode(), data);
    }
    // Proof checks with sizes and hashes taken from the input.
    if data.len() >= 24 {
        let n = |i: usize| u64::from_be_bytes(data[i..i + 8].try_into().unwrap());
        let (size, index, old) = (n(0), n(8), n(16));
        let hashes: Vec<TreeHash> = data[24..]
            .chunks_exact(32)
            .map(|c| TreeHash(c.try_into().unwrap()))
            .collect();
        let h = |i: usize| hashes.get(i).copied().unwrap_or(TreeHash([0; 32]));
        let proof = hashes.get(2..).unwrap_or(&[]);
        let _ = check_inclusion(proof, size, h(0), index, h(1));
        let _ = check_consistency(proof, old, h(0), size, h(1));
    }
});
