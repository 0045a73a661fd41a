//! The supervisor workflow: every lifecycle transition allowed and refused,
//! on the device (the core's authoring API) and at the station (forged,
//! correctly signed changes pushed raw), concurrent transitions resolving
//! the same way everywhere, amendments and the lock after approval.

use std::sync::atomic::{AtomicU64, Ordering};

use fieldreport_core::crdt::{Action, Change, ChangeBody, Hash, Hlc, Operation, Target};
use fieldreport_core::model::LifecycleState;
use fieldreport_core::store::Origin;
use fieldreport_core::sync::wire::{EnrollRequest, EnrollResponse, PushRequest, WireChange};
use fieldreport_core::{DeviceIdentity, Error, Role, Value};
use fieldreport_e2e::*;
use uuid::Uuid;

fn ready(d: &Device) -> Uuid {
    let r = d.store.create_report().unwrap();
    d.store
        .set_field(r, "occurred.start", Value::Time(1_795_000_000_000))
        .unwrap();
    d.store
        .set_field(r, "location.address", Value::Text("W 26th St".into()))
        .unwrap();
    d.store
        .set_field(r, "federal_agencies", Value::List(vec!["ice".into()]))
        .unwrap();
    r
}

fn lifecycle(d: &Device, r: Uuid) -> LifecycleState {
    d.store.report(r).unwrap().lifecycle
}

fn refused_state(e: Error) {
    assert!(matches!(e, Error::InvalidState { .. }), "{e:?}");
}

fn refused_role(e: Error) {
    assert!(
        matches!(e, Error::NotYourRole(_) | Error::NotPermitted { .. }),
        "{e:?}"
    );
}

