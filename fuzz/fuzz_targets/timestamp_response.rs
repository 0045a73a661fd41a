//! RFC 3161 time-stamp responses (`fieldreport_core::timestamp`), as an
//! authority answers the station and as a package carries them to
//! `verify`: any bytes, and a genuine response (`fuzz/seeds/`, made with
//! `openssl ts -reply`) with bytes the input overwrites, are accepted or
//! refused with a typed error; never a panic. The genuine one verifies.
#![no_main]
use fieldreport_core::timestamp::{certificates_from_pem, check_response, verify};
use libfuzzer_sys::fuzz_target;

const GOOD: &[u8] = include_bytes!("../seeds/timestamp.tsr");
const ROOT: &str = include_str!("../seeds/timestamp-root.pem");
const DATA: &[u8] = b"fuzz checkpoint\n";

fuzz_target!(|data: &[u8]| {
    let anchors = certificates_from_pem(ROOT).unwrap();
    let _ = check_response(data, DATA, None);
    let _ = verify(data, DATA, None, &anchors);
    // The genuine response, with (offset, byte) edits from the input.
    let mut edited = GOOD.to_vec();
    for edit in data.chunks_exact(3) {
        let at = usize::from(u16::from_be_bytes([edit[0], edit[1]])) % edited.len();
        edited[at] = edit[2];
    }
    let checked = verify(&edited, DATA, None, &anchors);
    if edited == GOOD {
        assert!(checked.is_ok(), "the genuine response: {checked:?}");
    }
    let _ = check_response(&edited, DATA, None);
});
