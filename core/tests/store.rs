//! The device store's API: capture, typed reads, conflicts, history,
//! submission rules, media, lists, and bad input that changes nothing.

mod common;

use std::io::Write;

use common::*;
use fieldreport_core::model::schema::{LIST_ITEM_MAX, NARRATIVE_MAX, SHORT_TEXT_MAX};
use fieldreport_core::model::{ConflictKind, FederalAgency, ForceType, LifecycleState};
use fieldreport_core::store::{MediaMeta, Store};
use fieldreport_core::{Error, ListQuery, Role, Value};
use uuid::Uuid;

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

const T0: i64 = 1_764_000_000_000; // 2025-11-24

fn fill_required(s: &Store, r: Uuid) {
    s.set_field(r, "occurred.start", Value::Time(T0)).unwrap();
    s.set_field(r, "location.address", text("1200 W Example St"))
        .unwrap();
    s.set_field(
        r,
        "federal_agencies",
        Value::List(vec!["ice".into(), "cbp_border_patrol".into()]),
    )
    .unwrap();
}

#[test]
fn capture_and_read_typed_report() {
    let d = tempdir();
    let s = Store::open(d.path()).unwrap();
    s.create_identity(person("Alvarez", Role::Officer)).unwrap();
    let r = s.create_report().unwrap();
    fill_required(&s, r);
    s.set_field(r, "occurred.time_zone", text("America/Chicago"))
        .unwrap();
    s.set_field(
        r,
        "supervisory_federal_officer.badge_number",
        text("B-4471"),
    )
    .unwrap();
    s.set_field(
        r,
        "supervisory_federal_officer.refused_identification",
        Value::Bool(false),
    )
    .unwrap();
    s.set_field(r, "location.latitude", Value::Float(41.8781))
        .unwrap();
    let force = s
        .add_entry(
            r,
            "force",
            vec![
                ("type".into(), text("chemical_agent")),
                ("at".into(), Value::Time(T0 + 60_000)),
            ],
        )
        .unwrap();
    let rep = s.report(r).unwrap();
    assert_eq!(rep.lifecycle, LifecycleState::Draft);
    assert_eq!(rep.reporting_officer.name.as_deref(), Some("Alvarez"));
    assert_eq!(rep.occurred.time_zone.as_deref(), Some("America/Chicago"));
    assert_eq!(
        rep.federal_agencies,
        vec![FederalAgency::Ice, FederalAgency::CbpBorderPatrol]
    );
    assert_eq!(
        rep.supervisory_federal_officer.badge_number.as_deref(),
        Some("B-4471")
    );
    assert_eq!(rep.force.len(), 1);
    assert_eq!(rep.force[0].id, force);
    assert_eq!(
        rep.force[0].fields.force_type,
        Some(ForceType::ChemicalAgent)
    );
    assert!(rep.conflicts.is_empty());

    // Reopen: everything is still there, identical.
    let json = s.report_json(r).unwrap();
    drop(s);
    let s = Store::open(d.path()).unwrap();
    assert_eq!(s.report_json(r).unwrap(), json);
    assert_eq!(s.verify_integrity().unwrap(), 9);
}