#[test]
fn every_transition_on_the_device() {
    let st = TestStation::start();
    let a = st.device(&person("A", "101", Role::Officer, "D9"), None);
    let s = st.device(&person("S", "900", Role::Supervisor, "D9"), None);
    let x = st.device(&person("X", "901", Role::Supervisor, "D2"), None);
    let r = ready(&a);

    // Draft: only the officer submits; nothing of a supervisor's applies.
    // A supervisor who has not received the report cannot act on it.
    assert!(matches!(
        s.store.approve(r).unwrap_err(),
        Error::ReportNotFound(_)
    ));
    a.sync();
    s.sync();
    x.sync();
    refused_state(s.store.approve(r).unwrap_err());
    refused_state(s.store.return_report(r, "why").unwrap_err());
    refused_state(
        s.store
            .refer(r, 1, "SA-1", vec!["aggravated battery".into()])
            .unwrap_err(),
    );
    refused_state(s.store.close(r).unwrap_err());
    refused_state(s.store.record_review(r, "f", "c", true).unwrap_err());
    refused_role(s.store.submit(r).unwrap_err());
    refused_role(
        s.store
            .set_field(r, "narrative", Value::Text("edited by sup".into()))
            .unwrap_err(),
    );
    refused_role(a.store.approve(r).unwrap_err());
    a.store.submit(r).unwrap();
    assert_eq!(lifecycle(&a, r), LifecycleState::Submitted);
    refused_state(a.store.submit(r).unwrap_err());

    // Submitted: the unit's supervisor returns (with a comment) or approves.
    a.sync();
    s.sync();
    x.sync();
    // The station never shows another unit's report; handed over phone to
    // phone, the other unit's supervisor still may not act on it.
    assert!(matches!(
        x.store.approve(r).unwrap_err(),
        Error::ReportNotFound(_)
    ));
    a.hand_over_to(&x);
    refused_role(a.store.return_report(r, "no").unwrap_err());
    refused_role(x.store.return_report(r, "other unit").unwrap_err());
    refused_role(x.store.approve(r).unwrap_err());
    assert!(matches!(
        s.store.return_report(r, "  ").unwrap_err(),
        Error::InvalidValue { .. }
    ));
    refused_state(s.store.refer(r, 1, "SA-1", vec!["x".into()]).unwrap_err());
    refused_state(s.store.close(r).unwrap_err());
    s.store
        .return_report(r, "Add the supervising agent's badge.")
        .unwrap();
    s.store
        .record_review(
            r,
            "Force was reported promptly.",
            "Officers kept distance.",
            false,
        )
        .unwrap();
    s.sync();
    a.sync();
    assert_eq!(lifecycle(&a, r), LifecycleState::Returned);
    let rep = a.store.report(r).unwrap();
    assert_eq!(
        rep.return_comment.as_deref(),
        Some("Add the supervising agent's badge.")
    );
    assert_eq!(rep.review.dispatch_knew, Some(false));
    assert!(rep.review.completed_at.is_some());

    // Returned: the officer amends and resubmits.
    refused_state(s.store.approve(r).unwrap_err());
    a.store
        .set_field(
            r,
            "supervisory_federal_officer.badge_number",
            Value::Text("4471".into()),
        )
        .unwrap();
    a.store.submit(r).unwrap();
    let rep = a.store.report(r).unwrap();
    assert!(
        rep.amendments
            .iter()
            .any(|m| m.path == "supervisory_federal_officer.badge_number" && !m.after_lock),
        "{:?}",
        rep.amendments
    );
    a.sync();
    s.sync();

    // Approved: fields locked for the officer, addenda still welcome.
    s.store.approve(r).unwrap();
    s.sync();
    a.sync();
    assert_eq!(lifecycle(&a, r), LifecycleState::Approved);
    refused_state(
        a.store
            .set_field(r, "narrative", Value::Text("late".into()))
            .unwrap_err(),
    );
    a.store
        .add_entry(
            r,
            "addenda",
            vec![("text".into(), Value::Text("EMS report number 26-1".into()))],
        )
        .unwrap();
    s.store
        .add_entry(
            r,
            "addenda",
            vec![("text".into(), Value::Text("Bodycam preserved.".into()))],
        )
        .unwrap();
    refused_state(s.store.return_report(r, "too late").unwrap_err());
    refused_role(a.store.refer(r, 1, "SA", vec!["x".into()]).unwrap_err());
    assert!(matches!(
        s.store.refer(r, 1, "SA-1", vec![]).unwrap_err(),
        Error::InvalidValue { .. }
    ));

    // Referred, then closed.
    s.store
        .refer(
            r,
            1_795_100_000_000,
            "SA-2026-114",
            vec!["aggravated battery".into()],
        )
        .unwrap();
    refused_state(s.store.approve(r).unwrap_err());
    s.store.close(r).unwrap();
    refused_state(s.store.close(r).unwrap_err());
    s.sync();
    a.sync();
    s.sync();
    x.sync();
    let rep = a.store.report(r).unwrap();
    assert_eq!(rep.lifecycle, LifecycleState::Closed);
    assert_eq!(rep.amendments.len(), 1, "addenda are not amendments");
    assert_eq!(rep.referral.reference.as_deref(), Some("SA-2026-114"));
    assert_eq!(rep.addenda.len(), 2);
    let steps: Vec<_> = rep.lifecycle_history.iter().map(|s| s.to).collect();
    use LifecycleState::*;
    assert_eq!(
        steps,
        vec![Submitted, Returned, Submitted, Approved, Referred, Closed]
    );
    assert!(rep.lifecycle_history.iter().all(|s| s.applied));
    assert_eq!(
        a.store.report_json(r).unwrap(),
        s.store.report_json(r).unwrap()
    );
    // The other unit's supervisor got nothing more from the station.
    assert_eq!(
        x.store.report(r).unwrap().lifecycle,
        LifecycleState::Submitted
    );
}

