//! A revoked device's key signs nothing the station takes, on both engines:
//! changes it pushed before its revocation stay (and re-sending them is a
//! duplicate, not a refusal); a change signed by it that arrives after, by
//! any path (its own credential, another enrolled device pushing it raw,
//! the dashboard's signing store), is refused `403 device_revoked`, its
//! bytes kept, audited, and nothing of it reaches the station. A
//! revocation is ordered with concurrent pushes, and the exported package
//! of what was accepted verifies, even when the station's clock stands
//! still.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fieldreport_core::crdt::{Action, Change, ChangeBody, Hash, Hlc, Operation, Target};
use fieldreport_core::evidence::package::verify_package;
use fieldreport_core::sync::wire::{EnrollRequest, EnrollResponse, PushRequest, WireChange};
use fieldreport_core::{DeviceIdentity, Person, Role, Value};
use fieldreport_e2e::*;
use fieldreport_station::accounts::{act, create_account, Stores};
use fieldreport_station::api::REVOKED_NOTE;
use fieldreport_station::clock::{Clock, ManualClock};
use fieldreport_station::error::StationError;
use uuid::Uuid;

/// A device whose key the test holds: it signs changes by hand (as a thief
/// holding a lost phone's key could) and pushes them raw.
struct RawDevice {
    id: DeviceIdentity,
    credential: String,
    seq: AtomicU64,
}

fn raw_device(st: &TestStation, p: &Person) -> RawDevice {
    let id = DeviceIdentity::generate(p.clone()).unwrap();
    let resp: EnrollResponse = st
        .http()
        .post(format!("{}/v1/enroll", st.url))
        .json(&EnrollRequest {
            code: st.code(p, 600_000),
            device_id: id.device_id(),
            public_key: hex::encode(id.record.public_key),
        })
        .send()
        .unwrap()
        .json()
        .unwrap();
    RawDevice {
        id,
        credential: resp.credential,
        seq: AtomicU64::new(1),
    }
}

impl RawDevice {
    fn device_id(&self) -> Uuid {
        self.id.device_id()
    }

    /// A change claiming `claimed_ms` as both its clock and its wall clock.
    fn change(
        &self,
        report: Uuid,
        prev: Option<Hash>,
        claimed_ms: i64,
        ops: Vec<(&str, Value)>,
    ) -> Change {
        Change::sign(
            ChangeBody {
                format: 1,
                report,
                device: self.device_id(),
                seq: self.seq.fetch_add(1, Ordering::SeqCst),
                hlc: Hlc {
                    wall_ms: claimed_ms as u64,
                    counter: 0,
                },
                wall_clock_ms: claimed_ms,
                prev,
                ops: ops
                    .into_iter()
                    .map(|(p, v)| Operation {
                        target: Target::Field(p.into()),
                        action: Action::Set(v),
                        pred: vec![],
                    })
                    .collect(),
            },
            &self.id.signing_key,
        )
        .unwrap()
    }

    /// The change that creates report `r` in its own unit, as the core does.
    fn creation(&self, r: Uuid, claimed_ms: i64) -> Change {
        let p = self.id.record.person.clone();
        self.change(
            r,
            None,
            claimed_ms,
            vec![
                ("lifecycle.state", Value::Text("draft".into())),
                ("reporting_officer.name", Value::Text(p.name)),
                ("reporting_officer.star_number", Value::Text(p.star_number)),
                ("reporting_officer.unit", Value::Text(p.unit)),
            ],
        )
    }
}

/// Pushes `changes` raw with `credential`: (status, JSON body).
fn push_raw(st: &TestStation, credential: &str, changes: &[Change]) -> (u16, serde_json::Value) {
    push_to(&st.http(), &st.url, credential, changes)
}

fn push_to(
    http: &reqwest::blocking::Client,
    url: &str,
    credential: &str,
    changes: &[Change],
) -> (u16, serde_json::Value) {
    let resp = http
        .post(format!("{url}/v1/changes"))
        .bearer_auth(credential)
        .json(&PushRequest {
            changes: changes.iter().map(WireChange::from_change).collect(),
        })
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or_default())
}

fn audit_has(
    st: &TestStation,
    actor: &str,
    action: &str,
    target: Option<&str>,
    outcome: &str,
) -> bool {
    st.rt
        .block_on(st.storage.audit_log(0, 100_000))
        .unwrap()
        .iter()
        .any(|e| {
            e.actor == actor
                && e.action == action
                && target.is_none_or(|t| e.target == t)
                && e.outcome == outcome
        })
}

