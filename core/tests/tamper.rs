//! Changes from peers that must be refused with a typed error, leaving the
//! store unchanged: a flipped byte, a wrong signature, a broken or forked
//! chain, an unknown device, an equivocating sequence number. A batch with
//! one bad change is refused whole.

mod common;

use common::*;
use fieldreport_core::crdt::{Action, ChangeBody, Hlc, Operation, Target};
use fieldreport_core::evidence::DeviceIdentity;
use fieldreport_core::store::Store;
use fieldreport_core::{Change, Error, Origin, Role, Value};
use uuid::Uuid;

struct Setup {
    _dirs: Vec<tempfile::TempDir>,
    author: Store,
    receiver: Store,
    report: Uuid,
    good: Vec<Change>,
}

fn setup() -> Setup {
    let (dirs, mut stores) = replicas(2);
    let receiver = stores.pop().unwrap();
    let author = stores.pop().unwrap();
    let report = author.create_report().unwrap();
    for i in 0..4 {
        author
            .set_field(report, "narrative", Value::Text(format!("n{i}")))
            .unwrap();
    }
    let good = author.report_changes(report).unwrap();
    Setup {
        _dirs: dirs,
        author,
        receiver,
        report,
        good,
    }
}

/// Applies `good` with `bad` appended; must fail as `expect`, change nothing.
fn refused(s: &Setup, bad: Change, expect: fn(&Error) -> bool) {
    let before = snapshot(&s.receiver);
    let mut batch = s.good.clone();
    batch.push(bad);
    let err = s.receiver.apply_changes(batch, Origin::Peer).unwrap_err();
    assert!(expect(&err), "unexpected error: {err:?}");
    assert_eq!(snapshot(&s.receiver), before, "store changed");
    // The good changes alone still apply.
    s.receiver
        .apply_changes(s.good.clone(), Origin::Peer)
        .unwrap();
    s.receiver.verify_integrity().unwrap();
}

fn sign_as(id: &DeviceIdentity, body: ChangeBody) -> Change {
    Change::sign(body, &id.signing_key).unwrap()
}

fn body_after(prev: &Change, seq: u64, text: &str) -> ChangeBody {
    let p = prev.body();
    ChangeBody {
        format: 1,
        report: p.report,
        device: p.device,
        seq,
        hlc: Hlc {
            wall_ms: p.hlc.wall_ms + 1,
            counter: 0,
        },
        wall_clock_ms: p.wall_clock_ms + 1,
        prev: Some(*prev.hash()),
        ops: vec![Operation {
            target: Target::Field("narrative".into()),
            action: Action::Set(Value::Text(text.into())),
            pred: vec![],
        }],
    }
}

#[test]
fn flipped_bytes_are_refused() {
    let s = setup();
    let last = s.good.last().unwrap();
    let mut flipped_any = 0;
    for i in 0..last.bytes().len() {
        let mut bytes = last.bytes().to_vec();
        bytes[i] ^= 0x01;
        // Either it no longer decodes canonically, or the signature fails.
        match Change::from_parts(bytes, *last.signature()) {
            Err(Error::MalformedChange { .. } | Error::InvalidOperation { .. }) => {}
            Err(e) => panic!("byte {i}: {e:?}"),
            Ok(c) => {
                refused(&s, c, |e| {
                    matches!(
                        e,
                        Error::BadSignature { .. }
                            | Error::Equivocation { .. }
                            | Error::BrokenChain { .. }
                            | Error::UnknownDevice { .. }
                    )
                });
                flipped_any += 1;
            }
        }
    }
    assert!(
        flipped_any > 10,
        "most flips still decode and must be caught by signatures"
    );
    // A flipped signature bit.
    let mut sig = *last.signature();
    sig[10] ^= 0x80;
    let c = Change::from_parts(last.bytes().to_vec(), sig).unwrap();
    // Same id, same bytes: the station already holding it would treat it as
    // a duplicate, so test against a receiver without it.
    let before = snapshot(&s.receiver);
    let err = s.receiver.apply_changes(vec![c], Origin::Peer).unwrap_err();
    assert!(
        matches!(err, Error::BadSignature { .. } | Error::BrokenChain { .. }),
        "{err:?}"
    );
    assert_eq!(snapshot(&s.receiver), before);
}