#[test]
fn concurrent_transitions_resolve_the_same_everywhere() {
    let st = TestStation::start();
    let a = st.device(&person("A", "101", Role::Officer, "D9"), None);
    let s1 = st.device(&person("S1", "900", Role::Supervisor, "D9"), None);
    let s2 = st.device(&person("S2", "902", Role::Supervisor, "D9"), None);
    let r = ready(&a);
    a.store.submit(r).unwrap();
    a.sync();
    s1.sync();
    s2.sync();
    // Offline, at the same time: one returns, the other approves.
    s1.store.return_report(r, "Badge missing.").unwrap();
    s2.store.approve(r).unwrap();
    // And the officer, not yet knowing, amends.
    a.store
        .set_field(r, "narrative", Value::Text("Amended.".into()))
        .unwrap();
    for d in [&s1, &s2, &a, &s1, &s2] {
        d.sync();
    }
    let json = a.store.report_json(r).unwrap();
    assert_eq!(s1.store.report_json(r).unwrap(), json);
    assert_eq!(s2.store.report_json(r).unwrap(), json);
    let rep = a.store.report(r).unwrap();
    // Both kept; exactly one of the two applied; no conflict shown.
    assert_eq!(
        rep.lifecycle_history.len(),
        3,
        "{:?}",
        rep.lifecycle_history
    );
    let second = &rep.lifecycle_history[1..];
    assert_eq!(second.iter().filter(|s| s.applied).count(), 1);
    assert_eq!(rep.lifecycle, second.iter().find(|s| s.applied).unwrap().to);
    assert!(rep.conflicts.is_empty(), "{:?}", rep.conflicts);
    assert!(rep.amendments.iter().any(|m| m.path == "narrative"));
}

/// A device enrolled with a key the test holds, to push forged changes.
struct Forger {
    id: DeviceIdentity,
    credential: String,
    seq: AtomicU64,
}

fn forger(st: &TestStation, p: &fieldreport_core::Person) -> Forger {
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
    Forger {
        id,
        credential: resp.credential,
        seq: AtomicU64::new(1),
    }
}

