//! A witness (C2SP tlog-witness) in front of a real station's log, on the
//! engine under test: it cosigns a checkpoint only with a consistency
//! proof from the last one it cosigned, answers 409 (with the size it
//! holds) to a wrong old size or a second tree of one size, 422 to a
//! proof that does not verify, 404/403 to a log it does not follow or a
//! signature it does not trust, and keeps its state across a restart.

use std::sync::Arc;

use fieldreport_core::sync::wire::ConsistencyResponse;
use fieldreport_core::tlog::{NoteVerifier, SignedCheckpoint, SignedNote, TreeHash};
use fieldreport_core::{Role, Value};
use fieldreport_e2e::*;
use fieldreport_station::clock::ManualClock;
use fieldreport_station::storage::transparency::LogSigner;
use fieldreport_station::witness::{router, Witness};

struct Running {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

fn serve(st: &TestStation, w: Arc<Witness>) -> Running {
    let listener = st
        .rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = st.rt.spawn(async move {
        axum::serve(listener, router(w)).await.unwrap();
    });
    Running { url, task }
}

/// Stops a served witness and waits until it is dropped (its lock freed).
fn stop(st: &TestStation, running: Running) {
    running.task.abort();
    let _ = st.rt.block_on(running.task);
}

fn post(url: &str, body: String) -> (u16, Option<String>, String) {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{url}/add-checkpoint"))
        .body(body)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    (status, ct, resp.text().unwrap())
}

fn request(old: u64, proof: &[String], note: &str) -> String {
    let mut b = format!("old {old}\n");
    for p in proof {
        b.push_str(p);
        b.push('\n');
    }
    b.push('\n');
    b.push_str(note);
    b
}

fn push(st: &TestStation, d: &Device, n: usize) {
    let r = d.store.create_report().unwrap();
    for i in 0..n {
        d.store
            .set_field(r, "narrative", Value::Text(format!("Entry {i}.")))
            .unwrap();
    }
    d.sync();
    let _ = st;
}

fn newest(st: &TestStation, v: &NoteVerifier) -> SignedCheckpoint {
    SignedCheckpoint::verify(st.get_text("/v1/log/checkpoint").as_bytes(), v).unwrap()
}

fn proof(st: &TestStation, old: u64, new: u64) -> Vec<String> {
    st.http()
        .get(format!("{}/v1/log/consistency?old={old}&new={new}", st.url))
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json::<ConsistencyResponse>()
        .unwrap()
        .proof
}

#[test]
fn a_witness_cosigns_only_what_extends_what_it_cosigned_and_remembers_it() {
    let st = TestStation::start();
    let officer = st.device(
        &person("Officer Witnessname", "73001", Role::Officer, "D4"),
        None,
    );
    let v = NoteVerifier::parse(st.get_text("/v1/log/key").trim()).unwrap();
    push(&st, &officer, 2);
    let first = newest(&st, &v);

    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(1_800_000_000_000);
    // A restarted witness waits for the stopped one's connections (which
    // hold it, and its directory lock) to close.
    let open = || {
        for _ in 0..200 {
            match Witness::open(
                dir.path(),
                Some("sao.example/witness"),
                vec![v.clone()],
                clock.clone(),
            ) {
                Ok(w) => return Arc::new(w),
                Err(e) if e.to_string().contains("another witness runs") => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("the stopped witness still holds its directory");
    };
    let w = open();
    let wkey = w.key();
    let running = serve(&st, w);

    // A log it does not follow, and one signed by a key it does not trust.
    let elsewhere = tempfile::tempdir().unwrap();
    let stranger =
        LogSigner::load_or_create(&elsewhere.path().join("stranger.key"), Some("other/log"))
            .unwrap();
    let (status, _, _) = post(
        &running.url,
        request(0, &[], &stranger.sign(1, TreeHash([1; 32])).unwrap().note),
    );
    assert_eq!(status, 404);
    let impostor =
        LogSigner::load_or_create(&elsewhere.path().join("impostor.key"), Some(&v.name)).unwrap();
    let (status, _, _) = post(
        &running.url,
        request(0, &[], &impostor.sign(first.size, first.root).unwrap().note),
    );
    assert_eq!(status, 403);
    // An old size it never cosigned: 409 and the size it holds.
    let (status, ct, body) = post(&running.url, request(1, &[], &first.note));
    assert_eq!(
        (status, ct.as_deref(), body.as_str()),
        (409, Some("text/x.tlog.size"), "0\n")
    );
    // An old size above the checkpoint's: 400.
    let (status, _, _) = post(&running.url, request(first.size + 1, &[], &first.note));
    assert_eq!(status, 400);

    // A proof where none is due (from size 0): 400.
    let (status, _, _) = post(
        &running.url,
        request(0, &[first.root.to_string()], &first.note),
    );
    assert_eq!(status, 400);

    // The first checkpoint from size 0: cosigned at the witness's time.
    let (status, _, line) = post(&running.url, request(0, &[], &first.note));
    assert_eq!(status, 200, "{line}");
    let cosigned = SignedNote::parse(format!("{}{line}", first.note).as_bytes()).unwrap();
    assert_eq!(cosigned.cosigned_by(&wkey), Some(1_800_000_000));
    assert!(SignedCheckpoint::verify(cosigned.encode().as_bytes(), &v).is_ok());

    // A later checkpoint with the station's consistency proof: cosigned.
    push(&st, &officer, 2);
    let second = newest(&st, &v);
    assert!(second.size > first.size);
    clock.advance(60_000);
    let (status, _, line) = post(
        &running.url,
        request(
            first.size,
            &proof(&st, first.size, second.size),
            &second.note,
        ),
    );
    assert_eq!(status, 200, "{line}");
    assert_eq!(
        SignedNote::parse(format!("{}{line}", second.note).as_bytes())
            .unwrap()
            .cosigned_by(&wkey),
        Some(1_800_000_060)
    );

    // A larger tree the log key signed that does not extend it: 422,
    // whatever proof comes with it.
    let log_key =
        LogSigner::load_or_create(&st.dir.path().join("station").join("log.key"), None).unwrap();
    let mut other = second.root;
    other.0[0] ^= 1;
    let fork = log_key.sign(second.size + 3, other).unwrap();
    push(&st, &officer, 3);
    let third = newest(&st, &v);
    let (status, _, _) = post(
        &running.url,
        request(
            second.size,
            &proof(&st, second.size, third.size),
            &fork.note,
        ),
    );
    assert_eq!(status, 422);
    // A second tree of the size it cosigned: 409.
    let twin = log_key.sign(second.size, other).unwrap();
    let (status, _, body) = post(&running.url, request(second.size, &[], &twin.note));
    assert_eq!(
        (status, body.as_str()),
        (409, format!("{}\n", second.size).as_str())
    );

    // The same signed checkpoint again with a made-up proof (anyone can
    // replay a public checkpoint): refused, and not kept a second time.
    let (status, _, _) = post(
        &running.url,
        request(second.size, &[first.root.to_string()], &fork.note),
    );
    assert_eq!(status, 422);

    // Both refusals kept as evidence, once each: the log key's own
    // signatures on another history.
    let refused: Vec<String> = std::fs::read_dir(dir.path().join("refused"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(refused.len(), 2);
    assert!(
        refused.iter().any(|r| r.ends_with(&fork.note))
            && refused.iter().any(|r| r.ends_with(&twin.note))
    );
    // One witness per directory.
    let second_process = Witness::open(dir.path(), None, vec![v.clone()], clock.clone());
    assert!(second_process
        .err()
        .unwrap()
        .to_string()
        .contains("another witness runs"));

    // Restarted from its directory: it still holds the second checkpoint.
    stop(&st, running);
    let w = open();
    assert_eq!(w.key(), wkey, "the same key after a restart");
    let running = serve(&st, w);
    let (status, _, body) = post(
        &running.url,
        request(first.size, &proof(&st, first.size, third.size), &third.note),
    );
    assert_eq!(
        (status, body.as_str()),
        (409, format!("{}\n", second.size).as_str())
    );
    let (status, _, line) = post(
        &running.url,
        request(
            second.size,
            &proof(&st, second.size, third.size),
            &third.note,
        ),
    );
    assert_eq!(status, 200, "{line}");
    // A witness whose state is lost does not go on with its key.
    stop(&st, running);
    let state = dir.path().join("witness-state.json");
    let kept = std::fs::read(&state).unwrap();
    std::fs::remove_file(&state).unwrap();
    let mut err = String::new();
    for _ in 0..200 {
        err = Witness::open(dir.path(), None, vec![v.clone()], clock.clone())
            .err()
            .unwrap()
            .to_string();
        if !err.contains("another witness runs") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(err.contains("retire it"), "{err}");
    std::fs::write(&state, kept).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).unwrap();
        for f in ["witness.key", "witness-state.json", "witness.lock"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }
}

fn try_sync(d: &Device) -> fieldreport_core::Result<fieldreport_core::sync::SyncReport> {
    d.client.sync(
        &d.store,
        &fieldreport_core::sync::NoProgress,
        &Default::default(),
    )
}

#[test]
fn a_phone_requiring_witnesses_counts_receipts_witnessed_only_once_they_cosigned() {
    use fieldreport_core::store::{WitnessPolicy, WitnessStatus};
    use fieldreport_station::attest::{Attestors, WitnessEndpoint};
    use fieldreport_station::storage::{Attestation, AttestationKind};

    let st = TestStation::start();
    let officer = st.device(
        &person("Officer Quorumname", "73011", Role::Officer, "D4"),
        None,
    );
    let v = NoteVerifier::parse(st.get_text("/v1/log/key").trim()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(1_800_000_000_000);
    let w =
        Arc::new(Witness::open(dir.path(), Some("sao.example/w"), vec![v.clone()], clock).unwrap());
    let wkey = w.key();
    let running = serve(&st, w);
    let attestors = Attestors::new(
        None,
        Vec::new(),
        vec![WitnessEndpoint {
            url: running.url.clone(),
            key: wkey.clone(),
        }],
        std::time::Duration::from_secs(60),
    )
    .unwrap();

    // None required: nothing is counted.
    push(&st, &officer, 2);
    assert_eq!(officer.store.witness_status().unwrap(), None);

    // A quorum the set cannot meet, or a witness named twice: refused,
    // and the policy stays as it was.
    for bad in [
        WitnessPolicy::new(vec![wkey.clone()], 2),
        WitnessPolicy::new(vec![wkey.clone(), wkey.clone()], 1),
    ] {
        assert!(matches!(
            bad,
            Err(fieldreport_core::Error::BadWitnesses { .. })
        ));
    }
    officer
        .store
        .set_witness_policy(&WitnessPolicy::new(vec![wkey.clone()], 1).unwrap())
        .unwrap();
    // Before the witness has seen anything, every receipt waits.
    push(&st, &officer, 3);
    // (Each push: a report's creation and its edits.)
    let receipts = officer.store.receipts_awaiting_witness().unwrap();
    assert_eq!(receipts, 3 + 4);
    let report = officer.sync();
    assert_eq!(
        report.witnessed,
        Some(WitnessStatus {
            quorum: 1,
            size: 0,
            receipts_awaiting: 7
        })
    );

    // The station's witness cosigns its newest tree: the next sync counts
    // them witnessed.
    let round = st
        .rt
        .block_on(attestors.attest_newest(st.storage.as_ref()))
        .unwrap()
        .unwrap();
    assert!(round.failed.is_empty(), "{:?}", round.failed);
    let report = officer.sync();
    let status = report.witnessed.unwrap();
    assert_eq!((status.size, status.receipts_awaiting), (round.size, 0));
    let kept = officer.store.witnessed_checkpoint().unwrap().unwrap();
    assert!(SignedNote::parse(kept.note.as_bytes())
        .unwrap()
        .cosigned_by(&wkey)
        .is_some());
    // Newer changes wait again until the next round.
    push(&st, &officer, 1);
    let status = officer.store.witness_status().unwrap().unwrap();
    assert_eq!((status.size, status.receipts_awaiting), (round.size, 2));

    // A device told to require another witness: the station's witnessed
    // checkpoint does not count, but its changes still reach the station.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Witness::open(
        other_dir.path(),
        Some("ig.example/w"),
        vec![v.clone()],
        ManualClock::at(1_800_000_000_000),
    )
    .unwrap()
    .key();
    officer
        .store
        .set_witness_policy(&WitnessPolicy::new(vec![other], 1).unwrap())
        .unwrap();
    let r = officer.store.create_report().unwrap();
    officer
        .store
        .set_field(r, "narrative", Value::Text("Pushed anyway.".into()))
        .unwrap();
    let err = try_sync(&officer).unwrap_err();
    assert!(
        matches!(
            err,
            fieldreport_core::Error::WitnessQuorum { needed: 1, got: 0 }
        ),
        "{err:?}"
    );
    assert_eq!(officer.store.outbox_len().unwrap(), 0);

    // The station shows its witness a tree of another history (a size it
    // never showed this phone): the phone, holding the real one, refuses
    // it and tells the audit.
    officer
        .store
        .set_witness_policy(&WitnessPolicy::new(vec![wkey.clone()], 1).unwrap())
        .unwrap();
    let held = officer.store.newest_log_checkpoint().unwrap().unwrap().0;
    let gap = (round.size + 1..held)
        .find(|k| {
            st.rt
                .block_on(st.storage.checkpoint_of(*k))
                .unwrap()
                .is_none()
        })
        .expect("a size the log signed no checkpoint of");
    let signer =
        LogSigner::load_or_create(&st.dir.path().join("station").join("log.key"), None).unwrap();
    let forged = signer.sign(gap, TreeHash([7; 32])).unwrap();
    let sql = format!(
        "INSERT INTO log_checkpoints (size, note) VALUES ({gap}, '{}')",
        forged.note.replace('\'', "''")
    );
    exec_sql(&st, &sql, &sql);
    // The witness that cosigned the real tree refuses it (the station's
    // own proof is of the real tree of that size)...
    let (status, _, line) = post(
        &running.url,
        request(round.size, &proof(&st, round.size, gap), &forged.note),
    );
    assert_eq!(status, 422, "{line}");
    // ...so the station shows it to a witness that never saw this log.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = Arc::new(
        Witness::open(
            fresh_dir.path(),
            Some("sao.example/w2"),
            vec![v.clone()],
            ManualClock::at(1_800_000_000_000),
        )
        .unwrap(),
    );
    let fresh_key = fresh.key();
    let fresh_running = serve(&st, fresh);
    let (status, _, line) = post(&fresh_running.url, request(0, &[], &forged.note));
    assert_eq!(status, 200, "{line}");
    st.rt
        .block_on(st.storage.add_attestation(Attestation {
            size: gap,
            kind: AttestationKind::Cosignature,
            party: fresh_key.name.clone(),
            body: line.trim_end().as_bytes().to_vec(),
            received_at_ms: 1_800_000_000_000,
        }))
        .unwrap();
    officer
        .store
        .set_witness_policy(&WitnessPolicy::new(vec![fresh_key], 1).unwrap())
        .unwrap();
    let alarms_before = audit_alarms(&st);
    let err = try_sync(&officer).unwrap_err();
    assert!(
        matches!(
            err,
            fieldreport_core::Error::StationLog(fieldreport_core::tlog::LogError::BadConsistency)
        ),
        "{err:?}"
    );
    assert_eq!(audit_alarms(&st), alarms_before + 1);
    // What the phone holds is untouched.
    assert_eq!(
        officer.store.newest_log_checkpoint().unwrap().unwrap().0,
        held
    );
    assert_eq!(officer.store.witnessed_checkpoint().unwrap().unwrap(), kept);
    stop(&st, fresh_running);
    stop(&st, running);
}

fn audit_alarms(st: &TestStation) -> usize {
    st.rt
        .block_on(st.storage.audit_log(0, 10_000))
        .unwrap()
        .iter()
        .filter(|e| e.action == "log alarm")
        .count()
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