#[test]
fn concurrent_edits_are_kept_as_conflict_and_resolved_by_a_new_set() {
    let (_d, s) = replicas(2);
    let r = s[0].create_report().unwrap();
    sync(&s[0], &s[1]);
    s[0].set_field(r, "supervisory_federal_officer.badge_number", text("A-1"))
        .unwrap();
    s[1].set_field(r, "supervisory_federal_officer.badge_number", text("B-2"))
        .unwrap();
    sync(&s[0], &s[1]);
    sync(&s[1], &s[0]);
    let a = s[0].report(r).unwrap();
    assert_eq!(a, s[1].report(r).unwrap());
    assert_eq!(a.conflicts.len(), 1);
    let c = &a.conflicts[0];
    assert_eq!(c.path, "supervisory_federal_officer.badge_number");
    let mut vals: Vec<_> = c.values.iter().map(|v| v.value.clone()).collect();
    vals.sort_by_key(|v| format!("{v:?}"));
    assert_eq!(vals, vec![text("A-1"), text("B-2")]);
    // The displayed value is the first candidate.
    assert_eq!(
        a.supervisory_federal_officer
            .badge_number
            .as_ref()
            .map(|b| text(b)),
        Some(c.values[0].value.clone())
    );
    let devices: Vec<_> = c.values.iter().map(|v| v.device).collect();
    assert!(devices.contains(&s[0].identity().unwrap().device_id));
    assert!(devices.contains(&s[1].identity().unwrap().device_id));

    // Listing shows the conflict.
    assert_eq!(
        s[0].list_reports(&ListQuery::default()).unwrap()[0].conflict_count,
        1
    );

    // No conflict elsewhere to resolve.
    assert!(matches!(
        s[0].resolve_conflict(r, "narrative", text("x")),
        Err(Error::NoConflict(_))
    ));

    s[1].resolve_conflict(r, "supervisory_federal_officer.badge_number", text("B-2"))
        .unwrap();
    sync(&s[1], &s[0]);
    let a = s[0].report(r).unwrap();
    assert!(a.conflicts.is_empty());
    assert_eq!(
        a.supervisory_federal_officer.badge_number.as_deref(),
        Some("B-2")
    );

    // Nothing is lost: history holds all three values, only the last live.
    let h = s[0]
        .field_history(r, "supervisory_federal_officer.badge_number")
        .unwrap();
    assert_eq!(h.len(), 3);
    assert_eq!(h.iter().filter(|e| e.live).count(), 1);
    assert_eq!(h.last().unwrap().value, Some(text("B-2")));
}

#[test]
fn removal_concurrent_with_edit_keeps_entry_flagged() {
    let (_d, s) = replicas(2);
    let r = s[0].create_report().unwrap();
    let e = s[0]
        .add_entry(r, "agents", vec![("name".into(), text("Agent X"))])
        .unwrap();
    sync(&s[0], &s[1]);
    s[0].remove_entry(r, "agents", e).unwrap();
    s[1].set_entry_field(r, "agents", e, "badge_number", text("77"))
        .unwrap();
    sync(&s[0], &s[1]);
    sync(&s[1], &s[0]);
    let a = s[0].report(r).unwrap();
    assert_eq!(a, s[1].report(r).unwrap());
    assert_eq!(a.agents.len(), 1);
    assert!(a.agents[0].removal_conflict);
    assert_eq!(a.conflicts[0].kind, ConflictKind::RemovedWhileEdited);
    // Removing again, having seen the edit, removes it.
    s[0].remove_entry(r, "agents", e).unwrap();
    sync(&s[0], &s[1]);
    assert!(s[1].report(r).unwrap().agents.is_empty());
    assert!(s[1].report(r).unwrap().conflicts.is_empty());
    // And it can be restored, with its values.
    s[1].edit(
        r,
        &[fieldreport_core::Edit::RestoreEntry {
            collection: "agents".into(),
            entry: e,
        }],
    )
    .unwrap();
    let a = s[1].report(r).unwrap();
    assert_eq!(a.agents[0].fields.badge_number.as_deref(), Some("77"));
}

