//! The station's transparency log (docs/log.md), on the engine under test:
//! every stored change is a leaf whose receipt verifies against a checkpoint
//! signed by the log key; checkpoints are consistent with every earlier
//! one; and the database checked against its own log names a deleted audit
//! row, a change inserted behind the log's back and a deleted change.

use std::process::Command;

use fieldreport_core::sync::wire::{
    ConsistencyResponse, InclusionResponse, PushRequest, PushResponse, WireChange,
};
use fieldreport_core::tlog::{
    check_consistency, check_inclusion, decode_hashes, report_commitment, Leaf, LeafView, LogError,
    NoteVerifier, SignedCheckpoint,
};
use fieldreport_core::{Role, Value};
use fieldreport_e2e::*;

const CLI: &str = env!("CARGO_BIN_EXE_station-cli");

fn verifier(st: &TestStation) -> NoteVerifier {
    NoteVerifier::parse(&st.get_text("/v1/log/key")).unwrap()
}

fn checkpoint(st: &TestStation, v: &NoteVerifier) -> SignedCheckpoint {
    SignedCheckpoint::verify(st.get_text("/v1/log/checkpoint").as_bytes(), v).unwrap()
}

fn consistency(st: &TestStation, old: u64, new: u64) -> ConsistencyResponse {
    st.http()
        .get(format!("{}/v1/log/consistency?old={old}&new={new}", st.url))
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap()
}

fn write_report(d: &Device, n: usize) -> uuid::Uuid {
    let r = d.store.create_report().unwrap();
    for i in 0..n {
        d.store
            .set_field(r, "narrative", Value::Text(format!("Version {i}.")))
            .unwrap();
    }
    r
}

