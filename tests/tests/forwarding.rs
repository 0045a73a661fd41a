//! Nothing lost when a phone is destroyed at the scene: a device forwards
//! the changes (and photos) a partner handed it over that the station has
//! not acknowledged, whoever wrote them, and stops once the station holds
//! them. The station authorizes each by its author, whoever pushes it.

use fieldreport_core::{Role, Value};
use fieldreport_e2e::*;

/// Phones learn the department's directory (keys, roles, units) at every
/// sync; before the scene, each has synced once.
fn directory_known(devices: &[&Device]) {
    for d in devices {
        d.client.refresh_devices(&d.store).unwrap();
    }
}

fn photo_bytes(seed: u8, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
        .collect()
}

#[test]
fn a_partners_changes_and_photos_reach_the_station_though_its_phone_never_syncs() {
    let st = TestStation::start();
    let a = st.device(&person("Fwdann Able", "61001", Role::Officer, "D9"), None);
    let b = st.device(&person("Fwdbob Baker", "61002", Role::Officer, "D9"), None);
    let sup = st.device(
        &person("Fwdsue Chief", "61009", Role::Supervisor, "D9"),
        None,
    );

    directory_known(&[&a, &b, &sup]);
    // At the scene, offline: B opens the report and photographs; A adds
    // to it; they share phone to phone, both ways.
    let r = b.store.create_report().unwrap();
    b.store
        .set_field(r, "narrative", Value::Text("B saw it first.".into()))
        .unwrap();
    let b_photos = [
        b.attach_photo(r, "b1.jpg", photo_bytes(1, 300_000)),
        b.attach_photo(r, "b2.jpg", photo_bytes(2, 1_500_000)),
    ];
    assert_eq!(b.hand_over_with_media_to(&a), 2);
    a.store
        .set_field(r, "location.address", Value::Text("Cermak Rd".into()))
        .unwrap();
    let a_photo = a.attach_photo(r, "a1.jpg", photo_bytes(3, 200_000));
    a.hand_over_with_media_to(&b);
    let b_changes = b.store.report_changes(r).unwrap();
    let b_id = b.store.identity().unwrap().device_id;
    let b_own = b_changes.iter().filter(|c| c.device() == b_id).count() as u64;
    assert!(b_own >= 4, "B wrote a creation, a field and two photos");

    // B's phone is destroyed before it ever syncs. A syncs.
    drop(b);
    let before = st.counts();
    let first = a.sync();
    assert_eq!(first.forwarded, b_own, "A forwards every change of B");
    assert_eq!(first.forward_refused, 0);
    assert_eq!(first.media_uploaded, 3, "B's photos and A's own");
    assert_eq!(a.store.outbox_len().unwrap(), 0);
    // Each forwarded change has its checked receipt on A.
    let receipts = a.store.receipts_of_report(r).unwrap();
    assert_eq!(
        receipts.len(),
        b_changes.len(),
        "one per change of the report"
    );
    let after = st.counts();
    assert_eq!(
        after.changes - before.changes,
        b_changes.len() as u64,
        "the station holds every change of the report"
    );

    // Once acknowledged, a forwarded change is not sent again.
    let second = a.sync();
    assert_eq!((second.pushed, second.forwarded), (0, 0));
    assert_eq!(st.counts().changes, after.changes);

    // The supervisor gets the whole report, B's photos included.
    let pulled = sup.sync();
    assert_eq!(pulled.media_downloaded, 3);
    assert_eq!(sup.store.report(r).unwrap(), a.store.report(r).unwrap());
    for sha in b_photos.iter().chain([&a_photo]) {
        assert!(sup.store.media().contains(sha));
    }
    sup.store.verify_integrity().unwrap();
}

