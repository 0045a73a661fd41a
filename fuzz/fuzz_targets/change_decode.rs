//! Change decoding and signature checking: any bytes (body ‖ 64-byte
//! signature) either decode canonically or are refused; never a panic.
#![no_main]
use fieldreport_core::Change;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 64 {
        return;
    }
    let (body, sig) = data.split_at(data.len() - 64);
    let mut s = [0u8; 64];
    s.copy_from_slice(sig);
    if let Ok(c) = Change::from_parts(body.to_vec(), s) {
        // Canonical: re-encoding gives the same bytes.
        assert_eq!(c.body().encode(), body);
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        let _ = c.verify(&key);
    }
});
