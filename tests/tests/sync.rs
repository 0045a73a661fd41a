//! Devices and a station on a random loopback port: convergence with a kept
//! conflict, resumable media through a connection cut, live events,
//! authorization, and bad input at every endpoint.

use std::sync::mpsc;
use std::time::Duration;

use fieldreport_core::model::ConflictKind;
use fieldreport_core::store::MediaMeta;
use fieldreport_core::sync::SyncClient;
use fieldreport_core::{Error, Role, Value};
use fieldreport_e2e::*;
use serde_json::Value as Json;
use uuid::Uuid;

const T0: i64 = 1_764_000_000_000;

fn fill(d: &Device, r: Uuid) {
    let s = &d.store;
    s.set_field(r, "occurred.start", Value::Time(T0)).unwrap();
    s.set_field(
        r,
        "location.address",
        Value::Text("1800 S Blue Island Ave".into()),
    )
    .unwrap();
    s.set_field(r, "federal_agencies", Value::List(vec!["ice".into()]))
        .unwrap();
}

fn photo(d: &Device, r: Uuid, size: usize, seed: u8) -> String {
    let path = d.dir().join(format!("photo-{seed}.jpg"));
    let bytes: Vec<u8> = (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    std::fs::write(&path, bytes).unwrap();
    d.store
        .attach_media(
            r,
            &path,
            MediaMeta {
                mime_type: "image/jpeg".into(),
                ..Default::default()
            },
        )
        .unwrap()
        .sha256
}

#[test]
fn two_officers_and_a_supervisor_converge_with_the_conflict_kept() {
    let st = TestStation::start();
    let a = st.device(&person("A", "101", Role::Officer, "D9"), None);
    let b = st.device(&person("B", "102", Role::Officer, "D9"), None);
    let sup = st.device(&person("S", "900", Role::Supervisor, "D9"), None);

    // Offline capture on A, shared phone-to-phone with B.
    let r = a.store.create_report().unwrap();
    fill(&a, r);
    let sha = photo(&a, r, 300_000, 1);
    a.hand_over_to(&b);
    // Concurrent edits of one field, plus independent work.
    a.store
        .set_field(
            r,
            "supervisory_federal_officer.badge_number",
            Value::Text("4471".into()),
        )
        .unwrap();
    b.store
        .set_field(
            r,
            "supervisory_federal_officer.badge_number",
            Value::Text("4417".into()),
        )
        .unwrap();
    b.store
        .add_entry(
            r,
            "witnesses",
            vec![("name".into(), Value::Text("W".into()))],
        )
        .unwrap();
    let r2 = b.store.create_report().unwrap();

    // Sync in an awkward order.
    b.sync();
    sup.sync();
    a.sync();
    sup.sync();
    b.sync();
    a.sync();

    let json = a.store.report_json(r).unwrap();
    assert_eq!(b.store.report_json(r).unwrap(), json);
    assert_eq!(sup.store.report_json(r).unwrap(), json);
    assert_eq!(
        sup.store.report_json(r2).unwrap(),
        b.store.report_json(r2).unwrap()
    );
    let rep = sup.store.report(r).unwrap();
    let c = rep
        .conflicts
        .iter()
        .find(|c| c.path == "supervisory_federal_officer.badge_number")
        .unwrap();
    assert_eq!(c.kind, ConflictKind::Values);
    assert_eq!(c.values.len(), 2);
    assert!(
        sup.store.media().contains(&sha),
        "the supervisor downloaded the photo"
    );

    // The station holds each change exactly once, and its report agrees.
    let all = a.store.change_count().unwrap() + b.store.report_changes(r2).unwrap().len() as u64;
    assert_eq!(st.counts().changes, all);
    let http = st.http();
    let station_json = http
        .get(format!("{}/v1/reports/{r}", st.url))
        .bearer_auth(sup.credential())
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(station_json, json);

    // Syncing again changes nothing; re-sending a batch is a no-op.
    let before = st.counts();
    assert_eq!(a.sync().pushed, 0);
    let batch: Vec<_> = a
        .store
        .report_changes(r)
        .unwrap()
        .iter()
        .map(fieldreport_core::sync::wire::WireChange::from_change)
        .collect();
    let resp: Json = http
        .post(format!("{}/v1/changes", st.url))
        .bearer_auth(a.credential())
        .json(&serde_json::json!({ "changes": batch }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(resp["applied"], 0);
    assert_eq!(resp["duplicates"].as_u64().unwrap() as usize, batch.len());
    assert_eq!(st.counts(), before);
    assert_eq!(a.store.outbox_len().unwrap(), 0);
    assert_eq!(b.store.outbox_len().unwrap(), 0);
}

#[test]
fn a_cut_media_upload_resumes_and_sends_only_the_rest() {
    let st = TestStation::start();
    let proxy = Proxy::start(&st.rt, st.addr());
    let a = st.device(&person("A", "101", Role::Officer, "D9"), Some(&proxy.url));
    let r = a.store.create_report().unwrap();
    let size = 20 << 20;
    let sha = photo(&a, r, size, 3);

    proxy.cut_once_after(10 << 20);
    let before = proxy.sent();
    let report = a.sync();
    let sent = proxy.sent() - before;
    assert_eq!(
        proxy.cuts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the connection was cut"
    );
    let status: fieldreport_core::sync::wire::MediaStatus = st
        .http()
        .get(format!("{}/v1/media/{sha}/status", st.url))
        .bearer_auth(a.credential())
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(status.complete && status.received == size as u64);
    // Only the chunk in flight at the cut is sent twice.
    let chunk = fieldreport_core::sync::client::UPLOAD_CHUNK as u64;
    assert!(
        report.media_bytes_sent <= size as u64 + chunk,
        "media bytes sent: {}",
        report.media_bytes_sent
    );
    assert!(
        sent < size as u64 + 2 * chunk + 256 * 1024,
        "bytes through the proxy: {sent}"
    );
    assert_eq!(st.counts().media_complete, 1);
    assert_eq!(st.counts().changes, a.store.change_count().unwrap());
}

#[test]
fn the_supervisor_is_told_of_a_new_report_of_the_unit_and_pulls_it() {
    let st = TestStation::start();
    let a = st.device(&person("A", "101", Role::Officer, "D9"), None);
    let other = st.device(&person("O", "201", Role::Officer, "D2"), None);
    let sup = st.device(&person("S", "900", Role::Supervisor, "D9"), None);
    let (tx, rx) = mpsc::channel();
    let listener = SyncClient::for_store(&sup.store).unwrap();
    std::thread::spawn(move || {
        let _ = listener.listen_events(|ev| tx.send(ev).is_ok());
    });
    std::thread::sleep(Duration::from_millis(300));

    let elsewhere = other.store.create_report().unwrap();
    other.sync();
    let r = a.store.create_report().unwrap();
    a.sync();
    let ev = rx.recv_timeout(Duration::from_secs(10)).expect("an event");
    assert_eq!(ev.report_id, r, "only the unit's reports are announced");
    assert_eq!(ev.kind, "new");
    sup.sync();
    assert_eq!(
        sup.store.report_json(r).unwrap(),
        a.store.report_json(r).unwrap()
    );
    assert!(matches!(
        sup.store.report(elsewhere),
        Err(Error::ReportNotFound(_))
    ));
    // Officers may not listen.
    let code = st
        .http()
        .get(format!("{}/v1/events", st.url))
        .bearer_auth(a.credential())
        .send()
        .unwrap()
        .status();
    assert_eq!(code, 403);
}

#[test]
fn officers_see_only_their_reports_and_strangers_nothing() {
    let st = TestStation::start();
    let a = st.device(&person("A", "101", Role::Officer, "D9"), None);
    let b = st.device(&person("B", "102", Role::Officer, "D9"), None);
    let sup_elsewhere = st.device(&person("S2", "902", Role::Supervisor, "D2"), None);
    let r = a.store.create_report().unwrap();
    let sha = photo(&a, r, 50_000, 9);
    a.sync();
    b.sync();
    sup_elsewhere.sync();
    assert!(matches!(b.store.report(r), Err(Error::ReportNotFound(_))));
    assert!(matches!(
        sup_elsewhere.store.report(r),
        Err(Error::ReportNotFound(_))
    ));
    let http = st.http();
    for (path, who) in [
        (format!("/v1/reports/{r}/changes"), b.credential()),
        (format!("/v1/reports/{r}"), b.credential()),
        (format!("/v1/media/{sha}"), b.credential()),
        (format!("/v1/media/{sha}"), sup_elsewhere.credential()),
    ] {
        let resp = http
            .get(format!("{}{path}", st.url))
            .bearer_auth(who)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    // The author may.
    let resp = http
        .get(format!("{}/v1/media/{sha}", st.url))
        .bearer_auth(a.credential())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().unwrap().len(), 50_000);

    // No credential, or an unknown one: 401 with a JSON body.
    for auth in [None, Some("not-a-credential")] {
        let mut rb = http.get(format!("{}/v1/changes?after=0", st.url));
        if let Some(t) = auth {
            rb = rb.bearer_auth(t);
        }
        let resp = rb.send().unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.json::<Json>().unwrap()["error"], "unauthorized");
    }

    // Enrollment codes: one use, and they expire.
    let code = st.code(&person("C", "103", Role::Officer, "D9"), 60_000);
    let d1 = tempfile::tempdir().unwrap();
    let s1 = fieldreport_core::Store::open(d1.path()).unwrap();
    SyncClient::enroll(&s1, &st.url, &code).unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let s2 = fieldreport_core::Store::open(d2.path()).unwrap();
    match SyncClient::enroll(&s2, &st.url, &code) {
        Err(Error::Station { status: 422, code }) => assert_eq!(code, "code_used"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a used code enrolled a second device"),
    }
    assert!(
        s2.identity().is_none(),
        "a refused enrollment leaves no identity"
    );
    let expired = st.code(&person("D", "104", Role::Officer, "D9"), -1);
    match SyncClient::enroll(&s2, &st.url, &expired) {
        Err(Error::Station { status: 422, code }) => assert_eq!(code, "code_expired"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn bad_input_at_every_endpoint_gets_a_json_4xx_and_changes_nothing() {
    let st = TestStation::start();
    let a = st.device(&person("A", "101", Role::Officer, "D9"), None);
    let r = a.store.create_report().unwrap();
    fill(&a, r);
    a.sync();
    // A valid change not yet pushed, to tamper with.
    a.store
        .set_field(r, "narrative", Value::Text("unsynced".into()))
        .unwrap();
    let good = a.store.outbox(10).unwrap().remove(0);
    let before = st.counts();
    let http = st.http();
    let url = |p: &str| format!("{}{p}", st.url);
    let cred = a.credential();
    let wire = fieldreport_core::sync::wire::WireChange::from_change(&good);
    let mut bad_sig = wire.clone();
    bad_sig.signature = {
        let mut s = good.signature().to_vec();
        s[3] ^= 1;
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let too_many: Vec<_> = (0..1001).map(|_| wire.clone()).collect();
    let other_bytes = vec![1u8; 1000];
    let claimed = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"something else"));

    let cases: Vec<(&str, reqwest::blocking::RequestBuilder, u16, &str)> = vec![
        ("malformed JSON", http.post(url("/v1/changes")).body("{not json"), 400, "malformed_json"),
        ("wrong shape", http.post(url("/v1/changes")).body("{\"changes\": 3}"), 400, "malformed_json"),
        ("oversized batch", http.post(url("/v1/changes")).json(&serde_json::json!({"changes": too_many})), 413, "too_large"),
        ("bad signature", http.post(url("/v1/changes")).json(&serde_json::json!({"changes": [bad_sig]})), 422, "bad_signature"),
        ("undecodable change", http.post(url("/v1/changes")).json(&serde_json::json!({"changes": [{"body": "AAAA", "signature": "AAAA"}]})), 400, "malformed_change"),
        ("a valid change with a bad device-time header", http.post(url("/v1/changes")).header("x-fieldreport-device-time", "abc").json(&serde_json::json!({"changes": [wire.clone()]})), 400, "bad_header"),
        ("bad cursor", http.get(url("/v1/changes?after=abc")), 400, "bad_query"),
        ("negative cursor", http.get(url("/v1/changes?after=-1")), 400, "bad_query"),
        ("page of none", http.get(url("/v1/changes?limit=0")), 400, "bad_query"),
        ("page over the limit", http.get(url("/v1/changes?limit=1001")), 400, "bad_query"),
        ("media chunk over 8 MiB", http.put(url(&format!("/v1/media/{claimed}?offset=0&total={}", 9 << 20))).body(vec![0u8; 9 << 20]), 413, "too_large"),
        ("report id not a uuid", http.get(url("/v1/reports/nope/changes")), 400, "bad_id"),
        ("unknown report", http.get(url(&format!("/v1/reports/{}/changes", Uuid::new_v4()))), 404, "not_found"),
        ("media bytes not matching the hash", http.put(url(&format!("/v1/media/{claimed}?offset=0&total=1000"))).body(other_bytes.clone()), 422, "hash_mismatch"),
        ("bad media hash", http.put(url("/v1/media/XYZ?offset=0&total=3")).body("abc"), 400, "bad_hash"),
        ("media without offset", http.put(url(&format!("/v1/media/{claimed}"))).body("abc"), 400, "bad_query"),
        ("media past total", http.put(url(&format!("/v1/media/{claimed}?offset=0&total=2"))).body("abc"), 400, "beyond_total"),
        ("media at wrong offset", http.put(url(&format!("/v1/media/{claimed}?offset=5&total=10"))).body("abc"), 409, "offset_mismatch"),
        ("unknown media", http.get(url(&format!("/v1/media/{claimed}"))), 404, "not_found"),
        ("enroll malformed", http.post(url("/v1/enroll")).body("[]"), 400, "malformed_json"),
        ("enroll bad key", http.post(url("/v1/enroll")).json(&serde_json::json!({"code": "x", "device_id": Uuid::new_v4(), "public_key": "zz"})), 400, "bad_key"),
        ("enroll unknown code", http.post(url("/v1/enroll")).json(&serde_json::json!({"code": "x", "device_id": Uuid::new_v4(), "public_key": hex::encode(a.store.identity().unwrap().public_key)})), 422, "invalid_code"),
        ("unknown route", http.get(url("/v1/nothing-here")), 404, "not_found"),
    ];
    for (name, rb, status, code) in cases {
        // A station may answer an oversized body before reading it and
        // close the connection while the client still writes (a broken
        // pipe, no answer read): that request is sent again.
        let mut resp = None;
        for _ in 0..5 {
            let attempt = rb.try_clone().expect("a body that can be sent again");
            match attempt.bearer_auth(&cred).send() {
                Ok(r) => {
                    resp = Some(r);
                    break;
                }
                Err(e) if status == 413 && e.is_request() => continue,
                Err(e) => panic!("{name}: {e}"),
            }
        }
        let resp = resp.unwrap_or_else(|| panic!("{name}: no answer read in 5 tries"));
        assert_eq!(resp.status().as_u16(), status, "{name}");
        let body: Json = resp
            .json()
            .unwrap_or_else(|_| panic!("{name}: body is not JSON"));
        assert_eq!(body["error"], code, "{name}");
        assert!(body["message"].is_string(), "{name}");
    }
    assert_eq!(st.counts(), before, "the station's data is unchanged");
    // The good change still goes through afterwards.
    a.sync();
    assert_eq!(st.counts().changes, before.changes + 1);
}

/// Cancels the sync once this many upload bytes are reported.
struct CancelAt {
    at: u64,
    token: fieldreport_core::sync::CancelToken,
    seen: std::sync::Mutex<Vec<fieldreport_core::sync::Progress>>,
}

impl fieldreport_core::sync::SyncProgress for CancelAt {
    fn on_progress(&self, p: fieldreport_core::sync::Progress) {
        if p.phase == fieldreport_core::sync::Phase::UploadMedia && p.bytes_done >= self.at {
            self.token.cancel();
        }
        self.seen.lock().unwrap().push(p);
    }
}

#[test]
fn a_cancelled_sync_reports_progress_and_a_restarted_app_resumes() {
    let st = TestStation::start();
    let a = st.device(&person("A", "101", Role::Officer, "D9"), None);
    let r = a.store.create_report().unwrap();
    let size = 6 << 20;
    photo(&a, r, size, 5);
    let token = fieldreport_core::sync::CancelToken::new();
    let progress = CancelAt {
        at: 3 << 20,
        token: token.clone(),
        seen: Default::default(),
    };
    let err = a.client.sync(&a.store, &progress, &token).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err:?}");
    let seen = progress.seen.lock().unwrap().clone();
    let uploads: Vec<_> = seen
        .iter()
        .filter(|p| p.phase == fieldreport_core::sync::Phase::UploadMedia)
        .collect();
    assert!(uploads
        .iter()
        .all(|p| p.bytes_total == size as u64 && p.items_total == 1));
    assert!(
        uploads
            .windows(2)
            .all(|w| w[0].bytes_done <= w[1].bytes_done),
        "progress only grows"
    );
    assert_eq!(st.counts().changes, 0, "cancelled before the push");
    let held = st.counts().media_bytes;
    assert!(held >= 3 << 20 && held < size as u64);

    // The app restarts: a new client from the store resumes the upload.
    let client = SyncClient::for_store(&a.store).unwrap();
    let report = client
        .sync(
            &a.store,
            &fieldreport_core::sync::NoProgress,
            &Default::default(),
        )
        .unwrap();
    assert_eq!(
        report.media_bytes_sent,
        size as u64 - held,
        "only the rest is sent"
    );
    assert_eq!(report.pushed, a.store.change_count().unwrap());
    assert!(st.counts().media_complete == 1 && a.store.pending_media().unwrap().is_empty());
}

#[test]
fn the_readme_demo_converges() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // As a newcomer runs it: the command, read by a person.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_station-cli"))
        .args(["demo", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the demo converges: {printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Values as people read them, not Rust's debug form.
    assert!(printed.contains("Kept conflict on"), "{printed}");
    assert!(printed.contains("\"CBP 4471-B\" from"), "{printed}");
    for debug in ["Text(", "Time(", "List(", "Some("] {
        assert!(
            !printed.contains(debug),
            "`{debug}` in the demo's output:\n{printed}"
        );
    }
    // Again on the same, now full, directory: a clear refusal.
    let err = rt
        .block_on(fieldreport_station::demo::run(
            false,
            Some(dir.path().to_path_buf()),
        ))
        .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}