/// (device, reason) of every refused request the station kept.
fn rejected(st: &TestStation) -> Vec<(Option<Uuid>, String)> {
    match &st.database {
        Some(url) => {
            let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
            c.query("SELECT device_id, reason FROM rejected ORDER BY id", &[])
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        }
        None => {
            let c = rusqlite::Connection::open(st.dir.path().join("station/station.db")).unwrap();
            let mut q = c
                .prepare("SELECT device_id, reason FROM rejected ORDER BY id")
                .unwrap();
            q.query_map([], |r| {
                let d: Option<Vec<u8>> = r.get(0)?;
                Ok((d.map(|b| Uuid::from_slice(&b).unwrap()), r.get(1)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
        }
    }
}

/// Exports `report` at the console and verifies the bag.
fn export_and_verify(
    st: &TestStation,
    report: Uuid,
) -> fieldreport_core::evidence::package::Verdict {
    let work = tempfile::tempdir().unwrap();
    let bag = work.path().join("bag");
    st.rt
        .block_on(fieldreport_station::export::export_package(
            &st.storage,
            &fieldreport_station::attest::Attestors::default(),
            None,
            &[report],
            "test station",
            &bag,
            |_| {},
        ))
        .unwrap();
    verify_package(&bag, &mut |_, _| {}).unwrap()
}

#[test]
fn a_revoked_devices_change_is_refused_by_any_path_and_what_came_before_stays() {
    let st = TestStation::start();
    let lost = raw_device(&st, &person("Officer Lost", "73001", Role::Officer, "D9"));
    let partner = st.device(
        &person("Officer Partner", "73002", Role::Officer, "D9"),
        None,
    );
    let partner_id = partner.store.identity().unwrap().device_id;
    partner.sync();

    // Before the phone is lost: its report reaches the station.
    let r = Uuid::new_v4();
    let created = lost.creation(r, st.now_ms());
    let narrative = lost.change(
        r,
        Some(*created.hash()),
        st.now_ms(),
        vec![("narrative", Value::Text("Agents pushed a man.".into()))],
    );
    let before = [created.clone(), narrative.clone()];
    let (status, body) = push_raw(&st, &lost.credential, &before);
    assert_eq!((status, body["applied"].as_u64()), (200, Some(2)), "{body}");

    // The phone is lost and revoked, at the console beside the running
    // station (another process on the same database).
    let mut args = vec![
        "revoke".to_string(),
        "--device".into(),
        lost.device_id().to_string(),
    ];
    args.extend(st.cli_args());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_station-cli"))
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let counts = st.counts();

    // A change signed by its key afterwards, claiming a time before the
    // revocation (the thief set the clock back an hour).
    let late = lost.change(
        r,
        Some(*narrative.hash()),
        st.now_ms() - 3_600_000,
        vec![("narrative", Value::Text("Nothing happened.".into()))],
    );
    // Its own credential: refused at the door.
    assert_eq!(
        push_raw(&st, &lost.credential, std::slice::from_ref(&late)).0,
        401
    );
    // Pushed by another enrolled device that holds it (a partner's phone
    // forwarding it later): refused, whole batch.
    let partner_cred = partner.credential();
    for batch in [
        vec![late.clone()],
        vec![created.clone(), narrative.clone(), late.clone()],
    ] {
        let (status, body) = push_raw(&st, &partner_cred, &batch);
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"], "device_revoked", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(&late.id().to_string()), "{message}");
        assert!(
            !message.contains("Nothing happened") && !message.contains("Lost"),
            "{message}"
        );
    }
    // Nothing of it reached the station.
    assert_eq!(st.counts(), counts);
    // Audited: the request, by whom it came, and which revoked key.
    let partner_s = partner_id.to_string();
    assert!(audit_has(
        &st,
        &partner_s,
        "POST /v1/changes",
        None,
        &format!("403 {REVOKED_NOTE}")
    ));
    let target = format!("device {}", lost.device_id());
    assert!(audit_has(
        &st,
        &partner_s,
        "push refused",
        Some(&target),
        &format!("refused: {REVOKED_NOTE}")
    ));
    // The refused bytes are kept for audit.
    let kept = rejected(&st);
    assert_eq!(
        kept.iter()
            .filter(|(d, why)| *d == Some(partner_id) && why == "device_revoked")
            .count(),
        2,
        "{kept:?}"
    );

    // What the station held before the revocation stays valid: re-sending
    // it (a partner's phone catching up) is a duplicate, not a refusal.
    let (status, body) = push_raw(&st, &partner_cred, &before);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["applied"].as_u64(), body["duplicates"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!(st.counts(), counts);
    // The partner's own work goes on.
    let own = partner.store.create_report().unwrap();
    partner
        .store
        .set_field(own, "narrative", Value::Text("Partner's report.".into()))
        .unwrap();
    assert!(partner.sync().pushed >= 2);
    assert_eq!(st.counts().changes, counts.changes + 2);

    // The package of the report verifies: it holds the two changes, both
    // received before the revocation, which devices.json records.
    let v = export_and_verify(&st, r);
    assert!(v.is_ok(), "{v}");
    assert_eq!(v.changes, 2);
}

#[test]
fn a_revoked_dashboard_account_cannot_act() {
    let st = TestStation::start();
    let officer = st.device(&person("Officer D", "74001", Role::Officer, "D9"), None);
    let r = officer.store.create_report().unwrap();
    let s = &officer.store;
    s.set_field(r, "occurred.start", Value::Time(st.now_ms() - 3_600_000))
        .unwrap();
    s.set_field(r, "location.address", Value::Text("W 26th St".into()))
        .unwrap();
    s.set_field(r, "federal_agencies", Value::List(vec!["ice".into()]))
        .unwrap();
    s.submit(r).unwrap();
    officer.sync();

    let account = st
        .rt
        .block_on(create_account(
            st.storage.as_ref(),
            &st.station_key(),
            "Sgt Dash",
            "74009",
            "D9",
            "a long dashboard password",
        ))
        .unwrap();
    // The account's device as the dashboard found it before the revocation.
    let who = st
        .rt
        .block_on(st.storage.device(account.device_id))
        .unwrap()
        .unwrap();
    let row = st
        .rt
        .block_on(st.storage.dashboard_account("74009"))
        .unwrap()
        .unwrap();
    assert!(st
        .rt
        .block_on(st.storage.revoke(account.device_id))
        .unwrap());
    let counts = st.counts();
    let stores = Arc::new(Stores::default());
    let outcome = st.rt.block_on(act(
        &st.storage,
        &stores,
        &st.station_key(),
        &who,
        &row,
        r,
        move |store| store.approve(r).map(drop),
    ));
    match outcome {
        Err(StationError::DeviceRevoked { device, .. }) => assert_eq!(device, account.device_id),
        other => panic!("expected device_revoked, got {other:?}"),
    }
    assert_eq!(st.counts(), counts);
    officer.sync();
    assert_eq!(
        officer.store.report(r).unwrap().lifecycle.as_str(),
        "submitted"
    );
}

/// Pushes race a revocation on a station whose clock stands still (every
/// receipt and the revocation fall in one millisecond): every push is
/// accepted or refused whole, none is accepted after a refusal, every
/// accepted change is in the station, and the package says each was
/// received before the revocation (so it verifies).
#[test]
fn a_revocation_is_ordered_with_concurrent_pushes() {
    let clock = ManualClock::at(1_790_000_000_000);
    let st = TestStation::start_with_clock(clock.clone());
    let lost = Arc::new(raw_device(
        &st,
        &person("Officer Race", "75001", Role::Officer, "D9"),
    ));
    let partner = raw_device(&st, &person("Officer Near", "75002", Role::Officer, "D9"));
    let r = Uuid::new_v4();
    let created = lost.creation(r, clock.now_ms());
    assert_eq!(
        push_raw(&st, &lost.credential, std::slice::from_ref(&created)).0,
        200
    );

    let pusher = {
        let (http, url) = (st.http(), st.url.clone());
        let lost = lost.clone();
        let cred = partner.credential.clone();
        std::thread::spawn(move || {
            let mut prev = *created.hash();
            let mut outcomes = Vec::new();
            for i in 0..200 {
                let c = lost.change(
                    r,
                    Some(prev),
                    1_790_000_000_000,
                    vec![("narrative", Value::Text(format!("edit {i}")))],
                );
                let (status, body) = push_to(&http, &url, &cred, std::slice::from_ref(&c));
                match status {
                    200 => prev = *c.hash(),
                    403 => assert_eq!(body["error"], "device_revoked", "{body}"),
                    _ => panic!("unexpected {status}: {body}"),
                }
                outcomes.push(status);
                if outcomes.iter().filter(|s| **s == 403).count() >= 5 {
                    break;
                }
            }
            outcomes
        })
    };
    // Revoke once some pushes went through.
    while st.counts().changes < 10 && !pusher.is_finished() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(st.rt.block_on(st.storage.revoke(lost.device_id())).unwrap());
    let outcomes = pusher.join().unwrap();
    let accepted = outcomes.iter().filter(|s| **s == 200).count();
    let first_refusal = outcomes.iter().position(|s| *s == 403).unwrap();
    assert!(
        outcomes[first_refusal..].iter().all(|s| *s == 403),
        "a push was accepted after one was refused: {outcomes:?}"
    );
    assert_eq!(st.counts().changes as usize, 1 + accepted);
    let v = export_and_verify(&st, r);
    assert!(v.is_ok(), "{v}");
    assert_eq!(v.changes, 1 + accepted);
}
