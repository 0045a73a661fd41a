//! Media upload requests: any sequence of (offset, total, chunk) against
//! the station's store is refused or stored, never a panic, and the station
//! never claims more bytes than declared.
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
    while rest.len() >= 6 {
        let offset = u16::from_le_bytes([rest[0], rest[1]]) as u64;
        let total = u16::from_le_bytes([rest[2], rest[3]]) as u64;
        let n = (u16::from_le_bytes([rest[4], rest[5]]) as usize).min(rest.len() - 6);
        let chunk = &rest[6..6 + n];
        if let Ok(st) =
            s.rt.block_on(s.storage.media_append(&sha, offset, total, chunk))
        {
            assert!(st.received <= total);
        }
        rest = &rest[6 + n..];
    }
});
