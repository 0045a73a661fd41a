//! Network faults: several devices capture (with photos) and sync through a
//! proxy that resets, delays, drops mid-upload and truncates responses at
//! random, retrying until each sync completes. Afterwards every change is
//! at the station exactly once, every photo is complete, and every device
//! and a supervisor hold identical reports. `FR_FAULT_SEED` replays a run.

use std::time::Duration;

use fieldreport_core::store::MediaMeta;
use fieldreport_core::sync::{NoProgress, SyncClient};
use fieldreport_core::{Role, Value};
use fieldreport_e2e::*;
use std::sync::atomic::Ordering;

fn sync_until_done(store: &fieldreport_core::Store, url: &str, credential: &str) -> u32 {
    let mut client = SyncClient::new(url, credential, pin_of(store)).unwrap();
    // The test retries, not the client: each failure is one more fault seen.
    client.max_attempts = 1;
    for attempt in 1..=400 {
        match client.sync(store, &NoProgress, &Default::default()) {
            Ok(_)
                if store.outbox_len().unwrap() == 0
                    && store.pending_media().unwrap().is_empty() =>
            {
                return attempt
            }
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    panic!("sync did not complete in 400 attempts");
}

#[test]
fn devices_sync_through_a_faulty_network_without_loss_or_duplicates() {
    let seed = test_seed("FR_FAULT_SEED");
    let st = TestStation::start();
    let proxy = ChaosProxy::start(&st.rt, st.addr(), seed, 60);
    let officers = st.officers(4, "D9");
    let sup = st.device(&person("S", "900", Role::Supervisor, "D9"), None);

    let mut attempts = 0;
    let mut reports = Vec::new();
    for round in 0..5 {
        let handles: Vec<_> = officers
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let r = d.store.create_report().unwrap();
                for e in 0..10 {
                    d.store
                        .set_field(r, "narrative", Value::Text(format!("r{round} o{i} e{e}")))
                        .unwrap();
                }
                let photo = d.dir().join(format!("p{round}.jpg"));
                let bytes: Vec<u8> = (0..700_000u32)
                    .map(|k| (k.wrapping_mul(31) as u8) ^ (i as u8 * 16 + round))
                    .collect();
                std::fs::write(&photo, bytes).unwrap();
                d.store
                    .attach_media(
                        r,
                        &photo,
                        MediaMeta {
                            mime_type: "image/jpeg".into(),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                reports.push((i, r));
                (d.store.dir().to_path_buf(), d.credential())
            })
            .collect();
        // Devices sync side by side through the faulty proxy.
        std::thread::scope(|s| {
            let joins: Vec<_> = officers
                .iter()
                .zip(&handles)
                .map(|(d, (_, cred))| s.spawn(|| sync_until_done(&d.store, &proxy.url, cred)))
                .collect();
            for j in joins {
                attempts += j.join().unwrap();
            }
        });
    }
    attempts += sync_until_done(&sup.store, &proxy.url, &sup.credential());

    let f = &proxy.faults;
    let counts = st.counts();
    let device_changes: u64 = officers
        .iter()
        .map(|d| d.store.change_count().unwrap())
        .sum();
    let lost = device_changes.saturating_sub(counts.changes);
    let duplicated = counts.changes.saturating_sub(device_changes);
    eprintln!(
        "connections {}, resets {}, delays {}, uploads dropped {}, responses truncated {}; sync attempts {attempts}; changes {device_changes}, lost: {lost}, duplicated: {duplicated}",
        f.connections.load(Ordering::Relaxed),
        f.reset.load(Ordering::Relaxed),
        f.delayed.load(Ordering::Relaxed),
        f.dropped_upload.load(Ordering::Relaxed),
        f.truncated_response.load(Ordering::Relaxed),
    );
    assert!(
        f.reset.load(Ordering::Relaxed)
            + f.dropped_upload.load(Ordering::Relaxed)
            + f.truncated_response.load(Ordering::Relaxed)
            > 0,
        "the proxy injected faults"
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(counts.media_complete, reports.len() as u64);
    assert_eq!(sup.store.change_count().unwrap(), counts.changes);
    for (i, r) in &reports {
        assert_eq!(
            sup.store.report_json(*r).unwrap(),
            officers[*i].store.report_json(*r).unwrap()
        );
    }
    // The supervisor's phone downloaded every photo, intact.
    for (_, r) in &reports {
        for m in sup.store.report(*r).unwrap().media {
            let sha = m.fields.sha256.unwrap();
            assert!(sup.store.media().contains(&sha), "photo {sha} missing");
        }
    }
}