#[test]
fn submit_requires_the_orders_fields() {
    let d = tempdir();
    let s = Store::open(d.path()).unwrap();
    s.create_identity(person("Alvarez", Role::Officer)).unwrap();
    let r = s.create_report().unwrap();
    let before = snapshot(&s);
    match s.submit(r) {
        Err(Error::MissingRequired(f)) => {
            assert_eq!(f, vec!["occurred.start", "location", "federal_agencies"])
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(snapshot(&s), before);
    fill_required(&s, r);
    s.submit(r).unwrap();
    assert_eq!(s.report(r).unwrap().lifecycle, LifecycleState::Submitted);
    assert!(matches!(s.submit(r), Err(Error::InvalidState { .. })));
    let submitted = s
        .list_reports(&ListQuery {
            lifecycle: Some(LifecycleState::Submitted),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(submitted.len(), 1);
    assert_eq!(submitted[0].unsynced_count, 5);
}

#[test]
fn bad_input_gets_typed_error_and_changes_nothing() {
    let d = tempdir();
    let s = Store::open(d.path()).unwrap();
    s.create_identity(person("Alvarez", Role::Officer)).unwrap();
    let r = s.create_report().unwrap();
    let e = s.add_entry(r, "injuries", vec![]).unwrap();
    let before = snapshot(&s);
    type Case = (&'static str, Value, fn(&Error) -> bool);
    let cases: Vec<Case> = vec![
        ("no_such_field", text("x"), |e| {
            matches!(e, Error::UnknownField(_))
        }),
        ("occurred.start", text("yesterday"), |e| {
            matches!(e, Error::WrongType { .. })
        }),
        ("location.latitude", Value::Float(123.0), |e| {
            matches!(e, Error::InvalidValue { .. })
        }),
        ("location.latitude", Value::Float(f64::NAN), |e| {
            matches!(e, Error::InvalidValue { .. })
        }),
        ("occurred.time_zone", text("Mars/Olympus"), |e| {
            matches!(e, Error::InvalidValue { .. })
        }),
        ("involvement.kind", text("telepathy"), |e| {
            matches!(e, Error::InvalidValue { .. })
        }),
        (
            "narrative",
            text(&"x".repeat(NARRATIVE_MAX + 1)),
            |e| matches!(e, Error::TooLong { max, .. } if *max == NARRATIVE_MAX),
        ),
        (
            "supervisory_federal_officer.name",
            text(&"x".repeat(SHORT_TEXT_MAX + 1)),
            |e| matches!(e, Error::TooLong { .. }),
        ),
        (
            "cpd_units",
            Value::List(vec!["u".repeat(LIST_ITEM_MAX + 1)]),
            |e| matches!(e, Error::TooLong { .. }),
        ),
        (
            "federal_agencies",
            Value::List(vec!["ice".into(), "ice".into()]),
            |e| matches!(e, Error::InvalidValue { .. }),
        ),
        ("reporting_officer.name", text("someone else"), |e| {
            matches!(e, Error::ReadOnlyField(_))
        }),
        ("lifecycle.state", text("approved"), |e| {
            matches!(e, Error::ReadOnlyField(_))
        }),
    ];
    for (path, value, ok) in cases {
        let err = s.set_field(r, path, value).unwrap_err();
        assert!(ok(&err), "{path}: {err:?}");
        // Messages carry no values.
        assert!(!err.to_string().contains("xxxx"), "{err}");
    }
    assert!(matches!(
        s.set_entry_field(r, "injuries", e, "severity", text("scratch")),
        Err(Error::InvalidValue { .. })
    ));
    assert!(matches!(
        s.set_entry_field(r, "injuries", Uuid::new_v4(), "severity", text("minor")),
        Err(Error::EntryNotFound { .. })
    ));
    assert!(matches!(
        s.add_entry(r, "pets", vec![]),
        Err(Error::UnknownCollection(_))
    ));
    assert!(matches!(
        s.add_entry(r, "media", vec![("caption".into(), text("x"))]),
        Err(Error::ReadOnlyField(_))
    ));
    assert!(matches!(
        s.set_field(Uuid::new_v4(), "narrative", text("x")),
        Err(Error::ReportNotFound(_))
    ));
    // One bad edit in a multi-edit action refuses the whole action.
    let err = s
        .edit(
            r,
            &[
                fieldreport_core::Edit::SetField {
                    path: "narrative".into(),
                    value: text("ok"),
                },
                fieldreport_core::Edit::SetField {
                    path: "occurred.end".into(),
                    value: Value::Bool(true),
                },
            ],
        )
        .unwrap_err();
    assert!(matches!(err, Error::WrongType { .. }));
    // Missing media file.
    let err = s
        .attach_media(
            r,
            &d.path().join("nope.jpg"),
            MediaMeta {
                mime_type: "image/jpeg".into(),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::MediaUnreadable(std::io::ErrorKind::NotFound)),
        "{err:?}"
    );
    assert_eq!(snapshot(&s), before);
    s.verify_integrity().unwrap();
}

#[test]
fn media_is_streamed_hashed_and_recorded_in_a_signed_change() {
    let d = tempdir();
    let s = Store::open(d.path()).unwrap();
    s.create_identity(person("Alvarez", Role::Officer)).unwrap();
    let r = s.create_report().unwrap();
    let src = d.path().join("photo.jpg");
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::File::create(&src)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let m = s
        .attach_media(
            r,
            &src,
            MediaMeta {
                mime_type: "image/jpeg".into(),
                file_name: Some("photo.jpg".into()),
                captured_at_ms: Some(T0),
                latitude: Some(41.88),
                longitude: Some(-87.63),
                caption: None,
            },
        )
        .unwrap();
    use sha2::Digest;
    assert_eq!(m.sha256, hex::encode(sha2::Sha256::digest(&bytes)));
    assert_eq!(m.size, bytes.len() as u64);
    assert_eq!(std::fs::read(s.media().path_of(&m.sha256)).unwrap(), bytes);
    let rep = s.report(r).unwrap();
    assert_eq!(rep.media.len(), 1);
    assert_eq!(
        rep.media[0].fields.sha256.as_deref(),
        Some(m.sha256.as_str())
    );
    assert_eq!(rep.media[0].fields.size, Some(bytes.len() as i64));
    assert_eq!(rep.media[0].fields.latitude, Some(41.88));
    // The caption is the only media field the user edits.
    s.set_entry_field(r, "media", m.entry, "caption", text("front door"))
        .unwrap();
    assert!(matches!(
        s.set_entry_field(r, "media", m.entry, "sha256", text(&"0".repeat(64))),
        Err(Error::ReadOnlyField(_))
    ));
}

#[test]
fn list_pages_newest_first() {
    let d = tempdir();
    let s = Store::open(d.path()).unwrap();
    s.create_identity(person("Alvarez", Role::Officer)).unwrap();
    let ids: Vec<Uuid> = (0..7).map(|_| s.create_report().unwrap()).collect();
    s.set_field(ids[2], "narrative", text("updated last"))
        .unwrap();
    let first = s
        .list_reports(&ListQuery {
            limit: 3,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(first[0].id, ids[2]);
    let mut all = first.clone();
    let mut after = first.last().unwrap().cursor();
    loop {
        let page = s
            .list_reports(&ListQuery {
                limit: 3,
                after: Some(after),
                ..Default::default()
            })
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.cursor();
        all.extend(page);
    }
    // Every report exactly once, newest first, even when many share a
    // millisecond: creation order reversed, with ids[2] moved to the front.
    let mut want: Vec<Uuid> = ids.iter().rev().copied().filter(|&i| i != ids[2]).collect();
    want.insert(0, ids[2]);
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), want);
}

#[test]
fn no_identity_and_reopen_keep_sequence() {
    let d = tempdir();
    let s = Store::open(d.path()).unwrap();
    assert!(matches!(s.create_report(), Err(Error::NoIdentity)));
    s.create_identity(person("Alvarez", Role::Officer)).unwrap();
    assert!(matches!(
        s.create_identity(person("Alvarez", Role::Officer)),
        Err(Error::IdentityExists)
    ));
    let r = s.create_report().unwrap();
    let c1 = s.set_field(r, "narrative", text("a")).unwrap();
    drop(s);
    let s = Store::open(d.path()).unwrap();
    let c2 = s.set_field(r, "narrative", text("b")).unwrap();
    assert_eq!(c2.seq, c1.seq + 1);
    s.verify_integrity().unwrap();
}

/// The person secret the station gives a device (in its own directory
/// entry) survives the store's restart, so a report created offline after
/// it still carries the proof that opens the device's digest on peers.
#[test]
fn the_person_secret_survives_a_restart_and_goes_into_creations() {
    use fieldreport_core::crdt::{Action, Target};
    let dir = tempdir();
    let secret = fieldreport_core::evidence::new_person_secret().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        let mut own = s
            .create_identity(person("Officer A", Role::Officer))
            .unwrap();
        assert!(own.person_secret.is_none());
        own.person_secret = Some(secret.clone());
        s.add_known_device(&own).unwrap();
        assert_eq!(s.identity().unwrap().person_secret, Some(secret.clone()));
        // A nameless entry for itself does not replace its own record.
        let bare = own.clone().without_name();
        s.add_known_device(&bare).unwrap();
        assert_eq!(s.identity().unwrap().person.name, "Officer A");
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.identity().unwrap().person_secret, Some(secret.clone()));
    let r = s.create_report().unwrap();
    let creation = s.report_changes(r).unwrap().remove(0);
    let proof = creation
        .body()
        .ops
        .iter()
        .find_map(|op| match (&op.target, &op.action) {
            (Target::Field(p), Action::Set(Value::Text(v))) if p == "reporting_officer.proof" => {
                Some(v.clone())
            }
            _ => None,
        });
    assert_eq!(proof, Some(secret));
}