impl Forger {
    fn change(&self, report: Uuid, prev: Option<Hash>, ops: Vec<(&str, Value)>) -> Change {
        let now = now_ms();
        Change::sign(
            ChangeBody {
                format: 1,
                report,
                device: self.id.device_id(),
                seq: self.seq.fetch_add(1, Ordering::SeqCst),
                hlc: Hlc {
                    wall_ms: now as u64,
                    counter: 0,
                },
                wall_clock_ms: now,
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

    /// The change that creates report `r` as this (officer) forger, in its
    /// own unit, the way the core does.
    fn creation(&self, r: Uuid) -> Change {
        let p = &self.id.record.person;
        self.change(
            r,
            None,
            vec![
                ("lifecycle.state", Value::Text("draft".into())),
                ("reporting_officer.name", Value::Text(p.name.clone())),
                (
                    "reporting_officer.star_number",
                    Value::Text(p.star_number.clone()),
                ),
                ("reporting_officer.unit", Value::Text(p.unit.clone())),
            ],
        )
    }

    /// Pushes raw; the HTTP status and the error code.
    fn push(&self, st: &TestStation, c: &Change) -> (u16, String) {
        let resp = st
            .http()
            .post(format!("{}/v1/changes", st.url))
            .bearer_auth(&self.credential)
            .json(&PushRequest {
                changes: vec![WireChange::from_change(c)],
            })
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().unwrap_or_default();
        (status, body["error"].as_str().unwrap_or("").to_string())
    }
}

#[test]
fn the_station_refuses_forged_transitions_and_accepts_rightful_ones() {
    let st = TestStation::start();
    let officer = forger(&st, &person("A", "101", Role::Officer, "D9"));
    let sup = forger(&st, &person("S", "900", Role::Supervisor, "D9"));
    let other_sup = forger(&st, &person("X", "901", Role::Supervisor, "D2"));
    let text = |s: &str| Value::Text(s.into());
    let r = Uuid::new_v4();
    let created = officer.creation(r);
    // Claiming another unit at creation is refused.
    let wrong_unit = officer.change(
        Uuid::new_v4(),
        None,
        vec![("reporting_officer.unit", text("D2"))],
    );
    assert_eq!(
        officer.push(&st, &wrong_unit),
        (403, "not_permitted".into())
    );
    // The seq the refused change took is burnt; chains are per report.
    assert_eq!(officer.push(&st, &created).0, 200);

    let refused = [
        (&officer, vec![("lifecycle.state", text("approved"))]),
        (&officer, vec![("review.findings", text("self-review"))]),
        (&officer, vec![("lifecycle.state", text("draft"))]),
        (&sup, vec![("narrative", text("supervisor rewrote it"))]),
        (&sup, vec![("lifecycle.state", text("submitted"))]),
        (&other_sup, vec![("lifecycle.state", text("returned"))]),
        (&other_sup, vec![("review.findings", text("not my unit"))]),
    ];
    let mut heads: std::collections::HashMap<Uuid, Option<Hash>> = Default::default();
    heads.insert(officer.id.device_id(), Some(*created.hash()));
    for (who, ops) in refused {
        let prev = heads.get(&who.id.device_id()).copied().flatten();
        let c = who.change(r, prev, ops.clone());
        assert_eq!(
            who.push(&st, &c),
            (403, "not_permitted".into()),
            "{:?} by {:?}",
            ops,
            who.id.record.person.role
        );
    }
    // Rightful ones pass: the officer submits, the unit's supervisor returns
    // with a comment and adds to the review.
    let submitted = officer.change(
        r,
        heads[&officer.id.device_id()],
        vec![("lifecycle.state", text("submitted"))],
    );
    assert_eq!(officer.push(&st, &submitted).0, 200);
    let returned = sup.change(
        r,
        None,
        vec![
            ("lifecycle.state", text("returned")),
            ("lifecycle.comment", text("Add the badge.")),
            ("review.findings", text("Reviewed.")),
        ],
    );
    assert_eq!(sup.push(&st, &returned).0, 200);
    let json: serde_json::Value = st
        .http()
        .get(format!("{}/v1/reports/{r}", st.url))
        .bearer_auth(&sup.credential)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(json["lifecycle"], "returned", "{json}");
    assert_eq!(json["return_comment"], "Add the badge.");
}

#[test]
fn a_device_refuses_forged_changes_from_a_peer() {
    let st = TestStation::start();
    let a = st.device(&person("A", "101", Role::Officer, "D9"), None);
    let b = st.device(&person("B", "102", Role::Officer, "D9"), None);
    let r = ready(&a);
    a.store.submit(r).unwrap();
    a.sync();
    b.sync(); // B now knows A's device.
    a.hand_over_to(&b);
    // A forged approval signed by B's officer key, as a peer would hand it over.
    let key = {
        let conn = rusqlite::Connection::open(b.dir().join("fieldreport.db")).unwrap();
        let secret: Vec<u8> = conn
            .query_row("SELECT secret_key FROM identity", [], |r| r.get(0))
            .unwrap();
        ed25519_dalek::SigningKey::from_bytes(&secret.try_into().unwrap())
    };
    let me = b.store.identity().unwrap();
    let now = now_ms();
    let forged = Change::sign(
        ChangeBody {
            format: 1,
            report: r,
            device: me.device_id,
            seq: 1_000,
            hlc: Hlc {
                wall_ms: now as u64,
                counter: 0,
            },
            wall_clock_ms: now,
            prev: None,
            ops: vec![Operation {
                target: Target::Field("lifecycle.state".into()),
                action: Action::Set(Value::Text("approved".into())),
                pred: vec![],
            }],
        },
        &key,
    )
    .unwrap();
    let before = a.store.report_json(r).unwrap();
    let e = a
        .store
        .apply_changes(vec![forged], Origin::Peer)
        .unwrap_err();
    assert!(matches!(e, Error::NotPermitted { .. }), "{e:?}");
    assert_eq!(a.store.report_json(r).unwrap(), before, "nothing applied");
}

/// Every transition by every role at the station: the officer may only
/// submit; the report's unit supervisor may return, approve, refer and
/// close; another unit's supervisor may do none. (Whether a transition fits
/// the report's state is the replay's business: an accepted step that does
/// not fit is kept and marked not applied.)
#[test]
fn every_transition_by_every_role_at_the_station() {
    use LifecycleState::*;
    let st = TestStation::start();
    let officer = forger(&st, &person("A", "101", Role::Officer, "D9"));
    let sup = forger(&st, &person("S", "900", Role::Supervisor, "D9"));
    let other_sup = forger(&st, &person("X", "901", Role::Supervisor, "D2"));
    let other_officer = forger(&st, &person("B", "102", Role::Officer, "D2"));
    let text = |s: &str| Value::Text(s.into());
    let mut checked = 0;
    for to in [Submitted, Returned, Approved, Referred, Closed] {
        for (who, allowed) in [
            (&officer, to == Submitted),
            (&sup, to != Submitted),
            (&other_sup, false),
            (&other_officer, false),
        ] {
            // A fresh report per case, so each forger's chain starts at it.
            let r = Uuid::new_v4();
            let created = officer.creation(r);
            assert_eq!(officer.push(&st, &created).0, 200);
            let prev = (std::ptr::eq(who, &officer)).then(|| *created.hash());
            let c = who.change(r, prev, vec![("lifecycle.state", text(to.as_str()))]);
            let (status, code) = who.push(&st, &c);
            if allowed {
                assert_eq!(
                    status, 200,
                    "{to:?} by {:?} refused: {code}",
                    who.id.record.person
                );
            } else {
                assert_eq!(
                    (status, code.as_str()),
                    (403, "not_permitted"),
                    "{to:?} by {:?}",
                    who.id.record.person
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 20);
}

/// The reporting officer is named by the report's creation alone, exactly
/// as the directory has its author: forged, correctly signed changes that
/// say otherwise, pushed raw, get `403 not_permitted`.
#[test]
fn the_station_refuses_a_forged_reporting_officer() {
    let st = TestStation::start();
    let a = forger(&st, &person("A. Alvarez", "101", Role::Officer, "D9"));
    let b = forger(&st, &person("B. Brown", "102", Role::Officer, "D9"));
    let text = |s: &str| Value::Text(s.into());
    let forbidden = (403, "not_permitted".to_string());
    let creation_as = |who: &Forger, r: Uuid, name: &str, star: &str| {
        who.change(
            r,
            None,
            vec![
                ("lifecycle.state", text("draft")),
                ("reporting_officer.name", text(name)),
                ("reporting_officer.star_number", text(star)),
                ("reporting_officer.unit", text("D9")),
            ],
        )
    };

    // A creation naming anyone but its signer is refused.
    let r = Uuid::new_v4();
    assert_eq!(
        a.push(&st, &creation_as(&a, r, "B. Brown", "101")),
        forbidden,
        "another officer's name"
    );
    assert_eq!(
        a.push(&st, &creation_as(&a, r, "A. Alvarez", "102")),
        forbidden,
        "another star number"
    );
    assert_eq!(
        a.push(
            &st,
            &a.change(
                r,
                None,
                vec![
                    ("lifecycle.state", text("draft")),
                    ("reporting_officer.unit", text("D9"))
                ]
            )
        ),
        forbidden,
        "a creation that does not name its officer"
    );
    // The rightful creation is accepted.
    let created = a.creation(r);
    assert_eq!(a.push(&st, &created).0, 200);

    // Another officer of the unit may edit the report, but not name
    // himself its reporting officer: not in his first change to it, not
    // by re-creating it.
    assert_eq!(
        b.push(
            &st,
            &b.change(r, None, vec![("reporting_officer.name", text("B. Brown"))])
        ),
        forbidden,
        "a first change that is not the creation"
    );
    assert_eq!(
        b.push(&st, &creation_as(&b, r, "B. Brown", "102")),
        forbidden,
        "a second creation"
    );
    assert_eq!(
        a.push(
            &st,
            &a.change(
                r,
                Some(*created.hash()),
                vec![("reporting_officer.name", text("A. Alvarez"))]
            )
        ),
        forbidden,
        "the creator later"
    );
    let edit = b.change(r, None, vec![("narrative", text("Seen from the corner."))]);
    assert_eq!(b.push(&st, &edit).0, 200);

    let json: serde_json::Value = st
        .http()
        .get(format!("{}/v1/reports/{r}", st.url))
        .bearer_auth(&a.credential)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(json["reporting_officer"]["name"], "A. Alvarez", "{json}");
    assert_eq!(json["reporting_officer"]["star_number"], "101");
    assert_eq!(json["created_by_device"], a.id.device_id().to_string());
    assert_eq!(json["narrative"], "Seen from the corner.");
}

/// A report's id derives from its creation change (`report_id_for`), so
/// the one-creation rule does not depend on arrival order: an officer who
/// learns a partner's report id and pushes a creation of his own before
/// the partner syncs is refused, the partner's whole outbox then goes
/// through, and a phone that is handed the forged creation first refuses
/// it and later takes the genuine one from the station.
#[test]
fn a_forged_creation_is_refused_in_whatever_order_it_arrives() {
    use fieldreport_core::model::workflow::{is_derived_report_id, report_id_for};
    let st = TestStation::start();
    let a = st.device(&person("A. Alvarez", "101", Role::Officer, "D9"), None);
    // C: the unit's supervisor, who sees the unit's reports.
    let c = st.device(&person("C. Chen", "900", Role::Supervisor, "D9"), None);
    let b = forger(&st, &person("B. Brown", "102", Role::Officer, "D9"));
    c.sync(); // C knows B's key
    let text = |s: &str| Value::Text(s.into());
    let forged_creation = |r: Uuid| {
        let p = &b.id.record.person;
        b.change(
            r,
            None,
            vec![
                ("lifecycle.state", text("draft")),
                ("reporting_officer.name", text(&p.name)),
                ("reporting_officer.star_number", text(&p.star_number)),
                ("reporting_officer.unit", text(&p.unit)),
            ],
        )
    };

    // A creates offline; B learns the id (a partner's phone shows it).
    let r = ready(&a);
    assert!(is_derived_report_id(r), "{r}");
    let first = forged_creation(r);
    // The forged creation reaches the station first: refused.
    assert_eq!(b.push(&st, &first), (403, "not_permitted".into()));
    // A's whole outbox goes through.
    a.sync();
    assert_eq!(a.store.outbox_len().unwrap(), 0, "A's outbox is not stuck");
    // After A's sync, a second forgery is refused all the same.
    let second = forged_creation(r);
    assert_eq!(b.push(&st, &second), (403, "not_permitted".into()));

    // A phone handed the forged creation first refuses it ...
    let e = c
        .store
        .apply_changes(vec![first.clone()], Origin::Peer)
        .unwrap_err();
    assert!(matches!(e, Error::NotPermitted { .. }), "{e:?}");
    // ... and takes the genuine one from the station.
    c.sync();
    let seen = c.store.report(r).unwrap();
    assert_eq!(seen.reporting_officer.name.as_deref(), Some("A. Alvarez"));
    assert_eq!(seen.reporting_officer.star_number.as_deref(), Some("101"));

    // Only A's own creation derives r: A's first change to it.
    let genuine = a.store.report_changes(r).unwrap();
    let creation = genuine
        .iter()
        .find(|ch| fieldreport_core::model::workflow::is_creation(ch.body()))
        .unwrap();
    let nonce = |ch: &Change| {
        ch.body()
            .ops
            .iter()
            .find_map(|op| match (&op.target, &op.action) {
                (Target::Field(p), Action::Set(Value::Text(v))) if p == "creation.nonce" => {
                    Some(v.clone())
                }
                _ => None,
            })
    };
    assert_eq!(report_id_for(creation.id(), &nonce(creation).unwrap()), r);
    assert_eq!(nonce(&first), None, "the forger could not derive r anyway");
    let json: serde_json::Value = st
        .http()
        .get(format!("{}/v1/reports/{r}", st.url))
        .bearer_auth(c.credential())
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(json["reporting_officer"]["name"], "A. Alvarez", "{json}");
    assert_eq!(
        json["created_by_device"],
        a.store.identity().unwrap().device_id.to_string()
    );
}
