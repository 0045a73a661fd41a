//! Evidence bag reading: the verifier on a bag whose files hold the fuzz
//! input reports findings, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

const REPORT: &str = "data/reports/00000000-0000-0000-0000-000000000001";

fuzz_target!(|data: &[u8]| {
    // Split the input into the files a bag has, at 0xFF bytes.
    let mut parts = data.split(|b| *b == 0xff);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join(REPORT)).unwrap();
    std::fs::create_dir_all(root.join("data/media")).unwrap();
    for name in [
        "bagit.txt",
        "bag-info.txt",
        "manifest-sha256.txt",
        "tagmanifest-sha256.txt",
        "data/devices.json",
        &format!("{REPORT}/changes.jsonl"),
        &format!("{REPORT}/report.json"),
        &format!("{REPORT}/report.pdf"),
        "data/media/ab",
        &format!("{REPORT}/receipts.jsonl"),
    ] {
        let bytes = parts.next().unwrap_or_default();
        std::fs::write(root.join(name), bytes).unwrap();
    }
    let v = fieldreport_core::evidence::package::verify_package(root, &mut |_, _| {}).unwrap();
    let _ = v.to_string();
});