#[test]
fn wrong_signature_is_refused() {
    let s = setup();
    let last = s.good.last().unwrap();
    let impostor = DeviceIdentity::generate(person("Impostor", Role::Officer)).unwrap();
    let forged = sign_as(&impostor, body_after(last, last.body().seq + 1, "forged"));
    refused(&s, forged, |e| matches!(e, Error::BadSignature { .. }));
}

#[test]
fn unknown_device_is_refused() {
    let s = setup();
    let stranger = DeviceIdentity::generate(person("Stranger", Role::Officer)).unwrap();
    let body = ChangeBody {
        format: 1,
        report: s.report,
        device: stranger.device_id(),
        seq: 1,
        hlc: Hlc {
            wall_ms: 1,
            counter: 0,
        },
        wall_clock_ms: 1,
        prev: None,
        ops: vec![Operation {
            target: Target::Field("narrative".into()),
            action: Action::Set(Value::Text("x".into())),
            pred: vec![],
        }],
    };
    refused(&s, sign_as(&stranger, body), |e| {
        matches!(e, Error::UnknownDevice { .. })
    });
}

#[test]
fn broken_forked_and_equivocating_chains_are_refused() {
    let s = setup();
    // The author's own key, so signatures verify and only the chain is wrong.
    let key = secret_of(&s.author);
    let last = s.good.last().unwrap();
    let next = last.body().seq + 1;

    // prev names a change that does not exist.
    let mut b = body_after(last, next, "x");
    b.prev = Some([9u8; 32]);
    refused(&s, sign_as(&key, b), |e| {
        matches!(e, Error::BrokenChain { .. })
    });

    // A gap: the previous change is withheld.
    let skipped = sign_as(&key, body_after(last, next, "skipped"));
    let after_gap = sign_as(&key, body_after(&skipped, next + 1, "after gap"));
    refused(&s, after_gap, |e| matches!(e, Error::BrokenChain { .. }));

    // A fork: a second change following the same previous change.
    let first = s.good[s.good.len() - 2].clone();
    let fork = sign_as(&key, body_after(&first, next, "fork"));
    refused(&s, fork, |e| matches!(e, Error::BrokenChain { .. }));

    // Equivocation: another body under an existing (device, seq).
    let mut b = body_after(&first, last.body().seq, "equivocation");
    b.prev = last.body().prev;
    refused(&s, sign_as(&key, b), |e| {
        matches!(e, Error::Equivocation { .. })
    });

    // prev pointing into another report's chain.
    let other = s.author.create_report().unwrap();
    let other_first = s.author.report_changes(other).unwrap().remove(0);
    let mut b = body_after(last, other_first.body().seq + 1, "cross");
    b.prev = Some(*other_first.hash());
    s.receiver
        .apply_changes(vec![other_first], Origin::Peer)
        .unwrap();
    refused(&s, sign_as(&key, b), |e| {
        matches!(e, Error::BrokenChain { .. })
    });
}

#[test]
fn invalid_operations_from_peers_are_refused() {
    let s = setup();
    let key = secret_of(&s.author);
    let last = s.good.last().unwrap();
    let mut b = body_after(last, last.body().seq + 1, "x");
    b.ops[0].target = Target::Field("not_a_field".into());
    // Signing validates too; build the bytes by hand as a hostile peer would.
    assert!(Change::sign(b.clone(), &key.signing_key).is_err());
    let bytes = postcard_bytes(&b);
    let sig = {
        use ed25519_dalek::Signer;
        let mut m = fieldreport_core::crdt::change::SIGNING_CONTEXT.to_vec();
        m.extend_from_slice(&bytes);
        key.signing_key.sign(&m).to_bytes()
    };
    assert!(matches!(
        Change::from_parts(bytes, sig),
        Err(Error::InvalidOperation { .. })
    ));
    // Trailing garbage is not canonical.
    let mut bytes = last.bytes().to_vec();
    bytes.push(0);
    assert!(matches!(
        Change::from_parts(bytes, *last.signature()),
        Err(Error::MalformedChange { .. })
    ));
}

fn postcard_bytes(b: &ChangeBody) -> Vec<u8> {
    b.encode()
}

