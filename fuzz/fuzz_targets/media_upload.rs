//! Media upload requests: any sequence of (offset, total, chunk) against
//! the station's store is refused or stored, never a panic, and the station
//! never claims more bytes than declared. Offsets and totals are drawn
//! across the whole u64 range (the build has overflow checks on).
#![no_main]
use std::sync::OnceLock;

use fieldreport_station::{SqliteStorage, StationStorage};
use libfuzzer_sys::fuzz_target;

struct Station {
    rt: tokio::runtime::Runtime,
    storage: SqliteStorage,
    _dir: tempfile::TempDir,
}

fn station() -> &'static Station {
    static S: OnceLock<Station> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(dir.path()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        Station {
            rt,
            storage,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = station();
    // The hash: one of a few valid ones, or the input's first bytes.
    let sha = match data.first().map(|b| b % 4) {
        Some(0) => String::from_utf8_lossy(&data[1..data.len().min(65)]).into_owned(),
        Some(k) => format!("{:064x}", k),
        None => return,
    };
    let mut rest = &data[1.min(data.len())..];
    // Each request: a mode byte, then offset and total as full 64-bit
    // values (mode odd) or as 16-bit ones (mode even, so that uploads that
    // fit also get explored), then a 16-bit chunk length and the chunk.
    loop {
        let Some((&mode, tail)) = rest.split_first() else {
            return;
        };
        let width = if mode & 1 == 1 { 8 } else { 2 };
        if tail.len() < 2 * width + 2 {
            return;
        }
        let int = |b: &[u8]| {
            let mut w = [0u8; 8];
            w[..b.len()].copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        let offset = int(&tail[..width]);
        let total = int(&tail[width..2 * width]);
        let body = &tail[2 * width..];
        let n = (u16::from_le_bytes([body[0], body[1]]) as usize).min(body.len() - 2);
        let chunk = &body[2..2 + n];
        if let Ok(st) =
            s.rt.block_on(s.storage.media_append(&sha, offset, total, chunk))
        {
            assert!(st.received <= total);
        }
        rest = &body[2 + n..];
    }
});