#[test]
fn a_partner_photo_not_handed_over_holds_back_only_that_chain() {
    let st = TestStation::start();
    let a = st.device(&person("Fwdcat Able", "62001", Role::Officer, "D9"), None);
    let b = st.device(&person("Fwddan Baker", "62002", Role::Officer, "D9"), None);
    directory_known(&[&a, &b]);
    let r = b.store.create_report().unwrap();
    b.attach_photo(r, "b1.jpg", photo_bytes(4, 100_000));
    b.store
        .set_field(r, "narrative", Value::Text("after the photo".into()))
        .unwrap();
    let other = b.store.create_report().unwrap();
    b.store
        .set_field(other, "narrative", Value::Text("another report".into()))
        .unwrap();
    // The changes go over, the photo does not (no time at the scene).
    b.hand_over_to(&a);
    let a_own = a.store.create_report().unwrap();

    let first = a.sync();
    // The photo's change and what follows it on that report wait; the
    // creation before it, and B's other report, go.
    let waiting = a.store.forward_held_back().unwrap();
    assert_eq!(waiting, 2, "the photo's change and the edit after it");
    assert_eq!(first.forwarded, 3, "{first:?}");
    assert_eq!(a.store.outbox_len().unwrap(), 0, "nothing else to send");
    assert_eq!(st.counts().changes, 4, "A's report and B's three");
    let _ = a_own;

    // The photo arrives later (B's phone, briefly back): it all goes.
    b.hand_over_with_media_to(&a);
    let second = a.sync();
    assert_eq!(second.forwarded, waiting);
    assert_eq!(second.media_uploaded, 1);
    assert_eq!(a.store.forward_held_back().unwrap(), 0);
    assert_eq!(a.store.outbox_len().unwrap(), 0);
}

#[test]
fn a_revoked_partners_changes_are_refused_kept_and_block_nothing_else() {
    let st = TestStation::start();
    let a = st.device(&person("Fwdeve Able", "63001", Role::Officer, "D9"), None);
    let b = st.device(&person("Fwdfay Baker", "63002", Role::Officer, "D9"), None);
    directory_known(&[&a, &b]);
    let r = b.store.create_report().unwrap();
    b.store
        .set_field(r, "narrative", Value::Text("by B".into()))
        .unwrap();
    b.hand_over_to(&a);
    let mine = a.store.create_report().unwrap();
    a.store
        .set_field(mine, "narrative", Value::Text("by A".into()))
        .unwrap();
    // B's phone is lost and revoked before anything of it reached the
    // station: the station takes nothing it signed from then on.
    let b_id = b.store.identity().unwrap().device_id;
    assert!(st.rt.block_on(st.storage.revoke(b_id)).unwrap());

    let report = a.sync();
    assert_eq!(report.forward_refused, 2, "{report:?}");
    assert_eq!(report.forwarded, 0);
    assert_eq!(report.pushed, 2, "A's own changes go through");
    // Kept on A, counted as not at the station, and not sent again.
    assert_eq!(a.store.report_changes(r).unwrap().len(), 2);
    assert_eq!(a.store.forward_refused_count().unwrap(), 2);
    assert_eq!(a.store.outbox_len().unwrap(), 0);
    let again = a.sync();
    assert_eq!((again.pushed, again.forward_refused), (0, 0));
    assert!(matches!(
        a.store.wipe(false),
        Err(fieldreport_core::Error::UnsyncedWork { changes: 2, .. })
    ));
}

#[test]
fn media_from_a_peer_must_be_what_a_held_change_attaches() {
    let st = TestStation::start();
    let a = st.device(&person("Fwdgus Able", "64001", Role::Officer, "D9"), None);
    let b = st.device(&person("Fwdhal Baker", "64002", Role::Officer, "D9"), None);
    directory_known(&[&a, &b]);
    let r = b.store.create_report().unwrap();
    let sha = b.attach_photo(r, "b.jpg", photo_bytes(5, 50_000));
    let mut bytes: &[u8] = &[1, 2, 3];
    let mut read = |buf: &mut [u8]| Ok(std::io::Read::read(&mut bytes, buf).unwrap());
    // Before the change that attaches it: refused.
    assert!(matches!(
        a.store.receive_peer_media(&sha, &mut read),
        Err(fieldreport_core::Error::MediaNotFound(_))
    ));
    b.hand_over_to(&a);
    // Bytes that are not the photo: refused, nothing kept.
    let mut wrong: &[u8] = &photo_bytes(6, 50_000);
    let mut read = |buf: &mut [u8]| Ok(std::io::Read::read(&mut wrong, buf).unwrap());
    assert!(matches!(
        a.store.receive_peer_media(&sha, &mut read),
        Err(fieldreport_core::Error::InvalidValue { .. })
    ));
    assert!(!a.store.media().contains(&sha));
    assert!(a.store.pending_media().unwrap().is_empty());
}