/// The author's identity (the tests need to sign as it).
fn secret_of(store: &Store) -> DeviceIdentity {
    let conn = rusqlite::Connection::open(store.dir().join("fieldreport.db")).unwrap();
    let (id, secret): (Vec<u8>, Vec<u8>) = conn
        .query_row("SELECT device_id, secret_key FROM identity", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    DeviceIdentity::from_secret(
        Uuid::from_slice(&id).unwrap(),
        secret.try_into().unwrap(),
        store.identity().unwrap().person,
    )
}

/// Only the report's creation names its reporting officer, and only as the
/// directory has its author: a peer's change that sets the reporting
/// officer otherwise is refused, and the receiver is left as it was.
#[test]
fn forged_reporting_officers_from_peers_are_refused() {
    let s = setup();
    // `author` holds the report; the other phone, whose device it knows,
    // forges.
    let receiver = &s.author;
    let forger = secret_of(&s.receiver);
    let me = forger.record.person.clone();
    let owner = receiver.identity().unwrap().person;
    let now = chrono::Utc::now().timestamp_millis();
    let text = |v: &str| Action::Set(Value::Text(v.into()));
    let change = |report: Uuid, seq: u64, ops: Vec<(&str, Action)>| {
        sign_as(
            &forger,
            ChangeBody {
                format: 1,
                report,
                device: forger.device_id(),
                seq,
                hlc: Hlc {
                    wall_ms: now as u64,
                    counter: 0,
                },
                wall_clock_ms: now,
                prev: None,
                ops: ops
                    .into_iter()
                    .map(|(p, action)| Operation {
                        target: Target::Field(p.into()),
                        action,
                        pred: vec![],
                    })
                    .collect(),
            },
        )
    };
    let creation = |report: Uuid, seq: u64, name: &str, star: &str, unit: &str| {
        change(
            report,
            seq,
            vec![
                ("lifecycle.state", text("draft")),
                ("reporting_officer.name", text(name)),
                ("reporting_officer.star_number", text(star)),
                ("reporting_officer.unit", text(unit)),
            ],
        )
    };
    let not_permitted = |c: Change, why: &str| {
        let before = snapshot(receiver);
        let e = receiver
            .apply_changes(vec![c], Origin::Peer)
            .expect_err(why);
        assert!(matches!(e, Error::NotPermitted { .. }), "{why}: {e:?}");
        assert_eq!(snapshot(receiver), before, "{why}: store changed");
    };
    let r = s.report;
    // Naming oneself the reporting officer of someone else's report, in a
    // first change to it: refused.
    not_permitted(
        change(r, 1000, vec![("reporting_officer.name", text(&me.name))]),
        "a first change that is not the creation",
    );
    // Re-creating someone else's report to name oneself: refused.
    not_permitted(
        creation(r, 1001, &me.name, &me.star_number, &me.unit),
        "a second creation",
    );
    // Creating a report in someone else's name: refused.
    let fresh = Uuid::new_v4();
    not_permitted(
        creation(fresh, 1002, &owner.name, &me.star_number, &me.unit),
        "another officer's name",
    );
    not_permitted(
        creation(fresh, 1003, &me.name, "99999", &me.unit),
        "another star number",
    );
    not_permitted(
        change(
            fresh,
            1004,
            vec![
                ("lifecycle.state", text("draft")),
                ("reporting_officer.unit", text(&me.unit)),
            ],
        ),
        "a creation that does not name the officer",
    );
    not_permitted(
        change(
            fresh,
            1005,
            vec![
                ("lifecycle.state", text("draft")),
                ("reporting_officer.name", text(&me.name)),
                ("reporting_officer.star_number", text(&me.star_number)),
                ("reporting_officer.unit", text(&me.unit)),
                ("reporting_officer.name", Action::Set(Value::Null)),
            ],
        ),
        "a creation that also clears the name",
    );
    // The report is as its creator made it.
    let rep = receiver.report(r).unwrap();
    assert_eq!(
        rep.reporting_officer.name.as_deref(),
        Some(owner.name.as_str())
    );
    // The rightful creation, and a plain first edit of someone else's
    // report, are accepted.
    receiver
        .apply_changes(
            vec![creation(fresh, 1006, &me.name, &me.star_number, &me.unit)],
            Origin::Peer,
        )
        .unwrap();
    receiver
        .apply_changes(
            vec![change(r, 1007, vec![("narrative", text("seen too"))])],
            Origin::Peer,
        )
        .unwrap();
    let rep = receiver.report(fresh).unwrap();
    assert_eq!(
        rep.reporting_officer.name.as_deref(),
        Some(me.name.as_str())
    );
    assert_eq!(rep.created_by_device, Some(forger.device_id()));
    receiver.verify_integrity().unwrap();
}