#[test]
fn every_push_gets_receipts_that_verify_and_every_checkpoint_extends_the_last() {
    let st = TestStation::start();
    let officer = st.device(
        &person("Officer Logname", "72001", Role::Officer, "D4"),
        None,
    );
    let v = verifier(&st);

    // A push by hand, to read the receipts the phone is given.
    let r = write_report(&officer, 3);
    let outbox = officer.store.outbox(100).unwrap();
    let body = PushRequest {
        changes: outbox.iter().map(WireChange::from_change).collect(),
    };
    let resp: PushResponse = st
        .http()
        .post(format!("{}/v1/changes", st.url))
        .bearer_auth(officer.credential())
        .json(&body)
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(resp.applied, outbox.len());
    let log = resp
        .log
        .expect("a push that stored changes carries receipts");
    let cp = SignedCheckpoint::verify(log.checkpoint.as_bytes(), &v).unwrap();
    assert_eq!(log.receipts.len(), outbox.len());
    for (change, receipt) in outbox.iter().zip(&log.receipts) {
        assert_eq!(
            (receipt.device, receipt.seq),
            (change.device(), change.body().seq)
        );
        let leaf = Leaf::Change {
            hash: *change.hash(),
            device: change.device(),
            seq: change.body().seq,
            report: r,
            received_at_ms: receipt.received_at_ms,
        };
        let proof = decode_hashes(&receipt.proof).unwrap();
        check_inclusion(&proof, cp.size, cp.root, receipt.index, leaf.hash()).unwrap();
        // A receipt for a change the station did not take does not verify.
        let other = Leaf::Change {
            hash: [0xEE; 32],
            device: change.device(),
            seq: change.body().seq,
            report: r,
            received_at_ms: receipt.received_at_ms,
        };
        assert_eq!(
            check_inclusion(&proof, cp.size, cp.root, receipt.index, other.hash()),
            Err(LogError::BadInclusion)
        );
    }
    // Sent again: duplicates, nothing new logged, the same receipts.
    let again: PushResponse = st
        .http()
        .post(format!("{}/v1/changes", st.url))
        .bearer_auth(officer.credential())
        .json(&body)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!((again.applied, again.duplicates), (0, outbox.len()));
    let repeated = again.log.unwrap();
    assert_eq!(repeated.receipts.len(), log.receipts.len());
    // (The sealer may have logged audit rows in between, never changes.)
    assert!(
        SignedCheckpoint::verify(repeated.checkpoint.as_bytes(), &v)
            .unwrap()
            .size
            >= cp.size
    );

    // Later syncs grow the tree; each checkpoint is consistent with every
    // earlier one, and an inclusion proof fetched later verifies too.
    let mut seen = vec![checkpoint(&st, &v)];
    for round in 0..4 {
        write_report(&officer, round + 1);
        officer.sync();
        st.rt.block_on(st.storage.seal_log()).unwrap();
        let now = checkpoint(&st, &v);
        assert!(now.size > seen.last().unwrap().size);
        for old in &seen {
            let p = consistency(&st, old.size, now.size);
            let proof = decode_hashes(&p.proof).unwrap();
            check_consistency(&proof, old.size, old.root, now.size, now.root).unwrap();
            // The same proof does not tie the new tree to a forged old root.
            if old.size > 0 {
                assert!(check_consistency(
                    &proof,
                    old.size,
                    fieldreport_core::tlog::TreeHash([3; 32]),
                    now.size,
                    now.root
                )
                .is_err());
            }
        }
        seen.push(now);
    }
    let last = seen.last().unwrap();
    // The public page shows the newest checkpoint and the key to check it.
    let public = st.get_text("/public");
    let at = public
        .find("class=checkpoint")
        .expect("the public page shows the checkpoint");
    assert!(
        public[at..].contains(&format!("\n{}\n", last.size)),
        "{public}"
    );
    assert!(public.contains(&hex::encode(v.key_id())), "{public}");
    let got: InclusionResponse = st
        .http()
        .get(format!(
            "{}/v1/log/inclusion?index={}&size={}",
            st.url, log.receipts[0].index, last.size
        ))
        .bearer_auth(officer.credential())
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap();
    use base64::Engine;
    let leaf_bytes = base64::engine::general_purpose::STANDARD
        .decode(&got.leaf)
        .unwrap();
    let leaf = Leaf::decode(&leaf_bytes).unwrap();
    assert!(
        matches!(leaf, LeafView::Change { report, .. } if report == report_commitment(outbox[0].report()))
    );
    check_inclusion(
        &decode_hashes(&got.proof).unwrap(),
        last.size,
        last.root,
        got.index,
        leaf.hash(),
    )
    .unwrap();

    // Another unit's officer may not read this report's leaves.
    let stranger = st.device(
        &person("Officer Farname", "72009", Role::Officer, "D8"),
        None,
    );
    let resp = st
        .http()
        .get(format!(
            "{}/v1/log/inclusion?index={}&size={}",
            st.url, log.receipts[0].index, last.size
        ))
        .bearer_auth(stranger.credential())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // Refusals: a size the log never signed, a backwards range, no
    // credential for a leaf.
    let status = |path: &str, auth: bool| {
        let mut req = st.http().get(format!("{}{path}", st.url));
        if auth {
            req = req.bearer_auth(officer.credential());
        }
        req.send().unwrap().status().as_u16()
    };
    assert_eq!(
        status(
            &format!("/v1/log/consistency?old=1&new={}", last.size + 5),
            false
        ),
        404
    );
    assert_eq!(
        status(
            &format!("/v1/log/consistency?old={}&new=1", last.size),
            false
        ),
        400
    );
    assert_eq!(status("/v1/log/consistency?old=x&new=1", false), 400);
    assert_eq!(
        status(
            &format!("/v1/log/inclusion?index=0&size={}", last.size),
            false
        ),
        401
    );
    assert_eq!(
        status(
            &format!("/v1/log/inclusion?index={}&size={}", last.size, last.size),
            true
        ),
        404
    );

    // The database agrees with its log.
    let found = st.rt.block_on(st.storage.check_log()).unwrap();
    assert!(found.ok(), "{:?}", found.problems);
    assert_eq!(found.size, last.size);
    assert_eq!(found.changes, st.counts().changes);
}

