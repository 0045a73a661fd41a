//! What a device learns of the department's roster: the key, role and unit
//! of every device (to verify and authorize what it receives, also from a
//! partner's phone at the scene), but names and star numbers only of the
//! authors of changes it may see. A lost phone does not hold the roster.

use std::collections::BTreeMap;

use fieldreport_core::{Role, Value};
use fieldreport_e2e::*;

/// (name, star number) of each device a store knows, by device id.
fn known(d: &Device) -> BTreeMap<uuid::Uuid, (String, String)> {
    d.store
        .known_devices()
        .unwrap()
        .into_iter()
        .map(|r| (r.device_id, (r.person.name, r.person.star_number)))
        .collect()
}

fn id(d: &Device) -> uuid::Uuid {
    d.store.identity().unwrap().device_id
}

#[test]
fn a_device_learns_names_only_of_authors_it_may_see() {
    let st = TestStation::start();
    let a = st.device(
        &person("Rosterann Alpha", "81001", Role::Officer, "D9"),
        None,
    );
    let b = st.device(
        &person("Rosterbob Bravo", "81002", Role::Officer, "D9"),
        None,
    );
    let c = st.device(
        &person("Rostercy Charlie", "82001", Role::Officer, "D2"),
        None,
    );
    let s9 = st.device(
        &person("Rostersue Nine", "81009", Role::Supervisor, "D9"),
        None,
    );
    let s2 = st.device(
        &person("Rostersam Two", "82009", Role::Supervisor, "D2"),
        None,
    );
    let everyone = [&a, &b, &c, &s9, &s2];

    let ra = a.store.create_report().unwrap();
    a.store
        .set_field(ra, "narrative", Value::Text("by A".into()))
        .unwrap();
    let rc = c.store.create_report().unwrap();
    c.store
        .set_field(rc, "narrative", Value::Text("by C".into()))
        .unwrap();
    for d in everyone {
        d.sync();
    }
    for d in everyone {
        d.sync();
    }

    // Every device holds every key (and role and unit), to verify.
    for d in everyone {
        let k = known(d);
        for other in everyone {
            assert!(k.contains_key(&id(other)), "a key is missing");
        }
        for r in d.store.known_devices().unwrap() {
            let want = everyone
                .iter()
                .find(|o| id(o) == r.device_id)
                .unwrap()
                .store
                .identity()
                .unwrap();
            assert_eq!(r.public_key, want.public_key);
            assert_eq!(
                (r.person.role, &r.person.unit),
                (want.person.role, &want.person.unit)
            );
        }
    }
    let named = |d: &Device| -> Vec<uuid::Uuid> {
        known(d)
            .into_iter()
            .filter(|(_, (name, star))| !name.is_empty() || !star.is_empty())
            .map(|(id, _)| id)
            .collect()
    };
    let sorted = |mut v: Vec<uuid::Uuid>| {
        v.sort();
        v
    };
    // An officer: only itself (its report has no other author).
    assert_eq!(named(&a), vec![id(&a)]);
    assert_eq!(named(&b), vec![id(&b)], "B sees no report: no names");
    assert_eq!(named(&c), vec![id(&c)]);
    // A supervisor: itself and the authors of its unit's reports.
    assert_eq!(named(&s9), sorted(vec![id(&a), id(&s9)]));
    assert_eq!(named(&s2), sorted(vec![id(&c), id(&s2)]));

    // The raw answer a lost phone's credential gets holds no other name.
    let raw = st
        .http()
        .get(format!("{}/v1/devices", st.url))
        .bearer_auth(b.credential())
        .send()
        .unwrap()
        .text()
        .unwrap();
    for needle in [
        "Rosterann",
        "81001",
        "Rostercy",
        "82001",
        "Rostersue",
        "81009",
        "Rostersam",
        "82009",
    ] {
        assert!(
            !holds_word(&raw, needle),
            "`{needle}` reaches an officer who needs it not"
        );
    }
    assert!(
        holds_word(&raw, "Rosterbob") && holds_word(&raw, "81002"),
        "a device's own record is whole"
    );

    // What B holds of A cannot be tested against a roster: with every
    // candidate (A's own name among them), the digest matches none, and no
    // record B holds carries another device's person secret.
    let a_on_b = b
        .store
        .known_devices()
        .unwrap()
        .into_iter()
        .find(|r| r.device_id == id(&a))
        .unwrap();
    assert!(a_on_b.person_digest.is_some());
    let roster = [
        ("Rosterann Alpha", "81001", "D9"),
        ("Rosterbob Bravo", "81002", "D9"),
        ("Rostercy Charlie", "82001", "D2"),
        ("Rostersue Nine", "81009", "D9"),
        ("Rostersam Two", "82009", "D2"),
    ];
    let guess = "00".repeat(32);
    for (name, star, unit) in roster {
        assert!(!a_on_b.is_person(name, star, unit, None), "{name} matched");
        assert!(!a_on_b.is_person(name, star, unit, Some(&guess)));
    }
    for r in b.store.known_devices().unwrap() {
        assert_eq!(
            r.person_secret.is_some(),
            r.device_id == id(&b),
            "only B's own record carries a person secret"
        );
    }
    assert!(!raw.contains(
        a.store
            .identity()
            .unwrap()
            .person_secret
            .as_deref()
            .unwrap()
    ));
    // A's creation opens the digest: B can check the officer it names,
    // and only that one.
    let creation = a
        .store
        .report_changes(ra)
        .unwrap()
        .into_iter()
        .find(|ch| fieldreport_core::model::workflow::is_creation(ch.body()))
        .unwrap();
    let proof = creation
        .body()
        .ops
        .iter()
        .find_map(|op| match (&op.target, &op.action) {
            (
                fieldreport_core::crdt::Target::Field(p),
                fieldreport_core::crdt::Action::Set(Value::Text(v)),
            ) if p == "reporting_officer.proof" => Some(v.clone()),
            _ => None,
        })
        .expect("the creation reveals its person secret");
    assert!(a_on_b.is_person("Rosterann Alpha", "81001", "D9", Some(&proof)));
    assert!(!a_on_b.is_person("Rosterann Alpha", "81002", "D9", Some(&proof)));
    assert!(!a_on_b.is_person("Rosterbob Bravo", "81002", "D9", Some(&proof)));

    // At the scene, B takes A's report from A's phone: B verifies it with
    // the key it holds. Once B has written to the report and synced, A is
    // an author B may see, and B learns A's name.
    let took = a.hand_over_to(&b);
    assert!(took.applied > 0);
    b.store
        .set_field(ra, "location.address", Value::Text("by B".into()))
        .unwrap();
    b.sync();
    b.sync();
    assert_eq!(named(&b), sorted(vec![id(&a), id(&b)]));
    assert_eq!(known(&b)[&id(&a)].0, "Rosterann Alpha");
    assert!(known(&b)[&id(&c)].0.is_empty(), "still not C's");
}
