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