/// The station's storage opened anew (as another process would).
fn open_station_storage(
    st: &TestStation,
) -> std::sync::Arc<dyn fieldreport_station::StationStorage> {
    let data = st.dir.path().join("station");
    match &st.database {
        None => std::sync::Arc::new(
            fieldreport_station::SqliteStorage::open_with_clock(&data, st.clock.clone()).unwrap(),
        ),
        Some(url) => std::sync::Arc::new(
            fieldreport_station::storage::postgres::PostgresStorage::open_with_clock(
                url,
                &data,
                st.clock.clone(),
            )
            .unwrap(),
        ),
    }
}

fn exec_sql(st: &TestStation, sqlite: &str, postgres: &str) {
    match &st.database {
        None => {
            let c = rusqlite::Connection::open(st.dir.path().join("station").join("station.db"))
                .unwrap();
            c.execute_batch(sqlite).unwrap();
        }
        Some(url) => {
            let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
            c.batch_execute(postgres).unwrap();
        }
    }
}

fn log_check(st: &TestStation) -> (bool, String) {
    let mut args = vec!["log-check".to_string()];
    args.extend(st.cli_args());
    let out = Command::new(CLI).args(&args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn rows_deleted_or_inserted_behind_the_logs_back_are_named() {
    let st = TestStation::start();
    let officer = st.device(
        &person("Officer Checkname", "72002", Role::Officer, "D4"),
        None,
    );
    write_report(&officer, 2);
    officer.sync();
    // Reads leave audit rows; sealing takes them into the log.
    for _ in 0..3 {
        st.get_text("/public");
    }
    st.rt.block_on(st.storage.seal_log()).unwrap();
    let (ok, out) = log_check(&st);
    assert!(ok, "{out}");
    assert!(out.contains("OK"), "{out}");

    // The database owner removes the append-only guard and deletes one
    // sealed audit row.
    let first = st.rt.block_on(st.storage.audit_log(0, 1)).unwrap()[0].id;
    exec_sql(
        &st,
        &format!(
            "DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE id = {first};"
        ),
        &format!(
            "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change; DELETE FROM audit_log WHERE id = {first};"
        ),
    );
    let found = st.rt.block_on(st.storage.check_log()).unwrap();
    assert!(
        found
            .problems
            .iter()
            .any(|p| p.starts_with("audit rows") && p.contains("deleted, added or altered")),
        "{:?}",
        found.problems
    );
    let (ok, out) = log_check(&st);
    assert!(!ok, "log-check passed a deleted audit row: {out}");
    assert!(out.contains("FAIL audit rows"), "{out}");
}

#[test]
fn a_change_inserted_or_deleted_in_the_database_is_named() {
    let st = TestStation::start();
    let officer = st.device(
        &person("Officer Rowname", "72003", Role::Officer, "D4"),
        None,
    );
    write_report(&officer, 3);
    officer.sync();
    assert!(st.rt.block_on(st.storage.check_log()).unwrap().ok());

    let newest = st.counts().changes as i64;
    // A change inserted behind the log's back: stored, never logged.
    exec_sql(
        &st,
        "INSERT INTO changes (hash, device_id, seq, report_id, prev, body, signature, hlc_wall, received_at)
         SELECT randomblob(32), device_id, seq + 100, report_id, randomblob(32), body, signature, hlc_wall, received_at
         FROM changes ORDER BY id LIMIT 1;",
        "INSERT INTO changes (id, hash, device_id, seq, report_id, prev, body, signature, hlc_wall, received_at)
         SELECT (SELECT MAX(id) + 10 FROM changes), sha256(hash), device_id, seq + 100, report_id, sha256(prev), body, signature, hlc_wall, received_at
         FROM changes ORDER BY id LIMIT 1;",
    );
    let found = st.rt.block_on(st.storage.check_log()).unwrap();
    assert!(
        found
            .problems
            .iter()
            .any(|p| p.contains("is stored but not in the log")),
        "{:?}",
        found.problems
    );
    // A logged change's receipt time rewritten in place: the row no longer
    // rebuilds its leaf.
    exec_sql(
        &st,
        "UPDATE changes SET received_at = received_at - 3600000 WHERE id = 1;",
        "UPDATE changes SET received_at = received_at - 3600000 WHERE id = 1;",
    );
    let found = st.rt.block_on(st.storage.check_log()).unwrap();
    assert!(
        found
            .problems
            .iter()
            .any(|p| p == "change 1 differs from log entry 0 (rewritten)"),
        "{:?}",
        found.problems
    );
    // The newest logged change deleted (the tail-truncation case).
    exec_sql(
        &st,
        &format!("DELETE FROM changes WHERE id = {newest};"),
        &format!("DELETE FROM changes WHERE id = {newest};"),
    );
    let found = st.rt.block_on(st.storage.check_log()).unwrap();
    assert!(
        found
            .problems
            .iter()
            .any(|p| p.contains(&format!("change {newest} is no longer stored"))),
        "{:?}",
        found.problems
    );

    let (ok, out) = log_check(&st);
    assert!(!ok, "{out}");
}

#[test]
fn the_log_key_is_private_and_kept_across_restarts() {
    let st = TestStation::start();
    let key = st.dir.path().join("station").join("log.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let v = verifier(&st);
    let reopened =
        fieldreport_station::storage::transparency::LogSigner::load_or_create(&key, None)
            .unwrap()
            .verifier();
    assert_eq!(v, reopened);
    // A log key that did not sign the log (lost and made anew) is refused
    // before it signs anything.
    let officer = st.device(
        &person("Officer Keyname", "72004", Role::Officer, "D4"),
        None,
    );
    write_report(&officer, 1);
    officer.sync();
    std::fs::remove_file(&key).unwrap();
    let fresh = open_station_storage(&st);
    let err = st.rt.block_on(fresh.seal_log()).unwrap_err().to_string();
    assert!(err.contains("the log key does not verify"), "{err}");
    // A key file others can read is refused, not used.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let copy = st.dir.path().join("open.key");
        std::fs::copy(&key, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err =
            fieldreport_station::storage::transparency::LogSigner::load_or_create(&copy, None)
                .unwrap_err()
                .to_string();
        assert!(err.contains("readable by others"), "{err}");
    }
}

#[test]
fn a_phone_refuses_a_station_whose_log_went_back_and_keeps_its_outbox() {
    let st = TestStation::start();
    let officer = st.device(
        &person("Officer Backname", "72005", Role::Officer, "D4"),
        None,
    );
    write_report(&officer, 2);
    officer.sync();
    // What an older copy of the station held: the log up to here.
    let v = verifier(&st);
    let old = checkpoint(&st, &v);
    let old_changes = st.counts().changes;
    write_report(&officer, 2);
    officer.sync();
    assert!(checkpoint(&st, &v).size > old.size);

    // The station's database "restored" to that copy: the newer changes
    // and their log entries gone.
    let n = old.size;
    let hashes_from = fieldreport_core::tlog::stored_hash_index(0, n);
    exec_sql(
        &st,
        &format!(
            "DROP TRIGGER log_leaves_no_delete; DROP TRIGGER log_hashes_no_delete;
             DROP TRIGGER log_checkpoints_no_delete;
             DELETE FROM log_checkpoints WHERE size > {n};
             DELETE FROM log_leaves WHERE idx >= {n};
             DELETE FROM log_hashes WHERE idx >= {hashes_from};
             DELETE FROM changes WHERE id > {old_changes};"
        ),
        &format!(
            "ALTER TABLE log_checkpoints DISABLE TRIGGER USER;
             ALTER TABLE log_leaves DISABLE TRIGGER USER;
             ALTER TABLE log_hashes DISABLE TRIGGER USER;
             DELETE FROM log_checkpoints WHERE size > {n};
             DELETE FROM log_leaves WHERE idx >= {n};
             DELETE FROM log_hashes WHERE idx >= {hashes_from};
             DELETE FROM changes WHERE id > {old_changes};"
        ),
    );
    assert_eq!(checkpoint(&st, &v).size, n);

    // The phone holds a newer checkpoint: it refuses the station, sends
    // nothing, and keeps its new work.
    write_report(&officer, 1);
    let waiting = officer.store.outbox_len().unwrap();
    assert!(waiting > 0);
    let err = officer
        .client
        .sync(
            &officer.store,
            &fieldreport_core::sync::NoProgress,
            &Default::default(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            fieldreport_core::Error::StationLog(LogError::Shrunk { seen, presented })
                if seen > presented && presented == n
        ),
        "{err:?}"
    );
    assert_eq!(officer.store.outbox_len().unwrap(), waiting);
    assert_eq!(st.counts().changes, old_changes);
    // The phone keeps the newer checkpoint, and told the station's audit,
    // naming the size the station signed and no longer shows.
    assert!(officer.store.newest_log_checkpoint().unwrap().unwrap().0 > n);
    let alarms = log_alarms(&st);
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!(
        alarms[0].actor,
        officer.store.identity().unwrap().device_id.to_string()
    );
    assert!(
        alarms[0].outcome.contains("shrank")
            && alarms[0]
                .outcome
                .contains("ROLLBACK: this log key signed a tree of size"),
        "{}",
        alarms[0].outcome
    );
    // And again at the next try: nothing is sent to that station.
    assert!(officer
        .client
        .sync(
            &officer.store,
            &fieldreport_core::sync::NoProgress,
            &Default::default(),
        )
        .is_err());
    assert_eq!(officer.store.outbox_len().unwrap(), waiting);
}

fn log_alarms(st: &TestStation) -> Vec<fieldreport_station::storage::AuditEntry> {
    st.rt
        .block_on(st.storage.audit_log(0, 100_000))
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "log alarm")
        .collect()
}

#[test]
fn a_phone_keeps_a_receipt_for_every_change_it_pushed() {
    let st = TestStation::start();
    let officer = st.device(
        &person("Officer Receiptname", "72006", Role::Officer, "D4"),
        None,
    );
    let v = verifier(&st);
    let r = write_report(&officer, 2);
    officer.sync();
    officer
        .store
        .set_field(r, "narrative", Value::Text("Later.".into()))
        .unwrap();
    officer.sync();

    let mine = officer.store.report_changes(r).unwrap();
    let receipts = officer.store.receipts_of_report(r).unwrap();
    assert_eq!(receipts.len(), mine.len());
    let mut sizes = std::collections::BTreeSet::new();
    for rc in &receipts {
        let change = mine.iter().find(|c| c.id() == rc.change).unwrap();
        let note = officer
            .store
            .log_checkpoint_of(rc.tree_size)
            .unwrap()
            .expect("the checkpoint a receipt leads to is kept");
        let cp = SignedCheckpoint::verify(note.as_bytes(), &v).unwrap();
        let leaf = Leaf::Change {
            hash: *change.hash(),
            device: change.device(),
            seq: change.body().seq,
            report: r,
            received_at_ms: rc.received_at_ms,
        };
        check_inclusion(
            &decode_hashes(&rc.proof).unwrap(),
            cp.size,
            cp.root,
            rc.index,
            leaf.hash(),
        )
        .unwrap();
        sizes.insert(rc.tree_size);
    }
    assert_eq!(sizes.len(), 2, "one checkpoint per push");
    assert!(log_alarms(&st).is_empty());

    // A push sent again (its answer lost on the way) is answered with
    // every change's receipt too, to the newest checkpoint.
    let body = PushRequest {
        changes: mine.iter().map(WireChange::from_change).collect(),
    };
    let again: PushResponse = st
        .http()
        .post(format!("{}/v1/changes", st.url))
        .bearer_auth(officer.credential())
        .json(&body)
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!((again.applied, again.duplicates), (0, mine.len()));
    let log = again.log.expect("receipts for a repeated push");
    let cp = SignedCheckpoint::verify(log.checkpoint.as_bytes(), &v).unwrap();
    assert_eq!(log.receipts.len(), mine.len());
    for rc in &log.receipts {
        let kept = receipts
            .iter()
            .find(|k| k.change.device == rc.device && k.change.seq == rc.seq)
            .unwrap();
        assert_eq!(
            (rc.index, rc.received_at_ms),
            (kept.index, kept.received_at_ms)
        );
        let change = mine.iter().find(|c| c.id() == kept.change).unwrap();
        let leaf = Leaf::Change {
            hash: *change.hash(),
            device: rc.device,
            seq: rc.seq,
            report: r,
            received_at_ms: rc.received_at_ms,
        };
        check_inclusion(
            &decode_hashes(&rc.proof).unwrap(),
            cp.size,
            cp.root,
            rc.index,
            leaf.hash(),
        )
        .unwrap();
    }
}

#[test]
fn a_phone_shown_another_history_signed_by_the_log_key_refuses_it() {
    let st = TestStation::start();
    let a = st.device(
        &person("Officer Forkname", "72007", Role::Officer, "D4"),
        None,
    );
    let b = st.device(
        &person("Officer Forkother", "72008", Role::Officer, "D4"),
        None,
    );
    write_report(&a, 1);
    a.sync();
    let held = a.store.newest_log_checkpoint().unwrap().unwrap();
    let v = verifier(&st);
    let held_cp = SignedCheckpoint::verify(held.1.as_bytes(), &v).unwrap();

    // Another phone's newer checkpoint of the same history: kept.
    write_report(&b, 1);
    b.sync();
    let newer = b.store.newest_log_checkpoint().unwrap().unwrap();
    assert!(newer.0 > held.0);
    a.client
        .observe_checkpoint(&a.store, &Default::default(), &newer.1)
        .unwrap();
    assert_eq!(a.store.newest_log_checkpoint().unwrap().unwrap(), newer);

    // Whoever holds the log key signs a second tree of a size a phone
    // holds (what a station showing two phones two histories does).
    let signer = fieldreport_station::storage::transparency::LogSigner::load_or_create(
        &st.dir.path().join("station").join("log.key"),
        None,
    )
    .unwrap();
    let mut other_root = held_cp.root;
    other_root.0[0] ^= 1;
    let fork = signer.sign(held_cp.size, other_root).unwrap();
    let err = a
        .client
        .observe_checkpoint(&a.store, &Default::default(), &fork.note)
        .unwrap_err();
    assert!(
        matches!(
            err,
            fieldreport_core::Error::StationLog(LogError::BadConsistency)
        ),
        "{err:?}"
    );
    let same_size = signer.sign(newer.0, other_root).unwrap();
    let err = a
        .client
        .observe_checkpoint(&a.store, &Default::default(), &same_size.note)
        .unwrap_err();
    assert!(
        matches!(err, fieldreport_core::Error::StationLog(LogError::Forked { size }) if size == newer.0),
        "{err:?}"
    );
    // A larger tree the station has no record of signing.
    let unseen = signer.sign(newer.0 + 10, other_root).unwrap();
    let err = a
        .client
        .observe_checkpoint(&a.store, &Default::default(), &unseen.note)
        .unwrap_err();
    assert!(
        matches!(
            err,
            fieldreport_core::Error::StationLog(LogError::Forgotten { .. })
        ),
        "{err:?}"
    );
    // A checkpoint under another key is not this log's.
    let stranger = fieldreport_station::storage::transparency::LogSigner::load_or_create(
        &st.dir.path().join("stranger.key"),
        Some(v.name.as_str()),
    )
    .unwrap();
    let err = a
        .client
        .observe_checkpoint(
            &a.store,
            &Default::default(),
            &stranger.sign(newer.0, held_cp.root).unwrap().note,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            fieldreport_core::Error::NotThisLog(LogError::NotSignedByLog(_))
        ),
        "{err:?}"
    );
    // None of them replaced what the phone holds; the three the log key
    // signed reached the audit, the stranger's (not the station's doing)
    // did not.
    assert_eq!(a.store.newest_log_checkpoint().unwrap().unwrap(), newer);
    assert_eq!(log_alarms(&st).len(), 3);
}
