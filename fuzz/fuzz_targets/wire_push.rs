//! The sync wire format: a push request body as the station parses it.
#![no_main]
use fieldreport_core::sync::wire::{PullResponse, PushRequest, WireChange};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<PushRequest>(data) {
        for w in &req.changes {
            let _ = WireChange::to_change(w);
        }
    }
    if let Ok(page) = serde_json::from_slice::<PullResponse>(data) {
        for w in &page.changes {
            let _ = WireChange::to_change(w);
        }
    }
});
